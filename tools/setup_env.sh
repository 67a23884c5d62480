#!/usr/bin/env bash
# Idempotent set-up of .venv with the pinned stack (requirements.txt).
#
#   make setup                                   pinned torch from the package index
#   make setup TORCH=system [PYTHON=python3]     reuse the torch / torchvision that PYTHON imports (a container's,
#                                                a `module load pytorch`'s, a conda env's); pins everything else
#   make setup WHEELHOUSE=DIR [TORCH=system]     no package index at all: every package from DIR (tools/wheelhouse.sh)
#
# Variables (environment or make): PYTHON (the interpreter, default python3; 3.11 or 3.12), TORCH (pinned | system),
# WHEELHOUSE (a folder made by `make wheelhouse`; sub-folders part-N are read too), VENV (default .venv),
# ADPE_CACHE (default ~/.cache/adpe), MAX_JOBS (mmcv build jobs, default: all cores),
# ADPE_ALLOW_UNTESTED_TORCH=1 (TORCH=system: go on with a torch outside the tested range, with a warning),
# KEEP_SYSTEM=1 (TORCH=system: keep the system Python's own version of a pinned package it already has, e.g. a
# container's numpy or matplotlib, instead of installing the pin in front of it; the OpenMMLab packages, timm and
# setuptools stay pinned; for wheelhouses made with PRESENT=, see tools/wheelhouse.sh).
# PYTHON, TORCH, WHEELHOUSE and KEEP_SYSTEM are remembered in $VENV/.adpe-setup-args: a later plain `make setup` (as
# `make test` and `make env` run) keeps the system torch and the wheelhouse instead of reaching for the index.
#
# mmcv 2.1.0 (the newest mmcv that mmseg 1.2.2 and mmdet 3.3.0 accept) ships only as source on PyPI and
# hard-codes -std=c++17, while torch 2.14's headers need C++20. We build it once with the flag changed and
# keep the wheel in $ADPE_CACHE (default ~/.cache/adpe), keyed by mmcv, torch and Python versions and by its
# flavour: CPU ops only, or CUDA ops for given GPU architectures (`python -m adpe.tooling.env --mmcv-build` decides:
# visible GPUs or TORCH_CUDA_ARCH_LIST, with nvcc and a CUDA torch). So a fresh clone installs in about a
# minute afterwards, and a CPU-only wheel is never installed on a GPU node that shares the cache.
#
# The environment counts as ready only when $VENV/.adpe-setup-ok exists; it is written last, after an
# import check of the whole stack and a run of mmcv's ops on every device present, so an interrupted or
# failed run is never mistaken for a good one.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
[[ "$VENV" = /* ]] || VENV="$ROOT/$VENV"
STAMP="$VENV/.adpe-setup-ok"
ARGS_FILE="$VENV/.adpe-setup-args"
MMCV_VERSION=2.1.0
PINNED_TORCH=$(sed -n 's/^torch==//p' requirements.txt)
# The torch releases the suite is tested with (README, "Supported versions"): minor versions, both ends included.
TORCH_TESTED_MIN=2.11
TORCH_TESTED_MAX=2.14
CACHE=${ADPE_CACHE:-$HOME/.cache/adpe}

say() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] FAILED: %s\n' "$1" >&2
    printf '[setup] Nothing was marked ready. Fix the cause above and run `make setup` again;\n' >&2
    printf '[setup] finished steps are skipped, a built mmcv wheel is reused from %s.\n' "$CACHE" >&2
    exit 1
}

# ------------------------------------------------------------------ what to do: remembered and given settings
remembered() { [[ -f "$ARGS_FILE" ]] && sed -n "s/^$1=//p" "$ARGS_FILE" || true; }
PY=${PYTHON:-$(remembered PYTHON)}
PY=${PY:-python3}
TORCH=${TORCH:-$(remembered TORCH)}
TORCH=${TORCH:-pinned}
WHEELHOUSE=${WHEELHOUSE:-$(remembered WHEELHOUSE)}
KEEP_SYSTEM=${KEEP_SYSTEM:-$(remembered KEEP_SYSTEM)}
KEEP_SYSTEM=${KEEP_SYSTEM:-0}
case "$TORCH" in
    pinned|system) ;;
    *) die "TORCH=$TORCH: use TORCH=pinned (torch $PINNED_TORCH from the index or the wheelhouse) or TORCH=system" ;;
esac
[[ "$KEEP_SYSTEM" == 0 || "$TORCH" == system ]] || die "KEEP_SYSTEM=1 needs TORCH=system"
FIND_LINKS=()
if [[ -n "$WHEELHOUSE" ]]; then
    [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder (make one with \`make wheelhouse WHEELHOUSE=DIR\`)"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    FIND_LINKS=(--no-index --find-links "$WHEELHOUSE")
    for part in "$WHEELHOUSE"/part-*/; do [[ -d "$part" ]] && FIND_LINKS+=(--find-links "${part%/}"); done
fi
# Files that `make wheelhouse SPLIT_MIB=N` cut into NAME.chunk-I-of-K: joined into $VENV/adpe/joined (after the
# venv exists), each checked against the wheelhouse's SHA256SUMS.
join_chunks() {
    local first name count joined="$VENV/adpe/joined" i piece
    [[ -n "$WHEELHOUSE" ]] || return 0
    while IFS= read -r first; do
        name=$(basename "${first%.chunk-1-of-*}")
        count=${first##*-of-}
        [[ -f "$joined/$name" ]] && continue
        mkdir -p "$joined"
        : > "$joined/.$name.partial"
        for ((i = 1; i <= count; i++)); do
            piece=$(find "$WHEELHOUSE" -maxdepth 2 -name "$name.chunk-$i-of-$count" | head -n 1)
            [[ -n "$piece" ]] || die "$WHEELHOUSE lacks $name.chunk-$i-of-$count: bring every part of the wheelhouse"
            cat "$piece" >> "$joined/.$name.partial"
        done
        if [[ -f "$WHEELHOUSE/SHA256SUMS" ]]; then
            want=$(awk -v n="$name" '$2 == n {print $1}' "$WHEELHOUSE/SHA256SUMS")
            [[ "$(sha256sum < "$joined/.$name.partial" | cut -d' ' -f1)" == "$want" ]] \
                || die "$name joined from its chunks does not match $WHEELHOUSE/SHA256SUMS: bring the parts again"
        fi
        mv "$joined/.$name.partial" "$joined/$name"
        say "joined $name from $count chunks"
    done < <(find "$WHEELHOUSE" -maxdepth 2 -name '*.chunk-1-of-*' | sort)
    [[ -d "$joined" ]] && FIND_LINKS+=(--find-links "$joined")
    return 0
}

# The interpreter: 3.11 or 3.12 (what requires-python in pyproject.toml allows).
py_version=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null) \
    || die "cannot run PYTHON=$PY (set PYTHON=/path/to/python3.11 or python3.12)"
case "$py_version" in
    3.11|3.12) ;;
    *) die "PYTHON=$PY is Python $py_version; the suite needs Python 3.11 or 3.12 (set PYTHON=/path/to/python3.12)" ;;
