"""What the machine computes natively: the one rule that ``--amp``, the benchmarks and ``make env`` share."""

from __future__ import annotations

import torch


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ('cpu' or 'cuda') computes bf16 at full speed, rather than emulating it.

    cuda: compute capability 8.0 (Ampere) or newer; older GPUs emulate bf16 (torch's default answer to
    ``is_bf16_supported`` counts that emulation as support, so it is asked without it).
    cpu: the instructions oneDNN's bf16 kernels need (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX-512 on
    x86, BF16 on Arm). Elsewhere (e.g. AVX2-only x86) a bf16 matmul is emulated and about 100x slower than fp32,
    so mixed precision would slow training down instead of speeding it up.

    ``AutoAmpOptimWrapper`` (what ``--amp`` builds) and the benchmarks decide by this one rule.
    """
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch before 2.3 had no emulation and no such argument
            return bool(torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN: no fast bf16 either
            return False
    return False
