#!/usr/bin/env bash
# Idempotent set-up of .venv with the pinned stack (requirements.txt).
#
# mmcv 2.1.0 (the newest mmcv that mmseg 1.2.2 and mmdet 3.3.0 accept) ships only as source on PyPI and
# hard-codes -std=c++17, while torch 2.14's headers need C++20. We build it once with the flag changed and
# keep the wheel in $ADPE_CACHE (default ~/.cache/adpe), keyed by mmcv, torch and Python versions and by its
# flavour: CPU ops only, or CUDA ops for given GPU architectures (`python -m adpe.tooling.env --mmcv-build` decides:
# visible GPUs or TORCH_CUDA_ARCH_LIST, with nvcc and a CUDA torch). So a fresh clone installs in about a
# minute afterwards, and a CPU-only wheel is never installed on a GPU node that shares the cache.
#
# The environment counts as ready only when .venv/.adpe-setup-ok exists; it is written last, after an
# import check of the whole stack and a run of mmcv's ops on every device present, so an interrupted or
# failed run is never mistaken for a good one.
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

# The flavour of mmcv this machine needs (it differs between a CPU login node and a GPU node sharing .venv).
mmcv_build() { PYTHONPATH="$PWD" "$VENV/bin/python" -m adpe.tooling.env --mmcv-build; }

if [[ -f "$STAMP" ]] && build=$(mmcv_build 2>/dev/null) \
        && [[ "$(cat "$STAMP")" == "$fingerprint $(sed -n 's/^MMCV_FLAVOUR=//p' <<< "$build")" ]]; then
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

build=$(mmcv_build) || die "cannot choose an mmcv build for this machine (see the error above)"
eval "$build"
say "mmcv flavour $MMCV_FLAVOUR: $MMCV_REASON"
PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$(uname -m)-$MMCV_FLAVOUR"
if ! ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    if [[ "$MMCV_FORCE_CUDA" == 1 ]]; then
        say "building mmcv $MMCV_VERSION with CPU and CUDA ops (C++20); about 6.5 minutes with MAX_JOBS=12 for one architecture"
    else
        say "building mmcv $MMCV_VERSION with compiled CPU ops (C++20); takes 8-20 minutes on 2 cores"
    fi
    mkdir -p "$CACHE/wheels"
    work=$(mktemp -d "$CACHE/wheels/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION" \
        || die "could not download the mmcv $MMCV_VERSION source from PyPI"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    grep -q -- "-std=c++17" "$src/setup.py" || die "mmcv's setup.py no longer contains -std=c++17; update tools/setup_env.sh"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$MMCV_FORCE_CUDA TORCH_CUDA_ARCH_LIST="$MMCV_CUDA_ARCHS" \
        MAX_JOBS=${MAX_JOBS:-$(nproc)} \
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
# --force-reinstall: a .venv shared by nodes of different flavours must get this node's mmcv, not keep the other.
"${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl \
    || die "pip could not install the cached mmcv wheel from $WHEELS"
"${PIP[@]}" install -q --find-links "$WHEELS" -r requirements.txt \
    || die "pip could not install requirements.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e . || die "pip could not install the adpe package"

say "checking the stack"
"$VPY" -m adpe.tooling.env --check || die "the installed stack does not import or its compiled ops fail; see the error above"
echo "$fingerprint $MMCV_FLAVOUR" > "$STAMP"
say "ready: $VENV"
