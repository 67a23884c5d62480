"""Faults a cluster and a careless file bring: hostile checkpoint URLs, kills and full disks during saves,
diverging runs, two runs in one work dir, a test given the wrong kind of checkpoint.

The saving tests train a small stand-in model on mmengine's real Runner with the suite's hooks, so that many
kills and saves fit in seconds; the hooks do not depend on the model.
"""

from __future__ import annotations

import errno
import http.server
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")
pytestmark = pytest.mark.mm

from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from torch import nn  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import export_backbone, load_checkpoint_file  # noqa: E402
from adpe.mm.hooks import acquire_lock, newest_checkpoint, release_lock  # noqa: E402
from adpe.mm.patches import AtomicLocalBackend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "tests" / "fixtures" / "official_adpe_rpe_tiny.pth"


# ------------------------------------------------------------------------------------- hostile checkpoint URLs
class _Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_server(tmp_path, monkeypatch):
    """A 127.0.0.1 server whose evil.pth runs a payload when unpickled; yields (url, marker)."""
    monkeypatch.setenv("ADPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1")
    served, marker = tmp_path / "served", tmp_path / "PWNED"
    served.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Payload(marker)}}, served / "evil.pth")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=served)
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/evil.pth", marker
    httpd.shutdown()
    httpd.server_close()


def _entry_points(url: str, tmp_path: Path):
    """Every way a user hands mmengine a checkpoint URL: name -> callable."""
    from mmengine.runner import CheckpointLoader, load_checkpoint
    from mmengine.runner import checkpoint as mm_checkpoint

    def init_model():
        from mmseg.apis import init_model

        init_model(str(ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py"), url, device="cpu")

    return {
        "CheckpointLoader": lambda: CheckpointLoader.load_checkpoint(url),
        "init_cfg / load_checkpoint of any module": lambda: load_checkpoint(nn.Linear(2, 2), url),
        "torchvision:// and open-mmlab:// (load_from_http)": lambda: mm_checkpoint.load_from_http(url),
        "mmseg.apis.init_model": init_model,
    }


@pytest.mark.parametrize("entry", ["CheckpointLoader", "init_cfg / load_checkpoint of any module",
                                   "torchvision:// and open-mmlab:// (load_from_http)", "mmseg.apis.init_model"])
def test_checkpoint_url_payload_never_runs(hostile_server, tmp_path, entry):
    url, marker = hostile_server
    with pytest.raises(Exception, match="weights_only"):
        _entry_points(url, tmp_path)[entry]()
    assert not marker.exists(), f"{entry} unpickled code from {url}"
    assert not list((tmp_path / "cache").rglob("*.pth")), "a refused file stays out of the cache"


def test_resume_url_payload_never_runs(hostile_server, tmp_path, image_folder):
    url, marker = hostile_server
    run = subprocess.run(
        [sys.executable, "tools/train.py", "pretrain/demo/mae_plus_vit_tiny_ape.py", "--work-dir", str(tmp_path / "w"),
         "--resume", url, "--cfg-options", f"train_dataloader.dataset.data_root={image_folder}",
         "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode != 0 and "weights_only" in run.stderr, run.stderr[-2000:]
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ saving
class Stand_in(BaseModel):  # noqa: N801  (a model of the tests, named for what it is)
    """A linear regression with a 4 MB weight (saves take a few ms, so that kills land inside them) and a
    BatchNorm (buffers are checked too)."""

    def __init__(self, width: int = 1024):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, inputs, targets=None, mode="loss"):
        out = self.linear(self.norm(inputs))
        if mode == "loss":
            return {"loss": ((out - targets) ** 2).mean()}
        return out


class Pairs(torch.utils.data.Dataset):
    def __init__(self, width: int = 1024, count: int = 8, target_scale: float = 1.0):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(count, width, generator=generator)
        self.y = torch.randn(count, width, generator=generator) * target_scale

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"inputs": self.x[i], "targets": self.y[i]}


def stand_in_runner(work_dir: Path, max_iters: int, lr: float = 0.01, max_keep: int = 1,
                    milestones: tuple[int, ...] = (), target_scale: float = 1.0) -> Runner:
    """mmengine's Runner with the suite's checkpoint and lock hooks, a checkpoint every iteration, auto-resume."""
    return Runner(
        model=Stand_in(), work_dir=str(work_dir), experiment_name=f"run{time.monotonic_ns()}",
        train_dataloader=dict(dataset=Pairs(target_scale=target_scale), batch_size=4, num_workers=0,
                              sampler=dict(type="InfiniteSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=lr)),
        # A fixed end: mmengine would end the schedule at each run's max_iters, and the tests stop runs early.
        param_scheduler=[dict(type="MultiStepLR", by_epoch=False, milestones=list(milestones), gamma=0.1, end=100)],
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="SafeCheckpointHook", by_epoch=False, interval=1,
                                           max_keep_ckpts=max_keep),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[dict(type="NonFiniteLossHook"), dict(type="WorkDirLockHook")],
        resume=True, log_level="WARNING", default_scope="mmengine",
        cfg=dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=lr))),
    )


