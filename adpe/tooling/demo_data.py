"""Deterministic synthetic stand-ins for ImageNet, ADE20K and COCO, written in the real on-disk formats.

Every image is a random background (smooth colour gradient, low-frequency blotches, optional stripes and
pixel noise) with one or more filled polygons on top. Each of the :data:`CLASSES` is a shape. The demo's images
come in the sizes and aspect ratios of the real sets (:data:`ASPECT_RATIOS`: ADE20K's panoramas and images smaller
than the crop, COCO's portrait and landscape frames, non-square ImageNet photos), so the demo runs the resizing,
padding and sliding-window code paths that real data takes; tests may ask for squares.

* In the ADE20K and COCO sets each class also has its own appearance (a hue family plus a pattern: dots,
  checker, stripes, ...), so a tiny ViT can learn to segment and detect them in minutes on a CPU.
* In the ImageNet set every object's hue and pattern are drawn independently of its class: only shape tells
  the classes apart, so colour and texture statistics (which random features already capture) do not, and a
  linear probe measures whether pretraining learned structure.

* :func:`render_scene` draws one image and returns its visible instance masks (later objects occlude
  earlier ones; the masks are the visible parts).
* :func:`write_imagenet`, :func:`write_ade20k`, :func:`write_coco` write one dataset each;
  :func:`write_all` writes the three under one root.

Label conventions:

* ImageNet: ``root/{train,val}/<class name>/<i>.JPEG``, one dominant object of that class per image, the
  ``val`` split labelled the same way (mmpretrain's ``CustomDataset`` / ImageNet folder layout).
* ADE20K (mmseg layout, ``reduce_zero_label=True``): 0 = ignore, 1 = background (:data:`ADE_BACKGROUND`),
  class ``c`` = ``c + 2`` (see :func:`ade_label`); after mmseg's reduction background is 0 and class ``c`` is
  ``c + 1``.
* COCO: category id of class ``c`` is ``c + 1`` (see :func:`coco_category_id`), supercategory ``'shape'``;
  ``segmentation`` holds polygons tracing the visible mask's pixel boundaries exactly (holes included, as
  zero-width bridges), ``area`` is the visible pixel count and ``bbox`` its ``[x, y, w, h]``.

Writing is deterministic (same seed and sizes give byte-identical files) and idempotent: each dataset is
written into a temporary sibling folder, completed with a ``.complete`` marker holding its parameters, and
renamed into place; a later call with the same parameters returns at once.

numpy + PIL + cv2 only: no OpenMMLab imports here.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "ADE_BACKGROUND",
    "ADE_IGNORE",
    "CLASSES",
    "MARKER",
    "SCALES",
    "ade_label",
    "coco_categories",
    "coco_category_id",
    "mask_to_polygons",
    "render_scene",
    "write_ade20k",
    "write_all",
    "write_coco",
    "write_imagenet",
]

#: The object classes, in class-id order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")

#: ADE20K label values (before mmseg's ``reduce_zero_label``): 0 is ignored, 1 is the background.
ADE_IGNORE: int = 0
ADE_BACKGROUND: int = 1

#: Name of the marker file that says a dataset folder is complete (holds its generation parameters).
MARKER: str = ".complete"

#: Bump when the generated content changes, so old folders are regenerated instead of reused.
GENERATOR_VERSION: int = 3

#: Image aspect ratios (width / height) and their weights, per dataset: the ratios real images of that kind come
#: in, not measured frequencies. ADE20K's include the shapes that broke multi-scale testing before: 683 x 512
#: (4:3), 512 x 683 (3:4), the 2100 x 512 panorama (4.1:1) and a 300 x 260 image smaller than the crop (1.15:1).
ASPECT_RATIOS: dict[str, tuple[tuple[float, float], ...]] = {
    "imagenet": ((4 / 3, 0.5), (3 / 4, 0.15), (1.0, 0.15), (3 / 2, 0.1), (2 / 3, 0.05), (16 / 9, 0.05)),
    "ade20k": ((4 / 3, 0.55), (3 / 4, 0.15), (1.0, 0.05), (3 / 2, 0.1), (300 / 260, 0.05), (2100 / 512, 0.1)),
    "coco": ((4 / 3, 0.5), (3 / 4, 0.2), (3 / 2, 0.15), (2 / 3, 0.05), (1.0, 0.05), (16 / 9, 0.05)),
}

#: Dataset sizes of :func:`write_all`, per scale. ``size``: the side of square images, or a ``[low, high]`` range
#: of short sides for images in the dataset's :data:`ASPECT_RATIOS`.
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "imagenet": {"n_per_class": 32, "n_val_per_class": 40, "size": [112, 160]},
        "ade20k": {"n_train": 160, "n_val": 32, "size": [96, 160]},
        "coco": {"n_train": 160, "n_val": 32, "size": [96, 160]},
    },
    # make study (tools/study_pipeline.yaml): ImageNet only, more images at a lower resolution (pretraining crops of
    # 56^2 with patch 8), a test split evaluated once at the end (val/ is for choices) and a list of the first 16
    # train images per class (meta/train_16.txt) for label-scarce fine-tuning and probing.
    "study": {
        "imagenet": {"n_per_class": 160, "n_val_per_class": 32, "n_test_per_class": 64, "size": [64, 80],
                     "labelled_subsets": [16]},
    },
    # the study's layout at test size (tests/test_study_mm.py)
    "study_tiny": {
        "imagenet": {"n_per_class": 4, "n_val_per_class": 2, "n_test_per_class": 2, "size": 64,
                     "labelled_subsets": [2]},
    },
    "tiny": {
        "imagenet": {"n_per_class": 3, "n_val_per_class": 2, "size": 64},
        "ade20k": {"n_train": 8, "n_val": 4, "size": 64},
        "coco": {"n_train": 8, "n_val": 4, "size": 64},
    },
}

_JPEG_QUALITY = 92
_MIN_AREA = 30  # visible pixels below which an instance is dropped
_CONTOUR_UPSAMPLE = 4  # sub-pixel factor of the mask contours (polygon edges lie 1/8 px inside the mask)
_FILL_SHIFT = 4  # fixed-point bits for cv2.fillPoly

# Per class: hue centre (degrees) and pattern name; the hues are 45 degrees apart.
_APPEARANCE: tuple[tuple[float, str], ...] = (
    (0.0, "dots"),  # circle: red
    (45.0, "checker"),  # square: orange / yellow
    (90.0, "stripes"),  # triangle: yellow-green
    (135.0, "radial"),  # star: green
    (180.0, "concentric"),  # ring: cyan
    (225.0, "grid"),  # cross: blue
    (270.0, "waves"),  # ellipse: violet
    (315.0, "speckle"),  # hexagon: magenta
)


# --------------------------------------------------------------------------------------------- shapes


def _regular(n: int, start: float = 0.0) -> np.ndarray:
    t = start + 2.0 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _unit_shape(class_id: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N x 2) of class ``class_id``'s shape, centred at 0 with radius about 1."""
    name = CLASSES[class_id]
    if name == "circle":
        return _regular(32)
    if name == "square":
        return _regular(4, math.pi / 4)
    if name == "triangle":
        return _regular(3, -math.pi / 2)
    if name == "star":
        pts = _regular(10, -math.pi / 2)
        pts[1::2] *= 0.45
        return pts
    if name == "ring":  # a thick "C": an annulus with a gap, one simple polygon
        gap = 0.9
        t = np.linspace(gap / 2, 2.0 * math.pi - gap / 2, 28)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        return np.concatenate([outer, 0.55 * outer[::-1]])
    if name == "cross":
        a = 0.32
        return np.array([[a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                         [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a], [-a, -1]], dtype=np.float64)
    if name == "ellipse":
        pts = _regular(32)
        pts[:, 1] *= rng.uniform(0.45, 0.62)
        return pts
    if name == "hexagon":
        return _regular(6)
    raise ValueError(f"unknown class {class_id}")


def _place(unit: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return unit @ rot.T * radius + np.array([cx, cy])


def _fill(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a float polygon (pixel xy, pixel centres at integers) into a bool mask of ``shape`` (H, W)."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round(poly * (1 << _FILL_SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------- colours


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)) * 255.0


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A float HxWx3 background of ``shape`` (H, W): gradient + blotches + optional stripes + noise (muted
    colours)."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) / max(shape)
    c0 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.9))
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.9))
    th = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(th) + yy * math.sin(th)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    blot = cv2.resize(rng.normal(0.0, 1.0, (4, 4, 3)), (width, height), interpolation=cv2.INTER_CUBIC)
    img += blot * rng.uniform(5, 20)
    if rng.random() < 0.6:
        phi = rng.uniform(0, math.pi)
        period = rng.uniform(0.04, 0.2)
        wave = np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period + rng.uniform(0, 6.3))
        tint = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.4), 1.0) / 255.0
        img += wave[..., None] * tint * rng.uniform(8, 30)
    img += rng.normal(0.0, rng.uniform(2, 8), img.shape)
    return img