esac

# TORCH=system: the torch and torchvision that PYTHON imports, refused outside the tested range.
SYSTEM_SITE=()
if [[ "$TORCH" == system ]]; then
    probe=$("$PY" - "$TORCH_TESTED_MIN" "$TORCH_TESTED_MAX" <<'EOF'
import re, sys
low, high = (tuple(int(p) for p in v.split(".")) for v in sys.argv[1:3])
try:
    import torch
except Exception as err:
    print(f"error=cannot import torch ({type(err).__name__}: {err})")
    sys.exit()
try:
    import torchvision
    tv = torchvision.__version__
except Exception as err:
    tv = f"none ({type(err).__name__}: {err})"
m = re.match(r"(\d+)\.(\d+)", torch.__version__)
ok = m is not None and low <= (int(m[1]), int(m[2])) <= high
# The constraint needs the distributions' versions: a PyPI wheel's torch.__version__ carries a local label
# ("2.11.0+cu130") that its metadata ("2.11.0") does not.
from importlib import metadata
dists = []
for name in ("torch", "torchvision"):
    try:
        dists.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
print(f"version={torch.__version__}\nvision={tv}\nlocation={torch.__file__.rsplit('/torch/', 1)[0]}\ntested={int(ok)}")
print(f"dists={' '.join(dists)}")
EOF
    ) || die "cannot run PYTHON=$PY"
    probe_get() { sed -n "s/^$1=//p" <<< "$probe"; }
    [[ -z "$(probe_get error)" ]] || die "TORCH=system: PYTHON=$PY $(probe_get error). Load the container's or module's \
Python (or set PYTHON), or leave TORCH unset for the pinned torch $PINNED_TORCH."
    TORCH_VERSION=$(probe_get version)
    TORCHVISION_VERSION=$(probe_get vision)
    TORCH_LOCATION=$(probe_get location)
    TORCH_DISTS=$(probe_get dists)
    # The mmcv cache key: the distribution's version ("2.14.1" for PyPI's torch whose __version__ is "2.14.1+cu130"),
    # so that the pinned set-up and TORCH=system on the same torch share a wheel.
    TORCH_KEY=$(tr ' ' '\n' <<< "$TORCH_DISTS" | sed -n 's/^torch==//p')
    TORCH_KEY=${TORCH_KEY:-$TORCH_VERSION}
    if [[ "$(probe_get tested)" != 1 ]]; then
        msg="TORCH=system: $PY has torch $TORCH_VERSION ($TORCH_LOCATION), outside the tested range \
torch $TORCH_TESTED_MIN to $TORCH_TESTED_MAX (README, \"Supported versions\"). Use a container or module with a torch \
in that range, or leave TORCH unset for the pinned torch $PINNED_TORCH in .venv; ADPE_ALLOW_UNTESTED_TORCH=1 goes on \
at your own risk."
        [[ "${ADPE_ALLOW_UNTESTED_TORCH:-0}" == 1 ]] || die "$msg"
        say "WARNING: ADPE_ALLOW_UNTESTED_TORCH=1: going on with untested torch $TORCH_VERSION"
    fi
    [[ "$TORCHVISION_VERSION" != none* ]] || die "TORCH=system: $PY has torch $TORCH_VERSION but no torchvision \
($TORCHVISION_VERSION). Install the torchvision built for this torch in the container or module (pip would \
otherwise fetch one that drags in another torch)."
    SYSTEM_SITE=(--system-site-packages)
    say "TORCH=system: torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION from $TORCH_LOCATION"
