"""Transfer modules for mmseg / mmdet: the AdPE ViT backbone, its layer-decay optimiser constructor."""

from __future__ import annotations

import copy

from mmengine.logging import print_log
from mmengine.model import BaseModule, is_model_wrapper
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

from adpe.backbone import ViTBackbone
from adpe.checkpoint import (
    checkpoint_state,
    checkpoint_variant,
    fit_to_backbone,
    load_checkpoint_file,
    to_backbone_state,
)
from adpe.optim import layer_decay_param_groups


def pretrained_path(init_cfg: dict | None) -> str | None:
    """The checkpoint of an ``init_cfg=dict(type='Pretrained', checkpoint=...)``, or None."""
    init_cfg = init_cfg or {}
    return init_cfg.get("checkpoint") if init_cfg.get("type") == "Pretrained" else None


def resolve_auto(rel_pos: str, rpe_lookup: str, ckpt: dict | None) -> tuple[str, str]:
    """Concrete (rel_pos, rpe_lookup) for 'auto' settings: follow the checkpoint's pretraining (iRPE tables,
    continuous lookup for RPE coordinate mode); without a checkpoint 'auto' means 'bias' and 'discrete'."""
    variant = checkpoint_variant(ckpt) if ckpt is not None else {"position": "ape", "rpe_lookup": "discrete"}
    if rel_pos == "auto":
        rel_pos = "irpe" if variant["position"] == "rpe" else "bias"
    if rpe_lookup == "auto":
        rpe_lookup = variant["rpe_lookup"]
    return rel_pos, rpe_lookup


@MODELS.register_module()
class AdPEViT(ViTBackbone, BaseModule):
    """``adpe.backbone.ViTBackbone`` for mmseg and mmdet configs, with strict pretrained loading.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts this suite's pretraining checkpoints, the
    official MAE and AdPE releases and exported backbones; decoder, mask token and adversary weights are
    dropped on purpose (and logged), any other mismatch is an error listing the keys.

    ``rel_pos='auto'`` uses the checkpoint's iRPE tables when it has them and a zero-initialised learned
    bias otherwise; ``rpe_lookup='auto'`` follows the checkpoint's pretraining (continuous for RPE coordinate
    mode). Without a checkpoint 'auto' means 'bias' and 'discrete'.
    """

    def __init__(self, rel_pos: str = "auto", rpe_lookup: str = "auto", init_cfg: dict | None = None, **kwargs):
        self._checkpoint_path = pretrained_path(init_cfg)
        if "auto" in (rel_pos, rpe_lookup):  # tools/train.py resolves 'auto' before building, saving this read
            ckpt = load_checkpoint_file(self._checkpoint_path) if self._checkpoint_path else None
            rel_pos, rpe_lookup = resolve_auto(rel_pos, rpe_lookup, ckpt)
        ViTBackbone.__init__(self, rel_pos=rel_pos, rpe_lookup=rpe_lookup, **kwargs)
        self.init_cfg = copy.deepcopy(init_cfg)

    def init_weights(self) -> None:
        if self._checkpoint_path is None or self._is_init:
            return  # the backbone initialised itself (MAE's scheme) at construction, or is loaded already
        state, dropped = to_backbone_state(load_checkpoint_file(self._checkpoint_path))
        state, adapted = fit_to_backbone(state, self)
        self.load_state_dict(state, strict=False)  # fit_to_backbone has checked every key already
        reasons = {**dropped, **adapted}
        summary = ", ".join(sorted({f"{why} ({sum(r == why for r in reasons.values())} keys)"
                                    for why in reasons.values()}))
        print_log(f"AdPEViT: loaded {len(state)} tensors from {self._checkpoint_path} "
                  f"(rel_pos={self.rel_pos}, rpe_lookup={self.rpe_lookup}); dropped on purpose: {summary or 'none'}",
                  logger="current")
        self._is_init = True


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AdPELayerDecayConstructor:
    """Layer-wise lr decay driven by the backbone's own ``layer_depth`` / ``no_weight_decay``.

    ``paramwise_cfg=dict(layer_decay_rate=0.65)``; the model must expose the backbone as ``model.backbone``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        paramwise_cfg = dict(paramwise_cfg or {})
        if set(paramwise_cfg) != {"layer_decay_rate"}:
            raise ValueError("AdPELayerDecayConstructor takes paramwise_cfg=dict(layer_decay_rate=...), got "
                             f"{sorted(paramwise_cfg)}")
        self.decay_rate = float(paramwise_cfg["layer_decay_rate"])

    def __call__(self, model):
        model = model.module if is_model_wrapper(model) else model
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "layer_depth"):
            raise TypeError(f"{type(model).__name__}.backbone must provide layer_depth()/no_weight_decay() "
                            "(use type='AdPEViT') for layer-wise lr decay")
        wrapper_cfg = copy.deepcopy(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer_cfg = wrapper_cfg.pop("optimizer")
        groups = layer_decay_param_groups(model, backbone, lr=optimizer_cfg["lr"],
                                          weight_decay=optimizer_cfg.get("weight_decay", 0.0),
                                          decay_rate=self.decay_rate)
        for group in groups:
            group.pop("param_names")
        optimizer = OPTIMIZERS.build({**optimizer_cfg, "params": groups})
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args={"optimizer": optimizer})


def resolve_auto_backbone(cfg) -> None:
    """Write the concrete ``rel_pos`` / ``rpe_lookup`` of an AdPEViT backbone into ``cfg`` (in place).

    'auto' follows the pretrained checkpoint; resolving it before training puts the concrete choice in the
    work dir's config and in every checkpoint's meta, which ``tools/test.py`` reads back.
    """
    backbone = cfg.get("model", {}).get("backbone", {})
    rel_pos, rpe_lookup = backbone.get("rel_pos", "auto"), backbone.get("rpe_lookup", "auto")
    if backbone.get("type") != "AdPEViT" or "auto" not in (rel_pos, rpe_lookup):
        return
    path = pretrained_path(backbone.get("init_cfg"))
    backbone["rel_pos"], backbone["rpe_lookup"] = resolve_auto(
        rel_pos, rpe_lookup, load_checkpoint_file(path) if path else None)


def backbone_settings_of_trained(ckpt: dict) -> dict[str, str]:
    """rel_pos / rpe_lookup of a fine-tuned mmseg / mmdet checkpoint, from its weights and saved config."""
    variant = checkpoint_variant(ckpt)  # position 'rpe' <=> iRPE tables in the weights
    if variant["position"] == "rpe":
        rel_pos = "irpe"
    elif any(".rel_bias." in k for k in checkpoint_state(ckpt)):
        rel_pos = "bias"
    else:
        rel_pos = "none"
    return {"rel_pos": rel_pos, "rpe_lookup": variant["rpe_lookup"]}
