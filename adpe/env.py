"""``python -m adpe.env``: the versions, compiled-ops status, device and threads, for bug reports."""

from __future__ import annotations

import importlib
import os
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as err:  # report, never crash: this runs in broken environments too
        return f"not importable ({type(err).__name__}: {err})"


def _mmcv_ops() -> str:
    try:
        import torch
        from mmcv.ops import nms, roi_align

        keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)[1]
        roi_align(torch.ones(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 3, 3]]), (2, 2))
        return "compiled ops OK (nms, roi_align)" if keep.tolist() == [0] else "nms gave a wrong answer"
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

        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["cuda"] = f"{torch.version.cuda} (available: {torch.cuda.is_available()})"
        info["threads"] = f"torch {torch.get_num_threads()}, cpus {os.cpu_count()}"
        info["bf16 on cpu"] = str(torch.backends.mkldnn.is_available())
    except ImportError:
        pass
    return info


def main() -> None:
    for key, value in collect_env().items():
        print(f"{key:>12}: {value}")


if __name__ == "__main__":
    main()