def _pattern(name: str, u: np.ndarray, v: np.ndarray, radius: float, period: float,
             rng: np.random.Generator) -> np.ndarray:
    """Mix weight in [0, 1] between an object's two colours; ``u, v`` are object-frame pixel offsets."""
    fu, fv = np.mod(u / period, 1.0), np.mod(v / period, 1.0)
    if name == "dots":
        return (((fu - 0.5) ** 2 + (fv - 0.5) ** 2) < 0.09).astype(np.float64)
    if name == "checker":
        return np.mod(np.floor(u / period) + np.floor(v / period), 2.0)
    if name == "stripes":
        return (fu < 0.5).astype(np.float64)
    if name == "radial":
        return np.clip(np.hypot(u, v) / radius, 0.0, 1.0)
    if name == "concentric":
        return (np.mod(np.hypot(u, v) / (0.6 * period), 1.0) < 0.5).astype(np.float64)
    if name == "grid":
        return ((fu < 0.28) | (fv < 0.28)).astype(np.float64)
    if name == "waves":
        return 0.5 + 0.5 * np.sin(2 * math.pi * (u + 0.35 * period * np.sin(2 * math.pi * v / (2 * period)))
                                  / period)
    if name == "speckle":
        small = rng.random((max(2, u.shape[0] // 3), max(2, u.shape[1] // 3)))
        big = cv2.resize(small, (u.shape[1], u.shape[0]), interpolation=cv2.INTER_NEAREST)
        return (big > 0.55).astype(np.float64)
    raise ValueError(f"unknown pattern {name}")


def _paint(img: np.ndarray, mask: np.ndarray, class_id: int, cx: float, cy: float, radius: float,
           angle: float, rng: np.random.Generator, class_appearance: bool = True) -> None:
    """Paint an object into ``img`` where ``mask``: in the colours and pattern of ``class_id``, or, without
    ``class_appearance``, in a hue and pattern drawn independently of the class."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u, v = dx * c + dy * s, -dx * s + dy * c
    if class_appearance:
        hue, pattern = _APPEARANCE[class_id]
        hue += rng.uniform(-10, 10)
    else:
        hue, pattern = rng.uniform(0, 360), _APPEARANCE[int(rng.integers(len(_APPEARANCE)))][1]
    sat, val = rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    col_a = _hsv(hue, sat, val)
    col_b = _hsv(hue + rng.uniform(-8, 8), sat * rng.uniform(0.35, 0.7), val * rng.uniform(0.35, 0.55))
    period = max(3.0, min(img.shape[:2]) / 128.0 * rng.uniform(6.0, 10.0))
    p = _pattern(pattern, u, v, radius, period, rng)[..., None]
    tex = col_a * (1 - p) + col_b * p
    shade = 1.0 + 0.12 * (u / max(radius, 1.0))  # a little directional lighting
    tex = tex * shade[..., None] + rng.normal(0.0, 4.0, tex.shape)
    sub = mask[y0:y1, x0:x1]
    img[y0:y1, x0:x1][sub] = tex[sub]


# --------------------------------------------------------------------------------------------- scenes


def _compose(rng: np.random.Generator, shape: tuple[int, int],
             specs: Sequence[tuple[int, float, float, float, float]],
             class_appearance: bool = True) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw ``specs`` = (class_id, cx, cy, radius, angle) in order on a fresh background of ``shape`` (H, W)
    (``_paint``'s ``class_appearance``).

    Returns the uint8 image and, for every spec (none dropped), ``class_id``, ``polygon``, the full
    ``shape_mask`` and the visible ``mask``.
    """
    img = _background(rng, shape)
    objs: list[dict[str, Any]] = []
    for class_id, cx, cy, radius, angle in specs:
        poly = _place(_unit_shape(class_id, rng), cx, cy, radius, angle)
        shape_mask = _fill(poly, shape)
        _paint(img, shape_mask, class_id, cx, cy, radius, angle, rng, class_appearance)
        objs.append({"class_id": int(class_id), "polygon": poly, "shape_mask": shape_mask})
    covered = np.zeros(shape, bool)
    for obj in reversed(objs):  # visible part = own shape minus everything drawn later
        obj["mask"] = obj["shape_mask"] & ~covered
        covered |= obj["shape_mask"]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objs


def _random_specs(rng: np.random.Generator, shape: tuple[int, int], max_objects: int,
                  classes: Sequence[int] | None = None) -> list[tuple[int, float, float, float, float]]:
    """1..n objects sized by the short side of ``shape`` (H, W); n = ``max_objects`` per square of that side, so
    a panorama holds as many objects per area as a square image."""
    height, width = shape
    short = min(shape)
    n = int(rng.integers(1, max_objects * max(1, round(max(shape) / short)) + 1))
    pool = range(len(CLASSES)) if classes is None else classes
    specs = []
    for _ in range(n):
        cid = int(rng.choice(list(pool)))
        radius = short * rng.uniform(0.11, 0.26)
        cx = rng.uniform(0.6 * radius, width - 0.6 * radius)
        cy = rng.uniform(0.6 * radius, height - 0.6 * radius)
        specs.append((cid, cx, cy, radius, rng.uniform(0, 2 * math.pi)))
    return specs


def _image_shape(rng: np.random.Generator, size: int | Sequence[int], dataset: str) -> tuple[int, int]:
    """(H, W) of the next image: ``size`` x ``size`` for an int; for a ``[low, high]`` range, a short side drawn in
    it and an aspect ratio drawn from ``ASPECT_RATIOS[dataset]``."""
    if isinstance(size, int):
        return size, size
    low, high = size
    short = int(rng.integers(low, high + 1))
    ratios, weights = zip(*ASPECT_RATIOS[dataset], strict=True)
    ratio = float(rng.choice(ratios, p=np.asarray(weights) / sum(weights)))
    long = round(short * max(ratio, 1 / ratio))
    return (short, long) if ratio >= 1 else (long, short)


def _public(objs: list[dict[str, Any]], min_area: int) -> list[dict[str, Any]]:
    return [{"class_id": o["class_id"], "polygon": o["polygon"], "mask": o["mask"]}
            for o in objs if int(o["mask"].sum()) >= min_area]


def render_scene(rng: np.random.Generator, size: int | tuple[int, int], max_objects: int,
                 min_area: int = _MIN_AREA) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw 1..``max_objects`` random objects (per square of the short side) on a random background.

    ``size``: the side of a square image, or its (H, W). Returns ``(image, instances)``: a uint8 H x W x 3 RGB
    image and, in drawing order, one dict per instance with ``class_id`` (int), ``polygon`` (N x 2 float array,
    pixel xy with pixel centres at integers; the full shape, possibly partly outside the image) and ``mask``
    (H x W bool, the *visible* part). Instances with fewer than ``min_area`` visible pixels are dropped (their
    pixels stay in the image).
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    img, objs = _compose(rng, shape, _random_specs(rng, shape, max_objects))
    return img, _public(objs, min_area)


def _imagenet_scene(rng: np.random.Generator, shape: tuple[int, int], class_id: int,
                    class_appearance: bool = False) -> np.ndarray:
    """One dominant, fully visible object of ``class_id`` near the centre of an image of ``shape`` (H, W), over
    0-3 small clutter objects, every object in a hue and pattern drawn independently of its class (or in its
    class colours: ``class_appearance``). Objects are sized by the short side, so a centre crop keeps the
    dominant one."""
    height, width = shape
    short = min(shape)
    others = [c for c in range(len(CLASSES)) if c != class_id]
    specs = []
    for _ in range(int(rng.integers(0, 4))):
        r = short * rng.uniform(0.07, 0.14)
        specs.append((int(rng.choice(others)), rng.uniform(r, width - r), rng.uniform(r, height - r), r,
                      rng.uniform(0, 2 * math.pi)))
    r = short * rng.uniform(0.28, 0.42)
    cx, cy = np.array([width, height]) / 2 + rng.uniform(-0.12, 0.12, 2) * short
    specs.append((class_id, cx, cy, r, rng.uniform(0, 2 * math.pi)))
    return _compose(rng, shape, specs, class_appearance)[0]


# --------------------------------------------------------------------------------------------- labels


def ade_label(class_id: int) -> int:
    """ADE20K label value (before ``reduce_zero_label``) of class ``class_id``: ``class_id + 2``."""
    return class_id + 2


def coco_category_id(class_id: int) -> int:
    """COCO category id of class ``class_id``: ``class_id + 1``."""
    return class_id + 1


def coco_categories() -> list[dict[str, Any]]:
    """The COCO ``categories`` list."""
    return [{"id": coco_category_id(i), "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` into ``outer`` through a zero-width cut (even-odd filling keeps the hole empty)."""
    d = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    hole_loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], hole_loop, outer[i:]])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (``[[x1, y1, x2, y2, ...], ...]``) of a bool mask, one per connected component.

    Coordinates follow COCO's convention: pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)`` (for
    cv2.fillPoly, whose pixel centres are at integers, subtract 0.5). The contours are traced on a 4x
    upsampled mask, so every edge lies 1/8 px inside the mask's pixel boundary and rasterising the polygons
    with pycocotools gives back exactly the mask. Holes are joined to their outer contour by zero-width cuts.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    k = _CONTOUR_UPSAMPLE
    y0, x0 = int(ys.min()), int(xs.min())
    crop = mask[y0: int(ys.max()) + 1, x0: int(xs.max()) + 1].astype(np.uint8)
    crop = np.pad(crop, 1)
    up = np.repeat(np.repeat(crop, k, axis=0), k, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hier = hierarchy[0]
    polys: list[list[float]] = []
    for idx, cnt in enumerate(contours):
        if hier[idx][3] != -1 or len(cnt) < 3:  # holes are handled with their parent
            continue
        poly = cnt[:, 0, :].astype(np.float64)
        child = hier[idx][2]
        while child != -1:
            if len(contours[child]) >= 3:
                poly = _bridge(poly, contours[child][:, 0, :].astype(np.float64))
            child = hier[child][0]
        # sub-pixel centre j of the padded crop -> COCO image coordinate (pixel centres at i + 0.5)
        poly = (poly + 0.5) / k - 1.0 + np.array([x0, y0])
        polys.append([float(c) for c in poly.reshape(-1)])
    return polys


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


# --------------------------------------------------------------------------------------------- writing


def _save_jpeg(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)


def _save_png(label: np.ndarray, path: Path) -> None:
    Image.fromarray(label.astype(np.uint8), mode="L").save(path, format="PNG")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _jsonable(size: int | Sequence[int]) -> int | list[int]:
    """``size`` as the marker file stores it (a range read back from JSON is a list)."""
    return size if isinstance(size, int) else [int(v) for v in size]


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _materialise(root: str | os.PathLike[str], params: dict[str, Any], force: bool,
                 build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` into a temporary sibling of ``root`` and rename it to ``root`` when complete.

    Skips the work when ``root`` already holds a marker with ``params`` (unless ``force``). Replaces an
    existing dataset folder (one with a marker) or an empty folder; refuses any other existing folder.
    """
    root = Path(root).expanduser().absolute()
    params = {"generator_version": GENERATOR_VERSION, **params}
    if not force and _read_marker(root) == params:
        return root
    if root.exists() and _read_marker(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"'{root}' exists and is not a generated dataset (no {MARKER}); left alone")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
        if not force and _read_marker(root) == params:  # another process finished it meanwhile
            shutil.rmtree(tmp)
            return root
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        if root.exists():
            root.rename(old)
        tmp.rename(root)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def write_imagenet(root: str | os.PathLike[str], n_per_class: int = 32, size: int | Sequence[int] = 128,
                   seed: int = 0, n_val_per_class: int = 40, force: bool = False,
                   class_appearance: bool = False, n_test_per_class: int = 0,
                   labelled_subsets: Sequence[int] = ()) -> Path:
    """Write ``root/{train,val}/<class>/<i>.JPEG`` (``n_per_class`` / ``n_val_per_class`` per class), and
    ``root/test/`` with ``n_test_per_class`` per class when that is positive.

    ``labelled_subsets``: for each k, ``root/meta/train_<k>.txt`` lists the first k train images of each class
    with their labels (mmpretrain's ``ann_file`` format, paths relative to ``train/``; labels numbered as
    mmpretrain numbers class folders, by sorted name): a label-scarce training set whose other images stay
    unlabelled (pretraining reads all of ``train/``).

    Each image shows one large object of its class over a few small objects of other classes; hues and patterns
    do not depend on the class, unless ``class_appearance`` (each class in its own colours and pattern, an easy
    task for quick mechanical checks). ``size``: square side, or a ``[low, high]`` short-side range (shapes as in
    :func:`_image_shape`). Returns ``root``.
    """
    params = {"dataset": "imagenet", "n_per_class": n_per_class, "n_val_per_class": n_val_per_class,
              "size": _jsonable(size), "seed": seed, "class_appearance": class_appearance}
    # only when used, so the demo's marker (and thus its folder) stays as it was
    if n_test_per_class:
        params["n_test_per_class"] = n_test_per_class
    if labelled_subsets:
        params["labelled_subsets"] = [int(k) for k in labelled_subsets]
        params["subset_labels"] = "folder order"  # the lists' labels before this were in CLASSES order
    if any(k > n_per_class for k in labelled_subsets):
        raise ValueError(f"labelled_subsets {list(labelled_subsets)}: more than the {n_per_class} train images "
                         "per class")

    def build(out: Path) -> None:
        splits = [("train", n_per_class), ("val", n_val_per_class)] + ([("test", n_test_per_class)]
                                                                       if n_test_per_class else [])
        # labels as mmpretrain's folder datasets number the class folders (sorted names), so that a list's
        # labels are the ones val/ and test/ get
        folder_label = {name: label for label, name in enumerate(sorted(CLASSES))}
        for k in labelled_subsets:
            (out / "meta").mkdir(exist_ok=True)
            (out / "meta" / f"train_{k}.txt").write_text("".join(
                f"{name}/{i:05d}.JPEG {folder_label[name]}\n" for name in CLASSES for i in range(k)))
        for split_id, (split, n) in enumerate(splits):
            for cid, name in enumerate(CLASSES):
                folder = out / split / name
                folder.mkdir(parents=True)
                rng = _rng(seed, 0, split_id, cid)
                for i in range(n):
                    shape = _image_shape(rng, size, "imagenet")
                    _save_jpeg(_imagenet_scene(rng, shape, cid, class_appearance), folder / f"{i:05d}.JPEG")

    return _materialise(root, params, force, build)


def write_ade20k(root: str | os.PathLike[str], n_train: int = 160, n_val: int = 32,
                 size: int | Sequence[int] = 128, seed: int = 0, max_objects: int = 5, force: bool = False) -> Path:
    """Write mmseg's ADE20K layout: ``images/{training,validation}/ADE_{train,val}_%08d.jpg`` and the
    single-channel label PNGs under ``annotations/`` with the same basenames.

    Labels: 1 background, ``c + 2`` for class ``c`` (every painted pixel, also of tiny fragments). ``size``: square
    side, or a ``[low, high]`` short-side range (shapes as in :func:`_image_shape`). Returns ``root``.
    """
    params = {"dataset": "ade20k", "n_train": n_train, "n_val": n_val, "size": _jsonable(size), "seed": seed,
              "max_objects": max_objects}

    def build(out: Path) -> None:
        for split_id, (split, tag, n) in enumerate((("training", "train", n_train),
                                                   ("validation", "val", n_val))):
            (out / "images" / split).mkdir(parents=True)
            (out / "annotations" / split).mkdir(parents=True)
            rng = _rng(seed, 1, split_id)
            for i in range(1, n + 1):
                shape = _image_shape(rng, size, "ade20k")
                img, objs = _compose(rng, shape, _random_specs(rng, shape, max_objects))
                label = np.full(shape, ADE_BACKGROUND, np.uint8)
                for o in objs:
                    label[o["mask"]] = ade_label(o["class_id"])
                stem = f"ADE_{tag}_{i:08d}"
                _save_jpeg(img, out / "images" / split / f"{stem}.jpg")
                _save_png(label, out / "annotations" / split / f"{stem}.png")

    return _materialise(root, params, force, build)


def write_coco(root: str | os.PathLike[str], n_train: int = 160, n_val: int = 32, size: int | Sequence[int] = 128,
               seed: int = 0, max_objects: int = 5, force: bool = False) -> Path:
    """Write COCO 2017's layout: ``{train,val}2017/%012d.jpg`` and
    ``annotations/instances_{train,val}2017.json`` (visible-region polygons, see :func:`mask_to_polygons`).

    Image ids: ``1..n_train`` for train, ``1_000_001..`` for val. ``size``: square side, or a ``[low, high]``
    short-side range (shapes as in :func:`_image_shape`). Returns ``root``.
    """
    params = {"dataset": "coco", "n_train": n_train, "n_val": n_val, "size": _jsonable(size), "seed": seed,
              "max_objects": max_objects}

    def build(out: Path) -> None:
        (out / "annotations").mkdir(parents=True)
        for split_id, (split, n, first_id) in enumerate((("train2017", n_train, 1),
                                                        ("val2017", n_val, 1_000_001))):
            (out / split).mkdir()
            rng = _rng(seed, 2, split_id)
            images, annotations = [], []
            for i in range(n):
                image_id = first_id + i
                img, instances = render_scene(rng, _image_shape(rng, size, "coco"), max_objects)
                file_name = f"{image_id:012d}.jpg"
                _save_jpeg(img, out / split / file_name)
                images.append({"id": image_id, "file_name": file_name, "height": img.shape[0],
                               "width": img.shape[1]})
                for inst in instances:
                    polys = mask_to_polygons(inst["mask"])
                    if not polys:
                        continue
                    annotations.append({
                        "id": first_id + len(annotations),
                        "image_id": image_id,
                        "category_id": coco_category_id(inst["class_id"]),
                        "segmentation": polys,
                        "area": float(inst["mask"].sum()),
                        "bbox": _bbox(inst["mask"]),
                        "iscrowd": 0,
                    })
            doc = {
                "info": {"description": "adpe synthetic shapes (COCO format)", "version": "1.0",
                         "year": 2017, "seed": seed},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": coco_categories(),
            }
            with open(out / "annotations" / f"instances_{split}.json", "w") as f:
                json.dump(doc, f, separators=(",", ":"))

    return _materialise(root, params, force, build)


def write_all(root: str | os.PathLike[str], seed: int = 0, scale: str = "demo",
              force: bool = False) -> dict[str, Path]:
    """Write ``root/imagenet``, ``root/ade20k`` and ``root/coco`` at the sizes of ``SCALES[scale]``.

    Returns ``{'imagenet': path, 'ade20k': path, 'coco': path}``, less the datasets the scale leaves out.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    cfg = SCALES[scale]
    root = Path(root)
    writers = {"imagenet": write_imagenet, "ade20k": write_ade20k, "coco": write_coco}
    # a scale may leave datasets out (the study's has ImageNet only)
    return {name: writers[name](root / name, seed=seed, force=force, **cfg[name]) for name in writers if name in cfg}

