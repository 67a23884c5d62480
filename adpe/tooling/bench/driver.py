"""The driver's side of a step benchmark (``pretrain``, ``backbone``).

Each measured pair runs in its own subprocess, so that its peak memory is its own: the driver re-invokes the
benchmark's module with the hidden ``--worker`` flag, the worker prints one JSON line marked with ``RESULT_PREFIX``
on stdout, and the driver parses it. Here: launching a worker and parsing its result, leaving out bf16 where it is
emulated, the load-average warning, progress lines, the peak rates and the JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

from adpe.tooling.bench.peaks import hardware_peaks
from adpe.tooling.bench.results import RESULT_PREFIX, Result, skipped_emulated
from adpe.tooling.bench.targets import Check


def emulated_bf16(dtype: str, device: str) -> bool:
    """Whether ``dtype`` is bf16 on a ``device`` ('cpu' or 'cuda') that only emulates it (``adpe.device.native_bf16``,
    the rule ``--amp`` follows): a step there takes about 100x the fp32 one, minutes for ViT-B on a CPU."""
    from adpe.device import native_bf16  # imports torch, which the driver otherwise leaves to its workers

    return dtype == "bf16" and not native_bf16(device)


def launch_worker(module: str, options: list[str], args: argparse.Namespace, identity: Result) -> Result:
    """Run ``python -m module --worker *options`` in a subprocess and return the result it printed.

    The worker gets, on CPU, ``OMP_NUM_THREADS`` (unless already set); ``-P`` keeps the working directory off its
    path, so that it imports the installed adpe. On failure: ``identity`` plus ``error`` (the exit status and the
    last line of output) and ``stderr_tail``.
    """
    env = dict(os.environ)
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    cmd = [sys.executable, "-P", "-m", module, "--worker", *options]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout or "(no output)").strip().splitlines() or ["(no output)"]
        return {**identity, "error": f"exit {proc.returncode}: {tail[-1]}", "stderr_tail": tail[-30:]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def launch_pair(
    module: str, options: list[str], args: argparse.Namespace, identity: Result, count_flops: bool
) -> Result:
    """Run one (row, dtype) pair, ``identity``, in a worker with ``options`` (its row's and the forwarded ones), plus
    ``--count-flops`` and ``--compile`` where asked. A bf16 pair on a device that emulates bf16 is not run: minutes
    per step at ViT-B on such a CPU; its row says so instead."""
    if emulated_bf16(identity["dtype"], args.device):
        return skipped_emulated(identity)
    options = [*options, "--dtype", identity["dtype"]]
    options += ["--count-flops"] if count_flops else []
    options += ["--compile"] if args.compile else []
    return launch_worker(module, options, args, identity)


def run_pairs(
    rows: Sequence[tuple[str, Result]], dtypes: Sequence[str], launch: Callable[[Result, bool], Result]
) -> list[Result]:
    """``launch(identity, count_flops)`` for each (label, identity) of ``rows`` in each dtype, with progress lines on
    stderr; the FLOP are counted in the first dtype's worker only (they do not depend on it)."""
    results = []
    for label, identity in rows:
        for n, dtype in enumerate(dtypes):
            results.append(run_logged(f"{label} {dtype}", partial(launch, {**identity, "dtype": dtype}, n == 0)))
    return results


def run_logged(label: str, launch: Callable[[], Result]) -> Result:
    """Call ``launch`` with progress lines on stderr: the label, then the step time or error and wall time."""
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = launch()
    status = result.get("error") or result.get("skipped") or f"{result['seconds_per_step']:.3f} s/step"
    print(f"[bench]   {status} ({time.perf_counter() - started:.0f} s wall)", file=sys.stderr, flush=True)
    return result


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


def device_description(device: str) -> str:
    """The CUDA device's name, or the CPU's (``platform.processor()``, else 'cpu')."""
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"


def measured_peaks(args: argparse.Namespace) -> tuple[str, dict[str, dict[str, float]]]:
    """The device's name and, per dtype that was timed (not emulated), its peak rates (printed as a small table)."""
    device_name = device_description(args.device)
    timed_dtypes = [dtype for dtype in args.dtypes if not emulated_bf16(dtype, args.device)]
    return device_name, hardware_peaks(args.device, device_name, timed_dtypes)


def matches_reference(args: argparse.Namespace, reference: dict[str, Any]) -> bool:
    """Whether every option named in ``reference`` has the reference value."""
    return all(getattr(args, k) == v for k, v in reference.items())


def write_report(
    args: argparse.Namespace,
    config_keys: Sequence[str],
    device_name: str,
    load: float | None,
    results: list[Result],
    checks: list[Check],
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
        "targets": [asdict(c) for c in checks],
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")
