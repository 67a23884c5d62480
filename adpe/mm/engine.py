"""Engine pieces mmengine 0.10.7 lacks on current torch / CPU machines.

* ``AutocastOptimWrapper``: mixed precision by autocast alone. mmengine's AmpOptimWrapper asserts a GPU; bf16
  needs no loss scaler, so on CPU (and for bf16 on GPU) autocast is all AMP has to do.
* ``AtomicLocalBackend``: local files (checkpoints, ``last_checkpoint``) are written to a temporary file and
  renamed, so a run killed while saving never leaves a truncated checkpoint behind.
* ``RandomStateHook``: random generators saved with each checkpoint, so a resumed run draws what an
  uninterrupted one would.
* mmengine 0.10.7 calls torch.load without ``weights_only``: on torch >= 2.6 resuming fails on the log
  history (``HistoryBuffer``, pickled with ``getattr(HistoryBuffer, 'min')`` and friends). We allow-list
  that class and a ``getattr`` restricted to exactly those attributes, plus adpe.checkpoint's release
  classes, so every checkpoint still loads with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
import random
from contextlib import contextmanager

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPERS

from adpe.checkpoint import TRAINING_CHECKPOINT_GLOBALS, atomic_write


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose ``optim_context`` runs the forward under ``torch.autocast``.

    Args:
        dtype: 'bfloat16' (default; any device) or 'float16' (use mmengine's AmpOptimWrapper on GPU for
            fp16, which adds the loss scaler fp16 needs).
        device_type: 'cpu' or 'cuda'; default: cuda if available, else cpu.
    """

    def __init__(self, *args, dtype: str = "bfloat16", device_type: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in ("bfloat16", "float16"):
            raise ValueError(f"autocast dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.cast_dtype = getattr(torch, dtype)
        self.device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(self.device_type, dtype=self.cast_dtype):
            yield


class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose writes are atomic: temporary file in the same folder, fsync, rename."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write(obj.encode(encoding), filepath)


register_backend("local", AtomicLocalBackend, force=True, prefixes="")


def _history_buffer_getattr(obj, name: str):
    """The only ``getattr`` a checkpoint may call: HistoryBuffer's statistics methods."""
    # HistoryBuffer registers its statistics lazily (first instance), so name the built-in ones too.
    if obj is HistoryBuffer and name in {"min", "max", "mean", "current", *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}), which is not allowed")


torch.serialization.add_safe_globals([
    *TRAINING_CHECKPOINT_GLOBALS,
    HistoryBuffer,
    (_history_buffer_getattr, "builtins.getattr"),
    (_history_buffer_getattr, "__builtin__.getattr"),
])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Saves the main process's random states in each checkpoint and restores them on resume.

    mmengine restores weights, optimiser and schedulers but not the random generators, so a resumed run
    would draw different masks (and, with ``num_workers=0``, different crops) from an uninterrupted one.
    Rank 0 writes the checkpoint; other ranks reseed from (seed, rank, iteration) so that ranks stay distinct.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("random_state")
        if state is None:
            return
        if runner.rank == 0:
            torch.set_rng_state(state["torch"])
            np.random.set_state(state["numpy"])
            random.setstate(state["python"])
        else:
            seed = (runner.seed + 1_000_003 * runner.rank + checkpoint["meta"].get("iter", 0)) % 2**31
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
