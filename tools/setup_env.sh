#!/usr/bin/env bash
# Idempotent set-up of .venv with the pinned stack (requirements.txt).
#
# mmcv 2.1.0 (the newest mmcv that mmseg 1.2.2 and mmdet 3.3.0 accept) ships only as source on PyPI and
# hard-codes -std=c++17, while torch 2.14's headers need C++20. We build it once with the flag changed and
# keep the wheel in $ADPE_CACHE (default ~/.cache/adpe), keyed by mmcv, torch and Python versions, so a
# fresh clone installs in about a minute afterwards.
#
# The environment counts as ready only when .venv/.adpe-setup-ok exists; it is written last, after an
# import check of the whole stack, so an interrupted or failed run is never mistaken for a good one.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="$PWD/.venv"
STAMP="$VENV/.adpe-setup-ok"
PY=${PYTHON:-python3}
MMCV_VERSION=2.1.0
TORCH_VERSION=$(sed -n 's/^torch==//p' requirements.txt)
CACHE=${ADPE_CACHE:-$HOME/.cache/adpe}
fingerprint=$(cat requirements.txt pyproject.toml tools/setup_env.sh | sha256sum | cut -c1-16)

say() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] FAILED: %s\n' "$1" >&2
    printf '[setup] Nothing was marked ready. Fix the cause above and run `make setup` again;\n' >&2
    printf '[setup] finished steps are skipped, a built mmcv wheel is reused from %s.\n' "$CACHE" >&2
    exit 1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$fingerprint" ]]; then
    say "environment up to date ($VENV)"
    exit 0
fi
rm -f "$STAMP"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    say "creating $VENV with $($PY --version 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "could not create $VENV with $PY (set PYTHON=/path/to/python3.11)"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input)
pin() { grep -E "^$1==" requirements.txt; }

say "installing build prerequisites (torch $TORCH_VERSION, numpy, setuptools)"
"${PIP[@]}" install -q "$(pin setuptools)" "$(pin numpy)" "$(pin torch)" wheel ninja \
    || die "pip could not install torch/numpy/setuptools"

PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$(uname -m)"
if ! ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    say "building mmcv $MMCV_VERSION with compiled ops (C++20); takes 7-10 minutes on 2 cores"
    mkdir -p "$CACHE/wheels"
    work=$(mktemp -d "$CACHE/wheels/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION" \
        || die "could not download the mmcv $MMCV_VERSION source from PyPI"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    grep -q -- "-std=c++17" "$src/setup.py" || die "mmcv's setup.py no longer contains -std=c++17; update tools/setup_env.sh"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/dist" . > "$work/build.log" 2>&1) || {
        tail -n 40 "$work/build.log" >&2
        cp "$work/build.log" "$CACHE/wheels/mmcv-build-failed.log"
        die "building mmcv $MMCV_VERSION failed (full log: $CACHE/wheels/mmcv-build-failed.log)"
    }
    # Publish atomically: a wheel in $WHEELS is always complete.
    mkdir -p "$WHEELS"
    built=$(ls "$work"/dist/mmcv-*.whl)
    cp "$built" "$WHEELS/.partial.whl" && mv "$WHEELS/.partial.whl" "$WHEELS/$(basename "$built")"
    say "cached $WHEELS/$(basename "$built")"
fi

say "installing the pinned stack and the adpe package"
"${PIP[@]}" install -q --find-links "$WHEELS" -r requirements.txt \
    || die "pip could not install requirements.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e . || die "pip could not install the adpe package"

say "checking the stack"
"$VPY" - <<'PY' || die "the installed stack does not import; see the error above"
import cv2, mmcv, mmcv.ops, mmdet, mmengine, mmpretrain.models, mmseg, numpy, timm, torch  # noqa: F401
from mmcv.ops import nms
boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)[1]
assert keep.tolist() == [0], keep
print(f"[setup] torch {torch.__version__}, mmcv {mmcv.__version__} (ops ok), mmseg {mmseg.__version__}, "
      f"mmdet {mmdet.__version__}, numpy {numpy.__version__}, opencv {cv2.__version__}")
PY
echo "$fingerprint" > "$STAMP"
say "ready: $VENV"
