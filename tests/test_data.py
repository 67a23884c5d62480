"""Tests for adpe.data: image discovery, robust loading, the MAE+ multi-crop transform and its collate."""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpe.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    EncodedImage,
    ImageFolderDataset,
    MultiCropTransform,
    decode_images,
    decode_multicrop,
    find_images,
    multicrop_collate,
    scale_to_uint8,
    to_rgb,
)


def _save(
    path: Path,
    color: tuple[int, int, int] = (200, 30, 90),
    size: tuple[int, int] = (24, 20),
    fmt: str | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _gradient(size: int = 48) -> Image.Image:
    """A non-constant, non-symmetric image: every pixel differs from its mirror and neighbours."""
    x = torch.arange(size).view(1, size).expand(size, size)
    y = torch.arange(size).view(size, 1).expand(size, size)
    arr = torch.stack([x * 5 % 256, y * 5 % 256, (x * 3 + y * 7) % 256], dim=-1).to(torch.uint8)
    return Image.fromarray(arr.numpy())


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _data_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "adpe.data" and r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- find_images


def test_find_images_imagenet_layout_uses_train_and_sorts(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    expected = [
        _save(root / "train" / "n01" / "a.JPEG"),
        _save(root / "train" / "n01" / "b.jpeg", fmt="JPEG"),
        _save(root / "train" / "n02" / "A.PNG", fmt="PNG"),
        _save(root / "train" / "n02" / "c.webp"),
        _save(root / "train" / "n03" / "d.tif"),
    ]
    _save(root / "val" / "n01" / "v.JPEG")  # not part of the train split
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    (root / "train" / "n01" / "labels.json").write_text("{}")

    found = find_images(root)
    assert found == sorted(expected, key=lambda p: p.as_posix())
    assert all(isinstance(p, Path) for p in found)
    assert not any("val" in p.parts for p in found)


def test_find_images_class_folders_without_train(tmp_path: Path) -> None:
    root = tmp_path / "data"
    expected = [
        _save(root / "cls_b" / "x.bmp"),
        _save(root / "cls_a" / "y.jpg"),
        _save(root / "cls_a" / "z.TIFF"),
    ]
    assert find_images(str(root)) == sorted(expected, key=lambda p: p.as_posix())


def test_find_images_flat_folder_sorted_and_deterministic(tmp_path: Path) -> None:
    names = ["img_10.jpg", "img_02.png", "IMG_01.JpG", "img_03.jpeg"]
    for name in reversed(names):
        _save(tmp_path / name)
    (tmp_path / "readme.md").write_text("x")
    found = find_images(tmp_path)
    assert [p.name for p in found] == sorted(names)
    assert found == find_images(tmp_path)


def test_find_images_empty_dir_raises_with_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "file.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as err:
        find_images(empty)
    assert str(empty) in str(err.value)
    assert "ImageNet" in str(err.value)


def test_find_images_missing_path_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(FileNotFoundError) as err:
        find_images(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(missing)


# --------------------------------------------------------------------------- ImageFolderDataset


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    _gradient(64).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_dataset_returns_rgb_pil_without_transform(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", color=(1, 2, 3), fmt="PNG")
    Image.new("L", (10, 12), 77).save(tmp_path / "b.png")  # greyscale: must come back as RGB
    ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert isinstance(a, Image.Image) and a.mode == "RGB" and a.getpixel((0, 0)) == (1, 2, 3)
    assert b.mode == "RGB" and b.size == (10, 12) and b.getpixel((3, 3)) == (77, 77, 77)


def test_dataset_replaces_bad_images_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [_save(tmp_path / f"good_{i}.png", color=(10 * i, 0, 0), fmt="PNG") for i in range(4)]
    truncated = _truncated_jpeg(tmp_path / "bad_truncated.jpg")
    garbage = tmp_path / "bad_garbage.jpg"
    garbage.write_bytes(b"this is definitely not a jpeg" * 10)

    # Sanity: the truncated file really is truncated (opens, but fails to decode).
    with Image.open(truncated) as img, pytest.raises(OSError):
        img.load()

    ds = ImageFolderDataset(tmp_path, transform=MultiCropTransform(num_crops=2, size=8))
    assert ds.paths.index(garbage) == 0 and ds.paths.index(truncated) == 1  # sorted: bad_* first
    good_set = set(good)

    with caplog.at_level(logging.WARNING, logger="adpe.data"):
        for _ in range(3):  # repeated passes must not log again
            for i in range(len(ds)):
                crops = ds[i]
                assert len(crops) == 2
                for c in crops:
                    assert c.shape == (3, 8, 8) and c.dtype == torch.float32 and torch.isfinite(c).all()

    records = _data_logs(caplog)
    logged = [r.getMessage() for r in records]
    assert len(records) == 2, logged
    assert sum(str(truncated) in m for m in logged) == 1
    assert sum(str(garbage) in m for m in logged) == 1
    assert ds.bad_paths == {truncated, garbage}

    # Replacement is deterministic and is a good image.
    plain = ImageFolderDataset(tmp_path)
    first = plain[0]
    assert first.tobytes() == plain[0].tobytes()
    assert any(first.tobytes() == _read_rgb(p).tobytes() for p in good_set)


def test_dataset_all_bad_raises_runtime_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = [tmp_path / "x.jpg", tmp_path / "y.png"]
    for p in bad:
        p.write_bytes(b"\x00garbage\xff" * 8)
    ds = ImageFolderDataset(tmp_path, max_retries=5)
    with caplog.at_level(logging.WARNING, logger="adpe.data"), pytest.raises(RuntimeError) as err:
        _ = ds[0]
    msg = str(err.value)
    assert all(str(p) in msg for p in bad)
    assert len(_data_logs(caplog)) == 2
    with pytest.raises(RuntimeError):  # still raises once every path is known bad, without re-logging
        _ = ds[1]
    assert len(_data_logs(caplog)) == 2


def test_dataset_max_retries_zero_does_not_replace(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    _save(tmp_path / "b.png", fmt="PNG")
    ds = ImageFolderDataset(tmp_path, max_retries=0)
    with pytest.raises(RuntimeError, match="a.jpg"):
        _ = ds[0]
    assert isinstance(ds[1], Image.Image)


# --------------------------------------------------------------------------- MultiCropTransform


def test_multicrop_shapes_and_normalisation_of_constant_image() -> None:
    color = (200, 30, 90)
    t = MultiCropTransform(num_crops=4, size=16)
    crops = t(Image.new("RGB", (40, 30), color))
    assert isinstance(crops, list) and len(crops) == 4
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    expected = (torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
    for c in crops:
        assert c.shape == (3, 16, 16) and c.dtype == torch.float32
        torch.testing.assert_close(c, expected.expand(3, 16, 16), atol=1.5 / 255 / 0.224, rtol=0)


def test_multicrop_default_is_mae_plus_recipe() -> None:
    t = MultiCropTransform()
    assert (t.num_crops, t.size, t.scale) == (4, 112, (0.08, 1.0))
    crops = t(_gradient(64))
    assert len(crops) == 4 and all(c.shape == (3, 112, 112) for c in crops)
    assert "num_crops=4" in repr(t) and "size=112" in repr(t) and "bicubic" in repr(t)
    assert tuple(IMAGENET_DEFAULT_MEAN) == pytest.approx((0.485, 0.456, 0.406))
    assert tuple(IMAGENET_DEFAULT_STD) == pytest.approx((0.229, 0.224, 0.225))


def test_multicrop_crops_are_independent_and_seeded() -> None:
    img = _gradient(64)
    t = MultiCropTransform(num_crops=4, size=16)
    torch.manual_seed(0)
    crops = t(img)
    for i in range(len(crops)):
        for j in range(i + 1, len(crops)):
            assert not torch.equal(crops[i], crops[j]), (i, j)
    torch.manual_seed(0)
    again = t(img)
    assert all(torch.equal(a, b) for a, b in zip(crops, again, strict=True))


# --------------------------------------------------------------------------- multicrop_collate


def test_multicrop_collate_is_image_major() -> None:
    g = torch.Generator().manual_seed(0)
    batch = [[torch.randn(3, 5, 5, generator=g) for _ in range(3)] for _ in range(2)]
    out = multicrop_collate(batch)
    assert out.shape == (6, 3, 5, 5)
    expected = torch.cat([c.unsqueeze(0) for item in batch for c in item], dim=0)
    assert torch.equal(out, expected)
    assert torch.equal(out[3], batch[1][0])  # image 1's first crop follows image 0's three crops


def test_multicrop_collate_with_dataloader(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", color=(i, 2 * i, 3 * i), fmt="PNG")
    ds = ImageFolderDataset(tmp_path, transform=MultiCropTransform(num_crops=2, size=8))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=multicrop_collate)
    (out,) = list(loader)
    assert out.shape == (6, 3, 8, 8)


def test_multicrop_collate_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        multicrop_collate([[torch.zeros(3, 4, 4)] * 2, [torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)]])
    with pytest.raises(ValueError, match="number of crops"):
        multicrop_collate([[torch.zeros(3, 4, 4)] * 2, [torch.zeros(3, 4, 4)] * 3])
    with pytest.raises(ValueError, match="empty"):
        multicrop_collate([])
    with pytest.raises(TypeError):
        multicrop_collate([torch.zeros(2, 3, 4, 4)])


# --------------------------------------------------------------------------- decoding on the training device


def _smooth(width: int = 200, height: int = 150) -> Image.Image:
    """Smooth content, where PIL's and torchvision's bicubic resampling agree to rounding."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    arr = torch.stack([(torch.sin(x / 17) + 1) * 120, (torch.cos(y / 11) + 1) * 120, (x + y) % 64 + 96], dim=-1)
    return Image.fromarray(arr.to(torch.uint8).numpy())


@pytest.mark.parametrize("fmt, tolerance", [("png", 0.02), ("jpg", 0.03)])  # 1 grey level = 0.0174
def test_device_decode_gives_the_cpu_paths_crops(tmp_path: Path, fmt: str, tolerance: float) -> None:
    """Same file, same crop parameters: the device path's crops equal the PIL path's to a grey level or so (the
    JPEG decoders round differently); they are image-major like multicrop_collate."""
    import torchvision.transforms.functional as F

    _smooth().save(tmp_path / f"a.{fmt}")
    _smooth(160, 220).save(tmp_path / f"b.{fmt}")
    transform = MultiCropTransform(num_crops=3, size=32)
    dataset = ImageFolderDataset(tmp_path, encoded=True)
    batch = [dataset[0], dataset[1]]
    out = decode_multicrop(batch, transform, "cpu")
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    for k, item in enumerate(batch):
        image = _read_rgb(Path(item.path))
        for c, (top, left, h, w, flip) in enumerate(transform.sample_params(image.height, image.width, item.seed)):
            ref = F.resized_crop(image, top, left, h, w, [32, 32], F.InterpolationMode.BICUBIC)
            ref = F.normalize(F.to_tensor(F.hflip(ref) if flip else ref), transform.mean, transform.std)
            assert (out[3 * k + c] - ref).abs().max() < tolerance


def test_device_crop_parameters_follow_the_cpu_paths_distribution() -> None:
    """Scale, aspect ratio and flip statistics of the seeded sampler against the CPU path's own draws."""
    transform = MultiCropTransform(num_crops=1, size=32)
    height, width = 375, 500
    seeded = [transform.sample_params(height, width, seed)[0] for seed in range(3000)]
    resized_crop = transform.crop.transforms[0]
    torch.manual_seed(0)
    placeholder = torch.empty(0, height, width)
    cpu = [(*resized_crop.get_params(placeholder, [0.08, 1.0], [3 / 4, 4 / 3]), bool(torch.rand(1) < 0.5))
           for _ in range(3000)]

    def stats(draws):
        area = torch.tensor([h * w / (height * width) for _, _, h, w, _ in draws])
        log_ratio = torch.tensor([math.log(w / h) for _, _, h, w, _ in draws])
        return area.mean(), log_ratio.mean(), log_ratio.std(), torch.tensor([f for *_, f in draws]).float().mean()

    # about 4 standard errors of the difference of two means of 3000 draws
    for ours, theirs, tol in zip(stats(seeded), stats(cpu), (0.03, 0.01, 0.01, 0.05), strict=True):
        assert abs(float(ours) - float(theirs)) < tol
    assert transform.sample_params(height, width, 7) == transform.sample_params(height, width, 7), "reproducible"


def test_sampling_crop_parameters_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    MultiCropTransform().sample_params(100, 100, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_device_decode_replaces_an_undecodable_image_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _smooth().save(tmp_path / "good.jpg")
    _truncated_jpeg(tmp_path / "bad.jpg")
    dataset = ImageFolderDataset(tmp_path, encoded=True)
    batch = sorted((dataset[0], dataset[1]), key=lambda item: item.path)  # bad, good
    with caplog.at_level(logging.WARNING, logger="adpe.data"):
        out = decode_multicrop(batch, MultiCropTransform(num_crops=2, size=16), "cpu")
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()
    assert [r for r in _data_logs(caplog) if "bad.jpg" in r.getMessage()]
    garbage = EncodedImage(b"\xff\xd8\x01\x02\x03", 0, "garbage.jpg")
    with pytest.raises(RuntimeError, match="none of the 1 images of the batch decodes, e.g. garbage.jpg"):
        decode_multicrop([garbage], MultiCropTransform(num_crops=1, size=16), "cpu")


def test_encoded_images_cross_loader_worker_processes(tmp_path: Path) -> None:
    """Bytes travel from worker processes by value (tensors would go as shared-memory descriptors and fail)."""
    from torch.utils.data import DataLoader

    for i in range(6):
        _smooth(40 + i, 30).save(tmp_path / f"{i}.jpg")
    loader = DataLoader(ImageFolderDataset(tmp_path, encoded=True), batch_size=3, num_workers=2, collate_fn=list)
    batches = [decode_multicrop(batch, MultiCropTransform(num_crops=2, size=16), "cpu") for batch in loader]
    assert [tuple(b.shape) for b in batches] == [(6, 3, 16, 16)] * 2


# --------------------------------------------------------------------------- images above PIL's pixel limit


@pytest.fixture(scope="module")
def bomb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 14000 x 14000 PNG (24 KB on disk, 196 megapixels: over PIL's decompression-bomb limit) beside a good
    image; sorted, the bomb comes first."""
    folder = tmp_path_factory.mktemp("bomb")
    Image.new("1", (14000, 14000)).save(folder / "a_bomb.png")
    _smooth(40, 30).save(folder / "b_good.png")
    return folder


@pytest.mark.parametrize("encoded", [False, True], ids=["cpu", "device"])
def test_image_over_the_pixel_limit_is_skipped_and_named(bomb_folder: Path, encoded: bool,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """PIL raises DecompressionBombError (not an OSError) at open: the file is logged with what to do and
    replaced, on the CPU path and on the device path (where torchvision would decode it without a limit)."""
    dataset = ImageFolderDataset(bomb_folder, encoded=encoded)
    with caplog.at_level(logging.WARNING, logger="adpe.data"):
        item = dataset[0]
    good = bomb_folder / "b_good.png"
    assert (item.path == str(good)) if encoded else (item.tobytes() == _read_rgb(good).tobytes())
    (record,) = _data_logs(caplog)
    message = record.getMessage()
    assert str(bomb_folder / "a_bomb.png") in message and "DecompressionBombError" in message
    assert "Downscale it below" in message


# --------------------------------------------------------------------------- 16-bit images


def _wide_grey(width: int = 120, height: int = 90) -> np.ndarray:
    """Smooth 16-bit content over the whole range 0..65535, low bits included: (H, W) uint16."""
    y, x = np.mgrid[0:height, 0:width]
    values = (np.sin(x / 13) * np.cos(y / 9) + 1) / 2 * 65535
    return np.clip(np.round(values), 0, 65535).astype(np.uint16)


def _eight_bit(wide: np.ndarray) -> np.ndarray:
    """The 8-bit reference of 16-bit values: round(v * 255 / 65535)."""
    return np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _write_png_rgb16(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit RGB PNG (colour type 2, bit depth 16) of ``rgb`` (H, W, 3) uint16: PIL reads these but does not
    write them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def _sixteen_bit_pngs(folder: Path) -> tuple[Path, Path]:
    """A 16-bit grey PNG written by PIL and its 8-bit reference (grey as RGB), each alone in a folder."""
    wide = _wide_grey()
    (folder / "wide").mkdir()
    (folder / "ref").mkdir()
    Image.fromarray(wide).save(folder / "wide" / "grey16.png")
    Image.fromarray(np.repeat(_eight_bit(wide)[..., None], 3, axis=-1)).save(folder / "ref" / "grey8.png")
    with Image.open(folder / "wide" / "grey16.png") as img:
        assert img.mode in ("I;16", "I")  # PIL reads it back as 16-bit: the case under test
    return folder / "wide" / "grey16.png", folder / "ref" / "grey8.png"


ONE_LEVEL = 1 / 255 / min(IMAGENET_DEFAULT_STD) + 1e-5  # one grey level, normalised


def test_16_bit_grey_png_is_scaled_to_8_bits_on_the_cpu_path(tmp_path: Path) -> None:
    """convert('RGB') clipped 16-bit grey at 255 (a white image); it is scaled 65535 -> 255 instead, so the image
    and its crops match the 8-bit reference within one grey level."""
    wide, ref = _sixteen_bit_pngs(tmp_path)
    image = np.asarray(ImageFolderDataset(wide.parent)[0])
    assert image.shape == (90, 120, 3)
    assert np.abs(image.astype(int) - np.asarray(_read_rgb(ref)).astype(int)).max() <= 1
    transform = MultiCropTransform(num_crops=3, size=32)
    torch.manual_seed(0)
    crops = ImageFolderDataset(wide.parent, transform=transform)[0]
    torch.manual_seed(0)
    reference = ImageFolderDataset(ref.parent, transform=transform)[0]
    for ours, theirs in zip(crops, reference, strict=True):
        assert (ours - theirs).abs().max() <= ONE_LEVEL


def test_16_bit_grey_png_is_scaled_to_8_bits_on_the_device_path(tmp_path: Path) -> None:
    """torchvision decodes 16-bit PNGs to uint16, which failed in the crops ("Promotion for uint16"); they are scaled
    to uint8 as on the CPU path."""
    wide, ref = _sixteen_bit_pngs(tmp_path)
    item = ImageFolderDataset(wide.parent, encoded=True)[0]
    (image,) = decode_images([item], "cpu")
    assert image.dtype == torch.uint8 and image.shape == (3, 90, 120)
    expected = torch.from_numpy(np.array(_read_rgb(ref))).permute(2, 0, 1)
    assert (image.int() - expected.int()).abs().max() <= 1
    transform = MultiCropTransform(num_crops=3, size=32)
    reference = EncodedImage(ref.read_bytes(), item.seed, str(ref))
    crops = decode_multicrop([item, reference], transform, "cpu")
    assert (crops[:3] - crops[3:]).abs().max() <= ONE_LEVEL


def test_16_bit_rgb_png_matches_its_8_bit_reference_on_both_paths(tmp_path: Path) -> None:
    wide = np.stack([_wide_grey(), _wide_grey()[::-1], 65535 - _wide_grey()], axis=-1)
    path = _write_png_rgb16(tmp_path / "rgb16.png", wide)
    expected = _eight_bit(wide).astype(int)
    cpu = np.asarray(ImageFolderDataset(tmp_path)[0]).astype(int)  # PIL opens it as 8-bit RGB (the high bytes)
    assert np.abs(cpu - expected).max() <= 1
    (device,) = decode_images([ImageFolderDataset(tmp_path, encoded=True)[0]], "cpu")
    assert np.abs(device.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1
    assert path.stat().st_size > 0


def test_32_bit_grey_holding_16_bit_values_is_scaled_and_clipped() -> None:
    """Mode 'I' (older Pillow's 16-bit PNG, Image.convert('I')): 16-bit values, clipped outside 0..65535."""
    values = np.array([[0, 257, 32768, 65535, 70000, -5]], dtype=np.int32)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255, 255, 0]
    assert scale_to_uint8(torch.tensor([0, 128, 129, 65535], dtype=torch.uint16)).tolist() == [0, 0, 1, 255]
