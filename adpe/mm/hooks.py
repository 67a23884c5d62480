"""Every hook of the suite (mmengine's HOOKS registry).

* ``EffectiveBatchHook``: gradient accumulation that keeps a config's ``effective_batch`` on any GPU count.
* ``RandomStateHook``: random generators saved with each checkpoint, so a resumed run draws what an
  uninterrupted one would.
* ``AdversaryHook``: pretraining's projection of the adversarial deltas, and their log scalars.
* ``ResolvedBackboneHook``: the backbone's resolved 'auto' settings written into the run's config.

Hooks that keep a work dir's checkpoints trustworthy: what is saved, in which order, and by whom.

* ``SafeCheckpointHook``: mmengine's ``CheckpointHook`` that never leaves fewer good checkpoints than before (it
  writes the new one and points ``last_checkpoint`` at it before deleting the oldest), never saves non-finite
  weights, statistics or optimiser state, resumes from the newest finite checkpoint of the work dir (also
  after the work dir was moved), and applies a changed lr on resume.
* ``NonFiniteLossHook``: training stops at the first non-finite loss (or after fp16's loss scaler has skipped
  ``max_skipped`` steps in a row), naming the iteration, the loss terms and the newest checkpoint.
* ``WorkDirLockHook``: one training run per work dir at a time (a lock file naming pid and host), and the
  temporary files of saves killed half-way removed at the next start.

And one that watches what pretraining learns:

* ``KNNMonitorHook``: weighted kNN accuracy of the encoder's features on a labelled set, every few epochs.
"""

from __future__ import annotations

import atexit
import copy
import difflib
import inspect
import json
import math
import os
import os.path as osp
import random
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from mmengine.dataset import pseudo_collate
from mmengine.dist import all_gather_object, broadcast_object_list, get_dist_info, get_world_size, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop, IterBasedTrainLoop, Runner

from adpe.checkpoint import atomic_write, load_checkpoint_file, remove_stale_temporaries, url_scheme
from adpe.knn import knn_scores, probe_backbone, score_accuracy
from adpe.mm.models import AdPEViT
from adpe.mm.optim import bare_model

POINTER = "last_checkpoint"  # mmengine's record of the newest checkpoint, in the work dir


