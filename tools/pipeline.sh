#!/usr/bin/env bash
# pretrain -> export -> ADE20K -> COCO -> report for a list of variants: tools/pipeline.sh --config FILE.yaml
# [--dry-run] [--only VARIANT ...] [--stages ...] [--launcher slurm --partition P [--gpus-per-node N]
# [--sbatch-args="..."]]: here, stage after stage, or each stage an sbatch job. See adpe/pipeline.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # adpe from this checkout, also when not installed
exec "$PYTHON" tools/pipeline.py "$@"
