"""Models registered with mmengine: the pretraining model and its data preprocessor, the transfer backbone.

* ``AdPEPretrainer``: ``adpe.models.mae.MaskedAutoencoder`` on mmengine's Runner (pretrain/ configs).
* ``AdPEMultiCropPreprocessor``: moves a multi-crop batch to the device, or decodes it there.
* ``AdPEViT``: ``adpe.models.backbone.ViTBackbone`` for mmseg, mmdet and mmpretrain configs (benchmarks/).

The other registered models have their own modules: the detection neck (``neck.py``), the Cascade RoI head
(``detection.py``) and the detection TTA model (``inference.py``).
"""

from __future__ import annotations

import copy

from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel, BaseModule
from mmengine.registry import MODELS
from torch import Tensor

from adpe.checkpoint import (
    fit_to_backbone,
    load_checkpoint_file,
    load_strictly,
    pretrainer_from_checkpoint,
    resolve_auto,
    to_backbone_state,
)
from adpe.data import decode_multicrop
from adpe.models.backbone import ViTBackbone
from adpe.models.mae import MaskedAutoencoder
from adpe.models.vit import compile_blocks


@MODELS.register_module()
class AdPEPretrainer(BaseModel):
    """mmengine model around ``adpe.models.mae.MaskedAutoencoder`` (keyword arguments go to it unchanged).

    Its weights live under ``mae.``; ``tools/convert_checkpoint.py`` turns them into a backbone.
    ``pretrained``: start from the weights of a pretraining checkpoint (ours, or an MAE / AdPE release), loaded
    strictly into the model this config builds; only the adversary may be absent (e.g. an AdPE run started
    from MAE+ weights), and then starts afresh. Resuming a run takes precedence over it.
    ``compile``: True (or torch.compile's arguments) compiles the encoder and decoder blocks on GPU machines
    (``adpe.models.vit.compile_blocks``; CPU-only machines stay eager).
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


@MODELS.register_module()
class AdPEMultiCropPreprocessor(BaseDataPreprocessor):
    """Moves a stacked multi-crop batch to the model's device, or decodes and crops an encoded one there."""

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data["inputs"]
        if isinstance(inputs, dict):  # adpe_multicrop_collate's batch of encoded images
            return {"inputs": decode_multicrop(inputs["encoded"], inputs["transform"], self.device),
                    "data_samples": None}
        return super().forward(data, training)


def pretrained_path(init_cfg: dict | None) -> str | None:
    """The checkpoint of an ``init_cfg=dict(type='Pretrained', checkpoint=...)``, or None."""
    init_cfg = init_cfg or {}
    return init_cfg.get("checkpoint") if init_cfg.get("type") == "Pretrained" else None


@MODELS.register_module()
class AdPEViT(ViTBackbone, BaseModule):
    """``adpe.models.backbone.ViTBackbone`` for mmseg and mmdet configs, with strict pretrained loading.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts this suite's pretraining checkpoints, the
    official MAE and AdPE releases and exported backbones; decoder, mask token and adversary weights are
    dropped on purpose (and logged), any other mismatch is an error listing the keys.

    ``rel_pos='auto'`` uses the checkpoint's iRPE tables when it has them and a zero-initialised learned
    bias otherwise; ``rpe_lookup='auto'`` follows the checkpoint's pretraining (continuous for RPE coordinate
    mode). An APE checkpoint, or none, gets a zero-initialised learned bias in seg / det mode and no relative
    term in cls mode (``resolve_auto``). ``compile``: True (or torch.compile's arguments) compiles the blocks on
    GPU machines (``adpe.models.vit.compile_blocks``; CPU-only machines stay eager).
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
