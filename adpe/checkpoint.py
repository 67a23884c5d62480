"""Checkpoint files on torch >= 2.6, and their conversion into transfer backbones.

Every load keeps ``weights_only=True`` (no arbitrary unpickling). Besides tensors, release checkpoints hold
their ``args`` (an ``argparse.Namespace``) and numpy values: those classes are allow-listed here.
``adpe.mm`` adds what mmengine's training checkpoints need (its log ``HistoryBuffer``), globally, so that
mmengine's own resume works on torch >= 2.6 as well.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from adpe.backbone import resample_pos_embed


def atomic_write(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary file in the same folder, fsync, rename.

    A crash or kill mid-write leaves the previous file (if any) intact and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def load_checkpoint_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True`` and the training-checkpoint allow-list.

    Raises FileNotFoundError naming the path, and a ValueError explaining what to do for a file that needs
    classes outside the allow-list (e.g. a checkpoint pickled with custom objects). Training checkpoints of
    this suite load once ``adpe.mm`` is imported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # Only what is not allow-listed already: leaving the context removes its entries again.
        registered = torch.serialization.get_safe_globals()
        extra = [g for g in TRAINING_CHECKPOINT_GLOBALS if g not in registered]
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError here, by version
        raise ValueError(
            f"could not load {path} with weights_only=True: {err}\n"
            "Only tensors, plain containers and the allow-listed classes in "
            "adpe.checkpoint.TRAINING_CHECKPOINT_GLOBALS are accepted. Re-save the file as a plain "
            "state dict (e.g. tools/convert_checkpoint.py) if it comes from elsewhere."
        ) from err


# ---------------------------------------------------------------------------------------------------------
# Pretraining checkpoint -> transfer backbone. One table of key rules for every supported source format:
#   ours     mmengine checkpoint {'state_dict': {'mae.blocks.0...'}, 'meta': {'cfg': ...}}
#   official MAE / AdPE release {'model': {'blocks.0...', 'decoder_*', 'mask_token', ['adv_token'], ...}}
#   exported tensors-only backbone {'state_dict': {...}, 'meta': {'position', 'rpe_lookup', ...}}
# ---------------------------------------------------------------------------------------------------------

PREFIXES_TO_STRIP = ("module.", "mae.", "backbone.")
DROPPED_ON_PURPOSE = (
    (re.compile(r"^decoder[._]"), "pretraining decoder"),
    (re.compile(r"^mask_token$"), "pretraining mask token"),
    (re.compile(r"^adversary\."), "adversarial positions (pretraining only)"),
    (re.compile(r"(^|\.)adv_token$"), "adversarial positions of the official release (pretraining only)"),
)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the backbone: the message lists every offending key."""


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES_TO_STRIP:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def checkpoint_state(ckpt: dict) -> dict:
    """The raw weights of any supported format: a flat {key: tensor} dict."""
    for field in ("state_dict", "model", "module"):
        if isinstance(ckpt.get(field), dict):
            return ckpt[field]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointMismatchError(
        f"unrecognised checkpoint layout (top-level keys {sorted(ckpt)[:8]}); expected 'state_dict' "
        "(this suite, mmengine), 'model' (official MAE / AdPE) or a plain state dict"
    )


def checkpoint_variant(ckpt: dict) -> dict[str, str]:
    """What the checkpoint was pretrained with: {'position': 'ape'|'rpe', 'rpe_lookup': 'discrete'|...}.

    From the export's meta, our config text (``meta['cfg']``), or the official ``args`` (adv_type 2 is the
    coordinate mode); RPE is recognised by its tables.
    """
    state = checkpoint_state(ckpt)
    position = "rpe" if any("rpe_k.lookup_table_weight" in k for k in state) else "ape"
    meta = ckpt.get("meta") or {}
    lookup = meta.get("rpe_lookup")
    if lookup is None and isinstance(meta.get("cfg"), str):
        found = re.search(r"rpe_lookup\s*=\s*['\"](\w+)['\"]", meta["cfg"])
        lookup = found.group(1) if found else None
    if lookup is None and ckpt.get("args") is not None:
        lookup = "continuous" if getattr(ckpt["args"], "adv_type", 0) == 2 else None
    return {"position": position, "rpe_lookup": lookup or "discrete"}


def to_backbone_state(ckpt: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Backbone-named weights of a pretraining checkpoint, and {dropped key: reason}."""
    state, dropped = {}, {}
    for raw_key, value in checkpoint_state(ckpt).items():
        key = _strip_prefixes(raw_key)
        reason = next((why for pattern, why in DROPPED_ON_PURPOSE if pattern.search(key)), None)
        if reason:
            dropped[raw_key] = reason
        else:
            state[key] = value
    return state, dropped


def fit_to_backbone(state: dict, backbone: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """Adapt converted weights to ``backbone`` (an ``adpe.backbone.ViTBackbone``) and check them strictly.

    Resamples the APE table to the backbone's grid; drops the cls token for detection mode and the final norm
    when the backbone has none (both on purpose, reported); zero-initialised learned relative biases may be
    absent. Any other missing, unexpected or mis-shaped key raises CheckpointMismatchError naming the keys.
    """
    state, dropped = dict(state), {}
    target = backbone.state_dict()
    width = state.get("patch_embed.proj.weight")
    if width is not None and width.shape[0] != backbone.embed_dim:
        raise CheckpointMismatchError(
            f"embed width mismatch: the checkpoint's ViT is {width.shape[0]}-d, the backbone "
            f"{backbone.embed_dim}-d; pick the backbone size that matches the pretrained model "
            "(e.g. model.backbone.size='base' for 768)")
    for key, reason in (("cls_token", "detection mode uses no cls token"),
                        ("norm.weight", "final norm unused (final_norm=False)"),
                        ("norm.bias", "final norm unused (final_norm=False)")):
        if key in state and key not in target:
            state.pop(key)
            dropped[key] = reason
    if "pos_embed" in state:
        old = state["pos_embed"]
        side = int(round((old.shape[1] - 1) ** 0.5))
        if side * side + 1 != old.shape[1]:
            raise CheckpointMismatchError(f"pos_embed {tuple(old.shape)} is not a square grid plus a cls slot")
        state["pos_embed"] = resample_pos_embed(old.float(), (side, side), backbone.grid)
    optional = {k for k in target if ".rel_bias." in k}
    missing = sorted(set(target) - set(state) - optional)
    unexpected = sorted(set(state) - set(target))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs backbone {tuple(target[k].shape)}"
                    for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        hint = ""
        if any("rpe_k" in k for k in missing):
            hint = " The checkpoint has no iRPE tables: use rel_pos='none' or 'bias' for an APE model."
        elif any("rpe_k" in k for k in unexpected):
            hint = " The checkpoint is an RPE model: set rel_pos='irpe' to use its tables."
        raise CheckpointMismatchError(
            "checkpoint does not fit the backbone." + hint
            + "".join(f"\n  missing: {k}" for k in missing)
            + "".join(f"\n  unexpected: {k}" for k in unexpected)
            + "".join(f"\n  shape: {s}" for s in shapes))
    return state, dropped
