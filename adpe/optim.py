"""Optimiser parameter groups for pretraining: decay, no-decay and the adversary's ascent group.

The adversary's group says what it is -- ``adversary=True``, ``maximize=True`` (torch optimisers then ascend),
its projection norm and radius -- rather than hiding ascent behind a negative learning rate.
"""

from __future__ import annotations

from torch import nn


def lr_for_batch(base_lr: float, effective_batch: int, base_batch: int = 256) -> float:
    """The linear scaling rule used by MAE and AdPE: lr = base_lr * effective_batch / 256."""
    return base_lr * effective_batch / base_batch


def skips_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, tokens and every other 1-D parameter are not decayed (MAE / AdPE recipe)."""
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("token")


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
