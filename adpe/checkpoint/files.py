"""Checkpoint files: written all or nothing, read with ``torch.load(weights_only=True)`` and an allow-list.

Besides tensors, release checkpoints hold their ``args`` (an ``argparse.Namespace``) and numpy values: those
classes are allow-listed here. ``adpe.mm`` adds what mmengine's training checkpoints need (its log
``HistoryBuffer``), globally, so that mmengine's own resume works on torch >= 2.6 as well.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch


def _umask_mode() -> int:
    """The mode a plain ``open(path, 'w')`` gives a new file under the process's umask (0644 under umask 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary file in the same folder, fsync, rename.

    A crash or kill mid-write leaves the previous file (if any) intact; the temporary file a kill leaves
    (``.NAME.*.tmp``) is removed by ``remove_stale_temporaries``. The file gets the umask's mode, as any
    other file would (mkstemp's 0600 would hide checkpoints from the rest of a group's shared work dir).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _umask_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota: say which file, not only errno's words
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror or err} while writing {path}; the previous file (if any) is "
                      "intact. Free space there (or fix its permissions) and run again") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that ``atomic_write`` calls killed mid-write left in ``folder`` (not below).

    Only safe while no other process writes there (the work dir lock of ``adpe.mm.hooks`` guarantees it for
    training runs). Returns the removed files.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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


def read_local(local: Path, shown: str | os.PathLike, map_location="cpu", suffix: str | None = None,
                mmap: bool = False) -> dict:
    """Load the local file ``local`` (``shown`` in messages) with ``weights_only=True`` and the training-checkpoint
    allow-list, or as safetensors by ``suffix`` (default: its own). ``mmap``: map the tensors instead of reading
    them (a check that the file is whole and safe, without the memory of a load). Raises ValueError."""
    if (suffix or local.suffix) == ".safetensors":
        try:
            if mmap:
                with safetensors.safe_open(local, framework="pt") as f:
                    return {key: f.get_slice(key) for key in f.keys()}
            device = map_location if isinstance(map_location, str | torch.device) else "cpu"  # not a callable
            return safetensors.torch.load_file(local, device=str(torch.device(device)))
        except (safetensors.SafetensorError, OSError) as err:
            raise ValueError(f"could not read {shown} as a safetensors file: {err}") from err
    try:
        # Only what is not allow-listed already: leaving the context removes its entries again.
        registered = torch.serialization.get_safe_globals()
        extra = [g for g in TRAINING_CHECKPOINT_GLOBALS if g not in registered]
        with torch.serialization.safe_globals(extra):
            try:
                return torch.load(local, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if not mmap or "mmap" not in str(err):
                    raise
                return torch.load(local, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError here, by version
        reason = str(err) or f"{type(err).__name__} (an empty or truncated file)"
        if isinstance(err, KeyError) or "Unsupported operand" in reason:  # a byte that starts no pickle opcode
            reason = "not a torch checkpoint: its bytes are no pickle (a text or HTML file, or another format?)"
        raise ValueError(
            f"could not load {shown} with weights_only=True: {reason}\n"
            "If the file is truncated or not a checkpoint, use another copy (a training run keeps the previous "
            "checkpoints of its work dir). Only tensors, plain containers and the allow-listed classes in "
            "adpe.checkpoint.TRAINING_CHECKPOINT_GLOBALS are accepted: a file pickled with other classes must be "
            "re-saved as a plain state dict by whoever trusts it."
        ) from err
