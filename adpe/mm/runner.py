"""The config a launcher hands to mmengine's Runner: the file, the command line's overrides, and nothing more.

What a run computes lives in the config itself (accumulation in ``EffectiveBatchHook``, mixed precision in
``AutoAmpOptimWrapper``, 'auto' backbone settings in ``AdPEViT``), so ``Runner.from_cfg(Config.fromfile(path))``
in a user's script, mmseg's or mmdet's ``tools/train.py`` and our launchers all run the same thing.
"""

from __future__ import annotations

import os.path as osp

import torch
from mmengine.config import Config


def build_config(
    config: str,
    *,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    resume: str | None = None,
    amp: bool = False,
) -> Config:
    """``config`` with the launcher's options applied, as mmseg's and mmdet's ``tools/train.py`` do.

    work_dir: default ``work_dirs/CONFIG_NAME``; resume: 'auto' (newest checkpoint in the work dir) or a path;
    amp: mixed precision suited to the machine (``AutoAmpOptimWrapper``).
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
    if not torch.cuda.is_available():  # NCCL needs GPUs; CPU process groups (torchrun on CPU) use gloo
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    return cfg
