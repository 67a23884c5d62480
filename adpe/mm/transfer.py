"""Transfer modules for mmseg / mmdet: the AdPE ViT backbone, its layer-decay optimiser constructor."""

from __future__ import annotations

import copy

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from adpe.backbone import ViTBackbone, decode_structure
from adpe.checkpoint import (
    STRUCTURE_KEY,
    checkpoint_state,
    checkpoint_variant,
    fit_to_backbone,
    load_checkpoint_file,
    to_backbone_state,
)
from adpe.mm.engine import bare_model, build_grouped_optim_wrapper
from adpe.optim import WEIGHT_DECAY_RULES, layer_decay_param_groups
from adpe.vit import compile_blocks


def pretrained_path(init_cfg: dict | None) -> str | None:
    """The checkpoint of an ``init_cfg=dict(type='Pretrained', checkpoint=...)``, or None."""
    init_cfg = init_cfg or {}
    return init_cfg.get("checkpoint") if init_cfg.get("type") == "Pretrained" else None


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


@MODELS.register_module()
class AdPEViT(ViTBackbone, BaseModule):
    """``adpe.backbone.ViTBackbone`` for mmseg and mmdet configs, with strict pretrained loading.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts this suite's pretraining checkpoints, the
    official MAE and AdPE releases and exported backbones; decoder, mask token and adversary weights are
    dropped on purpose (and logged), any other mismatch is an error listing the keys.

    ``rel_pos='auto'`` uses the checkpoint's iRPE tables when it has them and a zero-initialised learned
    bias otherwise; ``rpe_lookup='auto'`` follows the checkpoint's pretraining (continuous for RPE coordinate
    mode). An APE checkpoint, or none, gets a zero-initialised learned bias in seg / det mode and no relative
    term in cls mode (``resolve_auto``). ``compile``: True (or torch.compile's arguments) compiles the blocks on
    GPU machines (``adpe.vit.compile_blocks``; CPU-only machines stay eager).
    """

    def __init__(self, rel_pos: str = "auto", rpe_lookup: str = "auto", init_cfg: dict | None = None,
                 compile: bool | dict = False, **kwargs):  # noqa: A002
        self._checkpoint_path = pretrained_path(init_cfg)
        if "auto" in (rel_pos, rpe_lookup):  # the one place 'auto' is resolved (ResolvedBackboneHook records it)
            ckpt = load_checkpoint_file(self._checkpoint_path) if self._checkpoint_path else None
            rel_pos, rpe_lookup = resolve_auto(rel_pos, rpe_lookup, ckpt, kwargs.get("mode", "seg"))
        ViTBackbone.__init__(self, rel_pos=rel_pos, rpe_lookup=rpe_lookup, **kwargs)
        self.init_cfg = copy.deepcopy(init_cfg)
        if compile and not compile_blocks(self.blocks, compile):
            print_log("AdPEViT: compile skipped, no GPU (CPU fallback: eager)", logger="current")

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
    """Layer-wise lr decay driven by the backbone's own ``layer_depth``, with a recipe's weight-decay rule.

    ``paramwise_cfg=dict(layer_decay_rate=0.65, weight_decay_rule='mae')``; the rule (``adpe.optim.
    WEIGHT_DECAY_RULES``) is the reference's: 'mae' (MAE / release fine-tuning), 'mmseg' (mmseg's layer-decay
    constructor as it runs) or 'detectron2' (ViTDet). The model must expose the backbone as ``model.backbone``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        paramwise_cfg = dict(paramwise_cfg or {})
        if set(paramwise_cfg) != {"layer_decay_rate", "weight_decay_rule"}:
            raise ValueError("AdPELayerDecayConstructor takes paramwise_cfg=dict(layer_decay_rate=..., "
                             f"weight_decay_rule=one of {sorted(WEIGHT_DECAY_RULES)}), got {sorted(paramwise_cfg)}")
        self.decay_rate = float(paramwise_cfg["layer_decay_rate"])
        self.weight_decay_rule = paramwise_cfg["weight_decay_rule"]
        if self.weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"paramwise_cfg.weight_decay_rule must be one of {sorted(WEIGHT_DECAY_RULES)}, got "
                             f"{self.weight_decay_rule!r}")

    def __call__(self, model) -> OptimWrapper:
        model = bare_model(model)
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "layer_depth"):
            raise TypeError(f"{type(model).__name__}.backbone must provide layer_depth()/no_weight_decay() "
                            "(use type='AdPEViT') for layer-wise lr decay")

        def groups(lr: float, weight_decay: float) -> list[dict]:
            found = layer_decay_param_groups(model, backbone, lr=lr, weight_decay=weight_decay,
                                             decay_rate=self.decay_rate, weight_decay_rule=self.weight_decay_rule)
            return [{k: v for k, v in group.items() if k != "param_names"} for group in found]

        return build_grouped_optim_wrapper(self.optim_wrapper_cfg, groups)


@HOOKS.register_module()
class ResolvedBackboneHook(Hook):
    """Writes the settings the AdPEViT backbone resolved ('auto' ``rel_pos`` / ``rpe_lookup``, from its pretrained
    checkpoint) into the run's config: the work dir's copy and the ``meta['cfg']`` of every checkpoint, so a
    trained model is rebuilt with the structure it was trained with."""

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        backbone = getattr(bare_model(runner.model), "backbone", None)
        backbone_cfg = runner.cfg.get("model", {}).get("backbone")
        if not isinstance(backbone, AdPEViT) or backbone_cfg is None:
            return
        resolved = {"rel_pos": backbone.rel_pos, "rpe_lookup": backbone.rpe_lookup}
        if any(backbone_cfg.get(k) != v for k, v in resolved.items()):
            backbone_cfg.update(resolved)
            runner.dump_config()


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
