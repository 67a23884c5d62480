"""ImageNet classification: the cls-mode backbone (timm and release parity, strict loading), MAE's LARS, the
shipped configs, and tiny fine-tuning and linear probing through tools/dist_train.sh / dist_test.sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmpretrain")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import CheckpointMismatchError, load_checkpoint_file  # noqa: E402
from adpe.mm.optim import build_mae_lars  # noqa: E402
from adpe.models.backbone import ViTBackbone, block_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
RELEASE = FIXTURES / "official_adpe_rpe_tiny.pth"
IMAGENET_CONFIGS = sorted((ROOT / "benchmarks/imagenet").glob("*.py"))


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    init_default_scope("mmpretrain")


def build_cls_backbone(**kw):
    cfg = dict(type="AdPEViT", size="tiny", img_size=112, mode="cls")
    cfg.update(kw)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    return backbone.eval()


def pretrained(path) -> dict:
    return dict(type="Pretrained", checkpoint=str(path))


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("global_pool, pool", [("avg", "avg"), ("token", "cls")])
def test_pooled_feature_matches_timm(global_pool, pool, tmp_path, random_timm_vit):
    """timm's pre-logits feature: fc_norm of the mean patch token (global_pool='avg'), or the normalised cls
    token; the weights travel in the MAE release layout (decoder tensors beside the encoder's)."""
    reference = random_timm_vit(global_pool=global_pool, num_classes=0)
    path = tmp_path / "mae_release.pth"
    torch.save({"model": {**reference.state_dict(), "mask_token": torch.zeros(1, 1, 64),
                          "decoder_embed.weight": torch.zeros(64, 192)}}, path)
    backbone = build_cls_backbone(pool=pool, rel_pos="auto", init_cfg=pretrained(path))
    assert backbone.rel_pos == "none"  # an APE checkpoint in cls mode: no relative term, as MAE fine-tunes
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        (ours,) = backbone(x)
    assert ours.shape == (3, 192)
    assert (ours - expected).abs().max() <= 1e-4


def test_release_checkpoint_keeps_released_block_outputs_in_cls_mode():
    """The paper's released fine-tuning ViT (discrete iRPE): the same blocks run in cls mode; average pooling
    starts a fresh fc_norm and drops the pretrained final norm (as MAE's fine-tuning does), the cls pooling
    keeps it."""
    expected = torch.load(FIXTURES / "official_adpe_rpe_expected_112.pt", weights_only=True)
    release = load_checkpoint_file(RELEASE)["model"]
    backbone = build_cls_backbone(pool="avg", init_cfg=pretrained(RELEASE))
    assert (backbone.rel_pos, backbone.rpe_lookup) == ("irpe", "discrete")
    with torch.no_grad():
        outputs = block_outputs(backbone, expected["x"])
    for ours, theirs in zip(outputs, expected["block_outputs"], strict=True):
        assert (ours - theirs).abs().max() <= 1e-4
    assert backbone.norm is None
    assert torch.equal(backbone.fc_norm.weight, torch.ones(192))
    assert torch.equal(backbone.fc_norm.bias, torch.zeros(192))
    with torch.no_grad():
        (feature,) = backbone(expected["x"])
    tokens = outputs[-1][:, 1:].mean(dim=1)
    torch.testing.assert_close(feature, torch.nn.functional.layer_norm(tokens, (192,), eps=1e-6))

    by_token = build_cls_backbone(pool="cls", init_cfg=pretrained(RELEASE))
    assert torch.equal(by_token.norm.weight, release["norm.weight"])


def test_cls_mode_loading_is_strict(tmp_path):
    release = load_checkpoint_file(RELEASE)
    release["model"]["blocks.0.attn.extra_scale"] = torch.ones(3)
    path = tmp_path / "bad.pth"
    torch.save(release, path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected: blocks\.0\.attn\.extra_scale"):
        build_cls_backbone(init_cfg=pretrained(path))


def test_without_cls_token_the_average_pools_the_same_patches():
    """class_token=False: the pretrained cls token is dropped on purpose; ViTs whose patch tokens never attend to
    a cls token give a different feature, so the two are built and compared on the same weights."""
    with_cls = build_cls_backbone(init_cfg=pretrained(RELEASE))
    without = build_cls_backbone(init_cfg=pretrained(RELEASE), class_token=False)
    assert not hasattr(without, "cls_token")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a, b = with_cls(x)[0], without(x)[0]
    assert a.shape == b.shape == (2, 192) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs one for pool='cls'"):
        ViTBackbone("tiny", img_size=112, mode="cls", pool="cls", class_token=False)
    with pytest.raises(ValueError, match="seg mode always has a cls token"):
        ViTBackbone("tiny", img_size=112, mode="seg", class_token=False)


def test_frozen_backbone_stays_in_eval_mode_and_out_of_the_optimiser():
    cfg = Config.fromfile(ROOT / "benchmarks/imagenet/linear_probe_adpe_vit_tiny_demo.py")
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.train()
    assert not model.backbone.training and not any(b.training for b in model.backbone.blocks)
    assert model.neck.training  # the BatchNorm before the head does learn its statistics
    assert not any(p.requires_grad for p in model.backbone.parameters())
    for optim_wrapper in (cfg.optim_wrapper, Config.fromfile(ROOT / "benchmarks/imagenet/linear_probe_adpe_vitb.py")
                          .optim_wrapper):  # the demo's SGD and the recipe's LARS
        wrapper = build_optim_wrapper(model, optim_wrapper)
        trained = {id(p) for group in wrapper.optimizer.param_groups for p in group["params"] if p.requires_grad}
        assert trained == {id(p) for p in model.head.parameters()}
    # one step: the backbone and its buffers stay as they were, the head moves
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.randn(4, 3, 112, 112)
    from mmpretrain.structures import DataSample

    samples = [DataSample().set_gt_label(i % 8) for i in range(4)]
    wrapper.update_params(model.loss(inputs, samples)["loss"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])


# ------------------------------------------------------------------------------------------- LARS
def test_mae_lars_is_maes_update():
    """Two steps against MAE's LARS written out: weights get the trust ratio 0.001 |w| / |g|, the bias none;
    the lr multiplies the momentum buffer (timm's and MAE's order)."""
    torch.manual_seed(0)
    weight, bias = torch.nn.Parameter(torch.randn(8, 16)), torch.nn.Parameter(torch.randn(8))
    optimizer = build_mae_lars([weight, bias], lr=0.5, momentum=0.9)
    w, b = weight.detach().clone(), bias.detach().clone()
    mu_w, mu_b = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(2):
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        weight.grad, bias.grad = gw.clone(), gb.clone()
        optimizer.step()
        mu_w = 0.9 * mu_w + 0.001 * w.norm() / gw.norm() * gw
        mu_b = 0.9 * mu_b + gb
        w, b = w - 0.5 * mu_w, b - 0.5 * mu_b
        torch.testing.assert_close(weight.detach(), w, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bias.detach(), b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("path", IMAGENET_CONFIGS, ids=lambda p: p.name)
def test_every_imagenet_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=["adpe.mm"], allow_failed_imports=False)  # any launcher
    assert cfg.default_scope == "mmpretrain"
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert model.backbone.mode == "cls"
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert wrapper.optimizer.param_groups
    # both data pipelines run on an image (loading aside) and give the backbone's input size
    from mmcv.transforms import Compose

    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    for loader in ("train_dataloader", "test_dataloader"):
        pipeline = Compose(cfg[loader].dataset.pipeline[1:])  # after LoadImageFromFile
        packed = pipeline({"img": image.copy(), "img_shape": image.shape[:2], "ori_shape": image.shape[:2],
                           "gt_label": 3})
        assert packed["inputs"].shape == (3, *(2 * (cfg.model.backbone.img_size,)))
    if path.name == "finetune_adpe_vitb.py":
        assert cfg.effective_batch == 1024 and cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * 1024 / 256)
        assert cfg.train_cfg.max_epochs == 100 and model.backbone.pool == "avg"
        assert cfg.model.train_cfg.augments == [dict(type="Mixup", alpha=0.8), dict(type="CutMix", alpha=1.0)]
    if path.name == "finetune_adpe_vitb_rpe.py":
        assert cfg.effective_batch == 4096 and cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * 4096 / 256)
    if path.name == "linear_probe_adpe_vitb.py":
        assert cfg.effective_batch == 16384 and cfg.optim_wrapper.optimizer.lr == pytest.approx(0.1 * 16384 / 256)
        assert cfg.train_cfg.max_epochs == 90 and model.backbone.frozen and model.backbone.pool == "cls"


