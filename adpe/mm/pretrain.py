"""Pretraining on mmengine's Runner: model wrapper, dataset, collate, optimiser groups, adversary hook."""

from __future__ import annotations

import copy
from functools import partial

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DATASETS, FUNCTIONS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import Tensor

from adpe.checkpoint import load_checkpoint_file, load_strictly, pretrainer_from_checkpoint
from adpe.data import ImageFolderDataset, MultiCropTransform, multicrop_collate
from adpe.mae import MaskedAutoencoder
from adpe.mm.engine import bare_model, build_grouped_optim_wrapper
from adpe.optim import pretrain_param_groups


@MODELS.register_module()
class AdPEPretrainer(BaseModel):
    """mmengine model around ``adpe.mae.MaskedAutoencoder`` (keyword arguments go to it unchanged).

    Its weights live under ``mae.``; ``tools/convert_checkpoint.py`` turns them into a backbone.
    ``pretrained``: start from the weights of a pretraining checkpoint (ours, or an MAE / AdPE release), loaded
    strictly into the model this config builds; only the adversary may be absent (e.g. an AdPE run started
    from MAE+ weights), and then starts afresh. Resuming a run takes precedence over it.
    """

    def __init__(self, data_preprocessor: dict | None = None, init_cfg: dict | None = None,
                 pretrained: str | None = None, **mae_kwargs):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.mae = MaskedAutoencoder(**mae_kwargs)
        self.pretrained = pretrained

    def init_weights(self) -> None:
        super().init_weights()
        if self.pretrained is None:
            return
        _, state, dropped = pretrainer_from_checkpoint(load_checkpoint_file(self.pretrained))
        fresh = {k for k in self.mae.state_dict() if k.startswith("adversary.")} - set(state)
        load_strictly(self.mae, state, self.pretrained, optional=fresh)
        print_log(f"AdPEPretrainer: loaded {len(state)} tensors from {self.pretrained}; dropped on purpose: "
                  f"{len(dropped)} keys; starting afresh: {sorted(fresh) or 'none'}", logger="current")

    def forward(self, inputs: Tensor, data_samples=None, mode: str = "loss"):
        """inputs: (B * crops, C, H, W). 'loss' -> {'loss'}; 'predict' / 'tensor' -> the model's dict."""
        out = self.mae(inputs)
        if mode == "loss":
            return {"loss": out["loss"]}
        if mode in ("predict", "tensor"):
            return out
        raise ValueError(f"unknown mode {mode!r}: use 'loss', 'predict' or 'tensor'")


@DATASETS.register_module()
class AdPEImageFolder(ImageFolderDataset):
    """ImageNet-style or flat image folder with the MAE+ multi-crop transform (labels unused)."""

    def __init__(self, data_root: str, num_crops: int = 4, crop_size: int = 112,
                 scale: tuple[float, float] = (0.08, 1.0)):
        super().__init__(data_root, transform=MultiCropTransform(num_crops, crop_size, tuple(scale)))
        self.metainfo = {"num_crops": num_crops, "crop_size": crop_size}


@FUNCTIONS.register_module()
def adpe_multicrop_collate(batch: list) -> dict[str, Tensor]:
    """Stack every crop of every image into one batch: {'inputs': (B * crops, C, H, W)}."""
    return {"inputs": multicrop_collate(batch)}


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


@HOOKS.register_module()
class AdversaryHook(Hook):
    """After every parameter update: project the deltas onto their ball, log ``adv_lr`` and ``adv_norm``.

    Iterations that only accumulate gradients leave the deltas as they are, so they are skipped. Runs at NORMAL
    priority, before LoggerHook, so the scalars reach the same log line as ``loss``.
    """

    priority = "NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        adversary = bare_model(runner.model).mae.adversary
        if adversary is None or not runner.optim_wrapper.should_update():
            return
        adversary.project_()
        adv_group = next(g for g in runner.optim_wrapper.optimizer.param_groups if g.get("adversary"))
        runner.message_hub.update_scalar("train/adv_lr", adv_group["lr"])
        runner.message_hub.update_scalar("train/adv_norm", adversary.max_norm())
