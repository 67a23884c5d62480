#!/usr/bin/env bash
# The CPU test suite on another torch of the tested range (README, "Supported versions"):
#
#   make test-torch TORCH_VERSION=2.11 [PYTEST_ARGS="-k env"]
#   bash tools/test_torch.sh 2.11 [pytest arguments]
#
# 1. A "system" Python with that torch (tools/torch_env.sh: a venv in $ADPE_CACHE/torch-envs with torch==<VERSION>.*
#    and its torchvision from the package index, made once), as a container or `module load pytorch` would have it.
# 2. `make setup TORCH=system` on it, into .venv-torch<VERSION> (mmcv is built against that torch once and cached;
#    WHEELHOUSE=DIR, if set, is used as usual).
# 3. pytest in .venv-torch<VERSION>, with the arguments given (default: the default run, as `make test`).
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${1:-}
[[ "$VERSION" =~ ^2\.[0-9]+$ ]] || { echo "usage: make test-torch TORCH_VERSION=2.11 (a torch minor version)" >&2; exit 2; }
shift
BASE_PY=$(bash tools/torch_env.sh "$VERSION")
echo "[test-torch] $("$BASE_PY" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")') in $BASE_PY"
VENV=".venv-torch$VERSION" TORCH=system PYTHON="$BASE_PY" bash tools/setup_env.sh
echo "[test-torch] pytest in .venv-torch$VERSION"
# the launchers (tools/dist_train.sh, ...) run $PYTHON, by default .venv/bin/python
export PYTHON="$PWD/.venv-torch$VERSION/bin/python"
exec "$PYTHON" -m pytest "$@"
