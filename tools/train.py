"""Train from an mmengine config: pretraining (pretrain/), ADE20K (mmseg), COCO (mmdet) and ImageNet (mmpretrain).

One process:      python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--test]
                  [--vis tensorboard|wandb ...] [--auto-scale-lr] [--cfg-options k=v ...]
Distributed:      tools/pretrain.sh / tools/dist_train.sh (torchrun, --launcher pytorch), tools/slurm_*.sh
"""

from __future__ import annotations

import argparse

from mmengine.config import DictAction
from mmengine.runner import Runner

import adpe.mm  # noqa: F401  (registers the suite's modules)
from adpe.mm.hooks import newest_checkpoint
from adpe.mm.runner import VIS_BACKENDS, build_config, write_test_results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/CONFIG_NAME)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from CKPT, or from the newest checkpoint in the work dir if no CKPT")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: bf16 autocast on CPUs and bf16 GPUs, fp16 + dynamic loss scale "
                        "on older GPUs (AutoAmpOptimWrapper)")
    parser.add_argument("--vis", nargs="+", action="extend", choices=sorted(VIS_BACKENDS), default=[],
                        help="also log to TensorBoard / Weights & Biases (beside the local scalars.json the report "
                        "reads); repeatable: --vis tensorboard wandb, or --vis tensorboard --vis wandb")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="mmdet's linear lr scaling by actual batch / auto_scale_lr.base_batch_size, instead "
                        "of keeping the config's effective_batch by gradient accumulation")
    parser.add_argument("--test", action="store_true",
                        help="after training, test the final model on the config's test split and write "
                        "WORK_DIR/test_results.json, as tools/test.py does with the newest checkpoint")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = build_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher,
                       resume=args.resume, amp=args.amp, vis=args.vis, auto_scale_lr=args.auto_scale_lr)
    if args.test and not all(cfg.get(key) for key in ("test_dataloader", "test_evaluator")):
        raise SystemExit(f"error: --test: {args.config} has no test_dataloader / test_evaluator to test with "
                         "(pretraining configs have none); drop --test")
    runner = Runner.from_cfg(cfg)
    runner.train()
    if args.test:  # in the same process: the start-up of a second one costs more than a small test set
        write_test_results(args.config, str(newest_checkpoint(cfg.work_dir)), runner.test(), cfg.work_dir)


if __name__ == "__main__":
    main()
