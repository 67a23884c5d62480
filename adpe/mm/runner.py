"""The config a launcher hands to mmengine's Runner: the file, the command line's overrides, and nothing more.

What a run computes lives in the config itself (accumulation in ``EffectiveBatchHook``, mixed precision in
``AutoAmpOptimWrapper``, 'auto' backbone settings in ``AdPEViT``), so ``Runner.from_cfg(Config.fromfile(path))``
in a user's script, mmseg's or mmdet's ``tools/train.py`` and our launchers all run the same thing.
"""

from __future__ import annotations

import datetime
import json
import os
import os.path as osp
import subprocess
from collections.abc import Iterable

import torch
from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process

from adpe.mm.engine import AtomicLocalBackend
from adpe.report.records import TEST_RESULTS

# --vis NAME -> mmengine's backend, written beside LocalVisBackend (its vis_data/scalars.json is what
# adpe.report reads, so it always stays).
VIS_BACKENDS = {"tensorboard": "TensorboardVisBackend", "wandb": "WandbVisBackend"}


def build_config(
    config: str,
    *,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    resume: str | None = None,
    amp: bool = False,
    vis: Iterable[str] = (),
    auto_scale_lr: bool = False,
) -> Config:
    """``config`` with the launcher's options applied, as mmseg's and mmdet's ``tools/train.py`` do.

    work_dir: default ``work_dirs/CONFIG_NAME``; resume: 'auto' (newest checkpoint in the work dir) or a path;
    amp: mixed precision suited to the machine (``AutoAmpOptimWrapper``); vis: extra logging backends
    ('tensorboard', 'wandb'; see ``add_vis_backends``); auto_scale_lr: mmdet's linear lr scaling instead of the
    effective batch (see ``use_auto_scale_lr``).
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    cfg.merge_from_dict(cfg_options or {})
    cfg.work_dir = work_dir or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(config))[0])
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume:
        cfg.resume, cfg.load_from = True, resume
    if amp:
        cfg.optim_wrapper.type = "AutoAmpOptimWrapper"
    if auto_scale_lr:
        use_auto_scale_lr(cfg, config)
    add_vis_backends(cfg, vis)
    if not torch.cuda.is_available():  # NCCL needs GPUs; CPU process groups (torchrun on CPU) use gloo
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    return cfg


def add_vis_backends(cfg: Config, names: Iterable[str]) -> None:
    """Adds mmengine's backend for each of ``names`` (``VIS_BACKENDS``) to the config's visualizer, beside the
    backends it has (LocalVisBackend, whose ``vis_data/scalars.json`` the report reads). Both write under the
    run's ``vis_data/``: TensorBoard's event files, and wandb's files (its run is named after the work dir;
    project and entity come from ``WANDB_PROJECT`` / ``WANDB_ENTITY``)."""
    names = list(dict.fromkeys(names))
    if not names:
        return
    unknown = [name for name in names if name not in VIS_BACKENDS]
    if unknown:
        raise ValueError(f"unknown logging backend(s) {unknown}; choose from {sorted(VIS_BACKENDS)}")
    # A config without a visualizer gets the Runner's default one (a LocalVisBackend), which we extend.
    visualizer = cfg.get("visualizer") or ConfigDict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")])
    backends = list(visualizer.get("vis_backends") or [dict(type="LocalVisBackend")])
    present = {backend.get("type") for backend in backends}
    for name in names:
        backend = dict(type=VIS_BACKENDS[name])
        if name == "wandb":
            backend["init_kwargs"] = dict(name=cfg.work_dir)
        if backend["type"] not in present:
            backends.append(backend)
    visualizer.vis_backends = backends
    cfg.visualizer = visualizer


def use_auto_scale_lr(cfg: Config, config: str) -> None:
    """mmdet's ``--auto-scale-lr``: mmengine's Runner scales the lr by (processes x batch_size) /
    ``auto_scale_lr.base_batch_size`` and logs the ratio. It replaces the effective batch (``effective_batch =
    None``: no accumulation from ``EffectiveBatchHook``), so that only one of the two mechanisms is in force."""
    if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
        raise ValueError(f"--auto-scale-lr: {config} has no auto_scale_lr.base_batch_size (the batch its lr is "
                         "set for); it keeps its effective batch by gradient accumulation instead")
    cfg.auto_scale_lr.enable = True
    cfg.effective_batch = None


def _commit() -> str:
    """The checkout's git commit (short), or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=osp.dirname(osp.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_test_results(config: str, checkpoint: str, metrics: dict, work_dir: str, *, tta: bool = False,
                       path: str | None = None) -> dict:
    """The test metrics with their provenance (config, checkpoint, commit, time, world size), written atomically
    by the main process to ``path`` (default: ``WORK_DIR/test_results.json``, ``test_results_tta.json`` for a
    test-time-augmented test: adpe.report reads both). Returns the record."""
    result = {
        "config": config,
        "checkpoint": osp.abspath(checkpoint),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "tta": tta,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _commit(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    path = path or osp.join(work_dir, TEST_RESULTS[tta])
    if is_main_process():
        AtomicLocalBackend().put_text(json.dumps(result, indent=2), path)
        print(f"[adpe] metrics written to {path}: {result['metrics']}")
    return result
