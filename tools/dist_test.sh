#!/usr/bin/env bash
# torchrun launcher for tools/test.py: dist_test.sh CONFIG CHECKPOINT GPUS [args...]
# Writes WORK_DIR/test_results.json. Environment as for dist_train.sh.
set -euo pipefail
if [[ $# -lt 3 ]]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
NNODES=${NNODES:-1}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ $GPUS -eq 1 && $NNODES -eq 1 ]]; then
    exec "$PYTHON" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher none "$@"
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
