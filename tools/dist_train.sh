#!/usr/bin/env bash
# torchrun launcher for tools/train.py (pretraining, ADE20K, COCO): dist_train.sh CONFIG GPUS [args...]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (.venv/bin/python).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG GPUS [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
NNODES=${NNODES:-1}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ $GPUS -eq 1 && $NNODES -eq 1 ]]; then
    # A single process needs no process group (and mmengine then turns SyncBN into BN by itself).
    exec "$PYTHON" "$ROOT/tools/train.py" "$CONFIG" --launcher none "$@"
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