def _train(work_dir: Path, max_iters: int) -> None:
    torch.set_num_threads(1)
    stand_in_runner(work_dir, max_iters).train()


def _resume_step(work_dir: Path) -> int:
    """The iteration of the checkpoint a restart would resume (0: none), after checking it loads and is whole."""
    newest = newest_checkpoint(work_dir)
    if newest is None:
        return 0
    return load_checkpoint_file(newest)["meta"]["iter"]


def test_kills_during_saves_never_lose_the_last_checkpoint(tmp_path):
    """20 kill -9 at random moments of saves (max_keep_ckpts=1, mmengine's worst case), each followed by a
    resume that finishes: a whole checkpoint is always there, no progress is lost, no temporary file stays."""
    context = multiprocessing.get_context("fork")  # the children share this process's imports: starts are cheap
    rng = random.Random(0)
    max_iters, kills = 12, 0
    for cycle in range(20):
        work_dir = tmp_path / f"cycle{cycle}"
        child = context.Process(target=_train, args=(work_dir, max_iters))
        child.start()
        deadline = time.monotonic() + 60
        while not list(work_dir.glob(".*.tmp")) and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)  # wait for a save to begin ...
        saved_before = _safe_saved_iters(work_dir)
        time.sleep(rng.uniform(0, 0.02))  # ... and kill somewhere inside it, its pointer write or its deletion
        child.kill()
        child.join()
        kills += child.exitcode == -9
        assert _resume_step(work_dir) >= saved_before, "a kill lost a finished checkpoint"
        finisher = context.Process(target=_train, args=(work_dir, max_iters))
        finisher.start()
        finisher.join(120)
        assert finisher.exitcode == 0, f"cycle {cycle}: the resumed run failed"
        assert _resume_step(work_dir) == max_iters
        assert not list(work_dir.glob(".*.tmp")) and not (work_dir / "run.lock").exists()
        assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == [f"iter_{max_iters}.pth"]
    assert kills >= 15, "most children should still have been running when killed"


def _safe_saved_iters(work_dir: Path) -> int:
    try:
        return _resume_step(work_dir)
    except Exception:  # the pointer names a file the child is deleting right now: nothing to compare with
        return 0


def test_a_failed_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from adpe import checkpoint

    (tmp_path / "iter_1.pth").write_bytes(b"previous")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.files.os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device while writing .*iter_1\.pth; the previous file"):
        checkpoint.atomic_write(b"new", tmp_path / "iter_1.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["iter_1.pth"]
    assert (tmp_path / "iter_1.pth").read_bytes() == b"previous"


def test_full_disk_keeps_the_only_checkpoint_and_resumes(tmp_path, monkeypatch):
    """ENOSPC on the second save with max_keep_ckpts=1: the first checkpoint and its pointer survive, the error
    says what failed, and a resume on a disk with room finishes."""
    real_put = AtomicLocalBackend.put
    calls = []

    def full_disk(self, obj, filepath):
        calls.append(filepath)
        if str(filepath).endswith("iter_2.pth"):
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return real_put(self, obj, filepath)

    monkeypatch.setattr(AtomicLocalBackend, "put", full_disk)
    with pytest.raises(OSError, match="No space left"):
        stand_in_runner(tmp_path, max_iters=3).train()
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_1.pth"]
    assert newest_checkpoint(tmp_path) == tmp_path / "iter_1.pth"
    monkeypatch.setattr(AtomicLocalBackend, "put", real_put)
    stand_in_runner(tmp_path, max_iters=3).train()
    assert _resume_step(tmp_path) == 3


def test_non_finite_weights_are_never_saved_and_a_lower_lr_applies_on_resume(tmp_path):
    """A finite loss with an lr so high that one step makes the weights infinite: the save is refused naming the
    last good checkpoint. Resuming with a lower lr trains at that lr, with the schedule continuing."""
    run = partial(stand_in_runner, tmp_path, milestones=(4,), target_scale=1e3)
    run(max_iters=2, lr=1e-6).train()
    with pytest.raises(FloatingPointError, match=r"before saving iteration 3: non-finite weights or statistics "
                                                 r"\(1 tensor\(s\): linear\.weight\); nothing was saved.*iter_2\.pth"):
        run(max_iters=6, lr=1e38).train()
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_2.pth"]
    run(max_iters=6, lr=1e-7).train()
    final = load_checkpoint_file(tmp_path / "iter_6.pth")
    assert all(torch.isfinite(t).all() for t in final["state_dict"].values())
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-8)  # 1e-7, x0.1 after iteration 4


