#!/usr/bin/env bash
# Slurm pretraining: slurm_pretrain.sh PARTITION JOB_NAME CONFIG [args...] (same as slurm_train.sh, with
# 10 CPUs per task by default for the multi-crop data pipeline).
CPUS_PER_TASK=${CPUS_PER_TASK:-10} exec "$(dirname "$0")/slurm_train.sh" "$@"
