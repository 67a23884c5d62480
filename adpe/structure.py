"""The relative-position structure that trained weights record, and the error of weights that do not fit.

A leaf: the models import it, and so do the checkpoint readers that decide which structure a checkpoint implies
(``adpe.checkpoint.variant``). A transfer backbone keeps its structure as the int64 buffer ``structure_code``
(3,): (index in REL_POS_KINDS, index in LOOKUP_KINDS, rpe_query_scale), so every state dict of a trained model
says which relative-position settings its weights were trained with.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The transfer backbone's record of its relative-position structure: trained weights carry it, pretraining
# checkpoints do not (the backbone then accepts them with its own).
STRUCTURE_KEY = "structure_code"
REL_POS_KINDS = ("none", "bias", "irpe")
LOOKUP_KINDS = ("discrete", "continuous")  # how iRPE tables are read: integer buckets, or bilinear


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: the message lists every offending key or setting."""


def encode_structure(rel_pos: str, rpe_lookup: str, rpe_query_scale: bool) -> Tensor:
    """The int64 tensor (3,) that a backbone keeps as its ``structure_code`` buffer, so that every state dict of a
    trained model says which relative-position structure its weights were trained with."""
    return torch.tensor([REL_POS_KINDS.index(rel_pos), LOOKUP_KINDS.index(rpe_lookup), int(rpe_query_scale)])


def decode_structure(code: Tensor) -> dict:
    """{'rel_pos', 'rpe_lookup', 'rpe_query_scale'} of a ``structure_code`` tensor (3,)."""
    values = [int(v) for v in code.reshape(-1).tolist()]
    if len(values) != 3 or not (0 <= values[0] < len(REL_POS_KINDS) and 0 <= values[1] < len(LOOKUP_KINDS)):
        raise CheckpointMismatchError(f"{STRUCTURE_KEY} {values} is not (rel_pos, rpe_lookup, rpe_query_scale)")
    return {"rel_pos": REL_POS_KINDS[values[0]], "rpe_lookup": LOOKUP_KINDS[values[1]],
            "rpe_query_scale": bool(values[2])}


def structure_differences(saved: dict, model: dict) -> list[str]:
    """Settings of ``saved`` that ``model`` does not share; lookup and query scale matter only for iRPE models."""
    keys = ("rel_pos", "rpe_lookup", "rpe_query_scale") if saved["rel_pos"] == "irpe" else ("rel_pos",)
    return [k for k in keys if saved[k] != model[k]]