def test_non_finite_statistics_stop_the_save_naming_the_buffer(tmp_path):
    runner = stand_in_runner(tmp_path, max_iters=2)

    class OverflowStatistics(Hook):  # what a diverging BatchNorm does while its loss is still finite
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            runner.model.norm.running_var.fill_(float("inf"))

    runner.register_hook(OverflowStatistics(), priority="NORMAL")
    with pytest.raises(FloatingPointError, match=r"norm\.running_var"):
        runner.train()
    assert not list(tmp_path.glob("iter_*.pth"))


def test_auto_resume_skips_non_finite_and_missing_checkpoints(tmp_path):
    """Checkpoints written before these checks (or by mmengine's hook) may be non-finite, or the pointer may name
    a deleted file: auto-resume takes the newest finite one that exists."""
    stand_in_runner(tmp_path, max_iters=2, max_keep=5).train()
    bad = load_checkpoint_file(tmp_path / "iter_2.pth")
    bad["state_dict"]["linear.weight"][0, 0] = float("nan")
    torch.save(bad, tmp_path / "iter_2.pth")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_3.pth"))  # deleted by a killed mmengine save
    runner = stand_in_runner(tmp_path, max_iters=3, max_keep=5)
    runner.train()
    assert load_checkpoint_file(tmp_path / "iter_3.pth")["meta"]["iter"] == 3
    torch.save(bad, tmp_path / "iter_2.pth")  # the resumed run wrote a good iter_2.pth again: spoil it again
    with pytest.raises(FloatingPointError, match="iter_2.pth: the checkpoint holds non-finite"):
        runner = stand_in_runner(tmp_path, max_iters=4, max_keep=5)
        runner._load_from = str(tmp_path / "iter_2.pth")
        runner.train()


def test_moved_work_dir_resumes_from_its_own_checkpoints(tmp_path):
    stand_in_runner(tmp_path / "a", max_iters=2).train()
    (tmp_path / "a").rename(tmp_path / "b")
    stand_in_runner(tmp_path / "b", max_iters=3).train()
    assert _resume_step(tmp_path / "b") == 3


def test_misspelled_checkpoint_option_fails_before_training(tmp_path):
    from mmengine.registry import HOOKS

    with pytest.raises(TypeError, match=r"'intervall' \(did you mean 'interval'\?\)"):
        HOOKS.build(dict(type="SafeCheckpointHook", intervall=1))


# ------------------------------------------------------------------------------------------------ lock
def test_a_second_run_in_a_work_dir_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "run.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "t", "command": "c"}))
        with pytest.raises(RuntimeError, match=rf"in use by another run: pid {holder.pid} on .*delete {lock}"):
            stand_in_runner(tmp_path, max_iters=1).train()
        assert not list(tmp_path.glob("iter_*.pth"))
    finally:
        holder.kill()
        holder.wait()
    stand_in_runner(tmp_path, max_iters=1).train()  # the holder is dead now: its lock is stale and taken over
    assert _resume_step(tmp_path) == 1 and not lock.exists()


def test_lock_is_reentrant_for_its_own_process_and_released(tmp_path):
    lock = acquire_lock(tmp_path / "run.lock")
    assert acquire_lock(tmp_path / "run.lock") == lock
    release_lock(lock)
    assert not lock.exists()


