"""Pretraining on mmengine's Runner: model wrapper, dataset, collate, optimiser groups, adversary hook."""

from __future__ import annotations

import copy
from functools import partial

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DATASETS, FUNCTIONS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import Tensor

from adpe.checkpoint import load_checkpoint_file, load_strictly, pretrainer_from_checkpoint
from adpe.data import ImageFolderDataset, MultiCropTransform, decode_multicrop, multicrop_collate
from adpe.mae import MaskedAutoencoder
from adpe.mm.engine import bare_model, build_grouped_optim_wrapper
from adpe.optim import pretrain_param_groups
from adpe.vit import compile_blocks


@MODELS.register_module()
class AdPEPretrainer(BaseModel):
    """mmengine model around ``adpe.mae.MaskedAutoencoder`` (keyword arguments go to it unchanged).

    Its weights live under ``mae.``; ``tools/convert_checkpoint.py`` turns them into a backbone.
    ``pretrained``: start from the weights of a pretraining checkpoint (ours, or an MAE / AdPE release), loaded
    strictly into the model this config builds; only the adversary may be absent (e.g. an AdPE run started
    from MAE+ weights), and then starts afresh. Resuming a run takes precedence over it.
    ``compile``: True (or torch.compile's arguments) compiles the encoder and decoder blocks on GPU machines
    (``adpe.vit.compile_blocks``; CPU-only machines stay eager).
    """

    def __init__(self, data_preprocessor: dict | None = None, init_cfg: dict | None = None,
                 pretrained: str | None = None, compile: bool | dict = False, **mae_kwargs):  # noqa: A002
        super().__init__(data_preprocessor=data_preprocessor or dict(type="AdPEMultiCropPreprocessor"),
                         init_cfg=init_cfg)
        self.mae = MaskedAutoencoder(**mae_kwargs)
        self.pretrained = pretrained
        if compile and not compile_blocks([*self.mae.blocks, *self.mae.decoder_blocks], compile):
            print_log("AdPEPretrainer: compile skipped, no GPU (CPU fallback: eager)", logger="current")

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
    """ImageNet-style or flat image folder with the MAE+ multi-crop transform (labels unused).

    decode: 'cpu' decodes and crops in the loader workers (PIL); 'device' has them read the files' bytes only,
    and the model's ``AdPEMultiCropPreprocessor`` decodes and crops the batch on the training device
    (``adpe.data.decode_multicrop``: nvJPEG on a GPU) -- for GPUs that the loader's cores cannot keep fed.
    """

    def __init__(self, data_root: str, num_crops: int = 4, crop_size: int = 112,
                 scale: tuple[float, float] = (0.08, 1.0), decode: str = "cpu"):
        if decode not in ("cpu", "device"):
            raise ValueError(f"AdPEImageFolder: decode must be 'cpu' or 'device', got {decode!r}")
        super().__init__(data_root, transform=MultiCropTransform(num_crops, crop_size, tuple(scale)),
                         encoded=decode == "device")
        self.metainfo = {"num_crops": num_crops, "crop_size": crop_size, "decode": decode}

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        return {"encoded": item, "transform": self.transform} if self.encoded else item


@FUNCTIONS.register_module()
def adpe_multicrop_collate(batch: list) -> dict:
    """One batch: {'inputs': (B * crops, C, H, W)} stacked crops, or for ``decode='device'`` the encoded
    images and their transform, which the model's preprocessor decodes on its device."""
    if batch and isinstance(batch[0], dict):
        return {"inputs": {"encoded": [item["encoded"] for item in batch], "transform": batch[0]["transform"]}}
    return {"inputs": multicrop_collate(batch)}


@MODELS.register_module()
class AdPEMultiCropPreprocessor(BaseDataPreprocessor):
    """Moves a stacked multi-crop batch to the model's device, or decodes and crops an encoded one there."""

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data["inputs"]
        if isinstance(inputs, dict):  # adpe_multicrop_collate's batch of encoded images
            return {"inputs": decode_multicrop(inputs["encoded"], inputs["transform"], self.device),
                    "data_samples": None}
        return super().forward(data, training)


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
