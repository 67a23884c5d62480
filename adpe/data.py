"""Unlabelled image data for MAE+ / AdPE pretraining.

* :func:`find_images` lists the images of an ImageNet-style or flat folder (labels are ignored).
* :class:`ImageFolderDataset` loads them with PIL, replacing unreadable or truncated files by other images.
* :class:`MultiCropTransform` is the MAE+ recipe: several independent random-resized crops per image
  (AdPE uses 4 crops of 112x112, scale 0.08-1, bicubic, horizontal flip).
* :func:`multicrop_collate` stacks the per-image crop lists into one ``(B * num_crops, 3, H, W)`` tensor.
* The same recipe with the decoding moved to the training device (``decode='device'``): the dataset returns
  the file's bytes and a crop seed (:class:`EncodedImage`), and :func:`decode_multicrop` decodes a batch with
  ``torchvision.io`` (nvJPEG on a GPU), then crops, resizes (bicubic, antialiased), flips and normalises it
  there. Its crop parameters come from :meth:`MultiCropTransform.sample_params`, the CPU path's own sampler.
* 16-bit images (e.g. 16-bit grey PNGs) are scaled to 8 bits on both paths (:func:`scale_to_uint8`), not
  saturated.

Skipped files are logged on the ``adpe.data`` logger (stdlib ``logging``); ``adpe.mm`` forwards it to the run's
log file.

Pure torch / torchvision / PIL: no OpenMMLab imports here.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import io as tv_io
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "EncodedImage",
    "ImageFolderDataset",
    "MultiCropTransform",
    "decode_multicrop",
    "find_images",
    "multicrop_collate",
    "scale_to_uint8",
    "to_rgb",
]

logger = logging.getLogger(__name__)

#: Accepted file extensions (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_EXPECTED_LAYOUT = (
    "expected an ImageNet-style folder (<root>/train/<class>/*.JPEG, or <root>/<class>/*.JPEG) "
    "or a flat folder of images with one of the extensions " + ", ".join(IMAGE_EXTENSIONS)
    + " (case-insensitive)"
)

# Errors PIL raises for unreadable, corrupt or truncated files (UnidentifiedImageError is an OSError), and for
# images above PIL's pixel limit (DecompressionBombError, a plain Exception: 2 x Image.MAX_IMAGE_PIXELS, about
# 179 megapixels). Those are skipped like unreadable files rather than decoded: photo datasets hold no such
# images, decoding one takes over 0.5 GB (RGB) in a loader worker for a 112-pixel crop, and the limit guards
# against crafted files (a 24 KB PNG can claim 196 megapixels). PIL's draft mode would decode JPEGs at 1/8 scale
# cheaply, but not PNGs, and Image.open raises before it could be set; a researcher who wants such a file
# downscales it once (the log line says so).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

# PIL modes of 16-bit single-channel images: 'I;16*' for 16-bit PNG and TIFF, 'I' (32-bit) for 16-bit PNGs in
# older Pillow and after Image.convert('I'). convert('RGB') clips them at 255 (a white image); they are scaled
# instead. 16-bit RGB(A) PNGs PIL itself opens as 8-bit 'RGB' / 'RGBA' (their high bytes).
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# Stride between replacement candidates: a prime, so it visits every index when it is coprime with len.
_REPLACEMENT_STRIDE = 7919


def scale_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """16-bit values (any integer dtype, any shape) to uint8 of the same shape: ``round(v * 255 / 65535)``, so
    0 -> 0 and 65535 -> 255; values outside 0..65535 (32-bit 'I' images) are clipped first."""
    wide = image.to(torch.int32).clamp_(0, 65535)  # uint16 itself supports few ops (no multiply, no promotion)
    return torch.div(wide * 255 + 32767, 65535, rounding_mode="floor").to(torch.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB: 16-bit grey scaled by :func:`scale_to_uint8`, every other mode by PIL."""
    if img.mode in _WIDE_GREY_MODES:
        grey = torch.from_numpy(np.asarray(img).astype(np.int32))  # astype: also native byte order ('I;16B')
        return Image.fromarray(scale_to_uint8(grey).numpy()).convert("RGB")
    return img.convert("RGB")


