"""``python -m adpe.tooling.env``: the versions, compiled-ops status, device and threads, for bug reports.

It also serves ``tools/setup_env.sh`` (so that both read the same rules):

* ``--mmcv-build``: which mmcv wheel this machine needs, as shell assignments (``MMCV_FLAVOUR``,
  ``MMCV_CUDA_ARCHS``, ``MMCV_FORCE_CUDA``); see :func:`mmcv_build`.
* ``--check``: imports the whole stack and runs mmcv's ``nms`` and ``roi_align`` on every device present, with
  a message that says how to rebuild when the CUDA ops are missing.

Only the standard library is imported at module level: ``--mmcv-build`` runs before mmcv is installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as err:  # report, never crash: this runs in broken environments too
        return f"not importable ({type(err).__name__}: {err})"


# ------------------------------------------------------------------------------------------- the mmcv wheel
@dataclass(frozen=True)
class MmcvBuild:
    """What the mmcv wheel of this machine is built for.

    flavour: 'cpu', or 'cu<version>-sm<arch>[-sm<arch>...]' (e.g. 'cu130-sm90'); part of the wheel cache key,
        so a wheel built without CUDA ops is never installed where a GPU build is needed, nor one built for
        other architectures.
    cuda_archs: TORCH_CUDA_ARCH_LIST for the build ('' for cpu).
    reason: one line saying why, printed by the set-up.
    """

    flavour: str
    cuda_archs: str
    reason: str

    @property
    def with_cuda(self) -> bool:
        return self.flavour != "cpu"


def _arch_tag(arch: str) -> str:
    """'9.0' -> 'sm90', '8.6+PTX' -> 'sm86ptx'."""
    return "sm" + re.sub(r"[^0-9a-z]", "", arch.lower())


def mmcv_build(torch_cuda: str | None, nvcc: str | None, gpu_capabilities: list[tuple[int, int]],
               arch_list: str | None) -> MmcvBuild:
    """The mmcv build this machine needs.

    torch_cuda: ``torch.version.cuda`` (None for a CPU torch); nvcc: its path or None; gpu_capabilities: of
    the visible GPUs; arch_list: the user's TORCH_CUDA_ARCH_LIST, if set.

    CUDA ops are built when a CUDA torch and nvcc are present and there is something to build for: the visible
    GPUs' architectures, or TORCH_CUDA_ARCH_LIST (to build on a GPU-less login node for the compute nodes).
    Without either, a CUDA torch on a CPU-only machine gets the CPU build, which is much faster to compile.
    A GPU machine that cannot build CUDA ops is an error: mmdet's RoIAlign and NMS would fail on CUDA tensors.
    """
    archs = (arch_list or "").replace(",", ";").replace(" ", ";")
    archs = ";".join(a for a in archs.split(";") if a)
    if not archs and gpu_capabilities:
        archs = ";".join(sorted({f"{major}.{minor}" for major, minor in gpu_capabilities}))
    if not archs:
        return MmcvBuild("cpu", "", "no GPU visible and TORCH_CUDA_ARCH_LIST unset: CPU ops only")
    if torch_cuda is None or nvcc is None:
        missing = "a CUDA build of torch" if torch_cuda is None else "nvcc (the CUDA toolkit) on PATH"
        why = f"GPUs with compute capability {archs}" if gpu_capabilities else f"TORCH_CUDA_ARCH_LIST={archs}"
        raise RuntimeError(f"{why} need mmcv with CUDA ops, but {missing} is missing. Load the CUDA toolkit "
                           "(e.g. `module load cuda`) and run `make setup` again, or unset TORCH_CUDA_ARCH_LIST "
                           "on a CPU-only machine.")
    tags = "-".join(_arch_tag(a) for a in archs.split(";"))
    flavour = f"cu{torch_cuda.replace('.', '')}-{tags}"
    source = "visible GPUs" if not arch_list else "TORCH_CUDA_ARCH_LIST"
    return MmcvBuild(flavour, archs, f"CUDA {torch_cuda} ops for architectures {archs} ({source})")


def detect_mmcv_build() -> MmcvBuild:
    """``mmcv_build`` for this machine (imports torch)."""
    import torch

    capabilities = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return mmcv_build(torch.version.cuda, shutil.which("nvcc"), capabilities, os.environ.get("TORCH_CUDA_ARCH_LIST"))


# ------------------------------------------------------------------------------------------- compiled ops
def run_mmcv_ops(device: str) -> None:
    """Run mmcv's nms and roi_align on ``device`` tensors and check nms's answer; raises if either fails."""
    import torch
    from mmcv.ops import nms, roi_align

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]], device=device)
    keep = nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.5)[1]
    if keep.tolist() != [0]:
        raise AssertionError(f"mmcv nms on {device} kept {keep.tolist()}, expected [0]")
    pooled = roi_align(torch.ones(1, 1, 4, 4, device=device), torch.tensor([[0.0, 0, 0, 3, 3]], device=device), (2, 2))
    if not torch.allclose(pooled.cpu(), torch.ones(1, 1, 2, 2)):
        raise AssertionError(f"mmcv roi_align on {device} averaged a constant map to {pooled.flatten().tolist()}")


def ops_devices() -> list[str]:
    """The devices the compiled ops must work on here: cpu, plus cuda when a GPU is visible."""
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def check_mmcv_ops() -> None:
    """Raise with a rebuild recipe unless nms and roi_align work on every device of ``ops_devices``."""
    for device in ops_devices():
        try:
            run_mmcv_ops(device)
        except Exception as err:
            hint = ("mmcv was built without CUDA ops (or for other GPUs). Run `make setup` on this GPU node with "
                    "nvcc on PATH: it builds a CUDA wheel for the visible GPUs and caches it apart from CPU builds "
                    "under $ADPE_CACHE/wheels.") if device == "cuda" else \
                "mmcv's compiled ops do not load: remove .venv and run `make setup` again."
            raise RuntimeError(f"mmcv's compiled ops fail on {device} tensors ({type(err).__name__}: {err}). "
                               f"{hint}") from err


def _mmcv_ops() -> str:
    try:
        from mmcv.ops import get_compiling_cuda_version

        built = get_compiling_cuda_version()
        built = "CPU only" if built == "not available" else f"CUDA {built}"
        check_mmcv_ops()
        return f"compiled ops OK (nms, roi_align) on {', '.join(ops_devices())}; built with {built}"
    except Exception as err:
        return f"unavailable ({type(err).__name__}: {err})"


def collect_env() -> dict[str, str]:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "adpe": _version("adpe"),
    }
    for module in ("torch", "torchvision", "timm", "numpy", "cv2", "mmengine", "mmcv", "mmseg", "mmdet", "mmpretrain",
                   "pycocotools", "setuptools"):
        info[module] = _version(module)
    info["mmcv.ops"] = _mmcv_ops()
    try:
        import torch

        from adpe.device import native_bf16  # torch, which --mmcv-build runs without

        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["cuda"] = f"{torch.version.cuda} (available: {torch.cuda.is_available()})"
        if torch.cuda.is_available():
            info["bf16 on cuda"] = "native" if native_bf16("cuda") else "emulated"
        info["threads"] = f"torch {torch.get_num_threads()}, cpus {os.cpu_count()}"
        info["bf16 on cpu"] = "native" if native_bf16("cpu") else "emulated (--amp trains in fp32)"
    except ImportError:
        pass
    try:
        info["mmcv wheel"] = detect_mmcv_build().flavour + " (what `make setup` builds here)"
    except Exception as err:
        info["mmcv wheel"] = str(err)
    return info


def check_stack() -> str:
    """Import the whole stack and check the compiled ops on every device; -> a one-line summary."""
    import cv2
    import mmcv
    import mmdet
    import mmengine  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import mmseg
    import numpy
    import timm  # noqa: F401
    import torch

    check_mmcv_ops()
    return (f"torch {torch.__version__}, mmcv {mmcv.__version__} (ops ok on {', '.join(ops_devices())}), "
            f"mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, numpy {numpy.__version__}, "
            f"opencv {cv2.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--mmcv-build", action="store_true", help="print the mmcv build this machine needs (shell)")
    group.add_argument("--check", action="store_true", help="import the stack and run the compiled ops")
    args = parser.parse_args(argv)
    try:
        if args.mmcv_build:
            build = detect_mmcv_build()
            print(f"MMCV_FLAVOUR={build.flavour}\nMMCV_CUDA_ARCHS='{build.cuda_archs}'\n"
                  f"MMCV_FORCE_CUDA={int(build.with_cuda)}\nMMCV_REASON='{build.reason}'")
        elif args.check:
            print(f"[setup] {check_stack()}")
        else:
            for key, value in collect_env().items():
                print(f"{key:>12}: {value}")
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
