"""ADE20K at the validation set's real image shapes: the single-scale test and the release's multi-scale + flip
protocol (tools/test.py --tta) for every relative-position variant, the ms views' sizes against mmseg 0.x's
``Resize(keep_ratio=True, min_size=512)`` rule, and backbones that take inputs of any size."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("mmseg")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import DATASETS, MODELS, TRANSFORMS, init_default_scope  # noqa: E402

import adpe.mm  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
VITB = ROOT / "benchmarks/ade20k/upernet_adpe_vitb.py"
DEMO = ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py"
# (width, height) of real ADE20K validation images: landscape, portrait, 4:3, a panorama wider than the test scale's
# 2048 / 512 = 4, and an image smaller than the 512 crop.
SHAPES = ((683, 512), (512, 683), (512, 384), (2100, 512), (300, 260))
# The same shapes / 4, for the tests that run models: the demo config's crop (128) and test short side (128) are the
# ViT-B recipe's / 4 (its long-side cap, 256, is 2x the short side where the recipe's is 4x). What costs time is
# mmseg's: logits for 150 classes at the image's full size, per slide window and per view.
DEMO_SHAPES = ((171, 128), (128, 171), (128, 96), (525, 128), (75, 65))
RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
VARIANTS = ("bias", "none", "irpe")


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run several times faster on one thread than on two contended ones (shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def release_ms_size(width: int, height: int, ratio: float, scale=(2048, 512), min_size=512) -> tuple[int, int]:
    """(width, height) of the release's ms view at ``ratio``, transcribed from mmseg 0.x:
    ``MultiScaleFlipAug.__init__`` gives the view the scale ``(int(2048 r), int(512 r))``;
    ``Resize._resize_img`` with ``keep_ratio=True, min_size=512`` makes the short side ``max(min(scale), 512)``
    (the long side follows the aspect ratio, with no cap) and calls ``mmcv.imrescale(img, (new_h, new_w))``, whose
    ``rescale_size`` takes ``min(max(scale) / long side, min(scale) / short side)`` and rounds ``int(x + 0.5)``."""
    view = (int(scale[0] * ratio), int(scale[1] * ratio))
    new_short = min_size if min(view) < min_size else min(view)
    h, w = height, width
    new_h, new_w = (new_short * h / w, new_short) if h > w else (new_short, new_short * w / h)
    factor = min(max(new_h, new_w) / max(h, w), min(new_h, new_w) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def write_ade(root: Path, shapes, block: int) -> Path:
    """mmseg's ADE20K layout with one validation image per shape (and one training image, for the runner's
    visualiser); labels in ADE's 0..150 (0 ignored), in blocks of ``block`` pixels."""
    rng = np.random.default_rng(0)
    for split, tag, wanted in (("validation", "val", shapes), ("training", "train", shapes[:1])):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i, (w, h) in enumerate(wanted, 1):
            coarse = rng.integers(0, 151, (h // block + 1, w // block + 1), dtype=np.uint8)
            label = np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "images" / split / f"ADE_{tag}_{i:08d}.jpg", quality=90)
            Image.fromarray(label).save(root / "annotations" / split / f"ADE_{tag}_{i:08d}.png")
    return root


@pytest.fixture(scope="module")
def ade_shapes(tmp_path_factory) -> Path:
    return write_ade(tmp_path_factory.mktemp("ade_shapes"), SHAPES, 32)


@pytest.fixture(scope="module")
def ade_demo_shapes(tmp_path_factory) -> Path:
    return write_ade(tmp_path_factory.mktemp("ade_demo_shapes"), DEMO_SHAPES, 8)


def demo_model(rel_pos: str):
    """The demo config's UperNet with a ``rel_pos`` backbone and random weights, the relative-position tables
    included (they start at zero)."""
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.update(rel_pos=rel_pos, rpe_lookup="discrete", init_cfg=None)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "rel_bias" in name or "rpe_k" in name:
                p.normal_(std=0.5)
    return cfg, model.eval()


def view_size(sample) -> tuple[int, int]:
    h, w = sample.metainfo["img_shape"]
    return w, h


# ---------------------------------------------------------------- the protocol's sizes
@pytest.mark.parametrize("config, base", [(VITB, (2048, 512)), (DEMO, (256, 128))], ids=["vitb", "demo"])
def test_tta_views_have_the_release_sizes(config, base, ade_shapes):
    """Each ms view is resized as mmseg 0.x's Resize(keep_ratio=True, min_size=crop) resized it: ratios 0.5 and
    0.75 at the crop's short side, no cap on the long side; each ratio unflipped, then flipped."""
    cfg = Config.fromfile(config)
    tta = TRANSFORMS.build(cfg.tta_pipeline[1])
    load = TRANSFORMS.build(cfg.tta_pipeline[0])
    for i, (w, h) in enumerate(SHAPES, 1):
        results = load({"img_path": str(ade_shapes / f"images/validation/ADE_val_{i:08d}.jpg"),
                        "seg_map_path": str(ade_shapes / f"annotations/validation/ADE_val_{i:08d}.png"),
                        "reduce_zero_label": True, "seg_fields": []})
        views = tta(results)["data_samples"]
        expected = [release_ms_size(w, h, r, base, base[1]) for r in RATIOS for _ in (0, 1)]
        assert [view_size(v) for v in views] == expected, (w, h)
        assert [v.metainfo["flip"] for v in views] == [False, True] * len(RATIOS)
        assert all(min(view_size(v)) >= base[1] for v in views)  # never below the crop: no padding needed
        assert all(v.metainfo["ori_shape"] == (h, w) for v in views)


def test_tta_resize_matches_the_release_rule_on_many_shapes():
    """The config's per-ratio resize against the transcribed 0.x rule, on a sweep of shapes (rounding included)."""
    transforms = Config.fromfile(VITB).tta_pipeline[1]["transforms"][0]
    assert len(transforms) == len(RATIOS)
    resizes = [TRANSFORMS.build(t) for t in transforms]
    sides = (97, 240, 333, 383, 384, 511, 512, 513, 640, 683, 701, 1024, 1365, 2047, 2100, 2731)
    for w in sides:
        for h in sides:
            for ratio, resize in zip(RATIOS, resizes, strict=True):
                out = resize({"img": np.zeros((h, w), np.uint8)})["img"]
                assert (out.shape[1], out.shape[0]) == release_ms_size(w, h, ratio), (w, h, ratio)


@pytest.mark.parametrize("config", [VITB, DEMO], ids=["vitb", "demo"])
def test_tta_model_pads_test_inputs_to_the_configs_crop(config):
    """mmengine's Runner hands the top-level data_preprocessor to the --tta model, which replaces its module's
    with it: it must be the model's own, padding test inputs to the config's crop."""
    cfg = Config.fromfile(config)
    crop = tuple(cfg.model.test_cfg.crop_size)
    assert {**cfg.data_preprocessor, "_scope_": None} == {**cfg.model.data_preprocessor, "_scope_": None}
    assert tuple(cfg.data_preprocessor.test_cfg["size"]) == tuple(cfg.data_preprocessor.size) == crop


def test_vitb_test_inputs_are_padded_to_whole_crops(ade_shapes):
    """The ViT-B recipe's data preprocessor pads a single-scale image smaller than the crop (the panorama: 2048 x
    499) to 512 at the bottom, and records it for postprocessing; the ms views need no padding."""
    cfg = Config.fromfile(VITB)
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    single = DATASETS.build({**cfg.test_dataloader.dataset, "data_root": str(ade_shapes)})
    multi = DATASETS.build({**cfg.test_dataloader.dataset, "data_root": str(ade_shapes), "pipeline": cfg.tta_pipeline})
    for i, (w, h) in enumerate(SHAPES):
        data = preprocessor(pseudo_collate([single[i]]), training=False)
        sample = data["data_samples"][0]
        rh, rw = sample.metainfo["img_shape"]
        assert data["inputs"].shape[-2:] == (max(rh, 512), max(rw, 512))
        assert tuple(sample.metainfo["img_padding_size"]) == (0, max(512 - rw, 0), 0, max(512 - rh, 0))
        if (w, h) == (2100, 512):
            assert (rw, rh) == (2048, 499)
        views = multi[i]
        for inputs, view in zip(views["inputs"], views["data_samples"], strict=True):
            data = preprocessor({"inputs": [inputs], "data_samples": [view]}, training=False)
            assert tuple(data["data_samples"][0].metainfo["img_padding_size"]) == (0, 0, 0, 0)


# ---------------------------------------------------------------- ratio 1.0 = single scale
@pytest.mark.parametrize("rel_pos", VARIANTS)
def test_ms_view_at_ratio_one_without_flip_is_the_single_scale_test(rel_pos, ade_demo_shapes):
    """Through the real dataset, pipelines, data preprocessor, slide inference and postprocessing: the ms+flip
    protocol's unflipped ratio-1.0 view gives the single-scale logits (both at the image's full size). The
    panorama is the exception the release has too: its single-scale test caps the long side at 2048 (here 256),
    the min_size rule does not."""
    cfg, model = demo_model(rel_pos)
    single = DATASETS.build({**cfg.test_dataloader.dataset, "data_root": str(ade_demo_shapes)})
    multi = DATASETS.build({**cfg.test_dataloader.dataset, "data_root": str(ade_demo_shapes),
                            "pipeline": cfg.tta_pipeline})
    at_one = 2 * RATIOS.index(1.0)
    for i, (w, h) in enumerate(DEMO_SHAPES):
        views = multi[i]
        view = {"inputs": [views["inputs"][at_one]], "data_samples": [views["data_samples"][at_one]]}
        assert view["data_samples"][0].metainfo["flip"] is False
        with torch.no_grad():
            ours = model.test_step(pseudo_collate([single[i]]))[0]
            theirs = model.test_step(view)[0]
        assert ours.seg_logits.data.shape == theirs.seg_logits.data.shape == (150, h, w)
        if w / h > 256 / 128:  # the panorama: 256 x 62 single-scale, 525 x 128 at ratio 1.0 (as the release)
            assert view_size(ours) == (256, 62) and view_size(theirs) == (525, 128)
            continue
        assert view_size(ours) == view_size(theirs)
        torch.testing.assert_close(theirs.seg_logits.data, ours.seg_logits.data, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- tools/test.py, single scale and --tta
def run_test_tool(rel_pos: str, data: Path, tmp_path: Path, tta: bool) -> None:
    """tools/test.py (--tta) on the demo config with a ``rel_pos`` model: mmseg's ADE20K dataset, the config's
    pipeline (tta_pipeline), SegTTAModel with --tta, the IoU metric; every predicted label map (--out) has its
    image's full size."""
    _, model = demo_model(rel_pos)
    checkpoint = tmp_path / "iter_1.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, checkpoint)
    roots = [f"{k}.dataset.data_root={data}" for k in ("train_dataloader", "test_dataloader")]
    out = tmp_path / "preds"
    spec = importlib.util.spec_from_file_location("adpe_tools_test", ROOT / "tools/test.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.main([str(DEMO), str(checkpoint), "--work-dir", str(tmp_path / "work"), "--out", str(out),
                        *(["--tta"] if tta else []), "--cfg-options", *roots, "test_dataloader.num_workers=0",
                        "test_dataloader.persistent_workers=False"])
    assert 0 <= result["metrics"]["mIoU"] <= 100
    name = "test_results_tta.json" if tta else "test_results.json"
    assert json.loads((tmp_path / "work" / name).read_text())["tta"] is tta
    for i, (w, h) in enumerate(DEMO_SHAPES, 1):
        assert np.asarray(Image.open(out / f"ADE_val_{i:08d}.png")).shape == (h, w)


# ~27 s each on the 2-core CPU: 'bias' (the ViT-B default) runs by default, the other two with `make test-all`.
@pytest.mark.parametrize("rel_pos", [pytest.param(v, marks=() if v == "bias" else pytest.mark.slow) for v in VARIANTS])
def test_tools_test_tta_on_ade_shapes(rel_pos, ade_demo_shapes, tmp_path):
    run_test_tool(rel_pos, ade_demo_shapes, tmp_path, tta=True)


def test_tools_test_single_scale_on_ade_shapes(ade_demo_shapes, tmp_path):
    """(The single-scale path of every variant also runs in the ratio-1.0 test above.)"""
    run_test_tool("bias", ade_demo_shapes, tmp_path, tta=False)


# ---------------------------------------------------------------- backbones on any input size
@pytest.mark.parametrize("rel_pos", VARIANTS)
def test_seg_backbone_takes_any_input_size(rel_pos):
    """A seg-mode backbone built for 128^2 takes inputs of any size: zero-padded at the bottom / right to whole
    patches ('bias': to at least its 8 x 8 grid), maps cropped to the patches that cover the input. At whole
    patches within the built grid nothing changes: the same result as padding the input by hand."""
    _, model = demo_model(rel_pos)
    backbone = model.backbone
    torch.manual_seed(1)
    for h, w in ((128, 128), (62, 128), (128, 85), (100, 37), (16, 16)):
        x = torch.randn(1, 3, h, w)
        grid = (math.ceil(h / 16), math.ceil(w / 16))
        with torch.no_grad():
            maps = backbone(x)
            target = (max(grid[0], 8), max(grid[1], 8)) if rel_pos == "bias" else grid
            padded = backbone(F.pad(x, (0, 16 * target[1] - w, 0, 16 * target[0] - h)))
        assert all(m.shape[-2:] == grid for m in maps)
        for ours, reference in zip(maps, padded, strict=True):
            torch.testing.assert_close(ours, reference[..., :grid[0], :grid[1]], rtol=0, atol=0)
    larger = torch.randn(1, 3, 200, 300)  # than the built grid: APE resampled, iRPE looked up per grid
    if rel_pos == "bias":  # no table entries for the longer offsets (slide inference is the protocol)
        with pytest.raises(ValueError, match="built for"):
            backbone(larger)
    else:
        assert backbone(larger)[0].shape[-2:] == (13, 19)
