"""Shared machinery of the benchmark scripts ``tools/benchmark_pretrain.py`` and ``tools/benchmark_backbone.py``.

Each benchmark runs every measured pair in its own subprocess: the driver re-invokes its own script with a
hidden ``--worker`` flag, the worker prints one JSON line marked with ``RESULT_PREFIX`` on stdout, and the
driver parses it (so that each pair's peak memory is its own). This module holds what both sides share:

* the command line both scripts have in common (``add_dtypes_option``, ``add_run_options``, ``parse_checked``)
  and ``dispatch``, which runs the worker or the driver;
* worker helpers: thread count and seed, random inputs, bf16 autocast, timing, peak memory, FLOP counting;
* driver helpers: launching a worker and parsing its result, skipping bf16 where it is emulated, the
  load-average warning, the hardware's peak rates (datasheet and a measured matmul) and the utilisation
  against them, table and target printing, and the JSON report.

The scripts import it as ``from adpe import bench``; it imports torch only inside the worker helpers, so
a driver starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESULT_PREFIX = "@@BENCH_RESULT@@ "
GIB = 1024**3
DTYPES = ("fp32", "bf16")
MODEL_SIZES = ("tiny", "base", "large", "huge")  # adpe.models.vit.SIZES (tested), without importing torch here
# The options that every worker takes from its driver, besides its own (see ``add_run_options``).
RUN_OPTIONS = ("warmup", "steps", "threads", "seed", "device")

Result = dict[str, Any]


# ---------------------------------------------------------------------------------------------- command line
def default_threads() -> int:
    """The number of cores this process may run on (all of them where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_dtypes_option(parser: argparse.ArgumentParser) -> None:
    """``--dtypes``: fp32 and/or bf16 autocast, both by default."""
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="fp32 and/or bf16 autocast (default: both)")


def add_run_options(parser: argparse.ArgumentParser, default_steps: int) -> None:
    """The shared options from ``--warmup`` to ``--json``, then the hidden ``--worker`` and ``--dtype``."""
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=default_steps,
                        help=f"timed steps; the median is reported (default {default_steps})")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads on CPU (default: all cores available)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)


def parse_checked(
    parser: argparse.ArgumentParser, argv: list[str] | None, positive: Sequence[str]
) -> argparse.Namespace:
    """Parse ``argv``; the ``positive`` options (attribute names) must be >= 1 and ``--warmup`` >= 0.

    Then ``--device auto`` is resolved and the dtypes are put in order, fp32 first (it carries what bf16 is
    compared with).
    """
    args = parser.parse_args(argv)
    if min(getattr(args, name) for name in positive) < 1 or args.warmup < 0:
        flags = [f"--{name.replace('_', '-')}" for name in positive]
        parser.error(f"{', '.join(flags[:-1])} and {flags[-1]} must be >= 1, --warmup >= 0")
    _finish_args(args)
    return args


def _finish_args(args: argparse.Namespace) -> None:
    """Resolve ``--device auto`` and put the dtypes in order, fp32 first."""
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtypes = [d for d in DTYPES if d in args.dtypes]


def dispatch(
    args: argparse.Namespace,
    selector: str,
    run_worker: Callable[[argparse.Namespace], Result],
    run_all: Callable[[argparse.Namespace], int],
) -> int:
    """As a worker, print ``run_worker``'s result as one marked JSON line; else run the driver ``run_all``.

    ``selector`` names the hidden option (besides ``--dtype``) that picks the worker's pair.
    """
    if not args.worker:
        return run_all(args)
    if getattr(args, selector) is None or args.dtype is None:
        raise SystemExit(f"--worker needs --{selector} and --dtype")
    print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- worker
def prepare_worker(args: argparse.Namespace) -> torch.device:
    """The worker's device; sets the thread count on CPU and seeds torch."""
    import torch

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return device


def random_inputs(shape: Sequence[int], seed: int, device: torch.device) -> torch.Tensor:
    """Standard-normal inputs drawn on the CPU from their own seeded generator, then moved to ``device``."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator).to(device)


def autocast(dtype: str, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``dtype == 'bf16'``; a no-op context for fp32."""
    import torch

    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only; CPU work is synchronous)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> tuple[list[float], Any]:
    """Run ``warmup`` untimed steps, then time ``steps`` steps; the seconds of each and the last step's value."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    last = None
    for _ in range(steps):
        start = time.perf_counter()
        last = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, last


def timing_fields(times: list[float]) -> Result:
    """``step_times_s`` and their median, ``seconds_per_step``."""
    return {"step_times_s": times, "seconds_per_step": statistics.median(times)}


def peak_memory_fields(device: torch.device) -> Result:
    """This process's peak RSS (``getrusage``) and, on CUDA, its peak allocated device memory, in GiB."""
    import torch

    rss_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit / GIB,
        "peak_cuda_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
    }


