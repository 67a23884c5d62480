#!/usr/bin/env bash
# A wheelhouse for `make setup WHEELHOUSE=DIR` on machines without a package index (cluster compute nodes).
#
#   make wheelhouse WHEELHOUSE=DIR [PYTHON_VERSION=3.12] [PLATFORM=manylinux_2_28_x86_64] [WITH_TORCH=1] [SPLIT_MIB=60]
#
# Run it where the index is reachable (a login node, a laptop): it downloads every package of requirements.txt
# and their dependencies as wheels for the target Python and platform, except torch and torchvision (the
# compute node's container or module brings those: `make setup WHEELHOUSE=DIR TORCH=system`), plus the build
# prerequisites (wheel, ninja) and mmcv's source archive (mmcv is built on the node, against its torch).
#
# PYTHON_VERSION: the target's X.Y (default: that of PYTHON, else python3). PLATFORM: a wheel platform tag (default
# manylinux_2_28_<this machine's arch>, which also takes the older manylinux wheels). WITH_TORCH=1 adds the pinned
# torch and torchvision with their dependencies (several GB with the CUDA libraries), for a plain `make setup
# WHEELHOUSE=DIR`. SPLIT_MIB=N spreads the files over DIR/part-1, part-2, ... of at most N MiB each (a file
# larger than N is cut into NAME.chunk-I-of-K pieces), for transfers with a size limit: carry the parts one by one
# into the same DIR; `make setup` reads them as one, joins the pieces and checks them against DIR/SHA256SUMS.
#
# PRESENT=FILE: the target Python's `python3 -m pip list --format=freeze`, for `make setup TORCH=system KEEP_SYSTEM=1`:
# what the target already has is left out (resolved as stand-ins of its versions), and so is a pinned package it has
# in another version (KEEP_SYSTEM=1 keeps the system's), except the OpenMMLab packages, timm and setuptools. A line
# with a name alone (no ==version) leaves that package's wheels out after resolving as usual. A target with
# opencv-python-headless and no opencv-python counts as having opencv-python (the set-up does the same).
#
# Without torch and torchvision, the dependencies that only torch needs (sympy, networkx, the CUDA libraries,
# triton) are left out too: torch is resolved as a stand-in package with no dependencies.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-}
WITH_TORCH=${WITH_TORCH:-0}
SPLIT_MIB=${SPLIT_MIB:-0}
say() { printf '[wheelhouse] %s\n' "$*"; }
die() { printf '[wheelhouse] FAILED: %s\n' "$1" >&2; exit 1; }

