#!/usr/bin/env bash
# Pretrain with torchrun: tools/pretrain.sh CONFIG GPUS [train.py args...]
#   one machine:   tools/pretrain.sh pretrain/adpe_vitb_rpe_coord.py 8
#   several nodes: NNODES=4 NODE_RANK=0..3 MASTER_ADDR=host0 PORT=29500 tools/pretrain.sh CONFIG 8
#   CPU / 1 GPU:   tools/pretrain.sh CONFIG 1   (one plain process, no process group)
exec "$(dirname "$0")/dist_train.sh" "$@"