else
    TORCH_VERSION=$PINNED_TORCH
    TORCH_KEY=$PINNED_TORCH
fi

fingerprint=$( (cat requirements.txt pyproject.toml tools/setup_env.sh; echo "$TORCH $TORCH_VERSION $py_version $KEEP_SYSTEM") \
    | sha256sum | cut -c1-16)

# The flavour of mmcv this machine needs (it differs between a CPU login node and a GPU node sharing .venv).
mmcv_build() { PYTHONPATH="$ROOT" "$VENV/bin/python" -m adpe.tooling.env --mmcv-build; }

if [[ -f "$STAMP" ]] && build=$(mmcv_build 2>/dev/null) \
        && [[ "$(cat "$STAMP")" == "$fingerprint $(sed -n 's/^MMCV_FLAVOUR=//p' <<< "$build")" ]]; then
    say "environment up to date ($VENV)"
    exit 0
fi
rm -f "$STAMP"

# ------------------------------------------------------------------ the venv
venv_python_ok() {
    "$VENV/bin/python" -c "import sys; assert f'{sys.version_info[0]}.{sys.version_info[1]}' == '$py_version'" \
        2>/dev/null || return 1
    local system_site
    system_site=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null)
    [[ "$system_site" == "$([[ "$TORCH" == system ]] && echo true || echo false)" ]]
}
if [[ ! -x "$VENV/bin/python" ]] || ! venv_python_ok; then
    say "creating $VENV with $($PY --version 2>&1)${SYSTEM_SITE:+ and its system site packages}"
    rm -rf "$VENV"
    "$PY" -m venv "${SYSTEM_SITE[@]}" "$VENV" || die "could not create $VENV with $PY (set PYTHON=/path/to/python3.11)"
fi
printf 'PYTHON=%s\nTORCH=%s\nWHEELHOUSE=%s\nKEEP_SYSTEM=%s\n' "$PY" "$TORCH" "$WHEELHOUSE" "$KEEP_SYSTEM" > "$ARGS_FILE"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input)
CONSTRAINTS=()
mkdir -p "$VENV/adpe"
if [[ "$TORCH" == system ]]; then
    # A PYTHON that is itself a venv or conda env (as a container's often is) does not pass its packages on through
    # --system-site-packages, which reaches only its base interpreter's: .venv is pointed at every site folder of
    # PYTHON that it does not see yet (the one holding torch among them), after .venv's own site-packages.
    seen=$("$VPY" -c 'import torch; print(torch.__file__.rsplit("/torch/", 1)[0])' 2>/dev/null || true)
    if [[ "$seen" != "$TORCH_LOCATION" ]]; then
        site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$PY" -c 'import os, site, sys