def newest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``WORK_DIR/last_checkpoint`` names, or None without a pointer.

    The pointer holds an absolute path (as mmengine writes it, and as scripts that ``cat`` it expect). If the
    work dir holds a file of that name, that file is meant: the work dir was moved or copied since.
    """
    try:
        named = Path(work_dir, POINTER).read_text().strip()
    except OSError:
        return None
    if not named:
        return None
    own = Path(work_dir, Path(named).name)
    return own if own.is_file() else Path(work_dir, named)  # an absolute name replaces work_dir in the join


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity (one device sync for all).

    The largest magnitude per tensor: NaN and infinities propagate into it, finite values cannot overflow it, and
    it reads each tensor once without the bool copy that ``isfinite(t).all()`` makes (several times faster on CPU).
    """
    named = [(name, t) for name, t in named if torch.is_floating_point(t) and t.numel()]
    if not named:
        return []
    largest = [torch.linalg.vector_norm(t.detach(), float("inf")) for _, t in named]
    finite = torch.isfinite(torch.stack([m.float() for m in largest])).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def optimizer_state_tensors(state: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """('optimizer.[<name>.]<param index>.<state>', tensor) of an optimiser state dict: one wrapper's, or several
    by name (mmengine's OptimWrapperDict); live (``optim_wrapper.state_dict()``, no copy) or from a checkpoint."""
    states = {"": state} if "state" in state else {k: v for k, v in state.items() if isinstance(v, dict)}
    for prefix, one in states.items():
        for index, per_param in one.get("state", {}).items():
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer{'.' + prefix if prefix else ''}.{index}.{key}", value


def checkpoint_steps(folder: str | os.PathLike, filename_tmpl: str) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints named by ``filename_tmpl`` (e.g. 'iter_{}.pth') in ``folder``, newest first."""
    pattern = re.compile(re.escape(filename_tmpl).replace(r"\{\}", r"(\d+)") + "$")
    found = [(int(m[1]), p) for p in Path(folder).glob("*") if (m := pattern.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) made safe against kills, full disks and diverged runs.

    * Order of a save: check that every parameter, buffer and optimiser state is finite; write the checkpoint
      (atomically: ``adpe.mm.patches.AtomicLocalBackend``); point ``last_checkpoint`` at it (atomically, by a
      path, as mmengine's); only then delete the checkpoints beyond ``max_keep_ckpts`` (and older ones that a
      kill during an earlier deletion left). mmengine
      deletes first, so a kill or a full disk during a save with ``max_keep_ckpts=1`` left no checkpoint at all.
    * A non-finite tensor stops training with a ``FloatingPointError`` naming the tensors and the last good
      checkpoint, without saving: a finite loss can still come with NaN weights (an lr far too high) or infinite
      BatchNorm statistics, and such a checkpoint would be what a resume picks.
    * Auto-resume (``--resume`` without a file, ``resume=True`` in the config) takes the newest checkpoint that
      exists and is finite: the pointer's, else the newest ``filename_tmpl`` file in the work dir, older ones
      if it is non-finite (written before this hook existed). An explicit file that is non-finite is refused.
    * Resuming with other lrs than the checkpoint's run (e.g. ``--cfg-options optim_wrapper.optimizer.lr=...``)
      scales each changed parameter group's restored lr and lr schedule by the ratio of the new to the old
      starting lr, so that the new lr holds from the resumed step on and the schedule continues (mmengine alone
      restores the checkpoint's lrs as they were).
    * Unknown arguments fail when the hook is built, before training (mmengine passes them on to
      ``Runner.save_checkpoint`` and fails at the first save, an epoch later).
    """

    def __init__(self, *args, **kwargs):
        hook_args = set(inspect.signature(CheckpointHook.__init__).parameters)
        save_args = set(inspect.signature(Runner.save_checkpoint).parameters) - {"self", "out_dir", "filename"}
        unknown = sorted(set(kwargs) - hook_args - save_args)
        if unknown:
            known = sorted((hook_args | save_args) - {"self", "args", "kwargs"})
            hints = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
            said = ", ".join(f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             for name, hint in hints.items())
            raise TypeError(f"default_hooks.checkpoint: unknown argument(s) {said}; CheckpointHook takes {known}")
        super().__init__(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------- resume
    def before_run(self, runner) -> None:
        # Only runner.train() resumes, once: runner.test() after it calls before_run again.
        if not isinstance(runner._train_loop, BaseLoop) or not runner._resume or runner._has_loaded:
            return
        if runner._load_from is None:
            runner._load_from = self._newest_finite(runner)
            runner._resume = runner._load_from is not None
        elif url_scheme(str(runner._load_from)) is None:  # a URL is checked when it is fetched
            bad = self._non_finite_in(runner._load_from)
            if bad:
                raise FloatingPointError(
                    f"--resume {runner._load_from}: the checkpoint holds non-finite tensors ({_listed(bad)}). "
                    "Resume from an earlier checkpoint of the work dir, or without a file to take the newest "
                    "finite one.")

    def _newest_finite(self, runner) -> str | None:
        """The checkpoint auto-resume should take (see the class docstring), or None to start afresh."""
        pointed = newest_checkpoint(runner.work_dir)
        candidates = [p for _, p in checkpoint_steps(runner.work_dir, self.filename_tmpl)]
        if pointed is not None and pointed.is_file():
            candidates = [pointed] + [p for p in candidates if p.resolve() != pointed.resolve()]
        elif pointed is not None:
            print_log(f"{POINTER} names {pointed}, which does not exist (a save killed under mmengine's own hook?); "
                      "looking for the newest checkpoint of the work dir instead", logger="current", level=30)
        for path in candidates:
            bad = self._non_finite_in(path)
            if not bad:
                print_log(f"auto-resuming from {path}", logger="current")
                return str(path)
            print_log(f"not resuming from {path}: it holds non-finite tensors ({_listed(bad)})", logger="current",
                      level=30)
        if pointed is not None or candidates:
            print_log(f"no finite checkpoint in {runner.work_dir}: training starts afresh", logger="current", level=30)
        return None

    @staticmethod
    def _non_finite_in(path: str | os.PathLike) -> list[str]:
        """Non-finite weights and optimiser states of the checkpoint file (memory-mapped: no copy in memory)."""
        ckpt = load_checkpoint_file(path, mmap=True)
        return non_finite_tensors([*ckpt.get("state_dict", {}).items(),
                                   *optimizer_state_tensors(ckpt.get("optimizer", {}))])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume and "optimizer" in checkpoint:
            scale_resumed_lr(runner, checkpoint)

    # ---------------------------------------------------------------------------------------------- saving
    def _save_checkpoint_with_step(self, runner, step, meta):
        bad = non_finite_tensors([*bare_model(runner.model).named_parameters(),
                                  *bare_model(runner.model).named_buffers(),
                                  *optimizer_state_tensors(runner.optim_wrapper.state_dict())])
        if bad:
            last = newest_checkpoint(runner.work_dir)
            raise FloatingPointError(
                f"training stopped before saving {'epoch' if self.by_epoch else 'iteration'} {step}: non-finite "
                f"weights or statistics ({_listed(bad)}); nothing was saved. Last good checkpoint: "
                f"{last if last else 'none yet'}. Lower the lr (resume with --cfg-options "
                "optim_wrapper.optimizer.lr=... applies it from the resumed step on), or use bf16 instead of fp16. "
                "If the loss was already growing at that checkpoint, start afresh instead (--cfg-options resume=False, "
                "or another --work-dir).")
        dropped = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            kept = [*self.keep_ckpt_ids, step]  # a best checkpoint may save the same step twice: keep it once
            dropped, kept = kept[: -self.max_keep_ckpts], kept[-self.max_keep_ckpts:]
            self.keep_ckpt_ids = deque(kept, self.max_keep_ckpts)
            runner.message_hub.update_info("keep_ckpt_ids", kept)

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(str(self.last_ckpt).encode(), osp.join(runner.work_dir, POINTER))
        if self.max_keep_ckpts > 0 and isinstance(self.file_backend, LocalBackend):
            # Also older files that a kill during an earlier deletion left behind: no checkpoint lists them.
            dropped += [old for old, _ in checkpoint_steps(self.out_dir, self.filename_tmpl)
                        if old < step and old not in self.keep_ckpt_ids and old not in dropped]
        for old in dropped:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
                self.file_backend.rmtree(path)


def _listed(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} tensor(s): {', '.join(names[:shown])}{more}"


def scale_resumed_lr(runner, checkpoint: dict) -> None:
    """Where this run's optimiser (built from its config, before the resume) starts a group at another lr than the
    checkpoint's run did, scale that group's lrs in the checkpoint, and its lr schedules, by the ratio, in place,
    before mmengine restores them: the new lr then holds from the resumed step and the schedule continues.

    Group by group, so that only the lrs that changed move (e.g. the main lr but not the adversary's own).
    Warm-up factors, cosine shapes and step milestones are relative and carry over; an absolute ``eta_min`` stays
    as configured.
    """
    current = [group.get("initial_lr", group["lr"]) for group in param_groups(runner.optim_wrapper.state_dict())]
    saved = param_groups(checkpoint["optimizer"])
    if len(saved) != len(current):
        return  # another model or grouping: mmengine's own load_state_dict reports it
    ratios = [new / old.get("initial_lr", old["lr"]) if old.get("initial_lr", old["lr"]) else 1.0
              for new, old in zip(current, saved, strict=True)]
    if all(math.isclose(ratio, 1.0, rel_tol=1e-9) for ratio in ratios):
        return
    for group, ratio in zip(saved, ratios, strict=True):
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] *= ratio
    schedulers = checkpoint.get("param_schedulers") or []
    for scheduler in schedulers if isinstance(schedulers, list) else sum(schedulers.values(), []):
        if scheduler.get("param_name") == "lr":
            for key in ("base_values", "_last_value"):
                if len(scheduler.get(key) or []) == len(ratios):
                    scheduler[key] = [value * ratio for value, ratio in zip(scheduler[key], ratios, strict=True)]
    changed = sorted({f"{ratio:g}" for ratio in ratios if not math.isclose(ratio, 1.0, rel_tol=1e-9)})
    print_log(f"resuming with this config's lrs, not the checkpoint's: {sum(r != 1.0 for r in ratios)} of "
              f"{len(ratios)} parameter groups and their lr schedules scaled by {', '.join(changed)} from this step "
              "on", logger="current")


def param_groups(state: dict) -> list[dict]:
    """The parameter groups of an optimiser state dict (live or saved), several wrappers' in name order."""
    if "param_groups" in state:
        return state["param_groups"]
    return [group for name in sorted(state) if isinstance(state[name], dict)
            for group in state[name].get("param_groups", [])]


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """One training run per work dir at a time: ``WORK_DIR/run.lock`` holds the pid, host, start time and command
    of the run that owns it. A second start fails naming them; a lock whose pid is dead on this host is stale
    and taken over. The owner removes the temporary files that saves killed half-way left in the work dir.

    Two runs in one work dir would otherwise interleave their logs and ``scalars.json`` and overwrite each
    other's checkpoints. Test runs (``runner.test()``) do not lock: they write only their own results.
    """

    priority = "VERY_HIGH"

    def __init__(self):
        self.lock: Path | None = None

    def before_run(self, runner) -> None:
        if not isinstance(runner._train_loop, BaseLoop):
            return
        error = [None]
        if is_main_process():
            try:
                self.lock = acquire_lock(Path(runner.work_dir) / "run.lock")
                atexit.register(release_lock, self.lock)
                removed = remove_stale_temporaries(runner.work_dir)
                if removed:
                    print_log(f"removed {len(removed)} temporary file(s) of interrupted saves from {runner.work_dir}",
                              logger="current")
            except RuntimeError as err:
                error = [str(err)]
        broadcast_object_list(error)  # every rank stops, not only the one that found the lock
        if error[0]:
            raise RuntimeError(error[0])

    def after_run(self, runner) -> None:
        if self.lock is not None:
            release_lock(self.lock)
            self.lock = None


def _alive_here(owner: dict) -> bool:
    """Whether the lock's owner may still run: True unless it is a dead pid on this host."""
    if owner.get("host") != socket.gethostname():
        return True  # another node: we cannot tell, so the lock holds
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def acquire_lock(lock: Path) -> Path:
    """Create ``lock`` naming this process, taking over a stale one; RuntimeError naming the owner if it is held."""
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)})
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                return lock  # this process already holds it (train, then test in the same process)
            if owner and _alive_here(owner):
                raise RuntimeError(
                    f"{lock.parent} is in use by another run: pid {owner.get('pid')} on {owner.get('host')}, "
                    f"started {owner.get('started')} ({owner.get('command')}). Wait for it to finish, use another "
                    f"--work-dir, or delete {lock} if that run is gone.") from None
            print_log(f"taking over the stale lock {lock} of {owner or 'an unreadable record'}", logger="current")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return lock
    raise RuntimeError(f"could not take the lock {lock}: another run took it at the same moment")


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stops training at the first iteration whose loss (or any logged loss term) is NaN or infinite, and under
    fp16 (mmengine's ``AmpOptimWrapper``) once the dynamic loss scaler has skipped ``max_skipped`` optimiser steps in
    a row (overflowing gradients with a finite loss). The error names the iteration, every term and the newest
    checkpoint, so the run can be resumed from it with a lower lr or bf16.

    The terms are already copied to the host each iteration for logging (mmengine's ``RuntimeInfoHook``), so the
    check adds no device synchronisation of its own beyond that.
    """

    priority = "BELOW_NORMAL"  # after RuntimeInfoHook has logged the terms

    def __init__(self, max_skipped: int = 20):
        self.max_skipped = max_skipped
        self._skipped = 0
        self._scale: float | None = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: dict | None = None) -> None:
        terms = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in (outputs or {}).items()
                 if "loss" in k}
        bad = [k for k, v in terms.items() if not np.isfinite(v)]
        if bad:
            self._stop(runner, f"non-finite {', '.join(bad)}", terms)
        wrapper = runner.optim_wrapper
        scaler = getattr(wrapper, "loss_scaler", None)
        if scaler is None or not scaler.is_enabled() or not wrapper.should_update():
            return  # no fp16 scaler, or an accumulation iteration without an optimiser step
        scale = float(scaler.get_scale())  # lowered exactly when the step was skipped
        self._skipped = self._skipped + 1 if self._scale is not None and scale < self._scale else 0
        self._scale = scale
        if self._skipped >= self.max_skipped:
            self._stop(runner, f"the fp16 loss scaler skipped {self._skipped} steps in a row (scale {scale:g})",
                       terms)

    @staticmethod
    def _stop(runner, what: str, terms: dict[str, float]) -> None:
        newest = newest_checkpoint(runner.work_dir)
        losses = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        resume = (f"newest checkpoint: {newest} (resume with --resume {newest})" if newest
                  else "no checkpoint written yet")
        raise FloatingPointError(
            f"training stopped at iteration {runner.iter + 1}: {what} ({losses}); {resume}. Lower the lr, or use "
            "bf16 (--amp on bf16 GPUs) instead of fp16: --cfg-options optim_wrapper.optimizer.lr=... applies a new lr "
            "from the resumed step on.")


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


@HOOKS.register_module()
class ResolvedBackboneHook(Hook):
    """Writes the settings the AdPEViT backbone resolved ('auto' ``rel_pos`` / ``rpe_lookup``, from its pretrained
    checkpoint) into the run's config: the work dir's copy and the ``meta['cfg']`` of every checkpoint, so a
    trained model is rebuilt with the structure it was trained with."""

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        backbone = getattr(bare_model(runner.model), "backbone", None)
        backbone_cfg = runner.cfg.get("model", {}).get("backbone")
        if not isinstance(backbone, AdPEViT) or backbone_cfg is None:
            return
        resolved = {"rel_pos": backbone.rel_pos, "rpe_lookup": backbone.rpe_lookup}
        if any(backbone_cfg.get(k) != v for k, v in resolved.items()):
            backbone_cfg.update(resolved)
            runner.dump_config()


@HOOKS.register_module()
class KNNMonitorHook(Hook):
    """Weighted kNN top-1 / top-5 of the encoder's features during pretraining (DINO's monitor: k = 20, temperature
    0.07, cosine on l2-normalised features), logged as ``knn/top1`` / ``knn/top5`` with the loss (scalars.json,
    TensorBoard, W&B: the visualizer's backends) and in the log.

    Features: the current encoder weights in a classification backbone with average pooling, without mask or
    adversary (``adpe.knn.probe_backbone``: what the linear probe sees). Bank and queries: the labelled
    ``bank_split`` and ``query_split`` folders of ``data_root`` (mmpretrain's ``CustomDataset`` layout, e.g.
    ``train/<class>/*.JPEG``), resized to ``resize`` on the short side and centre-cropped to the pretraining size,
    capped at the first ``max_bank_per_class`` / ``max_queries_per_class`` images of each class.
    ``data_root='pretraining'``: the pretraining dataset's root (ImageNet's holds labelled ``train/`` and ``val/``);
    None (the ViT-B configs' default): the hook does nothing. Runs every ``interval`` epochs, after the last one, and
    before the first one with ``at_start``. Under several processes each rank computes a share of the features
    and they are gathered. The training's random stream is left untouched: no sampler, no worker seeds, no dropout.
    """

    priority = "LOW"

    def __init__(self, data_root: str | None = None, interval: int = 1, k: int = 20, temperature: float = 0.07,
                 bank_split: str = "train", query_split: str = "val", max_bank_per_class: int | None = None,
                 max_queries_per_class: int | None = None, resize: int | None = None, batch_size: int = 64,
                 at_start: bool = False, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)):
        if interval < 1 or k < 1 or temperature <= 0:
            raise ValueError(f"KNNMonitorHook: interval ({interval}) and k ({k}) must be at least 1 and "
                             f"temperature ({temperature}) positive")
        self.data_root, self.interval, self.k, self.temperature = data_root, interval, k, temperature
        self.splits = {"bank": (bank_split, max_bank_per_class), "queries": (query_split, max_queries_per_class)}
        self.resize, self.batch_size, self.at_start = resize, batch_size, at_start
        self.mean, self.std = mean, std
        self._data: dict | None = None

    def before_train(self, runner) -> None:
        if self.data_root is None:
            return
        mae = bare_model(runner.model).mae
        self._datasets(runner, mae.grid[0] * mae.patch_size)  # a missing folder fails now, not after an epoch
        if self.at_start and runner.iter == 0:
            self.evaluate(runner, epochs=0)

    def after_train_epoch(self, runner) -> None:
        if self.data_root is not None and (self.every_n_epochs(runner, self.interval)
                                           or self.is_last_train_epoch(runner)):
            self.evaluate(runner, epochs=runner.epoch + 1)  # the loop counts the epoch after its hooks

    def _datasets(self, runner, crop: int) -> dict:
        """{'bank' / 'queries': (dataset, the selected indices, their labels)}, built once."""
        # imported here, not with adpe.mm: mmpretrain's datasets and models import mmdet (seconds of start-up)
        from mmpretrain.datasets import CustomDataset
        from mmpretrain.models import ClsDataPreprocessor

        if self._data is None:
            root = self.data_root
            if root == "pretraining":
                root = runner.cfg.train_dataloader.dataset.data_root
            # the linear probe's test transform (benchmarks/imagenet/linear_probe_*.py), in mmpretrain's registry
            pipeline = [dict(type="mmpretrain.LoadImageFromFile"),
                        dict(type="mmpretrain.ResizeEdge", scale=self.resize or crop * 8 // 7, edge="short",
                             backend="pillow", interpolation="bicubic"),
                        dict(type="mmpretrain.CenterCrop", crop_size=crop), dict(type="mmpretrain.PackInputs")]
            self._data = {"preprocessor": ClsDataPreprocessor(mean=self.mean, std=self.std, to_rgb=True)}
            for name, (split, cap) in self.splits.items():
                if not osp.isdir(osp.join(root, split)):
                    raise FileNotFoundError(
                        f"KNNMonitorHook: no folder {osp.join(root, split)} of labelled images (one sub-folder per "
                        f"class) for the kNN {name}. Point the hook at a folder with {self.splits['bank'][0]}/ and "
                        f"{self.splits['queries'][0]}/ (KNNMonitorHook's data_root in custom_hooks), or set its "
                        "data_root=None to turn the monitor off.")
                dataset = CustomDataset(data_root=root, data_prefix=split, pipeline=pipeline)
                labels = np.asarray(dataset.get_gt_labels())
                keep = np.concatenate([np.flatnonzero(labels == c)[:cap] for c in np.unique(labels)])
                keep.sort()
                self._data[name] = (dataset, keep.tolist(), torch.as_tensor(labels[keep]))
            self._data["num_classes"] = len(self._data["bank"][0].metainfo["classes"])
        return self._data

    def _features(self, backbone, dataset, indices: list[int], preprocessor) -> torch.Tensor:
        """Pooled features (len(indices), D) on the CPU; each rank computes every world_size-th one."""
        rank, world = get_dist_info()
        mine = indices[rank::world]
        device = next(backbone.parameters()).device
        chunks = []
        with torch.no_grad():
            for start in range(0, len(mine), self.batch_size):
                batch = pseudo_collate([dataset[i] for i in mine[start:start + self.batch_size]])
                inputs = preprocessor(batch, False)["inputs"].to(device)
                chunks.append(backbone(inputs)[0].float().cpu())
        local = torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim)
        if world == 1:
            return local
        features = torch.zeros(len(indices), local.shape[1])
        for shard_rank, shard in enumerate(all_gather_object(local)):
            features[shard_rank::world] = shard
        return features

    def classify(self, backbone, crop: int, runner=None) -> tuple[dict[str, float], int, int]:
        """kNN top-1 / top-5 of ``backbone``'s features (a classification backbone whose first output is the
        pooled feature) on ``crop``^2 centre crops: the metrics, the bank size and the query count. ``runner``
        is needed only for ``data_root='pretraining'`` (tools/knn_eval.py calls ``query_scores`` without one)."""
        scores, labels, paths, n_bank = self.query_scores(backbone, crop, runner)
        return score_accuracy(scores, labels), n_bank, len(paths)

    def query_scores(self, backbone, crop: int, runner=None) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
        """The kNN class scores of every query (M, C), their labels (M,) and image paths (M), and the bank size:
        what per-image records keep (tools/knn_eval.py)."""
        data = self._datasets(runner, crop)
        (bank, bank_idx, bank_labels), (queries, query_idx, query_labels) = data["bank"], data["queries"]
        bank_features = self._features(backbone, bank, bank_idx, data["preprocessor"])
        query_features = self._features(backbone, queries, query_idx, data["preprocessor"])
        scores = knn_scores(bank_features, bank_labels, query_features, data["num_classes"], self.k,
                            self.temperature)
        paths = [queries.get_data_info(i)["img_path"] for i in query_idx]
        return scores, query_labels, paths, len(bank_idx)

    def evaluate(self, runner, epochs: int) -> dict[str, float]:
        """Classify the query features against the bank with the current weights (after ``epochs`` epochs); log
        and return the metrics."""
        mae = bare_model(runner.model).mae
        metrics, n_bank, n_queries = self.classify(probe_backbone(mae), mae.grid[0] * mae.patch_size, runner)
        scalars = {f"knn/{name}": value for name, value in metrics.items()}
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        print_log(f"kNN after {epochs} epochs (k={self.k}, T={self.temperature}; {n_bank} bank, "
                  f"{n_queries} query images): " + ", ".join(f"{k} {v:.2f}" for k, v in scalars.items()),
                  logger="current")
        return metrics
