#!/usr/bin/env bash
# The CPU test suite on another torch of the tested range (README, "Supported versions"):
#
#   make test-torch TORCH_VERSION=2.11 [PYTEST_ARGS="-k env"]
#   bash tools/test_torch.sh 2.11 [pytest arguments]
#
# 1. A "system" Python with that torch, as a container or `module load pytorch` would have it:
#    $ADPE_CACHE/torch-envs/torch<VERSION>-cp<XY>, a venv of PYTHON (default python3) with torch==<VERSION>.* and
#    the matching torchvision from the package index (made once, kept).
# 2. `make setup TORCH=system` on it, into .venv-torch<VERSION> (mmcv is built against that torch once and cached;
#    WHEELHOUSE=DIR, if set, is used as usual).
# 3. pytest in .venv-torch<VERSION>, with the arguments given (default: the default run, as `make test`).
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${1:-}
[[ "$VERSION" =~ ^2\.([0-9]+)$ ]] || { echo "usage: make test-torch TORCH_VERSION=2.11 (a torch minor version)" >&2; exit 2; }
shift
minor=${BASH_REMATCH[1]}
VISION="0.$((minor + 15))"  # torchvision 0.26 goes with torch 2.11, 0.29 with 2.14
PY=${PYTHON:-python3}
CACHE=${ADPE_CACHE:-$HOME/.cache/adpe}
pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
BASE="$CACHE/torch-envs/torch$VERSION-$pytag"
say() { printf '[test-torch] %s\n' "$*"; }

if ! "$BASE/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('$VERSION.')" 2>/dev/null; then
    say "making $BASE: torch==$VERSION.*, torchvision==$VISION.* from the package index"
    rm -rf "$BASE"
    mkdir -p "$(dirname "$BASE")"
    "$PY" -m venv "$BASE"
    "$BASE/bin/python" -m pip install -q --disable-pip-version-check "torch==$VERSION.*" "torchvision==$VISION.*"
fi
say "$("$BASE/bin/python" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")') in $BASE"

VENV=".venv-torch$VERSION" TORCH=system PYTHON="$BASE/bin/python" bash tools/setup_env.sh
say "pytest in .venv-torch$VERSION"
exec ".venv-torch$VERSION/bin/python" -m pytest "$@"
