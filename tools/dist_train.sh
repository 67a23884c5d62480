#!/usr/bin/env bash
# Train (pretraining, ADE20K, COCO, ImageNet) on GPUS processes: dist_train.sh CONFIG GPUS [args...]
# On a machine without GPUs, GPUS CPU processes with the gloo backend (adpe.mm.runner.use_cpu_processes).
# args: --work-dir DIR, --resume [CKPT], --amp, --test, --vis tensorboard|wandb, --auto-scale-lr,
#       --cfg-options k=v ...;
# multi-node: see tools/launch.sh.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG GPUS [--work-dir DIR] [--resume [CKPT]] [--amp] [--test] [--vis tensorboard|wandb ...]" \
        "[--auto-scale-lr] [--cfg-options k=v ...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
exec "$(dirname "$0")/launch.sh" train.py "$GPUS" "$CONFIG" "$@"
