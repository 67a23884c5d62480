"""Generate the synthetic demo datasets (ImageNet-, ADE20K- and COCO-format) used by the demo and tests.

    python tools/make_demo_data.py [--root data/demo] [--seed 0] [--scale demo] [--force]

Writes ROOT/imagenet, ROOT/ade20k and ROOT/coco; a dataset already complete with the same parameters is
kept as it is (use --force to rewrite it).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import time

from adpe.tooling.demo_data import MARKER, SCALES, write_all


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/demo", help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES),
                        help="dataset sizes, see adpe.tooling.demo_data.SCALES (default: demo)")
    parser.add_argument("--force", action="store_true", help="rewrite datasets that are already complete")
    return parser.parse_args(argv)


def _count_files(path: str) -> int:
    return sum(len([f for f in files if not f.startswith(".")]) for _, _, files in os.walk(path))


def _marker_stamp(path: str) -> int | None:
    try:
        return os.stat(osp.join(path, MARKER)).st_mtime_ns
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    before = {name: _marker_stamp(osp.join(args.root, name)) for name in SCALES[args.scale]}
    t0 = time.perf_counter()
    paths = write_all(args.root, seed=args.seed, scale=args.scale, force=args.force)
    elapsed = time.perf_counter() - t0
    sizes = SCALES[args.scale]
    for name, path in paths.items():
        params = ", ".join(f"{k}={v}" for k, v in sizes[name].items())
        action = "kept " if before[name] is not None and before[name] == _marker_stamp(str(path)) else "wrote"
        print(f"{action} {name:9s} {path}  ({_count_files(str(path))} files; {params}, seed={args.seed})")
    print(f"done in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
