"""What a benchmark measures of one (row, dtype) pair, typed: the JSON line a worker prints and the driver
completes, which the ``--json`` report lists under ``results``."""

from __future__ import annotations

from typing import Any, TypedDict

# Marks the worker's one result line on its stdout, among whatever else the libraries print.
RESULT_PREFIX = "@@BENCH_RESULT@@ "
GIB = 1024**3


class Result(TypedDict, total=False):
    """One (row, dtype) pair. A row is named by ``variant`` (pretraining), ``config`` (backbone) or ``path`` (input
    pipeline, which has no dtype). A pair that failed has ``error`` (and ``stderr_tail``); one left out has
    ``skipped``; a timed one has the rest."""

    variant: str
    config: str
    path: str  # input pipeline: 'cpu', 'device' or the pretraining step compared with
    section: str  # backbone: 'seg' or 'det'
    dtype: str  # 'fp32' or 'bf16'
    error: str
    stderr_tail: list[str]
    skipped: str
    # measured by the worker
    input: list[int]  # backbone: (batch, 3, side, side)
    step_times_s: list[float]
    seconds_per_step: float  # the median of step_times_s
    final_loss: float | None  # pretraining
    loss: float | None  # backbone
    peak_rss_gib: float
    peak_cuda_gib: float | None  # None off CUDA
    parameters: int
    threads: int
    flop_per_step: float | None  # counted in one dtype's worker per row, shared by its other dtype
    # derived by the driver
    images_per_s: float  # pretraining
    tflop_per_step: float | None
    gflop_per_s: float | None
    tflop_per_s: float | None
    utilisation: dict[str, float]  # peak name ('datasheet', 'matmul') -> share of it
    bf16_speedup: float | None  # the fp32 step time over this bf16 one
    ratio_to_baseline: dict[str, float]  # pretraining: step time over each baseline's, same dtype
    cuda_memory_ratio_to_baseline: dict[str, float]
    baseline: str  # backbone: its section's baseline row
    time_ratio: float | None  # backbone: over the baseline's, same dtype (rss_ratio, cuda_ratio alike)
    rss_ratio: float | None
    cuda_ratio: float | None
    to_reference: dict[str, Any] | None  # backbone: the same ratios over the timm reference row's


def timed(result: Result) -> bool:
    """Whether the pair was timed: neither failed (``error``) nor left out (``skipped``)."""
    return "error" not in result and "skipped" not in result


def timed_by_key(results: list[Result], name_key: str) -> dict[tuple[str, str | None], Result]:
    """The timed results by (``result[name_key]``, dtype), in their order."""
    return {(r[name_key], r.get("dtype")): r for r in results if timed(r)}


def exit_status(results: list[Result]) -> int:
    """1 when any worker failed, else 0 (a missed target is reported, not an error)."""
    return 1 if any("error" in r for r in results) else 0


def bf16_speedup(fp32: Result | None, dtype: str, seconds: float) -> float | None:
    """fp32 step time over this bf16 one; None for fp32 or when fp32 was not measured."""
    return fp32["seconds_per_step"] / seconds if dtype == "bf16" and fp32 else None


def skipped_emulated(identity: Result) -> Result:
    """The result of a pair that is not timed because its bf16 is emulated: ``identity`` plus ``skipped``."""
    return {**identity, "skipped": "bf16 is emulated here (no native bf16), ~100x slower than fp32: not timed; "
                                   "--amp uses fp32"}
