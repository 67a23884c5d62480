"""Tests for adpe.tooling.demo_data: scene rendering, the three on-disk formats, determinism and idempotence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adpe.tooling import demo_data as dd

# Short sides drawn in [low, high], aspect ratios from dd.ASPECT_RATIOS (the demo's real-shape mode).
SMALL_IMAGENET = dict(n_per_class=2, n_val_per_class=1, size=[40, 56])
SMALL_ADE = dict(n_train=16, n_val=4, size=[48, 80])
SMALL_COCO = dict(n_train=8, n_val=4, size=[48, 80])


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _write_small(root: Path, seed: int) -> None:
    dd.write_imagenet(root / "imagenet", seed=seed, **SMALL_IMAGENET)
    dd.write_ade20k(root / "ade20k", seed=seed, **SMALL_ADE)
    dd.write_coco(root / "coco", seed=seed, **SMALL_COCO)


def _fill(poly: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


# ------------------------------------------------------------------------------------------ render_scene


def test_classes():
    assert len(dd.CLASSES) == 8 and len(set(dd.CLASSES)) == 8
    assert max(dd.ade_label(c) for c in range(len(dd.CLASSES))) <= 150
    assert [c["id"] for c in dd.coco_categories()] == list(range(1, len(dd.CLASSES) + 1))


def test_render_scene_visible_masks():
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(20):
        img, instances = dd.render_scene(rng, 64, 5)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert instances
        union = np.zeros((64, 64), int)
        for inst in instances:
            mask, poly = inst["mask"], inst["polygon"]
            assert mask.shape == (64, 64) and mask.dtype == bool
            assert poly.ndim == 2 and poly.shape[1] == 2 and poly.dtype.kind == "f"
            assert mask.sum() >= 30
            assert not (mask & ~_fill(poly, 64)).any()  # visible part lies inside the shape
            union += mask
            seen.add(inst["class_id"])
        assert union.max() <= 1  # visible parts never overlap
        # the last drawn object is on top: fully visible
        top = instances[-1]
        assert np.array_equal(top["mask"], _fill(top["polygon"], 64))
    assert seen == set(range(len(dd.CLASSES)))


def test_render_scene_deterministic():
    a_img, a_inst = dd.render_scene(np.random.default_rng(5), 64, 4)
    b_img, b_inst = dd.render_scene(np.random.default_rng(5), 64, 4)
    c_img, _ = dd.render_scene(np.random.default_rng(6), 64, 4)
    assert np.array_equal(a_img, b_img) and not np.array_equal(a_img, c_img)
    assert len(a_inst) == len(b_inst)
    for a, b in zip(a_inst, b_inst, strict=True):
        assert a["class_id"] == b["class_id"] and np.array_equal(a["mask"], b["mask"])


# ------------------------------------------------------------------------------------------ writers


def test_same_seed_identical_bytes(tmp_path):
    _write_small(tmp_path / "a", seed=0)
    _write_small(tmp_path / "b", seed=0)
    _write_small(tmp_path / "c", seed=1)
    for name in ("imagenet", "ade20k", "coco"):
        ha = _tree_hash(tmp_path / "a" / name)
        assert ha == _tree_hash(tmp_path / "b" / name), name
        assert ha != _tree_hash(tmp_path / "c" / name), name


def test_write_all_tiny(tmp_path):
    paths = dd.write_all(tmp_path / "demo", scale="tiny")
    assert set(paths) == {"imagenet", "ade20k", "coco"}
    for name, path in paths.items():
        assert path == (tmp_path / "demo" / name).absolute() and (path / dd.MARKER).is_file()
    with pytest.raises(ValueError):
        dd.write_all(tmp_path / "x", scale="huge")


def test_idempotent_and_force(tmp_path):
    root = dd.write_coco(tmp_path / "coco", **SMALL_COCO)
    marker = root / dd.MARKER
    stamp = marker.stat().st_mtime_ns
    (root / "extra.txt").write_text("kept when skipping")
    assert dd.write_coco(tmp_path / "coco", **SMALL_COCO) == root
    assert marker.stat().st_mtime_ns == stamp and (root / "extra.txt").exists()
    dd.write_coco(tmp_path / "coco", force=True, **SMALL_COCO)  # rewritten from scratch
    assert not (root / "extra.txt").exists()
    dd.write_coco(tmp_path / "coco", **{**SMALL_COCO, "n_val": 2})  # other parameters: regenerated
    assert len(list((root / "val2017").iterdir())) == 2
    assert json.loads(marker.read_text())["n_val"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError):
        dd.write_ade20k(tmp_path / "mine", **SMALL_ADE)
    with pytest.raises(FileExistsError):
        dd.write_ade20k(tmp_path / "mine", force=True, **SMALL_ADE)
    assert (tmp_path / "mine" / "precious.txt").exists()
    (tmp_path / "empty").mkdir()
    dd.write_ade20k(tmp_path / "empty", **SMALL_ADE)  # an empty folder is fine
    assert (tmp_path / "empty" / dd.MARKER).exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dd._save_png

    def flaky(label, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(label, path)

    monkeypatch.setattr(dd, "_save_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        dd.write_ade20k(tmp_path / "ade", **SMALL_ADE)
    assert list(tmp_path.iterdir()) == []


def test_imagenet_layout(tmp_path):
    root = dd.write_imagenet(tmp_path / "imagenet", **SMALL_IMAGENET)
    for split, n in (("train", SMALL_IMAGENET["n_per_class"]), ("val", SMALL_IMAGENET["n_val_per_class"])):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(dd.CLASSES)
        for name in dd.CLASSES:
            files = sorted((root / split / name).iterdir())
            assert len(files) == n and all(f.suffix == ".JPEG" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert 40 <= min(im.size) <= 56


def test_ade20k_layout_and_labels(tmp_path):
    root = dd.write_ade20k(tmp_path / "ade", **SMALL_ADE)
    values: set[int] = set()
    splits = (("training", "train", SMALL_ADE["n_train"]), ("validation", "val", SMALL_ADE["n_val"]))
    for split, tag, n in splits:
        imgs = sorted((root / "images" / split).iterdir())
        anns = sorted((root / "annotations" / split).iterdir())
        assert len(imgs) == len(anns) == n
        assert [p.stem for p in imgs] == [p.stem for p in anns]
        assert imgs[0].name == f"ADE_{tag}_00000001.jpg"
        for img_path, ann_path in zip(imgs, anns, strict=True):
            with Image.open(img_path) as im, Image.open(ann_path) as an:
                assert im.format == "JPEG" and an.format == "PNG" and an.mode == "L"
                assert im.size == an.size and 48 <= min(im.size) <= 80
                label = np.asarray(an)
            assert label.max() <= 150
            values |= set(np.unique(label).tolist())
    assert dd.ADE_BACKGROUND in values
    assert {dd.ade_label(c) for c in range(len(dd.CLASSES))} <= values
    assert values <= {dd.ADE_IGNORE, dd.ADE_BACKGROUND} | {dd.ade_label(c) for c in range(len(dd.CLASSES))}


def test_coco_json_structure(tmp_path):
    root = dd.write_coco(tmp_path / "coco", **SMALL_COCO)
    ids: set[int] = set()
    for split, n in (("train2017", SMALL_COCO["n_train"]), ("val2017", SMALL_COCO["n_val"])):
        doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(doc["images"]) == n
        assert doc["categories"] == dd.coco_categories()
        for img in doc["images"]:
            with Image.open(root / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
            assert img["id"] not in ids
            ids.add(img["id"])
        image_ids = {img["id"] for img in doc["images"]}
        assert doc["annotations"]
        for ann in doc["annotations"]:
            assert ann["image_id"] in image_ids and ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= len(dd.CLASSES)
            assert ann["area"] >= 30 and len(ann["bbox"]) == 4
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])


def test_image_shapes_follow_the_datasets_aspect_ratios():
    """Real-shape mode: short sides cover the range, every ratio of the table occurs (ADE20K's 4.1:1 panorama and
    its 300 x 260 shape included) in proportion to its weight; an int size gives squares and draws nothing."""
    for dataset, table in dd.ASPECT_RATIOS.items():
        rng = np.random.default_rng(1)
        shapes = [dd._image_shape(rng, [96, 160], dataset) for _ in range(4000)]
        assert {min(s) for s in shapes} == set(range(96, 161))
        ratios = np.array([w / h for h, w in shapes])
        weights = np.array([wt for _, wt in table]) / sum(wt for _, wt in table)
        for (ratio, _), weight in zip(table, weights, strict=True):
            share = np.mean(np.abs(ratios - ratio) < 0.02)
            assert abs(share - weight) < 0.03, (dataset, ratio, share, weight)
    panorama = [r for r, _ in dd.ASPECT_RATIOS["ade20k"] if r > 4]
    assert panorama and abs(panorama[0] - 2100 / 512) < 1e-9
    rng = np.random.default_rng(0)
    assert dd._image_shape(rng, 64, "coco") == (64, 64)
    assert rng.random() == np.random.default_rng(0).random()


def test_render_scene_any_shape():
    """Wide and tall scenes: masks of the image's shape, objects sized by the short side, more of them on a
    panorama than a square holds."""
    for shape in ((52, 213), (140, 96)):
        counts = []
        for seed in range(10):
            img, instances = dd.render_scene(np.random.default_rng(seed), shape, 5)
            assert img.shape == (*shape, 3)
            assert all(inst["mask"].shape == shape for inst in instances)
            counts.append(len(instances))
        if shape[1] > 3 * shape[0]:
            assert max(counts) > 5


# ------------------------------------------------------------------------------------------ pycocotools / mm


def _decode(polys: list[list[float]], h: int, w: int) -> np.ndarray:
    mask_util = pytest.importorskip("pycocotools.mask")
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w))).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# pycocotools' decode trips numpy 2's copy-keyword DeprecationWarning; not ours to fix.
_PYCOCO_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"


@pytest.mark.mm
@pytest.mark.filterwarnings(_PYCOCO_WARNING)
def test_mask_to_polygons_roundtrip_pycocotools():
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(1)
    ious = []
    for _ in range(15):
        _, instances = dd.render_scene(rng, 96, 6)
        for inst in instances:
            decoded = _decode(dd.mask_to_polygons(inst["mask"]), 96, 96)
            ious.append(_iou(decoded, inst["mask"]))
    assert min(ious) == 1.0  # the polygons trace the pixel boundaries: the round trip is exact
    # an occluder inside an object leaves a hole (and a second one touching nothing else)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    mask[15:25, 15:25] = False
    mask[8:10, 8:11] = False
    mask[37:39, 2:20] = True  # a second component
    polys = dd.mask_to_polygons(mask)
    assert len(polys) == 2
    assert np.array_equal(_decode(polys, 40, 40), mask)
    for seed in range(10):  # noise: many components, holes and diagonal contacts
        noise = np.random.default_rng(seed).random((24, 24)) < 0.6
        assert np.array_equal(_decode(dd.mask_to_polygons(noise), 24, 24), noise)


@pytest.mark.mm
@pytest.mark.filterwarnings(_PYCOCO_WARNING)
def test_coco_loads_with_pycocotools(tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    root = dd.write_coco(tmp_path / "coco", **SMALL_COCO)
    for split_id, split in enumerate(("train2017", "val2017")):
        coco = coco_mod.COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == list(range(1, len(dd.CLASSES) + 1))
        # regenerate the scenes (same seeding as the writer) to compare with the visible masks
        rng = dd._rng(0, 2, split_id)
        for img_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(img_id)[0]
            _, instances = dd.render_scene(rng, dd._image_shape(rng, SMALL_COCO["size"], "coco"), 5)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert len(anns) == len(instances)
            for ann, inst in zip(anns, instances, strict=True):
                assert ann["category_id"] == dd.coco_category_id(inst["class_id"])
                decoded = coco.annToMask(ann).astype(bool)
                assert decoded.shape == (info["height"], info["width"])
                assert np.array_equal(decoded, inst["mask"])
                assert ann["area"] == inst["mask"].sum() == decoded.sum()
                ys, xs = np.nonzero(inst["mask"])
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _import_or_skip(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception as exc:  # mmseg / mmdet raise AssertionError on an mmcv version mismatch
        pytest.skip(f"{name} not importable: {exc}")


@pytest.mark.mm
def test_mmseg_ade20k_dataset_pairs(tmp_path):
    datasets = _import_or_skip("mmseg.datasets")
    root = dd.write_ade20k(tmp_path / "ade", **SMALL_ADE)
    ds = datasets.ADE20KDataset(data_root=str(root), pipeline=[],
                                data_prefix=dict(img_path="images/validation",
                                                 seg_map_path="annotations/validation"))
    assert len(ds) == SMALL_ADE["n_val"]
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        img, seg = Path(info["img_path"]), Path(info["seg_map_path"])
        assert img.is_file() and seg.is_file() and img.stem == seg.stem
        assert seg.parent == root / "annotations" / "validation"
        assert info["reduce_zero_label"]


@pytest.mark.mm
def test_mmdet_coco_dataset_loads(tmp_path):
    datasets = _import_or_skip("mmdet.datasets")
    root = dd.write_coco(tmp_path / "coco", **SMALL_COCO)
    ds = datasets.CocoDataset(data_root=str(root), ann_file="annotations/instances_val2017.json",
                              data_prefix=dict(img="val2017/"), metainfo=dict(classes=dd.CLASSES),
                              pipeline=[], test_mode=True)
    assert len(ds) == SMALL_COCO["n_val"]
    doc = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    n_instances = sum(len(ds.get_data_info(i)["instances"]) for i in range(len(ds)))
    assert n_instances == len(doc["annotations"])
    info = ds.get_data_info(0)
    assert Path(info["img_path"]).is_file()
    assert {inst["bbox_label"] for i in range(len(ds)) for inst in ds.get_data_info(i)["instances"]} <= set(
        range(len(dd.CLASSES)))


def _colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """A 12-bin hue histogram (normalised) of an image's saturated pixels: the objects' colours (backgrounds are
    muted)."""
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).convert("HSV")).reshape(-1, 3)
    hue = hsv[hsv[:, 1] > 140, 0].astype(int) * 12 // 256
    hist = np.bincount(hue, minlength=12).astype(float)
    return hist / max(hist.sum(), 1.0)


def _split_histograms(folder) -> tuple[np.ndarray, np.ndarray]:
    """Colour histograms and class indices of the images of an ImageNet-layout split."""
    features, labels = [], []
    for cid, name in enumerate(dd.CLASSES):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as im:
                features.append(_colour_histogram(np.asarray(im.convert("RGB"))))
            labels.append(cid)
    return np.stack(features), np.array(labels)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(len(dd.CLASSES))])
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((predicted == test_y).mean())


def test_imagenet_classes_are_not_told_apart_by_colour(tmp_path):
    """Only shape separates the ImageNet classes: a nearest-centroid classifier on colour histograms stays near
    chance (1/8) on the val split. The same classifier tells apart objects painted in their class colours (the
    ADE20K / COCO appearance), so the check can fail."""
    root = dd.write_imagenet(tmp_path / "imagenet", n_per_class=24, n_val_per_class=12, size=48)
    train, val = _split_histograms(root / "train"), _split_histograms(root / "val")
    assert _nearest_centroid_accuracy(*train, *val) < 0.3

    rng = np.random.default_rng(0)
    x, y = [], []
    for cid in range(len(dd.CLASSES)):
        for _ in range(24):
            img, _ = dd._compose(rng, (48, 48), [(cid, 24.0, 24.0, 16.0, 0.0)], class_appearance=True)
            x.append(_colour_histogram(img))
            y.append(cid)
    x, y = np.stack(x), np.array(y)
    first = np.arange(len(y)) % 24 < 12
    assert _nearest_centroid_accuracy(x[first], y[first], x[~first], y[~first]) > 0.6
