#!/usr/bin/env bash
# A "system" Python with a given torch, as a container or `module load pytorch` provides one, for
# `make setup TORCH=system` on a machine without such a Python (tools/test_torch.sh, tests/test_setup_offline.py):
#
#   bash tools/torch_env.sh 2.11     -> prints the path of its python
#
# $ADPE_CACHE/torch-envs/torch<VERSION>-cp<XY>: a venv of PYTHON (default python3) holding torch==<VERSION>.* and the
# torchvision of the same release (0.<minor + 15>) with their dependencies, from the package index; made once, kept.
set -euo pipefail
VERSION=${1:-}
[[ "$VERSION" =~ ^2\.([0-9]+)$ ]] || { echo "usage: tools/torch_env.sh 2.11 (a torch minor version)" >&2; exit 2; }
VISION="0.$((BASH_REMATCH[1] + 15))"  # torchvision 0.26 goes with torch 2.11, 0.29 with 2.14
PY=${PYTHON:-python3}
CACHE=${ADPE_CACHE:-$HOME/.cache/adpe}
pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
BASE="$CACHE/torch-envs/torch$VERSION-$pytag"
if ! "$BASE/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('$VERSION.')" 2>/dev/null; then
    echo "[torch-env] making $BASE: torch==$VERSION.*, torchvision==$VISION.* from the package index" >&2
    rm -rf "$BASE"
    mkdir -p "$(dirname "$BASE")"
    "$PY" -m venv "$BASE"
    "$BASE/bin/python" -m pip install -q --disable-pip-version-check "torch==$VERSION.*" "torchvision==$VISION.*" >&2
fi
echo "$BASE/bin/python"
