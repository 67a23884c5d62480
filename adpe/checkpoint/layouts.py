"""Checkpoint layouts: which key of each layout is which backbone tensor, and the strict fit to a model.

Supported layouts (docs/method.md, "Checkpoints"):
  ours        mmengine checkpoint {'state_dict': {'mae.blocks.0...'}, 'meta': {'cfg': config text, ...}}
  release     official MAE / AdPE {'model': {'blocks.0...', 'decoder_*', 'mask_token', ['adv_token'], ...},
              'args': argparse.Namespace}
  export      tensors-only backbone {'state_dict': {...}, 'meta': {'position', 'rpe_lookup', ...}}
  timm        a VisionTransformer state dict {'blocks.0...', 'norm', 'fc_norm', 'head', ...} (MAE's names)
  mmpretrain  MAE / ViT {'state_dict': {'backbone.layers.0.ln1...', 'neck.decoder_*', ...}, 'meta': {...}}
"""

from __future__ import annotations

import re

import torch

from adpe.models.pos_embed import resample_pos_embed
from adpe.structure import STRUCTURE_KEY, CheckpointMismatchError

# ---------------------------------------------------------------------------------------------------------
# Key rules. Our pretraining model uses the release's names for every network tensor (MAE's, which timm's
# VisionTransformer shares); only the adversarial tensors differ (RELEASE_ADVERSARY). The transfer backbone
# renames other layouts' tensors to those names (RENAMED), drops what pretraining or classification alone uses
# (DROPPED_ON_PURPOSE) and refuses what it cannot compute (UNSUPPORTED). Order: strip, rename, drop.
# ---------------------------------------------------------------------------------------------------------

PREFIXES_TO_STRIP = ("module.", "mae.", "backbone.")
# mmpretrain's MAE / ViT backbone (backbone.layers.N.{ln1, attn.qkv, attn.proj, ln2, ffn.layers.0.0,
# ffn.layers.1}, patch_embed.projection, final norm ln1, pooled-feature norm ln2) -> MAE's names; layer scale
# (timm blocks.N.ls1/ls2.gamma, mmpretrain layers.N.gamma1/gamma2.weight) -> BEiT's / mmseg's gamma_1 / gamma_2.
RENAMED = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\.ln([12])\."), r"blocks.\1.norm\2."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^layers\.(\d+)\.attn\."), r"blocks.\1.attn."),
    (re.compile(r"^ln1\."), "norm."),
    (re.compile(r"^ln2\."), "fc_norm."),
    (re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$"), r"blocks.\1.gamma_\2"),
    (re.compile(r"^layers\.(\d+)\.gamma([12])\.weight$"), r"blocks.\1.gamma_\2"),
)
# Layer scale in our names: loaded by a backbone with ``init_values``, refused by one without (fit_to_backbone).
LAYER_SCALE = re.compile(r"^blocks\.\d+\.gamma_[12]$")
DROPPED_ON_PURPOSE = (
    (re.compile(r"^decoder[._]"), "pretraining decoder"),
    (re.compile(r"^neck\.(decoder_|mask_token$|ln1\.)"), "pretraining decoder (mmpretrain's MAE neck)"),
    (re.compile(r"^mask_token$"), "pretraining mask token"),
    (re.compile(r"^(head|attn_pool)\."), "classification head (dense transfer trains its own heads)"),
    (re.compile(r"^adversary\."), "adversarial positions (pretraining only)"),
    (re.compile(r"(^|\.)adv_(token|shift)$"), "adversarial positions of the official release (pretraining only)"),
    (re.compile(r"\.rpe_k\.no_shift$"), "the release's constant zero shift of unperturbed RPE lookups"),
)

# Tensors of ViT features that the backbone does not compute: loading them would silently change the network.
UNSUPPORTED = (
    (re.compile(r"^reg_token$"), "register tokens (timm reg_tokens)"),
    (re.compile(r"^(norm_pre|pre_norm)\."), "a norm before the blocks (timm norm_pre, mmpretrain pre_norm: CLIP)"),
    (re.compile(r"\.attn\.[qk]_norm\."), "query / key norms (timm qk_norm)"),
)


def strip_prefixes(key: str) -> str:
    """``key`` without the wrappers' prefixes (``module.``, ``mae.``, ``backbone.``), however nested."""
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


def backbone_key(raw_key: str) -> str:
    """``raw_key`` of any supported layout under MAE's name: prefixes stripped, the first matching RENAMED rule
    applied (e.g. 'backbone.layers.0.ffn.layers.0.0.weight' -> 'blocks.0.mlp.fc1.weight')."""
    key = strip_prefixes(raw_key)
    for pattern, replacement in RENAMED:
        renamed, count = pattern.subn(replacement, key, count=1)
        if count:
            return renamed
    return key


