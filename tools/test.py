"""Evaluate a trained mmseg / mmdet / mmpretrain checkpoint and write the metrics as JSON in the work dir.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--metrics-json FILE] [--out PATH] [--show-dir DIR]
                     [--tta] [--cfg-options k=v ...]
--out, --show-dir and --tta mean what they mean to mmseg's and mmdet's tools/test.py.
(tools/dist_test.sh CONFIG CHECKPOINT GPUS [...] launches it with torchrun, tools/slurm_test.sh on Slurm.)
"""

from __future__ import annotations

import argparse

from mmengine.config import DictAction
from mmengine.runner import Runner

import adpe.mm  # noqa: F401  (registers the suite's modules)
from adpe.checkpoint import fetch_checkpoint
from adpe.mm.inference import check_checkpoint_fits, configure_test, use_trained_backbone
from adpe.mm.optim import bare_model
from adpe.mm.records import set_records_file
from adpe.mm.runner import build_config, write_test_results
from adpe.report.samples import records_path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="trained checkpoint (tools/train.py output)")
    parser.add_argument("--work-dir", help="default: work_dirs/CONFIG_NAME")
    parser.add_argument("--metrics-json", help="where the metrics go (default: WORK_DIR/test_results.json, "
                        "WORK_DIR/test_results_tta.json with --tta); the per-image records go beside it "
                        "(test_records*.npz, X.records.npz for X.json)")
    parser.add_argument("--out", help="predictions: a folder of label PNGs (mmseg) or a .pkl file (mmdet)")
    parser.add_argument("--show-dir", help="draw every prediction into DIR (the config's visualization hook)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: the config's tta_pipeline and tta_model")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:  # a URL is downloaded once into the checkpoint cache; the runner then reads that local copy
        args.checkpoint = str(fetch_checkpoint(args.checkpoint))
    except OSError as err:  # no such file, or a URL that cannot be fetched (the message names it)
        raise SystemExit(f"error: {err}") from err
    cfg = build_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher)
    use_trained_backbone(cfg, args.checkpoint)
    cfg.load_from, cfg.resume = args.checkpoint, False
    configure_test(cfg, show_dir=args.show_dir, tta=args.tta, out=args.out)
    if args.metrics_json:  # the per-image records go beside the metrics (default: WORK_DIR/test_records*.npz)
        set_records_file(cfg, str(records_path(args.metrics_json)))
    runner = Runner.from_cfg(cfg)
    try:
        check_checkpoint_fits(bare_model(runner.model), args.checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    metrics = runner.test()
    return write_test_results(args.config, args.checkpoint, metrics, cfg.work_dir, tta=args.tta,
                              path=args.metrics_json)


if __name__ == "__main__":
    main()
