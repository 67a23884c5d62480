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
"""

from __future__ import annotations

from mmengine.runner import checkpoint as mm_checkpoint

from adpe.checkpoint import load_checkpoint_file


def load_from_adpe(filename: str, map_location=None, *args, **kwargs) -> dict:
    """mmengine checkpoint loader: ``adpe.checkpoint.load_checkpoint_file`` (mmengine's name for it in its log
    line is 'adpe'). Extra arguments of mmengine's loaders (``model_dir``, ``progress``) have no meaning here."""
    return load_checkpoint_file(filename, map_location="cpu" if map_location is None else map_location)


mm_checkpoint.CheckpointLoader.register_scheme(prefixes=("", "http://", "https://"), loader=load_from_adpe,
                                               force=True)
mm_checkpoint.load_from_http = load_from_adpe  # what the torchvision://, open-mmlab:// and mmcls:// loaders call