dirs = site.getsitepackages() + [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
print("\n".join(dict.fromkeys(d for d in dirs if os.path.isdir(d))))' > "$VENV/adpe/system-site.txt"
        grep -qxF "$TORCH_LOCATION" "$VENV/adpe/system-site.txt" || echo "$TORCH_LOCATION" >> "$VENV/adpe/system-site.txt"
        # (only the folders .venv does not see already)
        "$VPY" -c 'import sys; seen = set(sys.path)
print("\n".join(l for l in open(sys.argv[1]).read().splitlines() if l not in seen))' "$VENV/adpe/system-site.txt" \
            > "$site/zz-adpe-system-site.pth"
        seen=$("$VPY" -c 'import torch; print(torch.__file__.rsplit("/torch/", 1)[0])' 2>/dev/null || true)
        [[ "$seen" == "$TORCH_LOCATION" ]] || die "$VENV does not see the torch of $PY ($TORCH_LOCATION)"
        say "$VENV sees the site folders of $PY: $(paste -sd ' ' "$site/zz-adpe-system-site.pth")"
    fi
    # Nothing pip does in .venv may replace them: any requirement that wants another torch fails instead.
    mkdir -p "$VENV/adpe"
    tr ' ' '\n' <<< "$TORCH_DISTS" > "$VENV/adpe/system-torch.txt"
    CONSTRAINTS=(-c "$VENV/adpe/system-torch.txt")
fi
join_chunks
pin() { grep -E "^$1==" requirements.txt; }
# requirements.txt without the packages that come from elsewhere (mmcv: our wheel; torch: the system's).
REQS="$VENV/adpe/requirements.txt"
mkdir -p "$VENV/adpe"
if [[ "$TORCH" == system ]]; then
    grep -vE '^(torch|torchvision)==' requirements.txt > "$REQS"
    if [[ "$KEEP_SYSTEM" == 1 ]]; then
        # A pin the system already has (any version) becomes a bare name, which that version satisfies.
        "$VPY" - "$REQS" <<'EOF'
import re, sys
from importlib import metadata
path = sys.argv[1]
always = {"mmengine", "mmcv", "mmsegmentation", "mmdet", "mmpretrain", "timm", "setuptools"}
lines = []
for line in open(path).read().splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line)
    if m and re.sub(r"[-_.]+", "-", m[1].lower()) not in always:
        have = None
        # (a system opencv-python-headless stands for opencv-python: a second cv2 package would shadow it)
        for name in (m[1], "opencv-python-headless") if m[1] == "opencv-python" else (m[1],):
            try:
                have = have or metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        if have is not None:
            if have != m[2]:
                print(f"[setup] KEEP_SYSTEM=1: the system's {m[1]} {have} instead of the pinned {m[2]}")
            line = m[1]
    lines.append(line)
