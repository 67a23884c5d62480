"""ADE20K transfer: backbone parity and loading, configs, layer decay, training and testing on mmseg."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import adpe.checkpoint  # noqa: E402
import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import CheckpointMismatchError  # noqa: E402
from adpe.models.backbone import block_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ADE_CONFIGS = sorted((ROOT / "benchmarks/ade20k").glob("*.py"))


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def build_backbone(**kw):
    cfg = dict(type="AdPEViT", size="tiny", img_size=112, mode="seg", out_indices=(3,))
    cfg.update(kw)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    return backbone.eval()


def test_release_rpe_coordinate_checkpoint_loads_with_auto_settings(tmp_path, release_rpe_coordinate_checkpoint):
    """The paper's headline variant: per-layer adv_shift (delta) and no_shift tensors are dropped on purpose,
    'auto' picks the iRPE tables and the continuous lookup."""
    path = release_rpe_coordinate_checkpoint(tmp_path / "release_rpe_coord.pth")
    state = adpe.checkpoint.load_checkpoint_file(path)["model"]
    backbone = build_backbone(rel_pos="auto", rpe_lookup="auto", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert (backbone.rel_pos, backbone.rpe_lookup) == ("irpe", "continuous")
    for i in range(4):
        key = f"blocks.{i}.attn.rpe_k.lookup_table_weight"
        assert torch.equal(backbone.state_dict()[key], state[key])
    _, dropped = adpe.checkpoint.to_backbone_state({"model": state})
    assert {k for k in dropped if "shift" in k} == {k for k in state if "shift" in k}


def test_resolved_backbone_settings_reach_the_saved_config():
    """'auto' is resolved by the backbone alone; ResolvedBackboneHook writes the result into the run's config,
    which the work dir's copy and every checkpoint's meta are made from."""
    from types import SimpleNamespace

    from adpe.mm.hooks import ResolvedBackboneHook

    cfg = Config.fromfile(ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py")
    assert {"type": "ResolvedBackboneHook"} in cfg.custom_hooks
    cfg.model.backbone.img_size = (112, 112)
    cfg.model.backbone.init_cfg.checkpoint = str(FIXTURES / "official_adpe_rpe_tiny.pth")
    assert (cfg.model.backbone.rel_pos, cfg.model.backbone.rpe_lookup) == ("auto", "auto")
    dumped = []
    runner = SimpleNamespace(model=MODELS.build(cfg.model), cfg=cfg, dump_config=lambda: dumped.append(cfg.pretty_text))
    ResolvedBackboneHook().before_run(runner)
    assert (cfg.model.backbone.rel_pos, cfg.model.backbone.rpe_lookup) == ("irpe", "discrete")
    assert len(dumped) == 1 and "rel_pos='irpe'" in dumped[0]


def test_converted_checkpoint_is_tensors_only_and_loads_strictly(tmp_path):
    dst = tmp_path / "backbone.pth"
    adpe.checkpoint.export_backbone(FIXTURES / "official_adpe_rpe_tiny.pth", dst)
    exported = torch.load(dst, weights_only=True)  # no allow-list needed
    assert exported["meta"]["position"] == "rpe" and "mask_token" in exported["meta"]["dropped"]
    expected = torch.load(FIXTURES / "official_adpe_rpe_expected_112.pt", weights_only=True)
    backbone = build_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(dst)))
    with torch.no_grad():
        assert (block_outputs(backbone, expected["x"])[-1] - expected["block_outputs"][-1]).abs().max() <= 1e-4


def test_bad_checkpoints_fail_with_clear_messages(tmp_path):
    release = adpe.checkpoint.load_checkpoint_file(FIXTURES / "official_adpe_rpe_tiny.pth")
    renamed = dict(release["model"])
    renamed["blocks.0.attn.qkv_renamed.weight"] = renamed.pop("blocks.0.attn.qkv.weight")
    torch.save({"model": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing: blocks\.0\.attn\.qkv\.weight.*unexpected: "
                                                      r"blocks\.0\.attn\.qkv_renamed\.weight"):
        build_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "renamed.pth")))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "nowhere.pth")))
    with pytest.raises(CheckpointMismatchError, match="embed width mismatch.*192.*768"):
        build_backbone(size="base", init_cfg=dict(type="Pretrained",
                                                  checkpoint=str(FIXTURES / "official_adpe_rpe_tiny.pth")))
    with pytest.raises(CheckpointMismatchError, match="rel_pos='irpe'"):
        build_backbone(rel_pos="bias", init_cfg=dict(type="Pretrained",
                                                     checkpoint=str(FIXTURES / "official_adpe_rpe_tiny.pth")))


@pytest.mark.parametrize("path", ADE_CONFIGS, ids=lambda p: p.name)
def test_every_ade20k_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.type == "AdPEViT"
    assert cfg.custom_imports == dict(imports=["adpe.mm"], allow_failed_imports=False)  # any launcher
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"
    model = MODELS.build(cfg.model)
    assert model.decode_head.num_classes == 150
    if path.name == "upernet_adpe_vitb.py":
        assert cfg.train_cfg.max_iters == 160000 and cfg.optim_wrapper.optimizer.lr == 2e-4
        assert cfg.model.test_cfg.stride == (341, 341) and model.backbone.out_indices == (3, 5, 7, 11)


def test_vit_b_backbone_parameter_count_and_layer_decay():
    import timm
    cfg = Config.fromfile(ROOT / "benchmarks/ade20k/upernet_adpe_vitb.py")
    model = MODELS.build(cfg.model)
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    # timm's ViT-B/16 without its pos_embed (ours is on the 32 x 32 grid) and final norm (unused: final_norm=False)
    encoder = sum(p.numel() for n, p in reference.named_parameters() if n != "pos_embed" and not n.startswith("norm."))
    rel_bias = 12 * ((2 * 32 - 1) ** 2 + 3) * 12  # per block: ((2h-1)(2w-1)+3) x heads, 32 x 32 grid
    layer_scale = 12 * 2 * 768  # mmseg's MAE recipe: init_values=1.0, gamma_1 / gamma_2 per block
    ours = sum(p.numel() for p in model.backbone.parameters())
    assert ours == encoder + (32 * 32 + 1) * 768 + rel_bias + layer_scale

    wrapper_cfg = dict(cfg.optim_wrapper, type="OptimWrapper")
    optimizer = build_optim_wrapper(model, wrapper_cfg).optimizer
    scale_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lr, rate, top = 2e-4, 0.65, 13  # num_layers = 12 + 2

    def group(param):
        return scale_of[id(param)]

    assert group(model.backbone.blocks[0].attn.qkv.weight)["lr"] == pytest.approx(lr * rate ** (top - 1))
    assert group(model.backbone.blocks[11].attn.qkv.weight)["lr"] == pytest.approx(lr * rate ** (top - 12))
    assert group(model.backbone.patch_embed.proj.weight)["lr"] == pytest.approx(lr * rate**top)
    assert group(model.decode_head.conv_seg.weight)["lr"] == pytest.approx(lr)
    assert group(model.backbone.blocks[0].attn.qkv.weight)["weight_decay"] == 0.05
    assert group(model.backbone.blocks[0].attn.qkv.bias)["weight_decay"] == 0.0
    # mmseg's constructor as the release ran it decays pos_embed (tests/test_recipes_mm.py: every tensor)
    assert group(model.backbone.pos_embed)["weight_decay"] == 0.05


def test_tiny_upernet_trains_and_dist_test_reports_miou(tmp_path):
    from adpe.tooling.demo_data import write_ade20k

    data = write_ade20k(tmp_path / "ade20k", n_train=32, n_val=8, size=128, seed=0)
    work = tmp_path / "work"
    config = str(ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py")
    roots = [f"{k}.dataset.data_root={data}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["bash", str(ROOT / "tools/dist_train.sh"), config, "1", "--work-dir", str(work),
                    "--cfg-options", *roots, "train_cfg.max_iters=40", "train_cfg.val_interval=40",
                    "default_hooks.logger.interval=5", "log_processor.window_size=5",
                    "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                    "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=False"],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    rows = [json.loads(line) for f in work.glob("*/vis_data/scalars.json") for line in f.open()]
    losses = [r["loss"] for r in rows if "loss" in r and r["step"] % 5 == 0]  # (mmengine also logs step 4)
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses
    ckpt = work / "iter_40.pth"
    subprocess.run(["bash", str(ROOT / "tools/dist_test.sh"), config, str(ckpt), "1", "--work-dir", str(work),
                    "--cfg-options", *roots, "test_dataloader.num_workers=0",
                    "test_dataloader.persistent_workers=False"],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    result = json.loads((work / "test_results.json").read_text())
    assert set(result["metrics"]) >= {"mIoU", "aAcc", "mAcc"} and 0 < result["metrics"]["mIoU"] <= 100
    # tools/dist_test.sh writes the per-image records beside (docs/statistics.md): 8 images x 150 classes
    assert np.load(work / "test_records.npz")["union"].shape == (8, 150)