def _skip_reason(exc: BaseException) -> str:
    """Why a file is skipped, with what to do where there is something to do."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        reason += f" Downscale it below {2 * Image.MAX_IMAGE_PIXELS} pixels to train on it"
    return reason


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Return the sorted paths of all images under ``root`` (recursively).

    If ``root/train`` is a directory it is searched instead of ``root`` (ImageNet layout); otherwise
    ``root`` may hold class sub-folders or be a flat folder of images. Hidden files and folders (names
    starting with ``.``) below the search root are skipped. Symlinked folders are followed.

    Raises:
        FileNotFoundError: if ``root`` does not exist or holds no image file.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Image folder '{root}' does not exist; {_EXPECTED_LAYOUT}.")
    search = root / "train" if (root / "train").is_dir() else root
    if not search.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' is not a directory; {_EXPECTED_LAYOUT}.")

    images: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(search, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(Path(dirpath) / name)
    if not images:
        where = f"'{root}'" if search == root else f"'{search}' (the train split of '{root}')"
        raise FileNotFoundError(f"No images found under {where}; {_EXPECTED_LAYOUT}.")
    images.sort(key=lambda p: p.as_posix())
    return images


class ImageFolderDataset(Dataset):
    """Unlabelled images found by :func:`find_images`, loaded as RGB PIL images.

    ``dataset[i]`` returns ``transform(image)`` (for :class:`MultiCropTransform`: a list of ``num_crops``
    tensors of shape ``(3, size, size)``), or the RGB ``PIL.Image`` itself when ``transform`` is None. With
    ``encoded=True`` it reads the file's bytes instead, for decoding on the training device: an
    :class:`EncodedImage` (the transform is then applied there, by :func:`decode_multicrop`). Empty files, files
    PIL cannot identify and images above PIL's pixel limit are replaced like unreadable ones (PIL reads their
    header only); a corrupt image body is only found when decoded, and replaced there.

    An unreadable or truncated file is logged once (per path and per worker process) on the
    ``adpe.data`` logger and replaced by another image, chosen deterministically from the index
    (``(i + k * 7919) % len`` for ``k = 1, 2, ...``); after ``max_retries`` failed replacements a
    :class:`RuntimeError` naming the failed paths is raised.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        max_retries: int = 10,
        encoded: bool = False,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.root = Path(root)
        self.paths: list[Path] = find_images(root)
        self.transform = transform
        self.max_retries = max_retries
        self.encoded = encoded
        self.bad_paths: set[Path] = set()
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            logger.warning(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set (by another library or script): truncated "
                "images will load padded instead of being detected and replaced."
            )

    def __len__(self) -> int:
        return len(self.paths)

    @staticmethod
    def load_image(path: Path) -> Image.Image:
        """Open ``path`` and fully decode it as 8-bit RGB (:func:`to_rgb`); truncated or corrupt files, and images
        above PIL's pixel limit, raise."""
        with Image.open(path) as img:  # raises DecompressionBombError from the header, before decoding
            img.load()  # decode now, so truncation raises here (LOAD_TRUNCATED_IMAGES is left unset)
            return to_rgb(img)

    @staticmethod
    def load_encoded(path: Path) -> EncodedImage:
        """Read ``path``'s bytes, with a crop seed from this loader worker's seeded RNG. Empty files, files PIL
        cannot identify and images above PIL's pixel limit raise, as on the CPU path (PIL reads the header only:
        torchvision's decoders have no pixel limit)."""
        data = path.read_bytes()
        if not data:
            raise OSError("empty file")
        Image.open(io.BytesIO(data)).close()
        return EncodedImage(data, int(torch.randint(0, 2**62, (1,))), str(path))

    def _candidates(self, index: int) -> list[int]:
        n = len(self.paths)
        stride = _REPLACEMENT_STRIDE if math.gcd(_REPLACEMENT_STRIDE, n) == 1 else 1
        return [(index + k * stride) % n for k in range(self.max_retries + 1)]

    def __getitem__(self, index: int) -> Any:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index %= n
        failed: list[Path] = []
        for idx in self._candidates(index):
            path = self.paths[idx]
            if path in self.bad_paths:
                if path not in failed:
                    failed.append(path)
                continue
            try:
                img = self.load_encoded(path) if self.encoded else self.load_image(path)
            except _LOAD_ERRORS as exc:
                self.bad_paths.add(path)
                failed.append(path)
                logger.warning("Skipping unreadable image %s (%s); using another image instead.", path,
                               _skip_reason(exc))
                continue
            return img if self.transform is None or self.encoded else self.transform(img)
        raise RuntimeError(
            f"Could not load image {index} ('{self.paths[index]}') nor any of its {self.max_retries} "
            f"replacement candidates; unreadable files: {', '.join(str(p) for p in failed)}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', num_images={len(self)}, "
            f"max_retries={self.max_retries}, encoded={self.encoded}, transform={self.transform!r})"
        )


