#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh: slurm_launch.sh ENTRY.py PARTITION JOB_NAME [args...]
# GPUS (8 total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS set the allocation.
set -euo pipefail
ENTRY=$1
PARTITION=$2
JOB_NAME=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 \
    ${SRUN_ARGS:-} "$PYTHON" -u "$ROOT/tools/$ENTRY" "$@" --launcher slurm
