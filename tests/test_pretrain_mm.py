"""Pretraining on mmengine's Runner: configs, logging, adversary hook, resume, AMP."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

mmengine = pytest.importorskip("mmengine")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import load_checkpoint_file  # noqa: E402
from adpe.mm.runner import build_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = sorted(p for p in (ROOT / "pretrain").rglob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "pretrain")))
def test_every_pretrain_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == "AdPEPretrainer" and cfg.optim_wrapper.optimizer.betas == (0.9, 0.95)
    assert cfg.custom_imports == dict(imports=["adpe.mm"], allow_failed_imports=False)  # any launcher
    with torch.device("meta"):  # full-size models without allocating their weights
        model = MODELS.build(cfg.model)
    adversarial = cfg.model.get("adversary") is not None
    assert (model.mae.adversary is not None) == adversarial
    if not {"demo", "study"} & set(path.parts):  # the CPU-sized runs take their batch as written
        assert cfg.effective_batch == 4096
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1.5e-4 * 4096 / 256)


def test_vit_b_encoder_matches_timm_parameter_count():
    import timm
    cfg = Config.fromfile(ROOT / "pretrain/mae_plus_vitb_rpe.py")
    with torch.device("meta"):
        mae = MODELS.build(cfg.model).mae
        reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    ours = sum(p.numel() for n, p in mae.named_parameters()
               if not n.startswith(("decoder", "mask_token", "pos_embed")) and "rpe_k" not in n)
    theirs = sum(p.numel() for n, p in reference.named_parameters() if n != "pos_embed")
    assert ours == theirs
    tables = sum(p.numel() for n, p in mae.named_parameters() if "rpe_k" in n and not n.startswith("decoder"))
    assert tables == 12 * 64 * 50  # one (1, head_dim, 50) iRPE table per encoder layer


def tiny_cfg(config: str, data_root: Path, work_dir: Path, epochs: int, amp: bool = False) -> Config:
    options = {"train_dataloader.dataset.data_root": str(data_root), "train_cfg.max_epochs": epochs,
               "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
               "train_dataloader.batch_size": 4, "default_hooks.logger.interval": 1,
               "default_hooks.checkpoint.interval": 1, "log_level": "WARNING", "log_processor.window_size": 1}
    return build_config(str(ROOT / config), work_dir=str(work_dir), cfg_options=options, amp=amp)


def logged(work_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for f in sorted(work_dir.glob("*/vis_data/scalars.json")) for line in f.open()]
    return [row[key] for row in rows if key in row]


def test_short_run_lowers_loss_and_logs_adversary(image_folder, tmp_path):
    cfg = tiny_cfg("pretrain/demo/adpe_vit_tiny_ape_coord.py", image_folder, tmp_path, epochs=6)
    cfg.optim_wrapper.optimizer.lr = 2e-3
    cfg.param_scheduler = []
    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = logged(tmp_path, "loss")
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses
    adv_norm, adv_lr = logged(tmp_path, "adv_norm"), logged(tmp_path, "adv_lr")
    assert len(adv_norm) == 24 and max(adv_norm) <= 1.0 + 1e-6 and max(adv_norm) > 0
    assert adv_lr[0] == pytest.approx(1.5e-3)
    ckpt = load_checkpoint_file(tmp_path / "epoch_6.pth")
    assert "mae.adversary.position" in ckpt["state_dict"]
    groups = ckpt["optimizer"]["param_groups"]
    assert groups[-1]["adversary"] and groups[-1]["maximize"] and groups[-1]["weight_decay"] == 0.0


def test_resumed_run_matches_uninterrupted_run(image_folder, tmp_path):
    config = "pretrain/demo/adpe_vit_tiny_rpe_coord.py"
    Runner.from_cfg(tiny_cfg(config, image_folder, tmp_path / "straight", epochs=2)).train()
    Runner.from_cfg(tiny_cfg(config, image_folder, tmp_path / "stopped", epochs=1)).train()
    Runner.from_cfg(tiny_cfg(config, image_folder, tmp_path / "stopped", epochs=2)).train()  # auto-resume
    straight = logged(tmp_path / "straight", "loss")
    resumed = logged(tmp_path / "stopped", "loss")
    assert len(straight) == len(resumed) == 8
    assert resumed == pytest.approx(straight, abs=1e-6)
    a = load_checkpoint_file(tmp_path / "straight/epoch_2.pth")["state_dict"]
    b = load_checkpoint_file(tmp_path / "stopped/epoch_2.pth")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("model_cfg, count", [
    (dict(type="AdPEPretrainer", size="tiny", compile=True), 4 + 1),  # encoder and decoder blocks
    (dict(type="AdPEViT", size="tiny", img_size=(64, 64), mode="seg", out_indices=(0, 1, 2, 3), rel_pos="none",
          compile=dict(mode="max-autotune")), 4),
])
def test_compile_switch_compiles_every_block_on_gpu_machines_and_stays_eager_on_cpu(monkeypatch, model_cfg, count):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    MODELS.build(dict(model_cfg))
    assert compiled == [], "CPU-only machines stay eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    MODELS.build(dict(model_cfg))
    options = model_cfg["compile"] if isinstance(model_cfg["compile"], dict) else {}
    assert compiled == [("Block", options)] * count


def test_device_decode_trains_from_encoded_images(image_folder, tmp_path):
    """decode='device': the loader reads bytes, the model's preprocessor decodes and crops them on its device."""
    cfg = tiny_cfg("pretrain/demo/mae_plus_vit_tiny_ape.py", image_folder, tmp_path, epochs=1)
    cfg.train_dataloader.dataset.decode = "device"
    runner = Runner.from_cfg(cfg)
    batch = next(iter(runner.train_dataloader))
    assert isinstance(batch["inputs"]["encoded"][0].data, bytes)  # the file, not pixels, leaves the workers
    inputs = runner.model.data_preprocessor(batch, training=True)["inputs"]
    assert inputs.shape == (4 * 4, 3, 112, 112) and inputs.dtype == torch.float32
    runner.train()
    losses = logged(tmp_path, "loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of --amp")
