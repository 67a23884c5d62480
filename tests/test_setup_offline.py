"""Set-up on clusters: the wheelhouse and an index-free `make setup`, `TORCH=system`, and tools/gpu_check.sh.

The default run checks what needs no network: the refusal of a torch outside the tested range (a stand-in torch
package on PYTHONPATH, read by the set-up's real check) and gpu_check's step list and no-CUDA exit. The slow test
builds a wheelhouse (network), then sets up a copy of the checkout from it with the index switched off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "pretrain-bench", "seg-bench", "det-bench", "data-bench", "demo-data", "pretrain-amp", "upernet-amp",
         "maskrcnn-amp"]
MM_STEPS = {"env", "demo-data", "pretrain-amp", "upernet-amp", "maskrcnn-amp"}


def fake_torch(folder: Path, version: str, vision: str | None = "0.99.0") -> Path:
    """A folder to put first on PYTHONPATH: stand-in ``torch`` (and ``torchvision``) packages of these versions."""
    (folder / "torch").mkdir(parents=True)
    (folder / "torch/__init__.py").write_text(f"__version__ = {version!r}\n")
    if vision is not None:
        (folder / "torchvision").mkdir()
        (folder / "torchvision/__init__.py").write_text(f"__version__ = {vision!r}\n")
    return folder


def run_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(ROOT / "tools/setup_env.sh")], capture_output=True, text=True, env=run_env,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("version", ["2.10.0", "2.15.0+cu130", "1.13.1"])
def test_torch_system_refuses_a_torch_outside_the_tested_range(tmp_path, version):
    stub = fake_torch(tmp_path / "stub", version)
    result = run_setup(tmp_path, TORCH="system", PYTHONPATH=str(stub))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"has torch {version} ({stub})" in message
    assert "outside the tested range torch 2.11 to 2.14" in message and "Supported versions" in message
    assert "Nothing was marked ready" in message
    assert not (tmp_path / "venv").exists()  # refused before anything was made


def test_torch_system_refuses_a_torch_without_torchvision(tmp_path):
    stub = fake_torch(tmp_path / "stub", "2.11.0", vision=None)
    result = run_setup(tmp_path, TORCH="system", PYTHONPATH=str(stub))
    assert result.returncode == 1 and "has torch 2.11.0 but no torchvision" in " ".join(result.stderr.split())
    assert not (tmp_path / "venv").exists()


def test_torch_system_accepts_the_ends_of_the_range_and_says_which_torch(tmp_path):
    """2.11 and 2.14 pass the range check (the run then stops: its .venv would lie under a file)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for version in ("2.11.0+cu130", "2.14.1"):
        stub = fake_torch(tmp_path / version / "stub", version)
        result = run_setup(tmp_path, TORCH="system", PYTHONPATH=str(stub), VENV=str(blocker / "venv"))
        assert result.returncode != 0
        assert f"TORCH=system: torch {version}, torchvision 0.99.0 from {stub}" in result.stdout
        assert "outside the tested range" not in result.stderr


def test_setup_refuses_unknown_torch_mode_and_missing_wheelhouse(tmp_path):
    result = run_setup(tmp_path, TORCH="conda")
    assert result.returncode == 1 and "TORCH=conda: use TORCH=pinned" in result.stderr
    result = run_setup(tmp_path, WHEELHOUSE=str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "is not a folder" in result.stderr and "make wheelhouse" in result.stderr


def test_wheelhouse_needs_a_folder_and_a_supported_python():
    run = lambda **env: subprocess.run(["bash", str(ROOT / "tools/wheelhouse.sh")], capture_output=True, text=True,
                                       env={**os.environ, **env}, cwd=ROOT, timeout=60)
    assert "make wheelhouse WHEELHOUSE=DIR" in run(WHEELHOUSE="").stderr
    result = run(WHEELHOUSE="/tmp/unused-wheelhouse", PYTHON_VERSION="3.10")
    assert result.returncode == 1 and "supports Python 3.11 and 3.12" in result.stderr


def gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tools/gpu_check.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=120)


def test_gpu_check_dry_run_lists_every_step_with_its_command():
    result = gpu_check("--dry-run")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^\d+\. ([a-z-]+)(?: \[skipped\])?:", result.stdout, re.M)
    assert listed == STEPS
    for command in ("make env", "tools/benchmark_pretrain.py --images 128 --dtypes bf16 --steps 15",
                    "tools/benchmark_backbone.py --only seg --dtypes bf16 --batch 8",
                    "tools/benchmark_backbone.py --only det --dtypes bf16 --batch 2",
                    "tools/benchmark_data.py --device cuda",
                    "tools/train.py pretrain/demo/adpe_vit_tiny_rpe_coord.py --amp --resume",
                    "tools/train.py benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py --amp",
                    "tools/train.py benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py --amp"):
        assert command in result.stdout, command
    assert "[skipped]" not in result.stdout


