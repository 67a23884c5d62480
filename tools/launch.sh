#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: launch.sh ENTRY.py GPUS [args...]
# One process without a process group when GPUS=1 on one node (mmengine then turns SyncBN into BN by itself,
# and a CPU machine needs nothing else); torchrun otherwise.
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (.venv/bin/python).
set -euo pipefail
ENTRY=$1
GPUS=$2
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
NNODES=${NNODES:-1}
if [[ $GPUS -eq 1 && $NNODES -eq 1 ]]; then
    exec "$PYTHON" "$ROOT/tools/$ENTRY" "$@" --launcher none
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$ROOT/tools/$ENTRY" "$@" --launcher pytorch