def test_bf16_autocast_wrapper_on_cpu(image_folder, tmp_path, monkeypatch):
    """On a CPU with native bf16 (faked here: tests/test_amp_mm.py covers the fp32 choice elsewhere)."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    cfg = tiny_cfg("pretrain/demo/mae_plus_vit_tiny_ape.py", image_folder, tmp_path, epochs=1, amp=True)
    assert cfg.optim_wrapper.type == "AutoAmpOptimWrapper"
    runner = Runner.from_cfg(cfg)
    wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    assert type(wrapper).__name__ == "AutocastOptimWrapper" and wrapper.cast_dtype == torch.bfloat16
    with wrapper.optim_context(runner.model):
        out = runner.model.mae.blocks[0].mlp.fc1(torch.randn(2, 192))
    assert out.dtype == torch.bfloat16
    runner.train()
    assert len(logged(tmp_path, "loss")) == 4


@pytest.mark.parametrize("bf16_gpu, asked, expected", [
    (True, None, ("AutocastOptimWrapper", torch.bfloat16, None)),  # Ampere and newer: bf16, no loss scaler
    (False, None, ("AmpOptimWrapper", torch.float16, "dynamic")),  # older GPUs: fp16 with a dynamic loss scale
    (True, "float16", ("AmpOptimWrapper", torch.float16, "dynamic")),  # the config's own choice wins
    (False, "bfloat16", ("AutocastOptimWrapper", torch.bfloat16, None)),
])
def test_amp_picks_bf16_or_fp16_from_the_gpu(monkeypatch, bf16_gpu, asked, expected):
    """What --amp builds on a GPU, with the GPU's capabilities faked (the GPU runs themselves are GPU checks)."""
    from adpe.mm.optim import AutoAmpOptimWrapper

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with warnings.catch_warnings():  # the fp16 GradScaler warns that CUDA is not really there
        warnings.simplefilter("ignore")
        wrapper = AutoAmpOptimWrapper(optimizer=optimizer, dtype=asked)
    name, dtype, scale = expected
    assert type(wrapper).__name__ == name
    assert getattr(wrapper, "cast_dtype", None) == dtype
    if scale is not None:  # mmengine's dynamic scaling: a GradScaler that grows and backs off, no fixed scale
        assert wrapper._scale_update_param is None and wrapper.loss_scaler.get_growth_factor() > 1
    else:
        assert wrapper.device_type == "cuda" and not hasattr(wrapper, "loss_scaler")


