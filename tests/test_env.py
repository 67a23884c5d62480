"""The environment report and the set-up's rules: which mmcv build a machine needs, and the compiled-ops check."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adpe.tooling import env

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_torch_on_a_machine_without_gpus_builds_cpu_ops():
    build = env.mmcv_build("13.0", "/usr/bin/nvcc", [], None)
    assert (build.flavour, build.cuda_archs, build.with_cuda) == ("cpu", "", False)


def test_visible_gpus_choose_cuda_ops_for_their_architectures():
    build = env.mmcv_build("13.0", "/usr/bin/nvcc", [(9, 0), (8, 0), (9, 0)], None)
    assert (build.flavour, build.cuda_archs, build.with_cuda) == ("cu130-sm80-sm90", "8.0;9.0", True)
    assert "visible GPUs" in build.reason


def test_arch_list_builds_cuda_ops_on_a_login_node_and_overrides_visible_gpus():
    assert env.mmcv_build("12.8", "/x/nvcc", [], "8.0 9.0+PTX").flavour == "cu128-sm80-sm90ptx"
    build = env.mmcv_build("12.8", "/x/nvcc", [(8, 6)], "9.0")
    assert (build.flavour, build.cuda_archs) == ("cu128-sm90", "9.0")


@pytest.mark.parametrize("torch_cuda, nvcc, missing",
                         [("13.0", None, "nvcc"), (None, "/x/nvcc", "CUDA build of torch")])
def test_gpu_machine_that_cannot_build_cuda_ops_is_an_error(torch_cuda, nvcc, missing):
    with pytest.raises(RuntimeError, match=f"compute capability 9.0 need mmcv with CUDA ops.*{missing}.*make setup"):
        env.mmcv_build(torch_cuda, nvcc, [(9, 0)], None)


def test_cache_keys_of_cpu_and_gpu_builds_differ():
    """A wheel built on a CPU login node is never picked up on a GPU node sharing $ADPE_CACHE."""
    flavours = {env.mmcv_build("13.0", "nvcc", gpus, archs).flavour
                for gpus, archs in (([], None), ([(9, 0)], None), ([(8, 0)], None), ([], "9.0;10.0"))}
    assert len(flavours) == 4


def test_setup_reads_the_build_as_shell_assignments(tmp_path):
    """What tools/setup_env.sh evals: a fake nvcc on PATH plus TORCH_CUDA_ARCH_LIST give a CUDA flavour."""
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    script = (f'eval "$({sys.executable} -m adpe.tooling.env --mmcv-build)"; '
              'echo "$MMCV_FLAVOUR|$MMCV_CUDA_ARCHS|$MMCV_FORCE_CUDA"')
    run_env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "TORCH_CUDA_ARCH_LIST": "9.0"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, env=run_env)
    if torch.version.cuda is None:
        assert "CUDA build of torch" in result.stderr
    else:
        assert result.stdout.strip() == f"cu{torch.version.cuda.replace('.', '')}-sm90|9.0|1"


def test_missing_cuda_ops_fail_the_check_with_a_rebuild_recipe(monkeypatch):
    def run(device):
        if device == "cuda":
            raise RuntimeError("nms_impl is not implemented on CUDA")

    monkeypatch.setattr(env, "ops_devices", lambda: ["cpu", "cuda"])
    monkeypatch.setattr(env, "run_mmcv_ops", run)
    with pytest.raises(RuntimeError, match=r"fail on cuda tensors .*not implemented on CUDA.*make setup.*GPU node"):
        env.check_mmcv_ops()


@pytest.mark.mm
def test_compiled_ops_run_here_and_the_report_names_every_component():
    env.check_mmcv_ops()  # nms and roi_align give the right answers on every device of this machine
    out = subprocess.run([sys.executable, "-m", "adpe.tooling.env"], check=True, capture_output=True, text=True,
                         cwd=ROOT).stdout
    for key in ("torch", "mmcv.ops", "mmseg", "mmdet", "device", "threads", "mmcv wheel"):
        assert f"{key}:" in out
    assert "compiled ops OK" in out and "built with" in out