def model_fields(model: torch.nn.Module) -> Result:
    """The model's parameter count and the number of threads torch ran with."""
    import torch

    return {"parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def _attention_flop(q: Any, k: Any, v: Any) -> int:
    """Two batched matmuls, q @ k^T and p @ v: 2 FLOP per multiply-add. Shapes (B, H, S, D)."""
    b, h, s_q, d_q = q
    s_k, d_v = k[-2], v[-1]
    return 2 * b * h * s_q * s_k * (d_q + d_v)


def _cpu_attention_flop(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return _attention_flop(query, key, value)


def _cpu_attention_backward_flop(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _attention_flop(query, key, value)  # dq, dk, dv and dp: four matmuls


def count_flops(forward_backward: Callable[[], Any]) -> int:
    """FLOP of one call of ``forward_backward`` (run it in fp32): matmuls, convolutions and attention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    # FlopCounterMode counts the CUDA attention kernels but not the fused CPU one that SDPA picks on CPU.
    custom: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_attention_flop
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_attention_backward_flop
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        forward_backward()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- hardware peaks
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


# ---------------------------------------------------------------------------------------------- driver
def forwarded_options(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``--name value`` for each of ``names`` (attribute names; underscores become dashes)."""
    options: list[str] = []
    for name in names:
        options += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return options


def emulated_bf16(dtype: str, device: str) -> bool:
    """Whether ``dtype`` is bf16 on a ``device`` ('cpu' or 'cuda') that only emulates it (``adpe.device.native_bf16``,
    the rule ``--amp`` follows): a step there takes about 100x the fp32 one, minutes for ViT-B on a CPU."""
    from adpe.device import native_bf16  # imports torch, which the parent process of a benchmark never does

    return dtype == "bf16" and not native_bf16(device)


def skipped_emulated(identity: Result) -> Result:
    """The result of a pair that is not timed because its bf16 is emulated: ``identity`` plus ``skipped``."""
    return {**identity, "skipped": "bf16 is emulated here (no native bf16), ~100x slower than fp32: not timed; "
                                   "--amp uses fp32"}


def launch_worker(
    script: str, options: list[str], args: argparse.Namespace, identity: Result
) -> Result:
    """Run ``script --worker *options`` in a subprocess and return the result it printed.

    The worker gets, on CPU, ``OMP_NUM_THREADS`` (unless already set); it imports the installed adpe.
    On failure: ``identity`` plus ``error`` (the exit status and the last line of output) and ``stderr_tail``.
    """
    env = dict(os.environ)
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    cmd = [sys.executable, os.path.abspath(script), "--worker", *options]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout or "(no output)").strip().splitlines() or ["(no output)"]
        return {**identity, "error": f"exit {proc.returncode}: {tail[-1]}", "stderr_tail": tail[-30:]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(device: str) -> float | None:
    """Warn on stderr when a CPU run starts on a loaded machine; returns the load average before the run."""
    load = load_average()
    if device == "cpu" and load is not None and load > 0.5:
        print(f"[bench] warning: 1-minute load average is {load:.1f} before the run; CPU timings will be "
              "noisy unless the machine is otherwise idle", file=sys.stderr, flush=True)
    return load


def run_logged(label: str, launch: Callable[[], Result]) -> Result:
    """Call ``launch`` with progress lines on stderr: the label, then the step time or error and wall time."""
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = launch()
    status = result.get("error") or result.get("skipped") or f"{result['seconds_per_step']:.3f} s/step"
    print(f"[bench]   {status} ({time.perf_counter() - started:.0f} s wall)", file=sys.stderr, flush=True)
    return result


def exit_status(results: list[Result]) -> int:
    """1 when any worker failed, else 0."""
    return 1 if any("error" in r for r in results) else 0


def timed(result: Result) -> bool:
    """Whether the pair was timed: neither failed (``error``) nor left out (``skipped``)."""
    return "error" not in result and "skipped" not in result


def successful_by_key(results: list[Result], name_key: str) -> dict[tuple[str, str], Result]:
    """The timed results (``timed``), by (``result[name_key]``, dtype)."""
    return {(r[name_key], r["dtype"]): r for r in results if timed(r)}


def bf16_speedup(fp32: Result | None, dtype: str, seconds: float) -> float | None:
    """fp32 step time over this bf16 one; None for fp32 or when fp32 was not measured."""
    return fp32["seconds_per_step"] / seconds if dtype == "bf16" and fp32 else None


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or '-' for None."""
    return "-" if value is None else format(value, spec)


def print_aligned(header: list[str], rows: list[list[str]], right: Collection[int]) -> None:
    """A plain-text table: the header, a rule, then the rows; the ``right`` columns right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for n, row in enumerate([header, *rows]):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def matches_reference(args: argparse.Namespace, reference: dict[str, Any]) -> bool:
    """Whether every option named in ``reference`` has the reference value."""
    return all(getattr(args, k) == v for k, v in reference.items())


def print_check_lines(checks: list[Result]) -> None:
    """One ``[ok]`` / ``[MISS]`` line per checked target."""
    for c in checks:
        print(f"  [{'ok' if c['ok'] else 'MISS'}] {c['target']}: {c['value']:.3f}")


def device_description(device: str) -> str:
    """The CUDA device's name, or the CPU's (``platform.processor()``, else 'cpu')."""
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"


def write_report(
    args: argparse.Namespace,
    config_keys: Sequence[str],
    device_name: str,
    load: float | None,
    results: list[Result],
    checks: list[Result],
) -> None:
    """Write the run's configuration, environment, results and targets to ``args.json`` (when given)."""
    if not args.json:
        return
    import torch

    report = {
        "config": {k: getattr(args, k) for k in config_keys},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "device_name": device_name,
                        "cpu_count": os.cpu_count(), "load_average_before": load},
        "results": results,
        "targets": checks,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")