open(path, "w").write("\n".join(lines) + "\n")
EOF
        # A system with opencv-python-headless only: mmengine's opencv-python requirement would add a second cv2.
        # A metadata-only opencv-python of the same version, made here, stands for it (as mmcv's own set-up picks
        # whichever of the two is installed).
        headless=$("$VPY" -c 'from importlib import metadata as m
try: m.version("opencv-python")
except m.PackageNotFoundError: print(m.version("opencv-python-headless"))' 2>/dev/null || true)
        if [[ -n "$headless" ]]; then
            headless=${headless%%+*}
            stub="$VENV/adpe/opencv-stub" info="opencv_python-$headless.dist-info"
            mkdir -p "$stub/$info"
            printf 'Metadata-Version: 2.1\nName: opencv-python\nVersion: %s\nSummary: stands for the system opencv-python-headless (KEEP_SYSTEM=1)\n' \
                "$headless" > "$stub/$info/METADATA"
            printf 'Wheel-Version: 1.0\nGenerator: adpe\nRoot-Is-Purelib: true\nTag: py3-none-any\n' > "$stub/$info/WHEEL"
            printf '%s/METADATA,,\n%s/WHEEL,,\n%s/RECORD,,\n' "$info" "$info" "$info" > "$stub/$info/RECORD"
            (cd "$stub" && "$VPY" -m zipfile -c "opencv_python-$headless-py3-none-any.whl" "$info")
            "${PIP[@]}" install -q --no-deps --no-index "$stub/opencv_python-$headless-py3-none-any.whl" \
                || die "could not record the system's opencv-python-headless as opencv-python"
            say "KEEP_SYSTEM=1: the system's opencv-python-headless $headless stands for opencv-python"
        fi
    fi
else
    cp requirements.txt "$REQS"
fi

torch_pkgs=()
[[ "$TORCH" == pinned ]] && torch_pkgs=("$(pin torch)")
say "installing build prerequisites (${torch_pkgs:+torch $TORCH_VERSION, }numpy, setuptools)${WHEELHOUSE:+ from $WHEELHOUSE}"
if [[ -n "$WHEELHOUSE" && "$TORCH" == pinned ]] && ! find "$WHEELHOUSE" "$VENV/adpe" -maxdepth 2 \
        -name "torch-$PINNED_TORCH*.whl" | grep -q .; then
    die "$WHEELHOUSE has no torch $PINNED_TORCH wheel: use TORCH=system with a Python that has torch, or build the \
wheelhouse with WITH_TORCH=1"
fi
"${PIP[@]}" install -q "${FIND_LINKS[@]}" "${CONSTRAINTS[@]}" "$(pin setuptools)" "$(pin numpy)" "${torch_pkgs[@]}" \
    wheel ninja || die "pip could not install ${torch_pkgs:+torch/}numpy/setuptools/wheel/ninja"

build=$(mmcv_build) || die "cannot choose an mmcv build for this machine (see the error above)"
eval "$build"
say "mmcv flavour $MMCV_FLAVOUR: $MMCV_REASON"
PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_KEY-$PYTAG-$(uname -m)-$MMCV_FLAVOUR"
if ! ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    jobs=${MAX_JOBS:-$(nproc)}
    if [[ "$MMCV_FORCE_CUDA" == 1 ]]; then
        say "building mmcv $MMCV_VERSION with CPU and CUDA ops (C++20, MAX_JOBS=$jobs); about 6.5 minutes with MAX_JOBS=12 for one architecture"
    else
        say "building mmcv $MMCV_VERSION with compiled CPU ops (C++20, MAX_JOBS=$jobs); takes 8-20 minutes on 2 cores"
    fi
    mkdir -p "$CACHE/wheels"
    work=$(mktemp -d "$CACHE/wheels/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    sdist=$(ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION".tar.gz "$WHEELHOUSE"/part-*/mmcv-"$MMCV_VERSION".tar.gz 2>/dev/null \
        | head -n 1 || true)
    if [[ -n "$WHEELHOUSE" ]]; then
        [[ -n "$sdist" ]] || die "$WHEELHOUSE has no mmcv-$MMCV_VERSION.tar.gz (and no cached wheel in $WHEELS)"
        say "mmcv source from $sdist"
    else
        # pip prepares the source's metadata in an isolated build environment, whose newest setuptools lacks the
        # pkg_resources that mmcv's setup.py imports: cap it there too.
        echo 'setuptools<81' > "$work/build-constraints.txt"
        PIP_CONSTRAINT="$work/build-constraints.txt" \
            "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION" \
            || die "could not download the mmcv $MMCV_VERSION source from PyPI"
        sdist="$work/mmcv-$MMCV_VERSION.tar.gz"
    fi
    tar -xzf "$sdist" -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    grep -q -- "-std=c++17" "$src/setup.py" || die "mmcv's setup.py no longer contains -std=c++17; update tools/setup_env.sh"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$MMCV_FORCE_CUDA TORCH_CUDA_ARCH_LIST="$MMCV_CUDA_ARCHS" MAX_JOBS=$jobs \
        "${PIP[@]}" wheel --no-build-isolation --no-deps --no-index -w "$work/dist" . > "$work/build.log" 2>&1) || {
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
"${PIP[@]}" install -q "${FIND_LINKS[@]}" --find-links "$WHEELS" "${CONSTRAINTS[@]}" -r "$REQS" \
    || die "pip could not install requirements.txt${WHEELHOUSE:+ from $WHEELHOUSE (is it built for this Python and platform?)}"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e . || die "pip could not install the adpe package"

say "checking the stack"
"$VPY" -m adpe.tooling.env --check || die "the installed stack does not import or its compiled ops fail; see the error above"
if [[ "$TORCH" == system ]]; then
    inside=$("$VPY" -c 'import torch; print(torch.__version__)')
    [[ "$inside" == "$TORCH_VERSION" ]] || die "torch in $VENV is $inside, not the system's $TORCH_VERSION"
fi
echo "$fingerprint $MMCV_FLAVOUR" > "$STAMP"
say "ready: $VENV (torch $TORCH_VERSION${WHEELHOUSE:+, from $WHEELHOUSE without an index})"
