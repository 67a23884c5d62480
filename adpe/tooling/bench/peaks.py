"""The hardware's peak rates, against which a step's TFLOP/s is shown: the card's dense datasheet rate and the best
square matmul measured on this machine, in the same dtype."""

from __future__ import annotations

from collections.abc import Sequence

from adpe.tooling.bench.measure import time_steps
from adpe.tooling.bench.results import Result
from adpe.tooling.bench.table import fmt, print_aligned

#: Dense (no sparsity) peak TFLOP/s from NVIDIA's A100, H100 and H200 datasheets: bf16 on tensor cores, and fp32
#: without TF32 (torch keeps TF32 off for matmuls by default, and the benchmarks' fp32 runs do too). Keys are
#: matched against ``torch.cuda.get_device_name()``, the longest first ('H100 PCIe' before 'H100' = SXM).
DATASHEET_TFLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "H200 NVL": {"bf16": 835.0, "fp32": 60.0},
    "H200": {"bf16": 989.0, "fp32": 67.0},
}


def datasheet_peak(device_name: str) -> tuple[str, dict[str, float]] | None:
    """(card, peaks by dtype) for a known card in ``device_name``, else None (CPUs, other GPUs)."""
    for card in sorted(DATASHEET_TFLOPS, key=len, reverse=True):
        if card.lower() in device_name.lower():
            return card, DATASHEET_TFLOPS[card]
    return None


def measure_matmul_tflops(device_name: str, dtype: str, side: int | None = None, repeats: int = 5) -> float:
    """The best TFLOP/s of a square ``side`` x ``side`` matmul in ``dtype`` on ``device_name`` ('cpu' or
    'cuda'): what this machine can reach, against which the step's rate is also shown."""
    import torch

    device = torch.device(device_name)
    side = side or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device="cpu").manual_seed(0)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = (torch.randn(side, side, generator=generator).to(device, torch_dtype) for _ in range(2))
    times, _ = time_steps(lambda: a @ b, warmup=2, steps=repeats, device=device)
    return 2 * side**3 / min(times) / 1e12


def utilisation_fields(result: Result, peaks: dict[str, float]) -> Result:
    """The result's achieved TFLOP/s and its fraction of each peak of its dtype (``peaks``: name -> TFLOP/s)."""
    if result.get("flop_per_step") is None:
        return {"tflop_per_s": None, "utilisation": {}}
    rate = result["flop_per_step"] / result["seconds_per_step"] / 1e12
    return {"tflop_per_s": rate, "utilisation": {name: rate / peak for name, peak in peaks.items()}}


def hardware_peaks(device: str, device_name: str, dtypes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per dtype, the peaks the utilisation is measured against: the card's datasheet rate (when known) and a
    measured matmul; printed as a small table."""
    card = datasheet_peak(device_name) if device == "cuda" else None
    peaks = {dtype: {"matmul": measure_matmul_tflops(device, dtype), **({"datasheet": card[1][dtype]} if card else {})}
             for dtype in dtypes}
    print(f"\npeak rates (TFLOP/s) of {device_name}: measured = best square matmul here; datasheet = dense "
          f"{'rate of the ' + card[0] if card else 'rate (no datasheet entry for this device)'}")
    rows = [[dtype, f"{peaks[dtype]['matmul']:.2f}", fmt(peaks[dtype].get("datasheet"), ".1f")] for dtype in dtypes]
    print_aligned(["dtype", "measured matmul", "datasheet"], rows, right={1, 2})
    known = ", ".join(f"{c} {v['bf16']:.0f} (bf16) / {v['fp32']:.1f} (fp32)" for c, v in DATASHEET_TFLOPS.items())
    print(f"datasheet table: {known}")
    return peaks


def utilisation_text(result: Result) -> str:
    """'12.3% sheet, 40.1% matmul' for the table ('-' when the step's FLOP were not counted)."""
    parts = [f"{100 * value:.1f}% {'sheet' if name == 'datasheet' else name}"
             for name, value in sorted(result.get("utilisation", {}).items(), reverse=True)]
    return ", ".join(parts) or "-"
