"""The benchmark scripts' shared machinery: FLOP counting, hardware peaks and the timm reference rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from adpe.tooling import bench

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_flop_count_of_a_linear_forward_and_backward():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    # forward x @ W^T, backward grad_x and grad_W: three matmuls of 8 x 32 x 16 multiply-adds
    assert bench.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16


@pytest.mark.parametrize("name, card", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                        ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"),
                                        ("NVIDIA A100-SXM4-80GB", "A100"), ("Intel Xeon", None)])
def test_datasheet_peak_matches_the_card_most_specifically(name, card):
    found = bench.datasheet_peak(name)
    assert (found[0] if found else None) == card


def test_utilisation_is_the_achieved_rate_over_each_peak():
    result = {"flop_per_step": 4e12, "seconds_per_step": 0.01}  # 400 TFLOP/s
    fields = bench.utilisation_fields(result, {"datasheet": 989.0, "matmul": 800.0})
    assert fields["tflop_per_s"] == pytest.approx(400.0)
    assert fields["utilisation"] == pytest.approx({"datasheet": 400 / 989, "matmul": 0.5})
    assert bench.utilisation_text({**result, **fields}) == "50.0% matmul, 40.4% sheet"


def test_measured_matmul_rate_is_positive_and_finite():
    rate = bench.measure_matmul_tflops("cpu", "fp32", side=128, repeats=2)
    assert 0 < rate < 1e3


@pytest.mark.parametrize("ours, reference", [("ours_ape_bias", "timm_beit"), ("ours_ape", "timm_vit")])
def test_backbone_benchmark_reference_rows_count_the_same_work_as_ours(ours, reference):
    """timm's Beit / VisionTransformer rows are like-for-like: the same matmuls and attention as ours."""
    tool = load_tool("benchmark_backbone")
    flops = {}
    for config in (ours, reference):
        args = tool.parse_args(["--worker", "--config", config, "--dtype", "fp32", "--size", "tiny", "--seg-size",
                                "64", "--steps", "1", "--warmup", "0", "--threads", "1", "--count-flops"])
        flops[config] = tool.run_worker(args)["flop_per_step"]
    assert flops[ours] == pytest.approx(flops[reference], rel=0.01)


@pytest.fixture
def fake_runs(monkeypatch):
    """Workers and peak measurements replaced by fakes: yields (launched identities, dtypes whose peak was asked)."""
    launched, peaks_for = [], []

    def fake_worker(script, options, args, identity):
        launched.append(identity)
        return {**identity, "seconds_per_step": 2.0, "step_times_s": [2.0], "final_loss": 1.0, "peak_rss_gib": 0.1,
                "peak_cuda_gib": None, "parameters": 1, "threads": 1, "flop_per_step": 1e9}

    def fake_peaks(device, name, dtypes):
        peaks_for.extend(dtypes)
        return {dtype: {"matmul": 1.0} for dtype in dtypes}

    monkeypatch.setattr(bench, "launch_worker", fake_worker)
    monkeypatch.setattr(bench, "hardware_peaks", fake_peaks)
    return launched, peaks_for


@pytest.mark.parametrize("native", [False, True])
def test_pretrain_benchmark_does_not_run_bf16_where_it_is_emulated(monkeypatch, capsys, fake_runs, native):
    """On a CPU without native bf16 (adpe.device.native_bf16, --amp's rule) the bf16 row reads EMULATED: no worker
    runs it, no bf16 peak is measured, and the run still succeeds."""
    tool = load_tool("benchmark_pretrain")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    launched, peaks_for = fake_runs
    args = tool.parse_args(["--variants", "mae_plus_ape", "--size", "tiny", "--device", "cpu"])
    assert tool.run_all(args) == 0
    expected = ["fp32", "bf16"] if native else ["fp32"]
    assert [identity["dtype"] for identity in launched] == expected and peaks_for == expected
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mae_plus_ape  bf16"))
    assert ("EMULATED" in row) is not native and ("bf16 is emulated" in row) is not native


def test_backbone_benchmark_does_not_run_bf16_where_it_is_emulated(monkeypatch, capsys, fake_runs):
    """The same rule in tools/benchmark_backbone.py: every bf16 row reads EMULATED, only fp32 runs."""
    tool = load_tool("benchmark_backbone")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    launched, peaks_for = fake_runs
    args = tool.parse_args(["--size", "tiny", "--device", "cpu", "--only", "seg"])
    assert tool.run_all(args) == 0
    assert launched and {identity["dtype"] for identity in launched} == {"fp32"} and peaks_for == ["fp32"]
    rows = [line for line in capsys.readouterr().out.splitlines() if "  bf16  " in line]
    assert rows and all("EMULATED" in row for row in rows)
