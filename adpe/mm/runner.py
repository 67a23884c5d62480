"""The config a launcher hands to mmengine's Runner: the file, the command line's overrides, and nothing more.

What a run computes lives in the config itself (accumulation in ``EffectiveBatchHook``, mixed precision in
``AutoAmpOptimWrapper``, 'auto' backbone settings in ``AdPEViT``), so ``Runner.from_cfg(Config.fromfile(path))``
in a user's script, mmseg's or mmdet's ``tools/train.py`` and our launchers all run the same thing. The one
exception is the machine: without a GPU, several processes need gloo and a process group that mmengine 0.10.7
cannot create there (``use_cpu_processes``).
"""

from __future__ import annotations

import datetime
import difflib
import inspect
import json
import os
import os.path as osp
import subprocess
from collections.abc import Iterable

import torch
from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

from adpe.mm.patches import AtomicLocalBackend
from adpe.report.records import TEST_RESULTS

# --vis NAME -> mmengine's backend, written beside LocalVisBackend (its vis_data/scalars.json is what
# adpe.report reads, so it always stays).
VIS_BACKENDS = {"tensorboard": "TensorboardVisBackend", "wandb": "WandbVisBackend"}
# Top-level keys that mean something although a config lacks them: the Runner's arguments, what it reads from its
# config besides (model wrapping, compile, ...), and what the suite's own hooks read.
RUNNER_KEYS = frozenset(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"} | {
    "model_wrapper_cfg", "sync_bn", "find_unused_parameters", "compile", "activation_checkpointing",
    "efficient_conv_bn_eval", "runner_type", "custom_imports", "effective_batch",
}


def build_config(
    config: str,
    *,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    resume: str | None = None,
    amp: bool = False,
    vis: Iterable[str] = (),
    auto_scale_lr: bool = False,
) -> Config:
    """``config`` with the launcher's options applied, as mmseg's and mmdet's ``tools/train.py`` do.

    work_dir: default ``work_dirs/CONFIG_NAME``; resume: 'auto' (newest checkpoint in the work dir) or a path;
    amp: mixed precision suited to the machine (``AutoAmpOptimWrapper``); vis: extra logging backends
    ('tensorboard', 'wandb'; see ``add_vis_backends``); auto_scale_lr: mmdet's linear lr scaling instead of the
    effective batch (see ``use_auto_scale_lr``).

    A ``cfg_options`` key whose top level is unknown is refused (``check_top_level_keys``). On a machine without
    a GPU, ``use_cpu_processes`` sets up gloo, and for torchrun its process group.
    """
    cfg = Config.fromfile(config)
    check_top_level_keys(cfg, cfg_options or {}, config)
    cfg.launcher = launcher
    cfg.merge_from_dict(cfg_options or {})
    cfg.work_dir = work_dir or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(config))[0])
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume:
        cfg.resume, cfg.load_from = True, resume
    if amp:
        cfg.optim_wrapper.type = "AutoAmpOptimWrapper"
    if auto_scale_lr:
        use_auto_scale_lr(cfg, config)
    add_vis_backends(cfg, vis)
    if not torch.cuda.is_available():
        use_cpu_processes(cfg)
    return cfg


def check_top_level_keys(cfg: Config, cfg_options: dict, config: str) -> None:
    """Refuse ``cfg_options`` whose top-level key is neither in ``cfg`` nor in ``RUNNER_KEYS``: mmengine would
    merge it, and nothing would read it (``effective_bach=4096`` trained with the config's effective batch).
    Unknown nested keys need no check here: the class they are passed to refuses them."""
    known = set(cfg.keys()) | RUNNER_KEYS
    unknown = sorted({key.split(".")[0] for key in cfg_options} - known)
    if not unknown:
        return
    guesses = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        guesses.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ValueError(
        f"--cfg-options: unknown top-level key {', '.join(guesses)}: {config} does not have it and mmengine's Runner "
        "does not take it, so it would be ignored. Check the spelling; a genuinely new key (read by your own code) "
        f"belongs in a config file that inherits this one: _base_ = ['{config}'], then the key.")


