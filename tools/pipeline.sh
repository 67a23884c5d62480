#!/usr/bin/env bash
# pretrain -> export -> ADE20K -> COCO -> report for a list of variants: tools/pipeline.sh --config FILE.yaml
# [--dry-run] [--only VARIANT ...] [--stages ...] [--launcher slurm --partition P [--gpus-per-node N]
# [--sbatch-args="..."]]: here, stage after stage, or each stage an sbatch job. See adpe/tooling/pipeline.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
cd "$ROOT"
exec "$PYTHON" tools/pipeline.py "$@"