# ------------------------------------------------------------------------------------------- runs
def _train_and_test(config: str, data: Path, work: Path, options: list[str], in_process: bool) -> dict:
    """Train through tools/dist_train.sh and test the final model, either in the training process (``--test``)
    or with tools/dist_test.sh; the metrics test_results.json holds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    roots = [f"{k}.dataset.data_root={data}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    quiet = ["train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
             "val_dataloader.num_workers=0", "default_hooks.logger.interval=1"]
    subprocess.run(["bash", str(ROOT / "tools/dist_train.sh"), config, "1", "--work-dir", str(work),
                    *(["--test"] if in_process else []),
                    "--cfg-options", "model.backbone.init_cfg=None", *roots, *quiet, *options],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    checkpoint = (work / "last_checkpoint").read_text().strip()
    if not in_process:
        subprocess.run(["bash", str(ROOT / "tools/dist_test.sh"), config, checkpoint, "1", "--work-dir", str(work),
                        "--cfg-options", *roots, "test_dataloader.num_workers=0"],
                       check=True, env=env, cwd=ROOT, capture_output=True)
    result = json.loads((work / "test_results.json").read_text())
    assert result["checkpoint"] == str(Path(checkpoint).resolve()) and result["tta"] is False
    assert (work / "test_records.npz").is_file()  # --test and tools/dist_test.sh write per-image records too
    return result["metrics"]


@pytest.fixture(scope="module")
def easy_imagenet(tmp_path_factory) -> Path:
    """An ImageNet-format folder whose classes also differ in colour: learnable in a few CPU seconds."""
    from adpe.tooling.demo_data import write_imagenet

    return write_imagenet(tmp_path_factory.mktemp("data") / "imagenet", n_per_class=16, n_val_per_class=8, size=64,
                          class_appearance=True)


def test_tiny_linear_probe_beats_chance(easy_imagenet, tmp_path):
    metrics = _train_and_test(str(ROOT / "benchmarks/imagenet/linear_probe_adpe_vit_tiny_demo.py"), easy_imagenet,
                              tmp_path / "probe", ["train_dataloader.batch_size=32"], in_process=True)
    assert metrics["accuracy/top1"] > 2 * 100 / 8, metrics  # chance: 12.5 %
    assert metrics["accuracy/top5"] >= metrics["accuracy/top1"]


def test_tiny_fine_tune_beats_chance(easy_imagenet, tmp_path):
    metrics = _train_and_test(str(ROOT / "benchmarks/imagenet/finetune_adpe_vit_tiny_demo.py"), easy_imagenet,
                              tmp_path / "finetune", [], in_process=False)
    assert metrics["accuracy/top1"] > 2 * 100 / 8, metrics


def test_a_labelled_subset_list_labels_images_as_the_class_folders_do(tmp_path):
    """meta/train_<k>.txt (a label-scarce training set) gives each image the label that mmpretrain's folder
    dataset gives it, the one val/ and test/ images of that class get: folders numbered by sorted name."""
    from mmpretrain.datasets import CustomDataset

    from adpe.tooling.demo_data import write_imagenet

    root = write_imagenet(tmp_path / "imagenet", n_per_class=3, n_val_per_class=1, size=32, labelled_subsets=[2])
    folders = CustomDataset(data_root=str(root), data_prefix="train", pipeline=[])
    by_folder = {Path(d["img_path"]).relative_to(root / "train").as_posix(): d["gt_label"]
                 for d in folders.load_data_list()}
    listed = CustomDataset(data_root=str(root), data_prefix="train", ann_file="meta/train_2.txt",
                           metainfo={"classes": folders.metainfo["classes"]}, pipeline=[])
    pairs = [(Path(d["img_path"]).relative_to(root / "train").as_posix(), d["gt_label"])
             for d in listed.load_data_list()]
    assert len(pairs) == 16 and all(label == by_folder[path] for path, label in pairs)
