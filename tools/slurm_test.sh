#!/usr/bin/env bash
# Slurm launcher for tools/test.py: slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [args...]
# args as for tools/test.py (--work-dir, --metrics-json, --out, --show-dir, --tta, --cfg-options).
# GPUS (8 total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS set the allocation.
set -euo pipefail
if [[ $# -lt 4 ]]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" >&2
    exit 2
fi
exec "$(dirname "$0")/slurm_launch.sh" test.py "$@"
