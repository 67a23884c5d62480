"""The benchmarks (adpe.tooling.bench): FLOP counting, hardware peaks, the timm reference rows, the targets and their
check, and the README's list of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adpe.tooling.bench import backbone, catalog, data, driver, measure, peaks, pretrain
from adpe.tooling.bench.targets import METRICS, Target, check

ROOT = Path(__file__).resolve().parents[1]


def test_flop_count_of_a_linear_forward_and_backward():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    # forward x @ W^T, backward grad_x and grad_W: three matmuls of 8 x 32 x 16 multiply-adds
    assert measure.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16


@pytest.mark.parametrize("name, card", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                        ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"),
                                        ("NVIDIA A100-SXM4-80GB", "A100"), ("Intel Xeon", None)])
def test_datasheet_peak_matches_the_card_most_specifically(name, card):
    found = peaks.datasheet_peak(name)
    assert (found[0] if found else None) == card


def test_utilisation_is_the_achieved_rate_over_each_peak():
    result = {"flop_per_step": 4e12, "seconds_per_step": 0.01}  # 400 TFLOP/s
    fields = peaks.utilisation_fields(result, {"datasheet": 989.0, "matmul": 800.0})
    assert fields["tflop_per_s"] == pytest.approx(400.0)
    assert fields["utilisation"] == pytest.approx({"datasheet": 400 / 989, "matmul": 0.5})
    assert peaks.utilisation_text({**result, **fields}) == "50.0% matmul, 40.4% sheet"


def test_measured_matmul_rate_is_positive_and_finite():
    rate = peaks.measure_matmul_tflops("cpu", "fp32", side=128, repeats=2)
    assert 0 < rate < 1e3


@pytest.mark.parametrize("ours, reference", list(backbone.TIMM_REFERENCES.items()))
def test_backbone_benchmark_reference_rows_count_the_same_work_as_ours(ours, reference):
    """timm's Beit / VisionTransformer rows are like-for-like: the same matmuls and attention as ours."""
    flops = {}
    for config in (ours, reference):
        args = backbone.parse_args(["--worker", "--config", config, "--dtype", "fp32", "--size", "tiny", "--seg-size",
                                    "64", "--steps", "1", "--warmup", "0", "--threads", "1", "--count-flops"])
        flops[config] = backbone.run_worker(args)["flop_per_step"]
    assert flops[ours] == pytest.approx(flops[reference], rel=0.01)


# ---------------------------------------------------------------------------------------------- targets
def _row(name: str, dtype: str | None = "fp32", **fields) -> dict:
    """A timed result row named ``name`` (key 'variant') with ``fields``."""
    return {"variant": name, "dtype": dtype, "seconds_per_step": 1.0, "peak_rss_gib": 1.0, "peak_cuda_gib": None,
            **fields}


def test_check_bounds_a_ratio_to_the_versus_row_of_the_same_dtype():
    targets = [Target("ours", "time", 1.25, versus="base")]
    results = [_row("base"), _row("ours", seconds_per_step=1.2), _row("base", "bf16"),
               _row("ours", "bf16", seconds_per_step=1.5), _row("ours", "bf16x")]  # no base in 'bf16x'
    checks = check(targets, results, "variant", "cpu")
    assert [(c.target, c.value, c.ok) for c in checks] == [
        ("ours fp32 time <= 1.25x base", pytest.approx(1.2), True),
        ("ours bf16 time <= 1.25x base", pytest.approx(1.5), False)]


def test_check_takes_more_is_better_metrics_as_minimums():
    targets = [Target("ours", "bf16_speedup", 2.0, dtype="bf16")]
    results = [_row("ours", "bf16", bf16_speedup=2.5), _row("ours", "fp32", bf16_speedup=None)]
    [only] = check(targets, results, "variant", "cpu")
    assert only.ok and only.target == "ours bf16 speed-up over fp32 >= 2.00x"
    assert not check(targets, [_row("ours", "bf16", bf16_speedup=1.5)], "variant", "cpu")[0].ok


def test_check_keeps_device_and_reference_targets_to_their_runs():
    targets = [Target("ours", "time", 0.5, device="cuda"), Target("ours", "time", 2.0, reference_only=True),
               Target("ours", "memory", 1.0, versus="base")]
    results = [_row("base", peak_cuda_gib=2.0), _row("ours", peak_rss_gib=1.5, peak_cuda_gib=1.0)]
    assert [c.target for c in check(targets, results, "variant", "cpu")] == ["ours fp32 peak RSS <= 1.00x base"]
    on_gpu = check(targets, results, "variant", "cuda", reference=True)
    assert [(c.target, c.ok) for c in on_gpu] == [("ours fp32 time <= 0.5 s/step", False),
                                                  ("ours fp32 time <= 2.0 s/step", True),
                                                  ("ours fp32 peak CUDA memory <= 1.00x base", True)]


def test_check_leaves_out_failed_and_skipped_rows():
    targets = [Target("ours", "time", 2.0, versus="base")]
    failed = [{"variant": "base", "dtype": "fp32", "error": "exit 1"}, _row("ours")]
    skipped = [_row("base"), {"variant": "ours", "dtype": "fp32", "skipped": "emulated"}]
    assert check(targets, failed, "variant", "cpu") == [] and check(targets, skipped, "variant", "cpu") == []


