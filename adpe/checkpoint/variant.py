"""What a checkpoint implies for the model built from it: its pretraining variant, the backbone's 'auto' settings,
and the structure a fine-tuned checkpoint was trained with.

The one place where a weight's relative-position structure is decided from a checkpoint: the backbone
(``adpe.models.backbone``) records and checks it, ``adpe.mm`` builds and loads models by these answers.
"""

from __future__ import annotations

from adpe.checkpoint.layouts import checkpoint_state
from adpe.config_text import config_model
from adpe.structure import LOOKUP_KINDS, STRUCTURE_KEY, decode_structure


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
        model = config_model(meta["cfg"])
        lookup = model.get("rpe_lookup", model.get("backbone", {}).get("rpe_lookup"))
        lookup = lookup if lookup in LOOKUP_KINDS else None
    if lookup is None and ckpt.get("args") is not None:
        lookup = "continuous" if getattr(ckpt["args"], "adv_type", 0) == 2 else None
    return {"position": position, "rpe_lookup": lookup or "discrete"}


def resolve_auto(rel_pos: str, rpe_lookup: str, ckpt: dict | None, mode: str = "seg") -> tuple[str, str]:
    """Concrete (rel_pos, rpe_lookup) for 'auto' settings: follow the checkpoint's pretraining (iRPE tables,
    continuous lookup for RPE coordinate mode). An APE model (or no checkpoint) gets a learned bias for dense
    transfer ('seg', 'det': BEiT / ViTDet) and no relative term for classification ('cls', as MAE and the release
    fine-tune); the lookup is then 'discrete'."""
    variant = checkpoint_variant(ckpt) if ckpt is not None else {"position": "ape", "rpe_lookup": "discrete"}
    if rel_pos == "auto":
        rel_pos = "irpe" if variant["position"] == "rpe" else ("none" if mode == "cls" else "bias")
    if rpe_lookup == "auto":
        rpe_lookup = variant["rpe_lookup"]
    return rel_pos, rpe_lookup


def backbone_settings_of_trained(ckpt: dict) -> dict:
    """rel_pos / rpe_lookup / rpe_query_scale of a fine-tuned mmseg / mmdet checkpoint: the structure its backbone
    recorded in the weights (``structure_code``); for checkpoints older than that record, rel_pos / rpe_lookup from
    its weights and saved config. ``init_values``: 1.0 when the weights have layer scale (their gammas replace
    it), else None."""
    layer_scale = any(k.startswith("backbone.blocks.") and k.endswith((".gamma_1", ".gamma_2"))
                      for k in checkpoint_state(ckpt))
    init_values = {"init_values": 1.0 if layer_scale else None}
    code = checkpoint_state(ckpt).get(f"backbone.{STRUCTURE_KEY}")
    if code is not None:
        return {**decode_structure(code), **init_values}
    variant = checkpoint_variant(ckpt)  # position 'rpe' <=> iRPE tables in the weights
    if variant["position"] == "rpe":
        rel_pos = "irpe"
    elif any(".rel_bias." in k for k in checkpoint_state(ckpt)):
        rel_pos = "bias"
    else:
        rel_pos = "none"
    return {"rel_pos": rel_pos, "rpe_lookup": variant["rpe_lookup"], **init_values}
