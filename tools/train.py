"""Train from an mmengine config: pretraining (pretrain/), ADE20K (mmseg) and COCO (mmdet) transfer.

One process:      python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
Distributed:      tools/pretrain.sh / tools/dist_train.sh (torchrun, --launcher pytorch), tools/slurm_*.sh
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the checkout, when not installed

from mmengine.runner import Runner  # noqa: E402

import adpe.mm  # noqa: E402,F401  (registers the suite's modules)
from adpe.mm.transfer import resolve_auto_backbone  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/CONFIG_NAME)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from CKPT, or from the newest checkpoint in the work dir if no CKPT")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: bf16 autocast on CPU, mmengine's AmpOptimWrapper on GPU")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args(argv)


def world_size() -> int:
    """Processes of this job: torchrun sets WORLD_SIZE, srun SLURM_NTASKS (mmengine copies it later)."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def apply_effective_batch(cfg: Config) -> None:
    """Set accumulative_counts so that GPUs x batch_size x accumulation = cfg.effective_batch (images)."""
    target = cfg.get("effective_batch")
    if not target:
        return
    per_step = world_size() * cfg.train_dataloader.batch_size
    if target % per_step:
        raise SystemExit(
            f"effective_batch={target} is not a multiple of {world_size()} processes x batch_size "
            f"{cfg.train_dataloader.batch_size} = {per_step}. Change the GPU count or pass "
            "--cfg-options train_dataloader.batch_size=N (or effective_batch=None to keep the config's "
            "accumulative_counts)."
        )
    cfg.optim_wrapper.accumulative_counts = target // per_step
    print(f"[adpe] effective batch {target} images = {world_size()} processes x {per_step // world_size()}"
          f" x {target // per_step} accumulation steps")


def apply_amp(cfg: Config, requested: bool) -> None:
    """--amp, or a config asking for mmengine's AmpOptimWrapper: fp16/bf16 AMP on GPU, bf16 autocast on CPU
    (mmengine's AmpOptimWrapper asserts a GPU)."""
    wrapper = cfg.optim_wrapper
    if requested:
        wrapper.type = "AmpOptimWrapper"
    if wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        wrapper.type = "AutocastOptimWrapper"
        wrapper.pop("loss_scale", None)
        wrapper.dtype = "bfloat16"


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    apply_amp(cfg, args.amp)
    resolve_auto_backbone(cfg)
    if not torch.cuda.is_available():  # NCCL needs GPUs; CPU process groups use gloo
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    apply_effective_batch(cfg)
    return cfg


def main(argv=None) -> None:
    cfg = build_config(parse_args(argv))
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == "__main__":
    main()
