"""Engine pieces mmengine 0.10.7 lacks on current torch / CPU machines.

* ``AutocastOptimWrapper``: mixed precision by autocast alone. mmengine's AmpOptimWrapper asserts a GPU; bf16
  needs no loss scaler, so on CPU (and for bf16 on GPU) autocast is all AMP has to do.
* ``AutoAmpOptimWrapper``: the mixed precision that suits the machine (what ``--amp`` and the configs ask for),
  or fp32 on CPUs that would only emulate bf16.
* ``EffectiveBatchHook``: gradient accumulation that keeps a config's ``effective_batch`` on any GPU count.
* ``build_grouped_optim_wrapper`` / ``bare_model``: what our optimiser constructors and hooks share.
* ``AtomicLocalBackend``: local files (checkpoints, ``last_checkpoint``) are written to a temporary file and
  renamed, so a run killed while saving never leaves a truncated checkpoint behind.
* ``RandomStateHook``: random generators saved with each checkpoint, so a resumed run draws what an
  uninterrupted one would.
* mmengine 0.10.7 calls torch.load without ``weights_only``: on torch >= 2.6 resuming fails on the log
  history (``HistoryBuffer``, pickled with ``getattr(HistoryBuffer, 'min')`` and friends). We allow-list
  that class and a ``getattr`` restricted to exactly those attributes, plus adpe.checkpoint's release
  classes, so every checkpoint still loads with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import logging
import pickle
import random
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPERS, OPTIMIZERS
from mmengine.runner import IterBasedTrainLoop
from torch import nn

from adpe.checkpoint import TRAINING_CHECKPOINT_GLOBALS, atomic_write
from adpe.env import native_bf16


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

    dtype None picks by ``adpe.env.native_bf16``: bf16 autocast without a loss scaler on GPUs with bf16 (Ampere
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


@HOOKS.register_module()
class EffectiveBatchHook(Hook):
    """Sets gradient accumulation so that processes x batch_size x accumulation = the config's ``effective_batch``
    (images per optimiser step), whatever launches the run.

    Runs before training starts (``before_run``, after the optimiser wrapper and schedulers are built and before
    mmengine counts its accumulation). ``effective_batch=None``, or mmengine's ``auto_scale_lr.enable`` (the
    other way to adapt a recipe to the GPU count), keeps the wrapper's ``accumulative_counts`` as configured.

    An iteration-based recipe counts optimiser steps, but mmengine counts loader iterations: with N accumulation
    steps the loop's length, its validation interval and every by-iteration schedule are stretched N times, so
    the run makes the recipe's number of updates on the recipe's lr curve. (An epoch-based recipe needs nothing:
    an epoch is the same images whatever N.)
    """

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        target = runner.cfg.get("effective_batch")
        if not target or not isinstance(runner.optim_wrapper, OptimWrapper):  # a test run builds no optimiser
            return
        if (runner.cfg.get("auto_scale_lr") or {}).get("enable"):
            print_log("auto_scale_lr is enabled: the lr follows the batch, effective_batch is not applied",
                      logger="current")
            return
        processes, batch_size = get_world_size(), runner.train_dataloader.batch_size
        counts = accumulation_for(target, processes, batch_size)
        runner.optim_wrapper._accumulative_counts = counts  # read by initialize_count_status, which runs next
        print_log(f"effective batch {target} images = {processes} processes x {batch_size} images x {counts} "
                  "accumulation steps", logger="current")
        if counts > 1 and isinstance(runner.train_loop, IterBasedTrainLoop):
            stretch_iteration_schedule(runner, counts)
            print_log(f"iteration-based schedule stretched x{counts}: {runner.train_loop.max_iters} iterations "
                      f"= {runner.train_loop.max_iters // counts} optimiser steps", logger="current")


def stretch_iteration_schedule(runner, factor: int) -> None:
    """Multiply the train loop's length and validation intervals, and the iteration counts of every
    by-iteration parameter schedule of ``runner.cfg.param_scheduler``, by ``factor``; rebuild the schedulers."""
    loop = runner.train_loop
    loop._max_iters *= factor
    loop.val_begin *= factor
    loop.val_interval *= factor
    loop.dynamic_milestones = [m * factor for m in loop.dynamic_milestones]
    loop.dynamic_intervals = [i * factor for i in loop.dynamic_intervals]
    if not isinstance(runner.param_schedulers or [], list):
        raise ValueError("effective_batch with several optimisers' schedules (a dict of param_scheduler) is not "
                         "supported: set effective_batch = None and scale the schedule by hand")
    configs = runner.cfg.get("param_scheduler") or []
    configs = [configs] if isinstance(configs, dict) else list(configs)
    stretched = []
    for cfg in configs:
        cfg = copy.deepcopy(dict(cfg))
        if cfg.get("by_epoch", True) is False:
            for key in ("begin", "end", "T_max", "total_iters"):
                if cfg.get(key) is not None:
                    cfg[key] = int(cfg[key]) * factor
            if "milestones" in cfg:
                cfg["milestones"] = [m * factor for m in cfg["milestones"]]
        stretched.append(cfg)
    # Building a scheduler applies its first step to the optimiser's current values: start from the initial ones.
    for scheduler in runner.param_schedulers or []:
        for group in scheduler.optimizer.param_groups:
            group[scheduler.param_name] = group[f"initial_{scheduler.param_name}"]
    runner.param_schedulers = runner.build_param_scheduler(stretched)


def accumulation_for(effective_batch: int, processes: int, batch_size: int) -> int:
    """Accumulation steps that make processes x batch_size x steps = effective_batch, or a ValueError saying how
    to get a divisible setting."""
    per_step = processes * batch_size
    if effective_batch % per_step:
        raise ValueError(
            f"effective_batch={effective_batch} is not a multiple of {processes} processes x batch_size {batch_size} "
            f"= {per_step}. Change the GPU count or pass --cfg-options train_dataloader.batch_size=N (or "
            "effective_batch=None to keep the config's optim_wrapper.accumulative_counts).")
    return effective_batch // per_step


class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose writes are atomic: temporary file in the same folder, fsync, rename."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write(obj.encode(encoding), filepath)


register_backend("local", AtomicLocalBackend, force=True, prefixes="")


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


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Saves the main process's random states in each checkpoint and restores them on resume.

    mmengine restores weights, optimiser and schedulers but not the random generators, so a resumed run
    would draw different masks (and, with ``num_workers=0``, different crops) from an uninterrupted one.
    Rank 0 writes the checkpoint; other ranks reseed from (seed, rank, iteration) so that ranks stay distinct.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("random_state")
        if state is None:
            return
        if runner.rank == 0:
            torch.set_rng_state(state["torch"])
            np.random.set_state(state["numpy"])
            random.setstate(state["python"])
        else:
            seed = (runner.seed + 1_000_003 * runner.rank + checkpoint["meta"].get("iter", 0)) % 2**31
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