[[ -n "$WHEELHOUSE" ]] || die "say where: make wheelhouse WHEELHOUSE=DIR [PYTHON_VERSION=3.12] [PLATFORM=...]"
PYTHON_VERSION=${PYTHON_VERSION:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
[[ "$PYTHON_VERSION" =~ ^3\.(11|12)$ ]] || die "PYTHON_VERSION=$PYTHON_VERSION: the suite supports Python 3.11 and 3.12"
PLATFORM=${PLATFORM:-manylinux_2_28_$(uname -m)}
ABI=cp${PYTHON_VERSION/./}
MMCV=$(sed -n 's/^mmcv==//p' requirements.txt)
TORCH_PIN=$(sed -n 's/^torch==//p' requirements.txt)
VISION_PIN=$(sed -n 's/^torchvision==//p' requirements.txt)
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
TARGET=(--only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp --abi "$ABI" --platform "$PLATFORM")
# pip takes --platform literally: a manylinux_2_X platform also runs the older manylinux wheels, list them.
if [[ "$PLATFORM" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    for ((glibc = BASH_REMATCH[1] - 1; glibc >= 5; glibc--)); do
        TARGET+=(--platform "manylinux_2_${glibc}_${BASH_REMATCH[2]}")
    done
    TARGET+=(--platform "manylinux2014_${BASH_REMATCH[2]}" --platform "manylinux2010_${BASH_REMATCH[2]}"
             --platform "manylinux1_${BASH_REMATCH[2]}")
fi

mkdir -p "$WHEELHOUSE"
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# Stand-ins for torch and torchvision: wheels of the pinned versions (local label +adpestub) with no dependencies,
# so that pip resolves timm and the rest without fetching torch.
stub() {  # name version
    local dist="${1//-/_}-$2+adpestub" dir="$work/stub/$1"
    mkdir -p "$dir/$dist.dist-info"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s+adpestub\n' "$1" "$2" > "$dir/$dist.dist-info/METADATA"
    printf 'Wheel-Version: 1.0\nGenerator: adpe\nRoot-Is-Purelib: true\nTag: py3-none-any\n' > "$dir/$dist.dist-info/WHEEL"
    printf '%s.dist-info/METADATA,,\n%s.dist-info/WHEEL,,\n%s.dist-info/RECORD,,\n' "$dist" "$dist" "$dist" \
        > "$dir/$dist.dist-info/RECORD"
    (cd "$dir" && "$PY" -m zipfile -c "$work/stubs/$dist-py3-none-any.whl" "$dist.dist-info")
}
mkdir -p "$work/stubs"
PRESENT=${PRESENT:-}
[[ -z "$PRESENT" || -f "$PRESENT" ]] || die "PRESENT=$PRESENT is not a file (the target's pip list --format=freeze)"
present_version() {  # name -> the version PRESENT lists for it, if any
    [[ -n "$PRESENT" ]] || return 0
    "$PY" - "$PRESENT" "$1" <<'EOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n.lower())
for line in open(sys.argv[1]):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
    if m and norm(m[1]) == norm(sys.argv[2]):
        print(m[2].split("+")[0])
EOF
}
TORCH_STUB=$(present_version torch); TORCH_STUB=${TORCH_STUB:-$TORCH_PIN}
VISION_STUB=$(present_version torchvision); VISION_STUB=${VISION_STUB:-$VISION_PIN}
stub torch "$TORCH_STUB"
stub torchvision "$VISION_STUB"

# requirements.txt without mmcv (a source archive, below) and, unless WITH_TORCH=1, pinned to the stand-ins;
# plus mmcv's own run-time dependencies (its source's requirements/runtime.txt) and the build prerequisites.
grep -vE '^(mmcv|torch|torchvision)==' requirements.txt > "$work/requirements.txt"
printf 'addict\nyapf\npackaging\npillow\npyyaml\nwheel\nninja\n' >> "$work/requirements.txt"
if [[ "$WITH_TORCH" == 1 ]]; then
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH_PIN" "$VISION_PIN" >> "$work/requirements.txt"
    : > "$work/constraints.txt"
else
    printf 'torch==%s+adpestub\ntorchvision==%s+adpestub\n' "$TORCH_STUB" "$VISION_STUB" > "$work/constraints.txt"
fi
if [[ -n "$PRESENT" ]]; then
    # Stand-ins for what the target has, pinned to its versions; its pinned packages (but the always-pinned) unpinned.
    "$PY" - "$PRESENT" "$work/requirements.txt" "$work/constraints.txt" "$work/present.txt" <<'EOF'
import re, sys
present_file, reqs_file, constraints_file, out = sys.argv[1:5]
norm = lambda n: re.sub(r"[-_.]+", "-", n.lower())
always = {"mmengine", "mmcv", "mmsegmentation", "mmdet", "mmpretrain", "timm", "setuptools", "torch", "torchvision"}
present, names = {}, set()
for line in open(present_file):
    m = re.match(r"^([A-Za-z0-9_.-]+)(?:==([^\s;]+))?\s*$", line.strip())
    if m and norm(m[1]) not in always:
        if m[2]:
            present[norm(m[1])] = m[2].split("+")[0]
        else:
            names.add(norm(m[1]))
for headless in ("opencv-python-headless",):  # one cv2: the target's headless build stands for opencv-python
    if headless in present and "opencv-python" not in present:
        present["opencv-python"] = present[headless]
    if headless in names:
        names.add("opencv-python")
reqs = []
for line in open(reqs_file).read().splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)(==\S+)?$", line)
    reqs.append(m[1] if m and norm(m[1]) in present.keys() | names else line)
open(reqs_file, "w").write("\n".join(reqs) + "\n")
with open(constraints_file, "a") as f:
    f.writelines(f"{name}=={version}+adpestub\n" for name, version in sorted(present.items()))
open(out, "w").writelines(f"{name} {version}\n" for name, version in sorted(present.items()))
open(out + ".names", "w").writelines(f"{name}\n" for name in sorted(names))
EOF
    while read -r name version; do stub "$name" "$version"; done < "$work/present.txt"
    say "PRESENT: $(cat "$work/present.txt" "$work/present.txt.names" | wc -l) packages of the target left out (KEEP_SYSTEM=1 keeps them)"
fi

say "downloading wheels for CPython $PYTHON_VERSION on $PLATFORM into $WHEELHOUSE (torch: $([[ $WITH_TORCH == 1 ]] \
&& echo "$TORCH_PIN included" || echo "left out"))"
"${PIP[@]}" download -q "${TARGET[@]}" -d "$work/dl" --find-links "$work/stubs" \
    -r "$work/requirements.txt" -c "$work/constraints.txt" \
    || die "pip could not download the wheels (above: the package without a wheel for $PYTHON_VERSION / $PLATFORM)"
rm -f "$work"/dl/*+adpestub-*.whl
if [[ -n "$PRESENT" ]]; then  # the names PRESENT lists without a version
    while read -r name; do
        rm -f "$work/dl/${name//-/_}"-[0-9]*.whl "$work/dl/$name"-[0-9]*.whl
    done < "$work/present.txt.names"
fi

say "downloading the mmcv $MMCV source archive"
# pip prepares the archive's metadata with the newest setuptools, which lacks the pkg_resources mmcv's setup.py needs.
echo 'setuptools<81' > "$work/build-constraints.txt"
PIP_CONSTRAINT="$work/build-constraints.txt" "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$work/dl" \
    "mmcv==$MMCV" || die "pip could not download the mmcv $MMCV source archive"

(cd "$work/dl" && sha256sum -- * > "$work/SHA256SUMS")
# Publish: the previous content (parts included) is replaced.
rm -rf "$WHEELHOUSE"/part-* "$WHEELHOUSE"/*.whl "$WHEELHOUSE"/*.tar.gz "$WHEELHOUSE"/*.chunk-*
if [[ "$SPLIT_MIB" -gt 0 ]]; then
    limit=$((SPLIT_MIB * 1024 * 1024))
    # A file over the limit is cut into NAME.chunk-I-of-N (`make setup` joins them and checks SHA256SUMS).
    for file in "$work"/dl/*; do
        size=$(stat -c %s "$file")
        if (( size > limit )); then
            n=$(( (size + limit - 1) / limit ))
            split -b "$limit" -d -a 3 "$file" "$file.tmpchunk-"
            for ((i = 0; i < n; i++)); do
                mv "$file.tmpchunk-$(printf '%03d' "$i")" "$file.chunk-$((i + 1))-of-$n"
            done
            rm "$file"
        fi
    done
    # Largest first, each into the first part with room (first-fit decreasing).
    part=1
    declare -a room=()
    while read -r size file; do
        placed=0
        for ((p = 1; p < part; p++)); do
            if (( room[p] >= size )); then
                mv "$file" "$WHEELHOUSE/part-$p/"; room[p]=$((room[p] - size)); placed=1; break
            fi
        done
        if (( ! placed )); then
            mkdir -p "$WHEELHOUSE/part-$part"; mv "$file" "$WHEELHOUSE/part-$part/"
            room[part]=$((limit - size)); part=$((part + 1))
        fi
    done < <(find "$work/dl" -maxdepth 1 -type f -printf '%s %p\n' | sort -rn)
else
    mv "$work"/dl/* "$WHEELHOUSE"/
fi
cp "$work/SHA256SUMS" "$WHEELHOUSE/SHA256SUMS"
{
    echo "# made by tools/wheelhouse.sh for CPython $PYTHON_VERSION on $PLATFORM, torch $([[ $WITH_TORCH == 1 ]] \
&& echo included || echo 'not included (TORCH=system)')"
    (cd "$WHEELHOUSE" && find . -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.chunk-*' \) -printf '%P\n' | sort)
} > "$WHEELHOUSE/MANIFEST.txt"

files=$(grep -vc '^#' "$WHEELHOUSE/MANIFEST.txt")
total=$(du -sb "$WHEELHOUSE" | cut -f1)
say "$files files, $((total / 1024 / 1024)) MiB ($total bytes) in $((SECONDS - start)) s"
for part in "$WHEELHOUSE"/part-*/; do
    [[ -d "$part" ]] && say "  $(basename "$part"): $(( $(du -sb "$part" | cut -f1) / 1024 / 1024 )) MiB"
done
say "install with: make setup WHEELHOUSE=$WHEELHOUSE$([[ $WITH_TORCH == 1 ]] || echo ' TORCH=system')"
