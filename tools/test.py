"""Evaluate a trained mmseg / mmdet checkpoint and write the metrics as JSON in the work dir.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]
(tools/dist_test.sh CONFIG CHECKPOINT GPUS [...] launches it with torchrun.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import subprocess

from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.runner import Runner

import adpe.mm  # noqa: F401  (registers the suite's modules)
from adpe.checkpoint import load_checkpoint_file
from adpe.mm.engine import AtomicLocalBackend
from adpe.mm.runner import build_config
from adpe.mm.transfer import backbone_settings_of_trained


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="trained checkpoint (tools/train.py output)")
    parser.add_argument("--work-dir", help="default: work_dirs/CONFIG_NAME")
    parser.add_argument("--out", help="metrics JSON (default: WORK_DIR/test_results.json)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args(argv)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=osp.dirname(osp.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    cfg = build_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher)
    backbone = cfg.model.get("backbone", {})
    if backbone.get("type") == "AdPEViT":  # same structure as trained; weights come from the checkpoint
        backbone.update(backbone_settings_of_trained(load_checkpoint_file(args.checkpoint)))
        backbone["init_cfg"] = None
    cfg.load_from, cfg.resume = args.checkpoint, False
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    result = {
        "config": args.config,
        "checkpoint": osp.abspath(args.checkpoint),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _commit(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    out = args.out or osp.join(cfg.work_dir, "test_results.json")
    if is_main_process():
        AtomicLocalBackend().put_text(json.dumps(result, indent=2), out)
        print(f"[adpe] metrics written to {out}: {result['metrics']}")
    return result


if __name__ == "__main__":
    main()