def test_gpu_check_skip_mm_leaves_the_speed_checks_only():
    result = gpu_check("--dry-run", "--skip-mm", "--python", "python3")
    skipped = set(re.findall(r"^\d+\. ([a-z-]+) \[skipped\]:", result.stdout, re.M))
    assert result.returncode == 0 and skipped == MM_STEPS
    assert "python3 tools/benchmark_pretrain.py" in result.stdout


@pytest.mark.parametrize("args, message", [(["--only", "nonesuch"], "no step 'nonesuch'"),
                                           (["--frobnicate"], "unknown argument")])
def test_gpu_check_usage_errors_exit_2(args, message):
    result = gpu_check(*args)
    assert result.returncode == 2 and message in result.stderr


def test_gpu_check_without_cuda_says_so_and_exits_3(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = gpu_check("--out", str(tmp_path / "out"), "--python", sys.executable)
    assert result.returncode == 3
    assert "no CUDA" in result.stderr and "sees no CUDA device" in result.stderr and "nothing was run" in result.stderr
    assert not (tmp_path / "out").exists()


def copy_checkout(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, as a fresh clone of this state would have them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheelhouse_then_offline_setup_on_the_system_torch(tmp_path):
    """`make wheelhouse` (network), then `make setup WHEELHOUSE=... TORCH=system` in a copy of the checkout with no
    index and no network: a working .venv on the system Python's torch, which is neither downloaded nor copied.

    The "system" Python is tools/torch_env.sh's (torch only, as in a container; ADPE_TEST_TORCH picks its version,
    default the pinned minor, whose CPU mmcv wheel `make setup` has already cached)."""
    pinned = re.search(r"^torch==(\d+\.\d+)", (ROOT / "requirements.txt").read_text(), re.M)[1]
    version = os.environ.get("ADPE_TEST_TORCH", pinned)
    system_python = subprocess.run(["bash", str(ROOT / "tools/torch_env.sh"), version], check=True,
                                   capture_output=True, text=True, cwd=ROOT).stdout.strip()
    which_torch = "import torch; print(torch.__version__, torch.__file__)"
    system_torch = subprocess.run([system_python, "-c", which_torch], check=True, capture_output=True,
                                  text=True).stdout.split()
    wheelhouse = tmp_path / "wheelhouse"
    started = time.perf_counter()
    built = subprocess.run(["make", "wheelhouse", f"WHEELHOUSE={wheelhouse}", "SPLIT_MIB=40"], cwd=ROOT,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert not list(wheelhouse.glob("**/torch-*")) and list(wheelhouse.glob("part-*/mmcv-*.tar.gz"))
    assert list(wheelhouse.glob("part-*/opencv_python-*.whl.chunk-1-of-2"))  # over 40 MiB: cut, joined by the set-up
    wheelhouse_s = time.perf_counter() - started

    clone = copy_checkout(tmp_path / "clone")
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    offline.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, HTTP_PROXY="http://127.0.0.1:9",
                   HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    started = time.perf_counter()
    setup = subprocess.run(["make", "setup", f"WHEELHOUSE={wheelhouse}", "TORCH=system", f"PYTHON={system_python}"],
                           cwd=clone, env=offline, capture_output=True, text=True)
    setup_s = time.perf_counter() - started
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "ops ok on cpu" in setup.stdout and f"ready: {clone}/.venv (torch {system_torch[0]}" in setup.stdout
    assert "joined opencv_python" in setup.stdout
    inside = subprocess.run([str(clone / ".venv/bin/python"), "-c", which_torch], check=True, capture_output=True,
                            text=True).stdout.split()
    assert inside == system_torch  # the same torch, from the same place
    assert not list((clone / ".venv/lib").glob("python3*/site-packages/torch"))  # nothing of torch in .venv
    # A plain `make setup` afterwards (what `make test` runs) keeps the system torch and the wheelhouse.
    again = subprocess.run(["make", "setup"], cwd=clone, env=offline, capture_output=True, text=True)
    assert again.returncode == 0 and "environment up to date" in again.stdout, again.stdout + again.stderr
    print(f"\nwheelhouse {wheelhouse_s:.0f} s; offline set-up {setup_s:.0f} s")
