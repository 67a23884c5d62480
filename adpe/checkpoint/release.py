"""The MAE / AdPE releases' tables, and pretraining checkpoints (ours or the releases') as pretraining models."""

from __future__ import annotations

import logging
import os
import re

import torch

from adpe.checkpoint.layouts import load_strictly
from adpe.checkpoint.sources import load_checkpoint_file
from adpe.config_text import config_model
from adpe.models.mae import MaskedAutoencoder
from adpe.models.vit import SIZES
from adpe.structure import CheckpointMismatchError

logger = logging.getLogger(__name__)

# Release adversarial tensor -> (our key, our shape from the release's). The release's RPE-embedding delta is
# stored per head (1 shared head, head_dim, 1); ours is the (head_dim,) vector.
RELEASE_ADVERSARY = (
    (re.compile(r"^adv_token$"), lambda m: "adversary.position"),
    (re.compile(r"^blocks\.(\d+)\.attn\.rpe_k\.adv_(?:token|shift)$"), lambda m: f"adversary.encoder.{m[1]}"),
    (re.compile(r"^decoder_blocks\.(\d+)\.attn\.rpe_k\.adv_(?:token|shift)$"),
     lambda m: f"adversary.decoder.{m[1]}"),
)
RELEASE_CONSTANTS = re.compile(r"\.rpe_k\.no_shift$")  # zeros (requires_grad=False), kept in the state dict

# Arguments of our AdPEPretrainer config that are not MaskedAutoencoder arguments.
PRETRAINER_ONLY_KWARGS = ("type", "_scope_", "data_preprocessor", "init_cfg", "pretrained", "compile")
RELEASE_ADVERSARY_MODES = {0: None, 1: "embedding", 2: "coordinate"}  # args.adv_type
RELEASE_NORMS = {0: "none", 1: "l2", 2: "linf"}  # args.norm
# adpe_vit_base_patch16, mae_vit_large_patch16_dec512d8b, ... and 'tiny' (our test size).
RELEASE_NAME = re.compile(r"(?:\w+_vit_)?(tiny|base|large|huge)(?:_patch\d+(?:_dec\w+)?)?")


