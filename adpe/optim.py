"""Optimiser parameter groups for pretraining: decay, no-decay and the adversary's ascent group.

The adversary's group says what it is -- ``adversary=True``, ``maximize=True`` (torch optimisers then ascend),
its projection norm and radius -- rather than hiding ascent behind a negative learning rate.
"""

from __future__ import annotations

from torch import nn


def skips_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and every other 1-D parameter are not decayed (MAE / AdPE recipe).

    The cls and mask tokens are 3-D and *are* decayed in pretraining, as the release and MAE do; fine-tuning
    exempts the cls token and position tables through the backbone's ``no_weight_decay()``.
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


def layer_decay_param_groups(
    model: nn.Module,
    backbone: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    decay_rate: float,
    backbone_prefix: str = "backbone.",
) -> list[dict]:
    """Layer-wise lr decay (BEiT / MAE fine-tuning): lr x decay_rate ** (num_layers - 1 - layer_id).

    ``backbone`` supplies ``num_layers``, ``layer_depth(name)`` and ``no_weight_decay()`` (names relative to
    it); parameters outside it (neck, heads) sit in the top layer (scale 1). What ``skips_weight_decay``
    names and the backbone's no-weight-decay set are not decayed. One group per (layer, decay) pair, each
    recording its ``layer_id`` and ``lr_scale``.
    """
    top = backbone.num_layers - 1
    skip_decay = backbone.no_weight_decay()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith(backbone_prefix)
        local = name[len(backbone_prefix):] if in_backbone else name
        layer_id = backbone.layer_depth(local) if in_backbone else top
        decays = not (skips_weight_decay(name, param) or (in_backbone and local in skip_decay))
        key = (layer_id, decays)
        if key not in groups:
            scale = decay_rate ** (top - layer_id)
            groups[key] = {"name": f"layer_{layer_id}_{'decay' if decays else 'no_decay'}", "params": [],
                           "param_names": [], "layer_id": layer_id, "lr_scale": scale, "lr": lr * scale,
                           "weight_decay": weight_decay if decays else 0.0}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
