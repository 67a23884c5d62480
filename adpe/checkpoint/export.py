"""Pretraining checkpoint -> exported backbone file (tools/convert_checkpoint.py)."""

from __future__ import annotations

import io
import os

import torch

from adpe.checkpoint.files import atomic_write
from adpe.checkpoint.layouts import to_backbone_state
from adpe.checkpoint.sources import load_checkpoint_file, url_scheme
from adpe.checkpoint.variant import checkpoint_variant
from adpe.structure import CheckpointMismatchError


def export_backbone(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the tensors-only backbone file of a pretraining checkpoint (ours, or an MAE / AdPE release).

    ``src``: a local path or URL (``load_checkpoint_file``), in any layout ``to_backbone_state`` reads. ``dst``
    holds {'state_dict': backbone weights (contiguous, on the CPU), 'meta': {'source': absolute ``src`` or the
    URL, 'position', 'rpe_lookup', 'dropped': sorted keys dropped on purpose}}, loads with
    ``torch.load(weights_only=True)`` and is written all or nothing. Returns what was written. Raises
    CheckpointMismatchError when no ViT blocks are left after the conversion.
    """
    ckpt = load_checkpoint_file(src)
    state, dropped = to_backbone_state(ckpt)
    if not any(k.startswith("blocks.") for k in state):
        raise CheckpointMismatchError(f"{src}: no ViT blocks found after conversion (keys: {sorted(state)[:5]}...)")
    out = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
        "meta": {"source": os.fspath(src) if url_scheme(src) else os.path.abspath(src), **checkpoint_variant(ckpt),
                 "dropped": sorted(dropped)},
    }
    buffer = io.BytesIO()
    torch.save(out, buffer)
    atomic_write(buffer.getvalue(), dst)
    return out