def test_plain_runner_keeps_the_effective_batch_on_any_world_size(image_folder, tmp_path, monkeypatch):
    """Runner.from_cfg on the ViT-B config, no launcher of ours: 8 processes x 64 images -> 8 accumulation steps."""
    import adpe.mm.hooks as hooks

    cfg = Config.fromfile(ROOT / "pretrain/adpe_vitb_rpe_coord.py")
    cfg.merge_from_dict({"model.size": "tiny", "train_dataloader.dataset.data_root": str(image_folder),
                         "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
                         "work_dir": str(tmp_path)})
    runner = Runner.from_cfg(cfg)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    hook = next(h for h in runner.hooks if type(h).__name__ == "EffectiveBatchHook")
    assert runner.train_dataloader.batch_size == 64 and runner.optim_wrapper._accumulative_counts == 1
    monkeypatch.setattr(hooks, "get_world_size", lambda: 8)
    hook.before_run(runner)
    assert runner.optim_wrapper._accumulative_counts == 8
    monkeypatch.setattr(hooks, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="not a multiple of 3 processes x batch_size 64"):
        hook.before_run(runner)


def test_missing_data_root_fails_at_start_naming_the_path(tmp_path):
    cfg = tiny_cfg("pretrain/demo/mae_plus_vit_tiny_ape.py", tmp_path / "nowhere", tmp_path / "wd", epochs=1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Runner.from_cfg(cfg).train()


def test_test_flag_without_a_test_split_fails_before_training(tmp_path):
    done = subprocess.run([sys.executable, "tools/train.py", "pretrain/demo/mae_plus_vit_tiny_ape.py", "--work-dir",
                           str(tmp_path / "wd"), "--test"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "has no test_dataloader / test_evaluator" in done.stderr
    assert not (tmp_path / "wd").exists()  # nothing was built or written


def test_adversary_hook_projects_only_after_a_parameter_update():
    from types import SimpleNamespace

    from mmengine.optim import build_optim_wrapper

    from adpe.mm.hooks import AdversaryHook

    cfg = Config.fromfile(ROOT / "pretrain/demo/adpe_vit_tiny_ape_coord.py")
    model = MODELS.build(cfg.model)
    delta = next(model.mae.adversary.parameters())
    wrapper = build_optim_wrapper(model, {**cfg.optim_wrapper, "type": "OptimWrapper", "accumulative_counts": 2})
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, message_hub=SimpleNamespace(
        update_scalar=lambda key, value: logged_scalars.setdefault(key, value)))
    logged_scalars: dict = {}
    with torch.no_grad():
        delta.fill_(1.0)  # far outside the radius-1 L2 ball
    for expect_update in (False, True):
        wrapper._inner_count += 1  # what backward() does
        assert wrapper.should_update() is expect_update
        AdversaryHook().after_train_iter(runner, 0)
        assert (delta.norm().item() <= 1.0 + 1e-6) is expect_update
    assert logged_scalars["train/adv_norm"] == pytest.approx(1.0)


def test_pretraining_starts_from_a_release_checkpoint():
    """model.pretrained: a release MAE+ RPE checkpoint loads strictly into the tiny MAE+ RPE config, and into the
    AdPE RPE-coordinate config, whose adversary it lacks and which starts at zero."""
    release = load_checkpoint_file(ROOT / "tests/fixtures/official_adpe_pretrain_mae_plus_rpe_tiny.pth")["model"]
    path = str(ROOT / "tests/fixtures/official_adpe_pretrain_mae_plus_rpe_tiny.pth")
    for config, adversarial in (("mae_plus_vit_tiny_rpe.py", False), ("adpe_vit_tiny_rpe_coord.py", True)):
        cfg = Config.fromfile(ROOT / "pretrain/demo" / config)
        model = MODELS.build({**cfg.model, "pretrained": path})
        model.init_weights()
        state = model.mae.state_dict()
        assert all(torch.equal(state[k], v) for k, v in release.items())
        assert (model.mae.adversary is not None) == adversarial
        if adversarial:
            assert all(not d.any() for d in model.mae.adversary.parameters())
    cfg = Config.fromfile(ROOT / "pretrain/demo/mae_plus_vit_tiny_ape.py")  # an APE model: the tables do not fit
    model = MODELS.build({**cfg.model, "pretrained": path})
    with pytest.raises(ValueError, match="unexpected: blocks.0.attn.rpe_k.lookup_table_weight"):
        model.init_weights()


# The same recipe on any GPU count for transfer: the ViT-B transfer configs keep their effective batch with the
# pretraining's EffectiveBatchHook, or, with --auto-scale-lr, scale the lr as mmdet does (one at a time).
def _transfer_runner(data_root: Path, work_dir: Path, auto_scale_lr: bool) -> Runner:
    """Runner.from_cfg of the ADE20K ViT-B config with a tiny backbone and head, before training (as the Runner
    holds it when ``before_run`` is called: optimiser built, lr scaled if asked)."""
    options = {"model.backbone.size": "tiny", "model.backbone.out_indices": (0, 1, 2, 3),
               "model.neck.embed_dim": 192, "model.decode_head.in_channels": [192] * 4,
               "model.decode_head.channels": 32, "model.auxiliary_head.in_channels": 192,
               "model.auxiliary_head.channels": 16, "model.backbone.init_cfg": None,
               **{f"{k}.dataset.data_root": str(data_root) for k in ("train_dataloader", "val_dataloader",
                                                                     "test_dataloader")},
               "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False}
    cfg = build_config(str(ROOT / "benchmarks/ade20k/upernet_adpe_vitb.py"), work_dir=str(work_dir),
                       cfg_options=options, auto_scale_lr=auto_scale_lr)
    runner = Runner.from_cfg(cfg)
    runner._world_size = 4  # what mmengine's scale_lr reads
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)  # as Runner.train() does, before before_run
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    return runner


def test_transfer_keeps_the_effective_batch_or_scales_the_lr(tmp_path, monkeypatch):
    """4 processes x 2 images: accumulation 2 for ADE20K's 16 images per step; with --auto-scale-lr, no
    accumulation and lr x 8 / 16 (mmengine's scaling). The log says which one is in force."""
    import adpe.mm.hooks as hooks
    from adpe.tooling.demo_data import write_ade20k

    data = write_ade20k(tmp_path / "ade20k", n_train=2, n_val=1, size=32, seed=0)
    monkeypatch.setattr(hooks, "get_world_size", lambda: 4)
    for auto_scale_lr, counts, lr in ((False, 2, 2e-4), (True, 1, 1e-4)):
        runner = _transfer_runner(data, tmp_path / f"auto_scale_lr_{auto_scale_lr}", auto_scale_lr)
        hook = next(h for h in runner.hooks if type(h).__name__ == "EffectiveBatchHook")
        assert runner.train_dataloader.batch_size == 2 and runner.cfg.auto_scale_lr.enable is auto_scale_lr
        hook.before_run(runner)
        assert runner.optim_wrapper._accumulative_counts == counts
        assert max(group["initial_lr"] for group in runner.optim_wrapper.optimizer.param_groups) == pytest.approx(lr)
        # With accumulation the iteration-based recipe counts optimiser steps: 160k steps = 320k iterations,
        # warm-up 1500 steps = 3000 iterations, and the lr at the first iteration is the warm-up's start.
        assert runner.train_loop.max_iters == 160_000 * counts and runner.train_loop.val_interval == 16_000 * counts
        warmup, poly = runner.param_schedulers
        assert (warmup.begin, warmup.end, poly.begin, poly.end) == (0, 1500 * counts, 1500 * counts, 160_000 * counts)
        assert max(group["lr"] for group in runner.optim_wrapper.optimizer.param_groups) == pytest.approx(lr * 1e-6)
        log = (Path(runner.log_dir) / f"{runner.timestamp}.log").read_text()
        assert ("Scaling the original LR by 0.5" in log) is auto_scale_lr
        assert ("effective batch 16 images = 4 processes x 2 images x 2 accumulation steps" in log) is not \
            auto_scale_lr


def test_auto_scale_lr_needs_a_base_batch_size():
    with pytest.raises(ValueError, match="has no auto_scale_lr.base_batch_size"):
        build_config(str(ROOT / "pretrain/adpe_vitb_rpe_coord.py"), auto_scale_lr=True)
    for config, base in (("benchmarks/coco/mask_rcnn_adpe_vitb.py", 64), ("benchmarks/ade20k/upernet_adpe_vitb.py", 16),
                         ("benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py", 8)):
        assert Config.fromfile(ROOT / config).auto_scale_lr == dict(enable=False, base_batch_size=base)
        cfg = build_config(str(ROOT / config), auto_scale_lr=True)
        assert cfg.auto_scale_lr.enable and cfg.effective_batch is None


def test_non_finite_loss_stops_training_naming_iteration_terms_and_checkpoint(tmp_path):
    from types import SimpleNamespace

    from adpe.mm.hooks import NonFiniteLossHook

    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "epoch_3.pth"))
    runner = SimpleNamespace(iter=41, work_dir=str(tmp_path), optim_wrapper=SimpleNamespace())
    hook = NonFiniteLossHook()
    hook.after_train_iter(runner, 0, outputs={"loss": torch.tensor(0.5), "acc": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match=r"iteration 42: non-finite loss, loss_mask \(loss=nan, loss_cls=0\.3, "
                                                 r"loss_mask=nan\); newest checkpoint: .*epoch_3\.pth \(resume"):
        hook.after_train_iter(runner, 0, outputs={"loss": torch.tensor(float("nan")), "loss_cls": 0.3,
                                                  "loss_mask": torch.tensor(float("inf")) * 0})
    for config in PRETRAIN_CONFIGS + sorted((ROOT / "benchmarks").glob("*/*.py")):
        assert {"type": "NonFiniteLossHook"} in Config.fromfile(config).custom_hooks, config


def test_fp16_steps_skipped_in_a_row_stop_training(tmp_path):
    """Under fp16 a finite loss can hide overflowing gradients: the scaler lowers its scale at every skipped step.
    Twenty in a row stop the run; a step that goes through (scale kept) starts the count again; accumulation
    iterations without a step do not count."""
    from types import SimpleNamespace

    from adpe.mm.hooks import NonFiniteLossHook

    scaler = SimpleNamespace(scale=2.0**16, is_enabled=lambda: True)
    scaler.get_scale = lambda: scaler.scale
    wrapper = SimpleNamespace(loss_scaler=scaler, update=True)
    wrapper.should_update = lambda: wrapper.update
    runner = SimpleNamespace(iter=0, work_dir=str(tmp_path), optim_wrapper=wrapper)
    hook = NonFiniteLossHook(max_skipped=3)

    def iteration(skipped: bool, update: bool = True) -> None:
        wrapper.update = update
        scaler.scale /= 2 if skipped and update else 1
        hook.after_train_iter(runner, 0, outputs={"loss": 1.0})
        runner.iter += 1

    for skipped, update in ((False, True), (True, True), (True, True), (False, True), (True, True), (True, False),
                            (True, True)):
        iteration(skipped, update)  # never three skipped steps in a row
    with pytest.raises(FloatingPointError, match="skipped 3 steps in a row .*no checkpoint written yet"):
        iteration(True)
