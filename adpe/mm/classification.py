"""ImageNet classification pieces for mmpretrain configs (benchmarks/imagenet/).

The classifier itself is mmpretrain's (``ImageClassifier``, ``LinearClsHead``, ``ClsBatchNormNeck``, its data
pipeline, batch augments and ``Accuracy``) around ``AdPEViT`` in ``mode='cls'``. What is here is the optimiser of
MAE's linear probe.
"""

from __future__ import annotations

from collections.abc import Iterable

from mmengine.registry import OPTIMIZERS
from timm.optim import Lars
from torch import nn


def lars_param_groups(params: Iterable[nn.Parameter | dict]) -> list[dict]:
    """MAE's LARS grouping of trainable parameters: weight matrices (ndim > 1) get the trust-ratio adaptation,
    biases and norm parameters plain momentum SGD, without weight decay.

    ``params``: parameters, or mmengine's param-group dicts ({'params': [...], ...}), flattened here.
    """
    flat: list[nn.Parameter] = []
    for item in params:
        flat += list(item["params"]) if isinstance(item, dict) else [item]
    trainable = [p for p in flat if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim > 1], "always_adapt": True},
            {"params": [p for p in trainable if p.ndim <= 1], "always_adapt": False, "weight_decay": 0.0}]


@OPTIMIZERS.register_module(name="MAELars")
def build_mae_lars(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                   trust_coeff: float = 0.001, **kwargs) -> Lars:
    """``optimizer=dict(type='MAELars', lr=..., momentum=0.9, weight_decay=0)``: timm's ``Lars`` with MAE's
    grouping (``lars_param_groups``).

    With weight decay 0 (MAE's linear probe), one step is MAE's ``util/lars.py`` update for every parameter:
    ``p -= lr * buf``, ``buf = momentum * buf + q * g`` with the trust ratio ``q = 0.001 |p| / |g|`` for matrices
    and 1 otherwise (timm adds eps=1e-8 to |g|). mmpretrain's ``LARS`` differs: it multiplies the lr into the
    momentum buffer and adapts biases too.
    """
    return Lars(lars_param_groups(params), lr=lr, momentum=momentum, weight_decay=weight_decay,
                trust_coeff=trust_coeff, **kwargs)
