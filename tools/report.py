"""Collect the results of pipeline runs into one report: tables, plots, environment and provenance.

    python tools/report.py WORK_DIR... --out DIR [--baseline NAME] [--study]

Each WORK_DIR is a variant dir (holding run.json or any of pretrain/, ade20k/, coco/) or a run dir holding
variant dirs. DIR receives results.csv, results.json, report.md and PNG plots (pretrain_loss, adv_norm,
ade20k_miou, coco_ap, final_metrics). Stages without results are shown as "missing" (no work dir),
"unfinished" (a work dir without test_results.json, or pretraining without its final-epoch checkpoint) or
"none" (a variant without pretraining, e.g. random init) -- never as 0.

--study (a run of tools/study_pipeline.yaml, make study) also writes study.md, study.json and study_curves.png:
each metric against pretraining steps, one line per pretraining variant, random init as the flat reference
(adpe.report.study).

From Python: ``adpe.report.write_report(adpe.report.collect_rows([run_dir]), out_dir, baseline=None)``.
"""

from __future__ import annotations

import argparse

from adpe.report import collect_rows, write_report
from adpe.report.study import write_study
from adpe.tooling.env import collect_env


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="variant dirs or run dirs")
    parser.add_argument("--out", required=True, help="output folder for the report")
    parser.add_argument("--baseline", help="variant name for the deltas (default: run.json baseline, else first)")
    parser.add_argument("--study", action="store_true",
                        help="also write the study's curves against pretraining steps (study.md, study_curves.png)")
    args = parser.parse_args(argv)
    try:
        rows = collect_rows(args.work_dirs)
        paths = write_report(rows, args.out, baseline=args.baseline, collect_env=collect_env)
        if args.study:
            paths.update({f"study_{k}": v for k, v in write_study(rows, args.out).items()})
    except (FileNotFoundError, ValueError) as err:  # a wrong path or baseline name: a message, not a traceback
        raise SystemExit(f"error: {err}") from err
    print(paths["md"])
    if args.study:
        print(paths["study_md"])


if __name__ == "__main__":
    main()
