"""Compare the tests of any two runs: each shared metric with its 95% interval, the paired delta A - B and its
verdict ("better", "worse" or "not distinguishable"; docs/statistics.md).

    python tools/compare.py WORK_DIR_A WORK_DIR_B [--tta] [--shared-only] [--draws B]

Each WORK_DIR is a test work dir holding test_results.json and test_records.npz (what tools/test.py and
tools/train.py --test write), or a stage dir of seed_N/ work dirs (seeds resampled, then images). The two must
have been tested on the same images; --shared-only pairs them on the images they share instead.
"""

from __future__ import annotations

import argparse

from adpe.report.intervals import ImageSetMismatch, compare_dirs
from adpe.report.tabulate import delta_text, format_value, interval_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir_a", metavar="WORK_DIR_A")
    parser.add_argument("work_dir_b", metavar="WORK_DIR_B")
    parser.add_argument("--tta", action="store_true", help="compare the --tta tests (test_records_tta.npz)")
    parser.add_argument("--shared-only", action="store_true",
                        help="runs tested on different images: pair them on the images both have")
    parser.add_argument("--draws", type=int, help="bootstrap draws (default: 1000; 200 for COCO AP)")
    args = parser.parse_args(argv)
    try:
        compared = compare_dirs(args.work_dir_a, args.work_dir_b, tta=args.tta, shared_only=args.shared_only,
                                draws=args.draws)
    except (FileNotFoundError, ImageSetMismatch) as err:
        raise SystemExit(f"error: {err}") from err
    if not compared:
        raise SystemExit("error: the two runs share no metric (different tasks?)")
    first = compared[0].delta
    print(f"A: {args.work_dir_a}\nB: {args.work_dir_b}\n{first.n_images} images, {first.seeds} seed(s) at most, "
          f"{first.level:.0%} bootstrap intervals\n")
    for c in compared:
        print(f"{c.name:>10}  A {format_value(c.a.point, c.decimals)} {interval_text(c.a, c.decimals)}  "
              f"B {format_value(c.b.point, c.decimals)} {interval_text(c.b, c.decimals)}  "
              f"A - B {delta_text(c.delta, c.decimals)} (B = {c.delta.draws}, sign flips {c.delta.sign_flip:.1%})")


if __name__ == "__main__":
    main()
