"""Draw a trained model's predictions: segmentation overlays (mmseg) or boxes and masks (mmdet).

python tools/infer.py CONFIG CHECKPOINT IMAGE|FOLDER [...] --out DIR [--device cpu] [--score-thr 0.3]
Writes DIR/vis/<image name> per image (and mmseg's label PNGs to DIR/pred). CONFIG: the run's saved config
(WORK_DIR/CONFIG_NAME.py) or the benchmark config; the backbone is built as the checkpoint was trained.
"""

from __future__ import annotations

import argparse

import adpe.mm  # noqa: F401  (registers the suite's modules)
from adpe.mm.inference import infer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="trained checkpoint (tools/train.py output)")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: cuda if available)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="detections drawn from this score up (mmdet)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    drawn = infer(args.config, args.checkpoint, args.images, args.out, device=args.device, score_thr=args.score_thr)
    print(f"[adpe] {len(drawn)} drawings written to {args.out}/vis")


if __name__ == "__main__":
    main()
