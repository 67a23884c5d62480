"""The worker's side of a step benchmark: thread count and seed, random inputs, bf16 autocast, timing, peak memory
and FLOP counting. torch is imported inside the functions, so that a driver importing the benchmark starts fast."""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from adpe.tooling.bench.results import GIB, Result

if TYPE_CHECKING:
    import torch


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