def pretrainer_from_checkpoint(ckpt: dict, **overrides) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """What a pretraining checkpoint describes: MaskedAutoencoder kwargs, its weights under our names, and
    {dropped key: reason}.

    Ours: the kwargs of the saved config's model. The MAE / AdPE releases: the variant from ``args``, the
    widths and depths from the tensors, the head counts from the model name (``overrides`` ``num_heads`` /
    ``decoder_num_heads`` for other names), confirmed by the iRPE tables' head_dim. ``overrides`` replace
    any keyword argument.
    """
    if ckpt.get("args") is not None and isinstance(ckpt.get("model"), dict):
        return _release_pretrainer(ckpt, overrides)
    cfg_text = (ckpt.get("meta") or {}).get("cfg")
    if not isinstance(cfg_text, str) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointMismatchError(
            f"not a pretraining checkpoint (top-level keys {sorted(ckpt)[:8]}): expected this suite's "
            "mmengine checkpoint (state_dict + meta.cfg) or an MAE / AdPE release checkpoint (model + args)")
    model_cfg = config_model(cfg_text)
    if model_cfg.get("type") != "AdPEPretrainer":
        raise CheckpointMismatchError(f"the checkpoint's config builds {model_cfg.get('type')!r}, not a "
                                      "pretraining model (AdPEPretrainer)")
    kwargs = {k: v for k, v in model_cfg.items() if k not in PRETRAINER_ONLY_KWARGS}
    state = {k[len("mae."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("mae.")}
    return {**kwargs, **overrides}, state, {}


def _release_pretrainer(ckpt: dict, overrides: dict) -> tuple[dict, dict, dict]:
    args, raw = ckpt["args"], ckpt["model"]
    is_adpe = hasattr(args, "pe_type")  # official MAE has no position or adversary arguments
    adv_type = getattr(args, "adv_type", 0)
    if adv_type not in RELEASE_ADVERSARY_MODES or getattr(args, "pe_type", 0) not in (0, 1):
        raise CheckpointMismatchError(f"release args pe_type={getattr(args, 'pe_type', None)}, adv_type="
                                      f"{adv_type}: expected pe_type 0 (APE) / 1 (RPE), adv_type 0 / 1 / 2")
    position = "rpe" if getattr(args, "pe_type", 0) == 1 else "ape"
    if (position == "rpe") != any("rpe_k.lookup_table_weight" in k for k in raw):
        raise CheckpointMismatchError(
            f"the checkpoint's args say pe_type={args.pe_type} ({position.upper()}) but its weights "
            f"{'have no' if position == 'rpe' else 'have'} iRPE tables (blocks.N.attn.rpe_k.lookup_table_weight)")
    state, dropped = {}, {}
    for key, value in raw.items():
        rule = next(((p.match(key), target) for p, target in RELEASE_ADVERSARY if p.match(key)), None)
        if rule:
            state[rule[1](rule[0])] = value.reshape(-1)
        elif RELEASE_CONSTANTS.search(key):
            dropped[key] = "the release's constant zero shift of unperturbed RPE lookups (no_shift)"
        else:
            state[key] = value
    kwargs = dict(
        variant="mae_plus" if is_adpe else "mae",
        position=position,
        rpe_lookup="continuous" if position == "rpe" and adv_type == 2 else "discrete",
        adversary=RELEASE_ADVERSARY_MODES[adv_type],
        img_size=getattr(args, "input_size", 112 if is_adpe else 224),
        mask_ratio=getattr(args, "mask_ratio", 0.75),
        norm_pix_loss=bool(getattr(args, "norm_pix_loss", True)),
        **_release_dims(raw, getattr(args, "model", ""), overrides),
    )
    if adv_type:
        kwargs.update(adv_norm=RELEASE_NORMS[getattr(args, "norm", 0)], adv_radius=float(getattr(args, "eps", 1.0)))
    return {**kwargs, **overrides}, state, dropped


def _release_dims(state: dict, model_name: str, overrides: dict) -> dict:
    """Widths and depths from the tensors, head counts from the model name / overrides, checked."""
    def depth_of(prefix: str) -> int:
        return len({k.split(".")[1] for k in state if k.startswith(prefix)})

    proj = state["patch_embed.proj.weight"]
    dims = dict(
        size="base", patch_size=proj.shape[-1], in_chans=proj.shape[1], embed_dim=proj.shape[0],
        depth=depth_of("blocks."), decoder_embed_dim=state["decoder_embed.weight"].shape[0],
        decoder_depth=depth_of("decoder_blocks."), mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
    )
    found = RELEASE_NAME.fullmatch(model_name)
    named = SIZES[found[1]] if found else None
    heads = {}
    for key, width, table in (("num_heads", dims["embed_dim"], "blocks.0.attn.rpe_k.lookup_table_weight"),
                              ("decoder_num_heads", dims["decoder_embed_dim"],
                               "decoder_blocks.0.attn.rpe_k.lookup_table_weight")):
        from_tables = width // state[table].shape[1] if table in state else None
        heads[key] = overrides.get(key, getattr(named, key, None) if named else from_tables)
        if heads[key] is None:
            raise CheckpointMismatchError(
                f"cannot tell {key} of release model {model_name!r} (not adpe_vit_{{tiny,base,large,huge}}_patchP "
                f"and no iRPE tables): pass load_pretrainer(path, num_heads=..., decoder_num_heads=...)")
        if from_tables is not None and from_tables != heads[key]:
            raise CheckpointMismatchError(
                f"{key}={heads[key]} gives head_dim {width // heads[key]}, but the iRPE table {table} has head_dim "
                f"{state[table].shape[1]}: pass {key}={from_tables}")
    if named is not None and "num_heads" not in overrides and named.embed_dim != dims["embed_dim"]:
        raise CheckpointMismatchError(
            f"release model {model_name!r} should be {named.embed_dim}-d but its tensors are {dims['embed_dim']}-d: "
            "pass load_pretrainer(path, num_heads=..., decoder_num_heads=...)")
    return {**dims, **heads}


def load_pretrainer(path: str | os.PathLike, **overrides):
    """The ``adpe.models.mae.MaskedAutoencoder`` that a pretraining checkpoint describes, loaded strictly.

    ``path``: this suite's mmengine checkpoint or an MAE / AdPE release checkpoint; ``overrides``: keyword
    arguments of MaskedAutoencoder (e.g. ``num_heads`` for a release model of unknown name). Raises
    CheckpointMismatchError listing every key that does not fit; no model is returned half-loaded.
    """
    kwargs, state, dropped = pretrainer_from_checkpoint(load_checkpoint_file(path), **overrides)
    model = MaskedAutoencoder(**kwargs)
    load_strictly(model, state, f"{path} (described as {kwargs})")
    for key, reason in dropped.items():
        logger.info("load_pretrainer: dropped %s: %s", key, reason)
    return model
