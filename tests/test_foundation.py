"""The installed stack, import isolation, registries, checkpoint loading and atomic writes."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adpe.checkpoint import load_checkpoint_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OPENMMLAB = ("mmengine", "mmcv", "mmseg", "mmdet")


# Parts of the package allowed to import OpenMMLab or OpenCV: the integration, and the checkout's tooling.
NOT_CORE = ("adpe.mm", "adpe.tooling")


def test_core_package_imports_no_openmmlab_module_and_no_cv2():
    """Every module of the package, found by walking it (a new module is checked without being listed), except the
    integration and the tooling, imports no OpenMMLab module and no cv2."""
    banned = (*OPENMMLAB, "cv2")
    # pkgutil.walk_packages imports every package it descends into, adpe.mm included: walk by hand instead.
    code = ("import importlib, pkgutil, sys\n"
            "def walk(package):\n"
            "    module = importlib.import_module(package)\n"
            "    found = [package]\n"
            "    for info in pkgutil.iter_modules(module.__path__, package + '.'):\n"
            f"        if info.name.startswith({NOT_CORE!r}): continue\n"
            "        found += walk(info.name) if info.ispkg else [importlib.import_module(info.name).__name__]\n"
            "    return found\n"
            "core = walk('adpe')\n"
            "assert len(core) > 20 and 'adpe.models.backbone' in core, core\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {banned!r}); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.mm
def test_mmcv_compiled_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)
    feature = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = RoIAlign((1, 1), spatial_scale=1.0, sampling_ratio=1, aligned=True)(
        feature, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]))
    assert pooled.item() == pytest.approx(feature.mean().item())  # one bin over the whole map: the mean


@pytest.mark.mm
@pytest.mark.parametrize("scope", ["mmseg", "mmdet", "mmengine"])
def test_registered_modules_are_found_from_every_scope(scope):
    pytest.importorskip(scope)
    from mmengine.registry import DefaultScope, init_default_scope

    import adpe.mm  # noqa: F401

    init_default_scope(scope)
    registries = {"mmseg": "mmseg.registry", "mmdet": "mmdet.registry", "mmengine": "mmengine.registry"}
    models = __import__(registries[scope], fromlist=["MODELS"]).MODELS
    hooks = __import__(registries[scope], fromlist=["HOOKS"]).HOOKS
    with DefaultScope.overwrite_default_scope(scope):
        assert models.get("AdPEPretrainer") is not None
        assert hooks.get("AdversaryHook") is not None


def test_release_checkpoint_loads_with_weights_only():
    ckpt = load_checkpoint_file(FIXTURES / "official_adpe_rpe_tiny.pth")
    assert isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["model"]["blocks.0.attn.rpe_k.lookup_table_weight"].shape == (1, 64, 50)


class _Arbitrary:
    def __reduce__(self):
        return (os.getcwd, ())


def test_untrusted_pickle_is_refused_with_advice(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Arbitrary()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint_file(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")


@pytest.mark.mm
def test_local_writes_are_atomic(tmp_path, monkeypatch):
    from mmengine.fileio import get_file_backend

    import adpe.checkpoint
    import adpe.mm.patches as patches

    path = tmp_path / "epoch_1.pth"
    backend = get_file_backend(str(path))
    assert isinstance(backend, patches.AtomicLocalBackend)
    backend.put(b"good checkpoint", path)

    def crash(_fd):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(adpe.checkpoint.files.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b"half a checkpo", path)
    assert path.read_bytes() == b"good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_1.pth"], "no temporary file is left behind"


@pytest.mark.mm
def test_mmengine_training_checkpoint_loads_with_weights_only_in_a_fresh_process(tmp_path):
    """HistoryBuffer is pickled with getattr(HistoryBuffer, 'min'): allowed, and nothing else is."""
    code = f"""
import torch
from mmengine.logging import MessageHub
hub = MessageHub.get_instance('t')
hub.update_scalar('train/loss', 1.0)
torch.save({{'message_hub': hub.state_dict(), 'state_dict': {{}}}}, {str(tmp_path / 'ckpt.pth')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    load = ("import adpe.mm; from adpe.checkpoint import load_checkpoint_file; "
            f"print(type(load_checkpoint_file({str(tmp_path / 'ckpt.pth')!r})['message_hub']['log_scalars']"
            "['train/loss']).__name__)")
    out = subprocess.run([sys.executable, "-c", load], check=True, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "HistoryBuffer"
