"""Every checkpoint mmengine loads goes through ``adpe.checkpoint``: fetched into the verified cache, then
``torch.load(weights_only=True)`` with the training-checkpoint allow-list.

mmengine 0.10.7's ``CheckpointLoader`` serves ``--resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``
of any module, ``mmseg.apis.init_model``, the mmseg / mmdet inferencers and mmpretrain's. Its http(s) loader
calls ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` is still False in torch 2.14: a checkpoint
URL could run code on unpickling. ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` resolve to http(s) and
call the same function. Importing this module (``import adpe.mm`` does) registers ``load_from_adpe`` for local
paths and http(s) URLs, and makes the module-level ``load_from_http`` that the other schemes call the same
loader, so that no path reaches an unrestricted unpickler. Local files keep torch's ``weights_only=True`` as
before, and now their errors name the file.

It also lets mmcv's ``nms`` and ``roi_align`` take bf16 tensors, which they have no kernels for (CPU or CUDA:
"expected scalar type Float but found BFloat16"). Under ``--amp``'s bf16 autocast the RPN's boxes and scores
and the RoI extractors' features are bf16, so a Mask R-CNN (and every mmdet detector) failed in its first step;
these two ops now compute in fp32 and return bf16 features as before.
"""

from __future__ import annotations

import importlib

import torch
from mmengine.runner import checkpoint as mm_checkpoint

from adpe.checkpoint import load_checkpoint_file


def load_from_adpe(filename: str, map_location=None, *args, **kwargs) -> dict:
    """mmengine checkpoint loader: ``adpe.checkpoint.load_checkpoint_file`` (mmengine's name for it in its log
    line is 'adpe'). Extra arguments of mmengine's loaders (``model_dir``, ``progress``) have no meaning here."""
    return load_checkpoint_file(filename, map_location="cpu" if map_location is None else map_location)


mm_checkpoint.CheckpointLoader.register_scheme(prefixes=("", "http://", "https://"), loader=load_from_adpe,
                                               force=True)
mm_checkpoint.load_from_http = load_from_adpe  # what the torchvision://, open-mmlab:// and mmcls:// loaders call


def _nms_in_fp32(apply):
    def nms_apply(boxes, scores, *args):
        if torch.bfloat16 in (boxes.dtype, scores.dtype):
            boxes, scores = boxes.float(), scores.float()
        return apply(boxes, scores, *args)  # indices; mmcv's nms takes dets from its own (bf16) tensors

    nms_apply.adpe_bf16 = True
    return nms_apply


def _roi_align_in_fp32(roi_align):
    def roi_align_fp32(features, rois, *args):
        if torch.bfloat16 in (features.dtype, rois.dtype):
            return roi_align(features.float(), rois.float(), *args).to(features.dtype)
        return roi_align(features, rois, *args)

    roi_align_fp32.adpe_bf16 = True
    return roi_align_fp32


mmcv_nms = importlib.import_module("mmcv.ops.nms")  # the modules (mmcv.ops exports functions of these names)
mmcv_roi_align = importlib.import_module("mmcv.ops.roi_align")
if not getattr(mmcv_nms.NMSop.apply, "adpe_bf16", False):
    mmcv_nms.NMSop.apply = staticmethod(_nms_in_fp32(mmcv_nms.NMSop.apply))
if not getattr(mmcv_roi_align.roi_align, "adpe_bf16", False):
    mmcv_roi_align.roi_align = _roi_align_in_fp32(mmcv_roi_align.roi_align)  # what RoIAlign.forward calls
