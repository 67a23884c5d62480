"""The transfer backbone from pretrained checkpoints, with the core alone (no OpenMMLab): the release-parity
fixtures (tests/fixtures/), timm parity and the 'auto' settings a checkpoint implies. The same loads through
mmseg's registry (``AdPEViT``) are tested in test_ade20k_mm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adpe.checkpoint import fit_to_backbone, load_checkpoint_file, resolve_auto, to_backbone_state
from adpe.models.backbone import ViTBackbone, block_outputs

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def build_backbone(init_cfg: dict | None = None, rel_pos: str = "auto", rpe_lookup: str = "auto", **kw) -> ViTBackbone:
    """What ``AdPEViT(init_cfg=dict(type='Pretrained', checkpoint=...))`` builds and loads, with core functions only:
    'auto' settings from the checkpoint, then its weights converted and fitted strictly."""
    kw = {"size": "tiny", "img_size": 112, "mode": "seg", "out_indices": (3,), **kw}
    ckpt = load_checkpoint_file(init_cfg["checkpoint"]) if init_cfg else None
    rel_pos, rpe_lookup = resolve_auto(rel_pos, rpe_lookup, ckpt, kw["mode"])
    backbone = ViTBackbone(rel_pos=rel_pos, rpe_lookup=rpe_lookup, **kw)
    if ckpt is not None:
        state, _ = fit_to_backbone(to_backbone_state(ckpt)[0], backbone)
        backbone.load_state_dict(state, strict=False)  # fit_to_backbone has checked every key
    return backbone.eval()


def test_official_adpe_release_reproduces_released_block_outputs():
    """The fixture's block outputs come from the paper's released fine-tuning ViT (discrete iRPE)."""
    expected = torch.load(FIXTURES / "official_adpe_rpe_expected_112.pt", weights_only=True)
    backbone = build_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(FIXTURES / "official_adpe_rpe_tiny.pth")))
    assert (backbone.rel_pos, backbone.rpe_lookup) == ("irpe", "discrete")
    with torch.no_grad():
        outputs = block_outputs(backbone, expected["x"])
    for ours, theirs in zip(outputs, expected["block_outputs"], strict=True):
        assert (ours - theirs).abs().max() <= 1e-4


def _timm_parity(size: str, embed_dim: int, depth: int, heads: int, tmp_path: Path, timm_block_outputs):
    import timm
    torch.manual_seed(0)
    reference = timm.models.VisionTransformer(img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth,
                                              num_heads=heads, num_classes=0).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(std=0.05)  # non-trivial values everywhere, biases and norms included
    release = {"model": {**reference.state_dict(), "mask_token": torch.zeros(1, 1, 512),
                         "decoder_embed.weight": torch.zeros(512, embed_dim)}}
    path = tmp_path / "mae_release.pth"
    torch.save(release, path)
    backbone = build_backbone(size=size, img_size=224, rel_pos="none", out_indices=(depth - 1,),
                              init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    x = torch.randn(2, 3, 224, 224)
    captured = timm_block_outputs(reference, x)
    with torch.no_grad():
        ours = block_outputs(backbone, x)
    assert len(ours) == depth
    for a, b in zip(ours, captured, strict=True):
        assert (a - b).abs().max() <= 1e-4


def test_official_mae_layout_matches_timm_vit_tiny_width(tmp_path, timm_block_outputs):
    _timm_parity("tiny", 192, 4, 3, tmp_path, timm_block_outputs)


@pytest.mark.slow
def test_official_mae_layout_matches_timm_vit_b(tmp_path, timm_block_outputs):
    _timm_parity("base", 768, 12, 12, tmp_path, timm_block_outputs)


def test_rpe_coordinate_checkpoint_selects_continuous_lookup(tmp_path):
    ours = {"meta": {"cfg": "model = dict(type='AdPEPretrainer', position='rpe', rpe_lookup='continuous')"},
            "state_dict": {}}
    release = load_checkpoint_file(FIXTURES / "official_adpe_rpe_tiny.pth")
    ours["state_dict"] = {f"mae.{k}": v for k, v in release["model"].items()}
    ours["state_dict"]["mae.adversary.encoder.0"] = torch.zeros(2)
    path = tmp_path / "epoch_400.pth"
    torch.save(ours, path)
    backbone = build_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert (backbone.rel_pos, backbone.rpe_lookup) == ("irpe", "continuous")
