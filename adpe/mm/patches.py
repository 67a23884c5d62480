"""Everything ``import adpe.mm`` changes outside the registries: process-wide state, listed here.

1. Checkpoint loading (mmengine's ``CheckpointLoader``): every checkpoint mmengine loads goes through
   ``adpe.checkpoint``: fetched into the verified cache, then ``torch.load(weights_only=True)`` with the
   training-checkpoint allow-list. mmengine 0.10.7's loader serves ``--resume``, ``load_from``,
   ``init_cfg=dict(type='Pretrained')`` of any module, ``mmseg.apis.init_model``, the mmseg / mmdet inferencers and
   mmpretrain's. Its http(s) loader calls ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` is still
   False in torch 2.14: a checkpoint URL could run code on unpickling. ``torchvision://``, ``open-mmlab://`` and
   ``mmcls://`` resolve to http(s) and call the same function. ``load_from_adpe`` is registered for local paths
   and http(s) URLs, and the module-level ``load_from_http`` that the other schemes call becomes the same loader,
   so that no path reaches an unrestricted unpickler. Local files keep torch's ``weights_only=True`` as before,
   and now their errors name the file.
2. Torch's safe globals (``torch.serialization.add_safe_globals``): mmengine 0.10.7 calls torch.load without
   ``weights_only``, so on torch >= 2.6 resuming fails on the log history (``HistoryBuffer``, pickled with
   ``getattr(HistoryBuffer, 'min')`` and friends). That class and a ``getattr`` restricted to exactly those
   attributes are allow-listed, plus ``adpe.checkpoint``'s release classes, so every checkpoint still loads with
   ``weights_only=True``.
3. mmengine's local file backend (``register_backend('local', ...)``): ``AtomicLocalBackend`` writes local files
   (checkpoints, ``last_checkpoint``) to a temporary file and renames it, so a run killed while saving never
   leaves a truncated checkpoint behind.
4. ``adpe.checkpoint``'s URL fetchers: every URL prefix mmengine has a file backend for (s3://, petrel://, ...)
   becomes a checkpoint source (``fetch_with_mmengine``); the core fetches http(s) itself. Credentials and client
   packages (e.g. petrel_client) are the backend's business.
5. The ``adpe`` stdlib logger: its records (skipped images of ``adpe.data``, fetches of ``adpe.checkpoint``) also
   go to mmengine's current ``MMLogger``, i.e. the run's console and ``WORK_DIR/TIMESTAMP/TIMESTAMP.log``
   (``forward_core_logs``).
6. mmcv's ``nms`` and ``roi_align`` take bf16 tensors, which they have no kernels for (CPU or CUDA: "expected
   scalar type Float but found BFloat16"). Under ``--amp``'s bf16 autocast the RPN's boxes and scores and the RoI
   extractors' features are bf16, so a Mask R-CNN (and every mmdet detector) failed in its first step; these two
   ops now compute in fp32 and return bf16 features as before.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path

import torch
from mmengine import fileio
from mmengine.fileio.backends import LocalBackend, prefix_to_backends, register_backend
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.runner import checkpoint as mm_checkpoint

from adpe.checkpoint import (
    FETCHERS,
    TRAINING_CHECKPOINT_GLOBALS,
    atomic_write,
    load_checkpoint_file,
    register_fetcher,
)


# --------------------------------------------------------------------------- 1. mmengine's checkpoint loader
def load_from_adpe(filename: str, map_location=None, *args, **kwargs) -> dict:
    """mmengine checkpoint loader: ``adpe.checkpoint.load_checkpoint_file`` (mmengine's name for it in its log
    line is 'adpe'). Extra arguments of mmengine's loaders (``model_dir``, ``progress``) have no meaning here."""
    return load_checkpoint_file(filename, map_location="cpu" if map_location is None else map_location)


mm_checkpoint.CheckpointLoader.register_scheme(prefixes=("", "http://", "https://"), loader=load_from_adpe,
                                               force=True)
mm_checkpoint.load_from_http = load_from_adpe  # what the torchvision://, open-mmlab:// and mmcls:// loaders call


# --------------------------------------------------------------------------- 2. torch's safe globals
def _history_buffer_getattr(obj, name: str):
    """The only ``getattr`` a checkpoint may call: HistoryBuffer's statistics methods."""
    # HistoryBuffer registers its statistics lazily (first instance), so name the built-in ones too.
    if obj is HistoryBuffer and name in {"min", "max", "mean", "current", *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}), which is not allowed")


torch.serialization.add_safe_globals([
    *TRAINING_CHECKPOINT_GLOBALS,
    HistoryBuffer,
    (_history_buffer_getattr, "builtins.getattr"),
    (_history_buffer_getattr, "__builtin__.getattr"),
])


# --------------------------------------------------------------------------- 3. mmengine's local file backend
class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose writes are atomic: temporary file in the same folder, fsync, rename."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write(obj.encode(encoding), filepath)


register_backend("local", AtomicLocalBackend, force=True, prefixes="")


# --------------------------------------------------------------------------- 4. checkpoint URL fetchers
def fetch_with_mmengine(url: str, dst: Path) -> None:
    """Write the bytes that mmengine's backend for ``url`` returns to ``dst``, all or nothing.

    The whole object passes through memory once (mmengine's ``get`` returns bytes): fine for checkpoints.
    """
    atomic_write(fileio.get(url), dst)


def register_mmengine_fetchers() -> list[str]:
    """Register ``fetch_with_mmengine`` for each URL prefix mmengine knows that has no fetcher yet (http(s)
    keeps the core's streaming download); returns the prefixes registered."""
    added = [p for p in prefix_to_backends if p and p not in FETCHERS]  # '' is mmengine's local backend
    for prefix in added:
        register_fetcher(prefix, fetch_with_mmengine)
    return added


register_mmengine_fetchers()


# --------------------------------------------------------------------------- 5. the core's log records
class _ToRunLog(logging.Handler):
    """Passes records of the core's loggers on to mmengine's current MMLogger (console and run log file)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # The formatted text, not the record: MMLogger drops a WARNING whose unformatted msg it has seen
            # (FilterDuplicateWarning), which would keep one "Skipping unreadable image %s" line per run.
            MMLogger.get_current_instance().log(record.levelno, record.getMessage())
        except Exception:  # logging must never stop a run
            self.handleError(record)


def forward_core_logs(name: str = "adpe") -> None:
    """Have the stdlib logger ``name`` (and its children, e.g. ``adpe.data``) write to mmengine's current MMLogger as
    well; idempotent. The records still propagate to the root logger (pytest's caplog, a user's own handlers).

    Loader workers started by fork inherit the handler and the run's log file; spawned ones log to the console.
    """
    core = logging.getLogger(name)
    if not any(isinstance(handler, _ToRunLog) for handler in core.handlers):
        core.addHandler(_ToRunLog())


forward_core_logs()


# --------------------------------------------------------------------------- 6. bf16 through mmcv's nms / roi_align
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