@pytest.mark.parametrize("targets, rows", [
    (pretrain.TARGETS, set(pretrain.VARIANTS)),
    (backbone.TARGETS, set(backbone.CONFIGS)),
    (data.TARGETS, {"cpu", "device", data.PRETRAINING_STEP}),
])
def test_every_target_names_rows_and_a_metric_of_its_benchmark(targets, rows):
    assert targets
    for target in targets:
        assert target.metric in METRICS and target.row in rows and target.versus in {None, *rows}, target


def test_readme_lists_the_targets_as_the_catalog_prints_them():
    """The README's target list is `python -m adpe.tooling.bench --targets`, to the letter."""
    readme = (ROOT / "README.md").read_text()
    assert "\n" + catalog.target_list() + "\n" in readme


def test_data_benchmark_checks_the_device_path_against_the_fastest_pretraining_step(tmp_path):
    report = tmp_path / "bench.json"
    report.write_text('{"results": [{"variant": "a", "dtype": "bf16", "images_per_s": 80.0},'
                      ' {"variant": "b", "dtype": "bf16", "images_per_s": 100.0},'
                      ' {"variant": "c", "dtype": "bf16", "error": "exit 1"}]}')
    rows = [{"path": "cpu", "images_per_s": 50.0}, {"path": "device", "images_per_s": 90.0}]
    [only] = check(data.TARGETS, [*rows, data.pretraining_rate(report)], "path", "cuda")
    assert only.target == "device images/s >= 1.00x pretraining step" and only.value == 0.9 and not only.ok


# ---------------------------------------------------------------------------------------------- driver
@pytest.fixture
def fake_runs(monkeypatch):
    """Workers and peak measurements replaced by fakes: yields (launched identities, dtypes whose peak was asked)."""
    launched, peaks_for = [], []

    def fake_worker(module, options, args, identity):
        launched.append(identity)
        return {**identity, "seconds_per_step": 2.0, "step_times_s": [2.0], "final_loss": 1.0, "peak_rss_gib": 0.1,
                "peak_cuda_gib": None, "parameters": 1, "threads": 1, "flop_per_step": 1e9}

    def fake_peaks(device, name, dtypes):
        peaks_for.extend(dtypes)
        return {dtype: {"matmul": 1.0} for dtype in dtypes}

    monkeypatch.setattr(driver, "launch_worker", fake_worker)
    monkeypatch.setattr(driver, "hardware_peaks", fake_peaks)
    return launched, peaks_for


@pytest.mark.parametrize("native", [False, True])
def test_pretrain_benchmark_does_not_run_bf16_where_it_is_emulated(monkeypatch, capsys, fake_runs, native):
    """On a CPU without native bf16 (adpe.device.native_bf16, --amp's rule) the bf16 row reads EMULATED: no worker
    runs it, no bf16 peak is measured, and the run still succeeds."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    launched, peaks_for = fake_runs
    args = pretrain.parse_args(["--variants", "mae_plus_ape", "--size", "tiny", "--device", "cpu"])
    assert pretrain.run_all(args) == 0
    expected = ["fp32", "bf16"] if native else ["fp32"]
    assert [identity["dtype"] for identity in launched] == expected and peaks_for == expected
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mae_plus_ape  bf16"))
    assert ("EMULATED" in row) is not native and ("bf16 is emulated" in row) is not native


def test_backbone_benchmark_does_not_run_bf16_where_it_is_emulated(monkeypatch, capsys, fake_runs):
    """The same rule in the backbone benchmark: every bf16 row reads EMULATED, only fp32 runs."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    launched, peaks_for = fake_runs
    args = backbone.parse_args(["--size", "tiny", "--device", "cpu", "--only", "seg"])
    assert backbone.run_all(args) == 0
    assert launched and {identity["dtype"] for identity in launched} == {"fp32"} and peaks_for == ["fp32"]
    rows = [line for line in capsys.readouterr().out.splitlines() if "  bf16  " in line]
    assert rows and all("EMULATED" in row for row in rows)


def test_pretrain_benchmark_runs_its_worker_as_a_module(tmp_path, capsys):
    """A real worker subprocess (``python -m adpe.tooling.bench.pretrain --worker``) times a tiny step; the report
    has its result and the targets this run can check."""
    out = tmp_path / "bench.json"
    args = pretrain.parse_args(["--variants", "mae_plus_ape", "adpe_ape_embed", "--dtypes", "fp32", "--size", "tiny",
                                "--images", "1", "--crops", "1", "--img-size", "32", "--steps", "1", "--warmup", "0",
                                "--threads", "1", "--device", "cpu", "--json", str(out)])
    assert pretrain.run_all(args) == 0
    report = __import__("json").loads(out.read_text())
    assert [(r["variant"], r["dtype"]) for r in report["results"]] == [("mae_plus_ape", "fp32"),
                                                                       ("adpe_ape_embed", "fp32")]
    assert all(r["seconds_per_step"] > 0 and r["flop_per_step"] > 0 for r in report["results"])
    assert [t["target"] for t in report["targets"]] == ["adpe_ape_embed fp32 time <= 1.05x mae_plus_ape"]