def to_backbone_state(ckpt: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Backbone-named weights of a pretraining checkpoint (any supported layout), and {dropped key: reason}.

    Raises CheckpointMismatchError for tensors of features the backbone does not compute (UNSUPPORTED).
    """
    state, dropped, unsupported = {}, {}, {}
    for raw_key, value in checkpoint_state(ckpt).items():
        key = backbone_key(raw_key)
        reason = next((why for pattern, why in DROPPED_ON_PURPOSE if pattern.search(key)), None)
        feature = next((what for pattern, what in UNSUPPORTED if pattern.search(key)), None)
        if feature:
            unsupported.setdefault(feature, []).append(raw_key)
        elif reason:
            dropped[raw_key] = reason
        else:
            state[key] = value
    if unsupported:
        raise CheckpointMismatchError(
            "the checkpoint's ViT has features the transfer backbone does not compute: "
            + "; ".join(f"{what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                        for what, keys in unsupported.items()))
    return state, dropped


def fit_to_backbone(state: dict, backbone: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """Adapt converted weights to ``backbone`` (an ``adpe.models.backbone.ViTBackbone``) and check them strictly.

    Resamples the APE table to the backbone's grid; drops the cls token, the final norm and the pooled-feature
    norm (``fc_norm``) when the backbone has none (on purpose, reported); zero-initialised learned relative
    biases and a fresh ``fc_norm`` (classification from a pretraining checkpoint) may be absent. Layer scale:
    a checkpoint without gammas (MAE, AdPE) gets the backbone's ``init_values`` ones, as mmseg's MAE leaves
    them; a checkpoint with gammas needs a backbone with layer scale. Any other missing, unexpected or
    mis-shaped key raises CheckpointMismatchError naming the keys.
    """
    state, dropped = dict(state), {}
    target = backbone.state_dict()
    width = state.get("patch_embed.proj.weight")
    if width is not None and width.shape[0] != backbone.embed_dim:
        raise CheckpointMismatchError(
            f"embed width mismatch: the checkpoint's ViT is {width.shape[0]}-d, the backbone "
            f"{backbone.embed_dim}-d; pick the backbone size that matches the pretrained model "
            "(e.g. model.backbone.size='base' for 768)")
    unused = {"cls_token": "the backbone has no cls token (det mode, or class_token=False)",
              "norm.": "final norm unused (final_norm=False, or average pooling with fc_norm)",
              "fc_norm.": "norm of the pooled classification feature (used in cls mode with pool='avg' only)"}
    for key in list(state):
        reason = next((why for prefix, why in unused.items() if key.startswith(prefix)), None)
        if reason and key not in target:
            state.pop(key)
            dropped[key] = reason
    gammas = sorted(k for k in state if LAYER_SCALE.search(k))
    if gammas and getattr(backbone, "init_values", None) is None:
        raise CheckpointMismatchError(
            f"the checkpoint's ViT has layer scale ({', '.join(gammas[:2])}, ...: timm ls1/ls2.gamma, mmpretrain "
            "gamma1/gamma2, BEiT / mmseg gamma_1/gamma_2), which this backbone does not compute: set "
            "model.backbone.init_values=1.0 (the checkpoint's gammas replace the initial value)")
    if not gammas:  # the gammas keep their init_values (the backbone's own tensors), as mmseg's MAE does
        state.update({k: v.clone() for k, v in target.items() if LAYER_SCALE.search(k)})
    if "pos_embed" in state:
        old = state["pos_embed"]
        side = int(round((old.shape[1] - 1) ** 0.5))
        if side * side + 1 != old.shape[1]:
            raise CheckpointMismatchError(f"pos_embed {tuple(old.shape)} is not a square grid plus a cls slot")
        state["pos_embed"] = resample_pos_embed(old.float(), (side, side), backbone.pos_grid)
    optional = {k for k in target if ".rel_bias." in k or k.startswith("fc_norm.")} | {STRUCTURE_KEY}
    problems = state_mismatch(state, target, optional)
    if problems:
        hint = ""
        if backbone.rel_pos == "irpe" and not any("rpe_k" in k for k in state):
            hint = " The checkpoint has no iRPE tables: use rel_pos='none' or 'bias' for an APE model."
        elif backbone.rel_pos != "irpe" and any("rpe_k" in k for k in state):
            hint = " The checkpoint is an RPE model: set rel_pos='irpe' to use its tables."
        raise CheckpointMismatchError("checkpoint does not fit the backbone." + hint + problems)
    return state, dropped


def state_mismatch(state: dict, target: dict, optional: set[str] = frozenset()) -> str:
    """Every missing (not in ``optional``), unexpected and mis-shaped key of ``state`` against ``target``, one
    per line; '' when ``state`` loads strictly."""
    missing = sorted(set(target) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(target))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in set(state) & set(target) if state[k].shape != target[k].shape)
    return ("".join(f"\n  missing: {k}" for k in missing)
            + "".join(f"\n  unexpected: {k}" for k in unexpected)
            + "".join(f"\n  shape: {s}" for s in shapes))


def load_strictly(model: torch.nn.Module, state: dict, source: str, optional: set[str] = frozenset()) -> None:
    """Load ``state`` into ``model`` only if every key fits (``optional`` keys may be missing and keep their
    values); otherwise raise CheckpointMismatchError naming the keys, with ``model`` untouched."""
    problems = state_mismatch(state, model.state_dict(), optional)
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__}:{problems}")
    model.load_state_dict(state, strict=False)  # checked above: only optional keys can be missing