# ------------------------------------------------------------------------------------------ tools/test.py
def test_test_tool_refuses_an_exported_backbone(tmp_path):
    export_backbone(RELEASE, tmp_path / "backbone.pth")
    run = subprocess.run([sys.executable, "tools/test.py", "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py",
                          str(tmp_path / "backbone.pth"), "--work-dir", str(tmp_path / "t")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "weights unset" in run.stderr and "an exported backbone" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "t" / "test_results.json").exists()


def test_complete_checkpoint_passes_the_fit_check(tmp_path):
    from adpe.mm.inference import check_checkpoint_fits

    model = Stand_in(8)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, tmp_path / "ok.pth")
    check_checkpoint_fits(model, tmp_path / "ok.pth")
    torch.save({"state_dict": {"linear.weight": model.linear.weight}, "meta": {}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"leaves 6 of the model's 7 weights unset \(linear\.bias"):
        check_checkpoint_fits(model, tmp_path / "partial.pth")
    reshaped = {**model.state_dict(), "linear.weight": torch.zeros(3, 3)}  # mmengine would skip it with a warning
    torch.save({"state_dict": reshaped, "meta": {}}, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"1 weights of another shape .*linear\.weight \(3, 3\) \(the model's: "):
        check_checkpoint_fits(model, tmp_path / "reshaped.pth")


def test_a_det_checkpoint_with_a_full_size_position_table_is_refused_with_the_option_that_fits(tmp_path):
    """A COCO model fine-tuned before ViTDet's 14 x 14 table was reproduced holds a table of its input grid."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from adpe.mm.inference import check_checkpoint_fits

    init_default_scope("mmdet")
    cfg = Config.fromfile(ROOT / "benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py")
    cfg.model.backbone.init_cfg = None
    old = dict(cfg.model, backbone=dict(cfg.model.backbone, pos_embed_size=None))
    torch.save({"state_dict": MODELS.build(old).state_dict(), "meta": {}}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match=r"backbone\.pos_embed \(1, 65, 192\) \(the model's: \(1, 50, 192\)\)"
                                         r".*pos_embed_size=IMAGE_SIZE"):
        check_checkpoint_fits(MODELS.build(cfg.model), tmp_path / "old.pth")


def test_resume_scales_only_the_groups_whose_lr_changed():
    """A lower main lr on resume moves the main (layer-decayed) groups, not a group with its own lr (the
    adversary's ``adv_lr``), and their schedules with them."""
    from types import SimpleNamespace

    from adpe.mm.hooks import scale_resumed_lr

    groups = [{"lr": lr, "initial_lr": lr} for lr in (1e-4, 6.5e-5, 1.5e-4)]  # this run's optimiser
    runner = SimpleNamespace(optim_wrapper=SimpleNamespace(state_dict=lambda: {"state": {}, "param_groups": groups}))
    checkpoint = {
        "optimizer": {"state": {}, "param_groups": [
            {"lr": 5e-2, "initial_lr": 1e-1}, {"lr": 3.25e-2, "initial_lr": 6.5e-2},
            {"lr": 7.5e-5, "initial_lr": 1.5e-4, "adversary": True}]},
        "param_schedulers": [{"param_name": "lr", "base_values": [1e-1, 6.5e-2, 1.5e-4],
                              "_last_value": [5e-2, 3.25e-2, 7.5e-5]}],
    }
    scale_resumed_lr(runner, checkpoint)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-4, 6.5e-5, 1.5e-4])
    assert [g["lr"] for g in groups] == pytest.approx([5e-5, 3.25e-5, 7.5e-5])  # same point of the schedule
    assert checkpoint["param_schedulers"][0]["base_values"] == pytest.approx([1e-4, 6.5e-5, 1.5e-4])
    assert checkpoint["param_schedulers"][0]["_last_value"] == pytest.approx([5e-5, 3.25e-5, 7.5e-5])


def test_train_then_test_after_a_resume_does_not_reload_a_deleted_checkpoint(tmp_path):
    """train() resumed from iter_1.pth, which max_keep_ckpts=1 deleted since; test() in the same process (what
    ``tools/train.py --test`` does) must not look for it again."""
    stand_in_runner(tmp_path, max_iters=1).train()
    runner = stand_in_runner(tmp_path, max_iters=3)
    runner.train()
    assert not (tmp_path / "iter_1.pth").exists()
    runner.call_hook("before_run")  # what runner.test() calls first
