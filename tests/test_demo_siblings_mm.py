"""Each tiny demo config builds its ViT-B sibling's model, except for the fields that make it tiny (documented in
the tiny config's header): the model size, the image size and what follows from them (head widths, windows,
CPU-sized detector heads). A change to a ViT-B recipe's model that the demo does not follow fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmdet")
pytest.importorskip("mmpretrain")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIBLING = re.compile(r"^# Tiny sibling of (pretrain/\S+\.py)", re.M)
BASE = re.compile(r"^_base_ = \['(\./\S+\.py)'\]", re.M)

# Fields of the model dict (dotted prefixes) that a tiny config may change, by the config's folder.
DOCUMENTED = {
    "pretrain/demo": ("size", "img_size"),
    "benchmarks/ade20k": ("backbone.size", "backbone.img_size", "backbone.out_indices", "backbone.drop_path_rate",
                          "data_preprocessor.size", "data_preprocessor.test_cfg.size", "test_cfg.crop_size",
                          "test_cfg.stride", "neck.embed_dim", "decode_head.channels", "decode_head.in_channels",
                          "auxiliary_head.channels", "auxiliary_head.in_channels"),
    "benchmarks/coco": ("backbone.size", "backbone.img_size", "backbone.pos_embed_size", "backbone.window_size",
                        "backbone.global_blocks", "backbone.drop_path_rate", "data_preprocessor.pad_size_divisor",
                        "neck.in_channels",
                        "neck.out_channels", "neck.norm_cfg", "rpn_head", "roi_head", "train_cfg", "test_cfg"),
    "benchmarks/imagenet": ("backbone.size", "backbone.img_size", "backbone.drop_path_rate", "backbone.pool",
                            "head.in_channels", "head.num_classes", "neck.input_features"),
}
TINY = sorted([*ROOT.glob("pretrain/demo/*_vit_tiny*.py"), *ROOT.glob("benchmarks/*/*_vit_tiny_demo.py")])


def flat(value, prefix: str = "") -> dict:
    """{'a.b[0].c': leaf} of a nested config value."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}".lstrip(".")).items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def sibling_of(tiny: Path) -> Path:
    """The ViT-B config a tiny one is the sibling of: named in its header (pretraining) or its ``_base_``."""
    found = SIBLING.search(tiny.read_text())
    if found:
        return ROOT / found[1]
    (base,) = BASE.findall(tiny.read_text())
    return (tiny.parent / base).resolve()


@pytest.mark.parametrize("tiny", TINY, ids=lambda p: p.name)
def test_tiny_demo_builds_its_vitb_siblings_model_but_for_documented_fields(tiny):
    vitb = sibling_of(tiny)
    assert vitb.is_file() and "tiny" not in vitb.name, vitb
    allowed = DOCUMENTED[str(tiny.parent.relative_to(ROOT))]
    ours, theirs = flat(Config.fromfile(tiny).model.to_dict()), flat(Config.fromfile(vitb).model.to_dict())
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k, "<absent>") != theirs.get(k, "<absent>"))
    undocumented = [k for k in differing if not k.startswith(allowed)]
    assert not undocumented, f"{tiny.name} differs from {vitb.name} in {undocumented}"
    assert any(k.endswith("size") for k in differing), "a tiny config is smaller than its sibling"
