"""What ``--amp`` (AutoAmpOptimWrapper) builds where bf16 is native and where it is only emulated.

The capability is faked both ways at torch's own test (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` for CPUs,
``torch.cuda.is_bf16_supported`` for GPUs), so ``adpe.device.native_bf16`` runs as it does on a real machine.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

mmengine = pytest.importorskip("mmengine")
pytestmark = pytest.mark.mm

from mmengine.logging import MMLogger  # noqa: E402
from mmengine.optim import AmpOptimWrapper, OptimWrapper  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe import device  # noqa: E402
from adpe.mm.optim import AutoAmpOptimWrapper, AutocastOptimWrapper  # noqa: E402
from adpe.mm.runner import build_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FP32_LINE = "this CPU has no native bf16 and would emulate it, far slower than fp32: training in fp32"


def fake_cpu_bf16(monkeypatch, native: bool) -> None:
    """A CPU-only machine whose CPU has (or lacks) native bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)


@pytest.fixture
def log_file(tmp_path) -> Path:
    """The file of a fresh current mmengine logger: where ``print_log(..., logger='current')`` lines go."""
    path = tmp_path / "run.log"
    MMLogger.get_instance(f"amp-{tmp_path.name}", log_file=str(path), log_level="INFO")
    return path


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(4, 4).parameters(), lr=0.1)


def test_cpu_without_native_bf16_trains_in_fp32_and_says_so(monkeypatch, log_file):
    fake_cpu_bf16(monkeypatch, native=False)
    wrapper = AutoAmpOptimWrapper(optimizer=optimizer())
    assert type(wrapper) is OptimWrapper  # no autocast at all
    assert FP32_LINE in log_file.read_text()


def test_cpu_with_native_bf16_gets_bf16_autocast(monkeypatch, log_file):
    fake_cpu_bf16(monkeypatch, native=True)
    wrapper = AutoAmpOptimWrapper(optimizer=optimizer())
    assert type(wrapper) is AutocastOptimWrapper
    assert (wrapper.cast_dtype, wrapper.device_type) == (torch.bfloat16, "cpu")
    layer = torch.nn.Linear(4, 4)
    with wrapper.optim_context(layer):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    text = log_file.read_text()
    assert FP32_LINE not in text and "emulated" not in text


def test_explicit_bf16_is_honoured_on_an_emulating_cpu_with_a_warning(monkeypatch, log_file):
    fake_cpu_bf16(monkeypatch, native=False)
    wrapper = AutoAmpOptimWrapper(optimizer=optimizer(), dtype="bfloat16")
    assert type(wrapper) is AutocastOptimWrapper and wrapper.cast_dtype == torch.bfloat16
    assert "WARNING" in log_file.read_text() and "it is emulated" in log_file.read_text()


@pytest.mark.parametrize("capability, expected", [((8, 0), AutocastOptimWrapper), ((7, 0), AmpOptimWrapper)])
def test_gpu_that_only_emulates_bf16_gets_fp16(monkeypatch, capability, expected):
    """torch's ``is_bf16_supported()`` says True on a V100 (it counts emulation); --amp must pick fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))
    with warnings.catch_warnings():  # the fp16 GradScaler warns that CUDA is not really there
        warnings.simplefilter("ignore")
        wrapper = AutoAmpOptimWrapper(optimizer=optimizer())
    assert type(wrapper) is expected
    assert device.native_bf16("cuda") is (capability >= (8, 0))


def test_native_bf16_follows_torchs_cpu_test(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert device.native_bf16("cpu") is native
    assert device.native_bf16("mps") is False


def test_amp_run_on_an_emulating_cpu_trains_in_fp32_and_logs_it(monkeypatch, image_folder, tmp_path):
    """--amp end to end on a CPU without native bf16: the Runner's log has the line, and training runs in fp32."""
    fake_cpu_bf16(monkeypatch, native=False)
    options = {"train_dataloader.dataset.data_root": str(image_folder), "train_cfg.max_epochs": 1,
               "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
               "train_dataloader.batch_size": 8}
    cfg = build_config(str(ROOT / "pretrain/demo/mae_plus_vit_tiny_ape.py"), work_dir=str(tmp_path),
                       cfg_options=options, amp=True)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert type(runner.optim_wrapper) is OptimWrapper
    logs = list(tmp_path.glob("*/*.log"))
    assert len(logs) == 1 and FP32_LINE in logs[0].read_text()
