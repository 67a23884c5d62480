"""ViTDet's simple feature pyramid (with LayerNorm2d), for Mask R-CNN on the single stride-16 ViT map.

mmdet 3.3.0's wheel does not ship the ViTDet project, so the pyramid and an ``AdPELN2d`` norm (timm's
LayerNorm2d, usable as ``norm_cfg=dict(type='AdPELN2d')`` in mmdet heads) are registered here under names
that clash with nothing in mmdet or mmseg.
"""

from __future__ import annotations

import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from torch import Tensor, nn

MODELS.register_module("AdPELN2d", module=LayerNorm2d)


def _norm(norm_cfg: dict | None, channels: int) -> nn.Module:
    return build_norm_layer(norm_cfg, channels)[1] if norm_cfg else nn.Identity()


def _conv_norm(in_channels: int, out_channels: int, kernel: int, norm_cfg: dict | None) -> nn.Sequential:
    # Without a norm the conv needs its bias back.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not norm_cfg),
                         _norm(norm_cfg, out_channels))


@MODELS.register_module()
class AdPESimpleFPN(BaseModule):
    """Stride-16 map -> maps at strides 4, 8, 16, 32 (x4, x2, x1, x0.5) and 64 (max-pool of the last).

    Args:
        in_channels: backbone width; out_channels: pyramid width (256);
        scales: resampling factors of the four main levels; num_outs: 5 adds the stride-64 level;
        norm_cfg: the norm after every conv (ViTDet: LayerNorm2d); None for plain biased convs.
    """

    def __init__(self, in_channels: int = 768, out_channels: int = 256, scales=(4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 norm_cfg: dict | None = dict(type="AdPELN2d"),  # noqa: B006 (read only: build_norm_layer copies)
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_outs not in (len(scales), len(scales) + 1):
            raise ValueError(f"num_outs must be {len(scales)} or {len(scales) + 1}, got {num_outs}")
        self.num_outs = num_outs
        self.stages = nn.ModuleList(self._stage(in_channels, out_channels, s, norm_cfg) for s in scales)

    @staticmethod
    def _stage(dim: int, out_channels: int, scale: float, norm_cfg: dict | None) -> nn.Sequential:
        if scale == 4.0:
            resample = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), _norm(norm_cfg, dim // 2), nn.GELU(),
                        nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)]
            width = dim // 4
        elif scale == 2.0:
            resample, width = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
        elif scale == 1.0:
            resample, width = [], dim
        elif scale == 0.5:
            resample, width = [nn.MaxPool2d(2, stride=2)], dim
        else:
            raise ValueError(f"unsupported pyramid scale {scale}; use 4, 2, 1 or 0.5")
        return nn.Sequential(*resample, _conv_norm(width, out_channels, 1, norm_cfg),
                             _conv_norm(out_channels, out_channels, 3, norm_cfg))

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """inputs: (the backbone's last map (B, C, H/16, W/16),) -> num_outs maps (B, out_channels, ., .)."""
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        if self.num_outs > len(outs):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
