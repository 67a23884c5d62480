"""Loading checkpoint files on torch >= 2.6, where torch.load defaults to ``weights_only=True``.

* ``load_checkpoint_file``: files from elsewhere (official MAE / AdPE releases, converted backbones). Keeps
  ``weights_only=True`` and allow-lists only what release checkpoints contain besides tensors: their
  ``args`` (an ``argparse.Namespace``) and numpy arrays / scalars.
* ``load_trusted_training_checkpoint``: this suite's own training checkpoints, for resume (mmengine's log
  history cannot be loaded with ``weights_only=True``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

def _numpy_globals() -> list:
    """numpy's pickling helpers and dtype classes (their module path differs between numpy 1 and 2)."""
    found = [np.ndarray, np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["_reconstruct", "scalar"])
        except ImportError:
            continue
        found += [module._reconstruct, module.scalar]
        break
    found += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.uint32, np.uint8, np.bool_)]
    return found


# Classes that trusted training checkpoints contain besides tensors and plain containers.
TRAINING_CHECKPOINT_GLOBALS: list = [argparse.Namespace, *_numpy_globals()]


def load_trusted_training_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a training checkpoint that this suite wrote itself (resume), with full unpickling.

    mmengine's checkpoints hold its log history (``HistoryBuffer``, pickled with references to its methods),
    which ``weights_only=True`` refuses. Only ever call this on files from your own work dirs; anything that
    comes from elsewhere goes through ``load_checkpoint_file``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_checkpoint_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True`` and the training-checkpoint allow-list.

    Raises FileNotFoundError naming the path, and a ValueError explaining what to do for a file that needs
    classes outside the allow-list (e.g. a checkpoint pickled with custom objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(TRAINING_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError here, by version
        raise ValueError(
            f"could not load {path} with weights_only=True: {err}\n"
            "Only tensors, plain containers and the allow-listed classes in "
            "adpe.checkpoint.TRAINING_CHECKPOINT_GLOBALS are accepted. Re-save the file as a plain "
            "state dict (e.g. tools/convert_checkpoint.py) if it comes from elsewhere."
        ) from err
