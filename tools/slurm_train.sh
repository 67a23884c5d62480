#!/usr/bin/env bash
# Slurm launcher for tools/train.py (pretraining, ADE20K, COCO, ImageNet):
# slurm_train.sh PARTITION JOB_NAME CONFIG [args...]
# GPUS (8 total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS set the allocation.
set -euo pipefail
if [[ $# -lt 3 ]]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG [train.py args...]" >&2
    exit 2
fi
exec "$(dirname "$0")/slurm_launch.sh" train.py "$@"
