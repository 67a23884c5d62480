"""Optimiser parameter groups: pretraining (decay, no-decay and the adversary's ascent group) and the layer-wise
lr decay of transfer, with the weight-decay rule of the recipe each transfer reproduces.

The adversary's group says what it is -- ``adversary=True``, ``maximize=True`` (torch optimisers then ascend),
its projection norm and radius -- rather than hiding ascent behind a negative learning rate.
"""

from __future__ import annotations

from timm.layers import LayerNorm2d
from torch import nn


def skips_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and every other 1-D parameter are not decayed (MAE / AdPE recipe).

    The cls and mask tokens are 3-D and *are* decayed in pretraining, as the release and MAE do. Transfer uses
    the rule of its recipe instead (``WEIGHT_DECAY_RULES``).
    """
    return param.ndim <= 1 or name.endswith(".bias")


def pretrain_param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, adv_lr: float | None = None
) -> list[dict]:
    """Groups for AdamW: [decay, no_decay, adversary (if the model has one)].

    The adversary group has no weight decay, its own lr (``adv_lr``, default: the main lr) and
    ``maximize=True``; the main groups come first so that logging ``param_groups[0]['lr']`` shows the main lr.
    """
    adversary = getattr(model, "adversary", None)
    adv_ids = {id(p) for p in adversary.parameters()} if adversary is not None else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in adv_ids:
            continue
        (no_decay if skips_weight_decay(name, param) else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    if adversary is not None:
        groups.append({
            "name": "adversary",
            "params": list(adversary.parameters()),
            "lr": lr if adv_lr is None else adv_lr,
            "weight_decay": 0.0,
            "maximize": True,
            "adversary": True,
            "adv_norm": adversary.norm,
            "adv_radius": adversary.radius,
        })
    return groups


# detectron2 solver/build.py get_default_optimizer_params: ``norm_module_types``, the modules that
# ``weight_decay_norm`` applies to.
D2_NORM_MODULE_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# Channels-first LayerNorms (timm's LayerNorm2d: our AdPELN2d) stand for detectron2's own ``LayerNorm``
# (layers/batch_norm.py, get_norm's "LN" in ViTDet's pyramid and heads), a plain nn.Module that
# ``weight_decay_norm`` does not reach. timm's class subclasses nn.LayerNorm, so it is excluded by name here.
D2_DECAYED_NORM_TYPES = (LayerNorm2d,)


def _mae_exempt(model: nn.Module, backbone: nn.Module, prefix: str) -> set[str]:
    """MAE util/lr_decay.py param_groups_lrd (the release's optimizer/lr_decay.py), as main_finetune.py calls it
    with ``no_weight_decay_list=model.no_weight_decay()``: ``p.ndim == 1 or n in no_weight_decay_list``; the
    list is timm's {pos_embed, cls_token}. iRPE tables and other tensors of 2 or more dimensions are decayed."""
    listed = {prefix + n for n in backbone.no_weight_decay()}
    return {n for n, p in model.named_parameters() if p.ndim == 1 or n in listed}


def _mmseg_exempt(model: nn.Module, backbone: nn.Module, prefix: str) -> set[str]:
    """mmseg's LayerDecayOptimizerConstructor (engine/optimizers/layer_decay_optimizer_constructor.py, the same
    in mmseg 0.x, which the release ran): ``len(param.shape) == 1 or name.endswith('.bias') or name in
    ('pos_embed', 'cls_token')``. The last test sees the model's full names ('backbone.pos_embed') and never
    holds: as run, pos_embed, cls_token and the relative-position tables are decayed."""
    return {n for n, p in model.named_parameters() if len(p.shape) == 1 or n.endswith(".bias")}


def _detectron2_exempt(model: nn.Module, backbone: nn.Module, prefix: str) -> set[str]:
    """detectron2 ViTDet's optimiser (configs/common/optim.py AdamW, projects/ViTDet/configs/COCO/
    mask_rcnn_vitdet_b_100ep.py): ``get_default_optimizer_params(weight_decay_norm=0.0,
    overrides={'pos_embed': {'weight_decay': 0.0}})`` (solver/build.py). Not decayed: the parameters of torch.nn
    norm modules (the ViT's LayerNorms) and every parameter named ``pos_embed``. Decayed: biases
    (``weight_decay_bias`` unset), rel_pos_h / rel_pos_w, and the pyramid's and heads' channels-first
    LayerNorms (``D2_DECAYED_NORM_TYPES``: detectron2's LayerNorm is no torch.nn norm)."""
    exempt, seen = set(), set()
    for module_name, module in model.named_modules():
        norm = isinstance(module, D2_NORM_MODULE_TYPES) and not isinstance(module, D2_DECAYED_NORM_TYPES)
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if norm or local == "pos_embed":
                exempt.add(f"{module_name}.{local}" if module_name else local)
    return exempt


# Transfer weight-decay rules: name -> (model, backbone, backbone prefix) -> names of the parameters not decayed.
WEIGHT_DECAY_RULES = {"mae": _mae_exempt, "mmseg": _mmseg_exempt, "detectron2": _detectron2_exempt}


def layer_decay_param_groups(
    model: nn.Module,
    backbone: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    decay_rate: float,
    weight_decay_rule: str,
    backbone_prefix: str = "backbone.",
) -> list[dict]:
    """Layer-wise lr decay (BEiT / MAE fine-tuning): lr x decay_rate ** (num_layers - 1 - layer_id).

    ``backbone`` supplies ``num_layers``, ``layer_depth(name)`` and ``no_weight_decay()`` (names relative to
    it); parameters outside it (neck, heads) sit in the top layer (scale 1). ``weight_decay_rule`` (a key of
    ``WEIGHT_DECAY_RULES``: 'mae', 'mmseg' or 'detectron2') says which parameters are not decayed, as the
    recipe's reference does. One group per (layer, decay) pair, each recording its ``layer_id`` and
    ``lr_scale``.
    """
    if weight_decay_rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight_decay_rule must be one of {sorted(WEIGHT_DECAY_RULES)}, got {weight_decay_rule!r}")
    top = backbone.num_layers - 1
    exempt = WEIGHT_DECAY_RULES[weight_decay_rule](model, backbone, backbone_prefix)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith(backbone_prefix)
        local = name[len(backbone_prefix):] if in_backbone else name
        layer_id = backbone.layer_depth(local) if in_backbone else top
        decays = name not in exempt
        key = (layer_id, decays)
        if key not in groups:
            scale = decay_rate ** (top - layer_id)
            groups[key] = {"name": f"layer_{layer_id}_{'decay' if decays else 'no_decay'}", "params": [],
                           "param_names": [], "layer_id": layer_id, "lr_scale": scale, "lr": lr * scale,
                           "weight_decay": weight_decay if decays else 0.0}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