class MultiCropTransform:
    """MAE+ multi-crop augmentation: ``num_crops`` independent views of one image.

    Each view is ``RandomResizedCrop(size, scale, bicubic)`` -> ``RandomHorizontalFlip`` -> ``ToTensor``
    -> ``Normalize(mean, std)``. Calling it on a PIL image returns a list of ``num_crops`` float tensors
    of shape ``(3, size, size)``.
    """

    def __init__(
        self,
        num_crops: int = 4,
        size: int = 112,
        scale: tuple[float, float] = (0.08, 1.0),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.num_crops = num_crops
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # One pipeline sampled afresh on every call, so the crops are independent draws.
        self.crop = T.Compose(
            [
                T.RandomResizedCrop(size, scale=self.scale, interpolation=InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        """Return ``num_crops`` tensors of shape ``(3, size, size)``."""
        return [self.crop(img) for _ in range(self.num_crops)]

    def sample_params(self, height: int, width: int, seed: int) -> list[tuple[int, int, int, int, bool]]:
        """``num_crops`` (top, left, crop height, crop width, flip) for an image of that size, drawn from ``seed``
        exactly as the CPU path's RandomResizedCrop and RandomHorizontalFlip draw them (the global RNG is left
        untouched)."""
        resized_crop, flip = self.crop.transforms[0], self.crop.transforms[1]
        placeholder = torch.empty(0, height, width)  # get_params reads the size only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return [(*resized_crop.get_params(placeholder, list(self.scale), list(resized_crop.ratio)),
                     bool(torch.rand(1) < flip.p)) for _ in range(self.num_crops)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_crops={self.num_crops}, size={self.size}, scale={self.scale}, "
            f"interpolation=bicubic, hflip=0.5, mean={self.mean}, std={self.std})"
        )


@dataclass(frozen=True)
class EncodedImage:
    """One image as stored on disk, for decoding on the training device: ``data`` its bytes, ``seed`` what its
    crops are drawn from (from the loader worker's seeded RNG, as the CPU path's are), and ``path`` for messages.

    Plain ``bytes``, not a tensor: loader workers pickle them by value, where a tensor would travel as a shared-
    memory file descriptor per image (and fail once the worker has let go of it).
    """

    data: bytes
    seed: int
    path: str


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_images(batch: Sequence[EncodedImage], device: torch.device | str) -> list[torch.Tensor]:
    """Decode to RGB uint8 (3, H, W) on ``device``: JPEGs in one batched call there (nvJPEG on CUDA), other formats
    on the CPU (16-bit PNGs, which torchvision decodes to uint16, scaled to 8 bits there by
    :func:`scale_to_uint8`, as the CPU path does). A file that does not decode is logged and replaced by the batch's
    first good image."""
    device = torch.device(device)
    rgb = tv_io.ImageReadMode.RGB
    decoded: list[torch.Tensor | None] = [None] * len(batch)
    jpegs = [i for i, item in enumerate(batch) if _is_jpeg(item.data)]
    try:
        images = tv_io.decode_jpeg([_as_tensor(batch[i].data) for i in jpegs], mode=rgb, device=device) if jpegs else []
        for i, image in zip(jpegs, images, strict=True):
            decoded[i] = image
    except RuntimeError:  # one bad file fails the batched call: decode them one by one below
        pass
    for i, item in enumerate(batch):
        if decoded[i] is not None:
            continue
        try:
            image = tv_io.decode_image(_as_tensor(item.data), mode=rgb)
            decoded[i] = (scale_to_uint8(image) if image.dtype == torch.uint16 else image).to(device)
        except RuntimeError as exc:
            logger.warning("Skipping undecodable image %s (%s); using another image of the batch instead.",
                           item.path, exc)
    good = [image for image in decoded if image is not None]
    if not good:
        raise RuntimeError(f"none of the {len(batch)} images of the batch decodes, e.g. {batch[0].path}")
    return [image if image is not None else good[0] for image in decoded]


def decode_multicrop(
    batch: Sequence[EncodedImage], transform: MultiCropTransform, device: torch.device | str
) -> torch.Tensor:
    """The multi-crop recipe of ``transform`` on ``device``: (B * num_crops, 3, size, size) float, normalised,
    image-major like :func:`multicrop_collate`. Crops are resized bicubically with antialiasing from uint8."""
    crops, flips = [], []
    for item, image in zip(batch, decode_images(batch, device), strict=True):
        for top, left, height, width, flip in transform.sample_params(*image.shape[-2:], item.seed):
            crops.append(TF.resized_crop(image, top, left, height, width, [transform.size, transform.size],
                                         interpolation=InterpolationMode.BICUBIC, antialias=True))
            flips.append(flip)
    stacked = torch.stack(crops)
    flip_mask = torch.tensor(flips, device=stacked.device)[:, None, None, None]
    stacked = torch.where(flip_mask, stacked.flip(-1), stacked).float().div_(255)
    mean = torch.tensor(transform.mean, device=stacked.device)[:, None, None]
    std = torch.tensor(transform.std, device=stacked.device)[:, None, None]
    return stacked.sub_(mean).div_(std)


def multicrop_collate(batch: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Stack a batch of per-image crop lists into one ``(B * num_crops, C, H, W)`` tensor.

    Order is image-major: rows ``[i * num_crops, (i + 1) * num_crops)`` are the crops of image ``i``.
    Every image must have the same number of crops and every crop the same shape.
    """
    if len(batch) == 0:
        raise ValueError("multicrop_collate got an empty batch")
    crops: list[torch.Tensor] = []
    num_crops: int | None = None
    shape: torch.Size | None = None
    for i, item in enumerate(batch):
        if isinstance(item, torch.Tensor) or not isinstance(item, Sequence):
            raise TypeError(
                f"multicrop_collate expects each batch item to be a list of crop tensors "
                f"(e.g. from MultiCropTransform), got {type(item).__name__} for item {i}"
            )
        if num_crops is None:
            num_crops = len(item)
        elif len(item) != num_crops:
            raise ValueError(
                f"All images must have the same number of crops: item 0 has {num_crops}, "
                f"item {i} has {len(item)}"
            )
        for j, crop in enumerate(item):
            if not isinstance(crop, torch.Tensor):
                raise TypeError(f"Crop {j} of item {i} is a {type(crop).__name__}, expected a torch.Tensor")
            if shape is None:
                shape = crop.shape
            elif crop.shape != shape:
                raise ValueError(
                    f"All crops must share one shape: crop 0 of item 0 has shape {tuple(shape)}, "
                    f"crop {j} of item {i} has shape {tuple(crop.shape)}"
                )
            crops.append(crop)
    if not crops:
        raise ValueError("multicrop_collate got images with no crops")
    return torch.stack(crops, dim=0)
