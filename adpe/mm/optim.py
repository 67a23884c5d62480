"""Optimiser pieces registered with mmengine: wrappers, constructors and optimisers.

* ``AutocastOptimWrapper`` (OPTIM_WRAPPERS): mixed precision by autocast alone. mmengine's AmpOptimWrapper asserts
  a GPU; bf16 needs no loss scaler, so on CPU (and for bf16 on GPU) autocast is all AMP has to do.
* ``AutoAmpOptimWrapper`` (OPTIM_WRAPPERS): the mixed precision that suits the machine (what ``--amp`` and the
  configs ask for), or fp32 on CPUs that would only emulate bf16.
* ``AdPEOptimWrapperConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): pretraining's decay / no-decay / adversary groups.
* ``AdPELayerDecayConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): transfer's layer-wise lr decay.
* ``MAELars`` (OPTIMIZERS): timm's LARS with MAE's grouping, for MAE's linear probe.
* ``build_grouped_optim_wrapper`` / ``bare_model``: what the constructors and the hooks share.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from functools import partial

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from timm.optim import Lars
from torch import nn

from adpe.device import native_bf16
from adpe.optim import WEIGHT_DECAY_RULES, layer_decay_param_groups, pretrain_param_groups


def bare_model(model: nn.Module) -> nn.Module:
    """``model`` without its distributed wrapper (DDP, FSDP), if any."""
    return model.module if is_model_wrapper(model) else model


def build_grouped_optim_wrapper(optim_wrapper_cfg: dict, param_groups: Callable[..., list[dict]]) -> OptimWrapper:
    """The optimiser wrapper of ``optim_wrapper_cfg`` over the groups ``param_groups(lr=, weight_decay=)`` returns
    for the config's optimiser lr and weight decay (what an optimiser-wrapper constructor does)."""
    wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
    wrapper_cfg.setdefault("type", "OptimWrapper")
    optimizer_cfg = wrapper_cfg.pop("optimizer")
    groups = param_groups(lr=optimizer_cfg["lr"], weight_decay=optimizer_cfg.get("weight_decay", 0.0))
    optimizer = OPTIMIZERS.build({**optimizer_cfg, "params": groups})
    return OPTIM_WRAPPERS.build(wrapper_cfg, default_args={"optimizer": optimizer})


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose ``optim_context`` runs the forward under ``torch.autocast``.

    Args:
        dtype: 'bfloat16' (default; any device) or 'float16' (use mmengine's AmpOptimWrapper on GPU for
            fp16, which adds the loss scaler fp16 needs).
        device_type: 'cpu' or 'cuda'; default: cuda if available, else cpu.
    """

    def __init__(self, *args, dtype: str = "bfloat16", device_type: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in ("bfloat16", "float16"):
            raise ValueError(f"autocast dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.cast_dtype = getattr(torch, dtype)
        self.device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "bfloat16" and not native_bf16(self.device_type):
            # Asked for explicitly (--amp picks fp32 here): honoured, since numerics may be the point.
            print_log(f"bf16 autocast on a {self.device_type} without native bf16: it is emulated, and training is "
                      "far slower than in fp32 (drop optim_wrapper.dtype='bfloat16' to let --amp choose)",
                      logger="current", level=logging.WARNING)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(self.device_type, dtype=self.cast_dtype):
            yield


@OPTIM_WRAPPERS.register_module()
def AutoAmpOptimWrapper(*, dtype: str | None = None, loss_scale="dynamic", **kwargs) -> OptimWrapper:  # noqa: N802
    """Mixed precision where the machine computes it natively, else fp32 (what ``--amp`` builds).

    dtype None picks by ``adpe.device.native_bf16``: bf16 autocast without a loss scaler on GPUs with bf16 (Ampere
    and newer) and on CPUs with native bf16 (AVX-512, Arm BF16); fp16 with mmengine's AmpOptimWrapper and its
    dynamic loss scale on older GPUs; on other CPUs (e.g. AVX2 only), which emulate bf16 far slower than fp32, a
    plain OptimWrapper (fp32), said in one log line. 'bfloat16' or 'float16' (GPU only) is the user's own choice
    and is honoured, also where bf16 is emulated (``AutocastOptimWrapper`` then warns): that is how to check bf16
    numerics on such a machine. loss_scale: fp16's, as AmpOptimWrapper.
    """
    cuda = torch.cuda.is_available()
    if dtype is None:
        if cuda:
            dtype = "bfloat16" if native_bf16("cuda") else "float16"
        elif native_bf16("cpu"):
            dtype = "bfloat16"
        else:
            print_log("AutoAmpOptimWrapper (--amp): this CPU has no native bf16 and would emulate it, far slower than "
                      "fp32: training in fp32 (optim_wrapper.dtype='bfloat16' forces bf16)", logger="current")
            return OptimWrapper(**kwargs)
    if dtype == "float16":
        if not cuda:
            raise ValueError("fp16 mixed precision needs a GPU: use optim_wrapper.dtype='bfloat16' (or None) on CPU")
        return AmpOptimWrapper(dtype="float16", loss_scale=loss_scale, **kwargs)
    return AutocastOptimWrapper(dtype=dtype, **kwargs)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AdPEOptimWrapperConstructor:
    """Builds the optimiser with ``adpe.optim.pretrain_param_groups``: decay / no-decay / adversary.

    ``paramwise_cfg=dict(adv_lr=...)`` sets the adversary's lr (scheduled like the main lr by mmengine's
    schedulers, which scale every group from its initial lr).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        self.paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(self.paramwise_cfg) - {"adv_lr"}
        if unknown:
            raise ValueError(f"AdPEOptimWrapperConstructor: unknown paramwise_cfg keys {sorted(unknown)}; "
                             "only 'adv_lr' is accepted")

    def __call__(self, model) -> OptimWrapper:
        mae = bare_model(model).mae
        return build_grouped_optim_wrapper(
            self.optim_wrapper_cfg, partial(pretrain_param_groups, mae, adv_lr=self.paramwise_cfg.get("adv_lr")))


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