def use_cpu_processes(cfg: Config) -> None:
    """What a run on a machine without a GPU needs from mmengine 0.10.7: the gloo backend (NCCL needs GPUs) and,
    for several processes (torchrun on CPU), two work-arounds.

    mmengine's ``init_dist`` sets a CUDA device before it creates the process group (and fails: no NVIDIA
    driver), so for ``launcher='pytorch'`` the group is created here, from torchrun's environment, and the Runner
    takes it as it finds it. The Runner gives DDP ``device_ids=[LOCAL_RANK]``, which DDP refuses for a CPU model,
    so the config's DDP wrapper gets ``device_ids=None``. Slurm's launcher sets a CUDA device too: it is refused.
    """
    dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
    dist_cfg["backend"] = "gloo"
    if cfg.launcher == "none":
        return
    if cfg.launcher != "pytorch":
        raise ValueError(f"--launcher {cfg.launcher} needs GPUs (mmengine sets a CUDA device); on a machine without "
                         "one, start the processes with torchrun: tools/dist_train.sh CONFIG PROCESSES")
    if not torch.distributed.is_initialized():
        options = {k: v for k, v in dist_cfg.items() if k != "backend"}
        if options.get("timeout") is not None:  # seconds in configs, as mmengine's init_dist takes them
            options["timeout"] = datetime.timedelta(seconds=options["timeout"])
        torch.distributed.init_process_group(backend="gloo", **options)
    # mmengine's default wrapper when the config names none.
    wrapper = cfg.get("model_wrapper_cfg") or ConfigDict(
        type="MMDistributedDataParallel", broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False))
    wrapper_type = MODEL_WRAPPERS.get(wrapper.get("type", "MMDistributedDataParallel"))
    if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
        wrapper["device_ids"] = None  # a value in the config wins over the Runner's default argument
        cfg.model_wrapper_cfg = wrapper


def add_vis_backends(cfg: Config, names: Iterable[str]) -> None:
    """Adds mmengine's backend for each of ``names`` (``VIS_BACKENDS``) to the config's visualizer, beside the
    backends it has (LocalVisBackend, whose ``vis_data/scalars.json`` the report reads). Both write under the
    run's ``vis_data/``: TensorBoard's event files, and wandb's files (its run is named after the work dir;
    project and entity come from ``WANDB_PROJECT`` / ``WANDB_ENTITY``)."""
    names = list(dict.fromkeys(names))
    if not names:
        return
    unknown = [name for name in names if name not in VIS_BACKENDS]
    if unknown:
        raise ValueError(f"unknown logging backend(s) {unknown}; choose from {sorted(VIS_BACKENDS)}")
    # A config without a visualizer gets the Runner's default one (a LocalVisBackend), which we extend.
    visualizer = cfg.get("visualizer") or ConfigDict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")])
    backends = list(visualizer.get("vis_backends") or [dict(type="LocalVisBackend")])
    present = {backend.get("type") for backend in backends}
    for name in names:
        backend = dict(type=VIS_BACKENDS[name])
        if name == "wandb":
            backend["init_kwargs"] = dict(name=cfg.work_dir)
        if backend["type"] not in present:
            backends.append(backend)
    visualizer.vis_backends = backends
    cfg.visualizer = visualizer


def use_auto_scale_lr(cfg: Config, config: str) -> None:
    """mmdet's ``--auto-scale-lr``: mmengine's Runner scales the lr by (processes x batch_size) /
    ``auto_scale_lr.base_batch_size`` and logs the ratio. It replaces the effective batch (``effective_batch =
    None``: no accumulation from ``EffectiveBatchHook``), so that only one of the two mechanisms is in force."""
    if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
        raise ValueError(f"--auto-scale-lr: {config} has no auto_scale_lr.base_batch_size (the batch its lr is "
                         "set for); it keeps its effective batch by gradient accumulation instead")
    cfg.auto_scale_lr.enable = True
    cfg.effective_batch = None


def _commit() -> str:
    """The checkout's git commit (short), or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=osp.dirname(osp.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_test_results(config: str, checkpoint: str, metrics: dict, work_dir: str, *, tta: bool = False,
                       path: str | None = None) -> dict:
    """The test metrics with their provenance (config, checkpoint, commit, time, world size), written atomically
    by the main process to ``path`` (default: ``WORK_DIR/test_results.json``, ``test_results_tta.json`` for a
    test-time-augmented test: adpe.report reads both). Returns the record."""
    result = {
        "config": config,
        "checkpoint": osp.abspath(checkpoint),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "tta": tta,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _commit(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    path = path or osp.join(work_dir, TEST_RESULTS[tta])
    if is_main_process():
        AtomicLocalBackend().put_text(json.dumps(result, indent=2), path)
        print(f"[adpe] metrics written to {path}: {result['metrics']}")
    return result
