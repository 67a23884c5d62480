"""KNNMonitorHook through mmengine's Runner: it logs knn/top1 with the loss, leaves the training's random stream
alone, and gathers the same features from two gloo processes as from one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmpretrain")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.knn import probe_backbone  # noqa: E402
from adpe.mm.hooks import KNNMonitorHook  # noqa: E402
from adpe.models.mae import MaskedAutoencoder  # noqa: E402
from adpe.tooling.demo_data import write_imagenet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pretrain/demo/mae_plus_vit_tiny_ape.py"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("knn") / "imagenet", n_per_class=3, n_val_per_class=2,
                          size=[40, 56], seed=0)


def scalars(work_dir: Path) -> list[dict]:
    [path] = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


def pretrain(work_dir: Path, data_root: Path, knn: bool) -> list[dict]:
    """Two epochs of the demo's MAE+ pretraining on ``data_root`` (batch 8), with or without the kNN monitor."""
    cfg = Config.fromfile(DEMO)
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.update(batch_size=8, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(data_root)
    cfg.train_cfg.max_epochs = 2
    cfg.default_hooks.logger.interval = 1
    cfg.custom_hooks[5].update(data_root="pretraining" if knn else None, interval=1, at_start=True, batch_size=5)
    torch.set_num_threads(1)
    Runner.from_cfg(cfg).train()
    return scalars(work_dir)


def test_logs_knn_with_the_loss_and_leaves_the_random_stream_alone(imagenet, tmp_path):
    with_knn = pretrain(tmp_path / "with", imagenet, knn=True)
    without = pretrain(tmp_path / "without", imagenet, knn=False)
    knn = [row for row in with_knn if "knn/top1" in row]
    assert [row["step"] for row in knn] == [0, 3, 6]  # before training, after each of the 2 epochs of 3 steps
    for row in knn:
        assert 0.0 <= row["knn/top1"] <= 100.0 and row["knn/top1"] <= row["knn/top5"] <= 100.0
    losses = [(row["step"], row["loss"]) for row in with_knn if "loss" in row]
    assert losses and losses == [(row["step"], row["loss"]) for row in without if "loss" in row]
    assert not any("knn/top1" in row for row in without)
    log = next((tmp_path / "with").glob("*/*.log")).read_text()
    assert "kNN after 2 epochs (k=20, T=0.07; 24 bank, 16 query images): knn/top1" in log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gather_features(rank: int, world: int, port: int, data_root: str, out: str) -> None:
    """One gloo process: the hook's features of the bank, saved by rank 0."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        hook, backbone = monitor(data_root)
        data = hook._datasets(None, 64)
        features = hook._features(backbone, data["bank"][0], data["bank"][1], data["preprocessor"])
        if rank == 0:
            torch.save(features, out)
    finally:
        dist.destroy_process_group()


def monitor(data_root: str) -> tuple[KNNMonitorHook, torch.nn.Module]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return KNNMonitorHook(data_root=data_root, batch_size=4), probe_backbone(MaskedAutoencoder("tiny", img_size=64))


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_gather_the_single_process_features(imagenet, tmp_path):
    out = tmp_path / "gathered.pt"
    torch.multiprocessing.spawn(gather_features, args=(2, free_port(), str(imagenet), str(out)), nprocs=2,
                                join=True, start_method="spawn") if os.name != "nt" else pytest.skip("POSIX only")
    hook, backbone = monitor(str(imagenet))
    data = hook._datasets(None, 64)
    single = hook._features(backbone, data["bank"][0], data["bank"][1], data["preprocessor"])
    assert single.shape == (24, 192)
    torch.testing.assert_close(torch.load(out), single)


def test_a_folder_without_labelled_splits_is_refused_before_training(tmp_path, imagenet):
    """The demo configs monitor the pretraining folder's train/ and val/: a folder without val/ stops the run at
    its start, saying what to give or how to turn the monitor off."""
    import shutil

    root = tmp_path / "unlabelled"
    shutil.copytree(imagenet / "train", root / "train")
    with pytest.raises(FileNotFoundError, match=r"no folder .*unlabelled/val of labelled images .*data_root=None"):
        pretrain(tmp_path / "work", root, knn=True)
    assert not list((tmp_path / "work").glob("epoch_*.pth"))


def test_knn_eval_writes_records_that_give_its_numbers(imagenet, tmp_path):
    """tools/knn_eval.py on a random-init backbone: test_records.npz beside test_results.json, one record per query
    image (ids as class/image, as the probe's records name them), whose recomputed top-1 / top-5 are the written
    numbers."""
    import importlib.util

    from adpe.report import samples

    spec = importlib.util.spec_from_file_location("adpe_tools_knn_eval", ROOT / "tools/knn_eval.py")
    knn_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(knn_eval)
    config = ROOT / "benchmarks/imagenet/linear_probe_adpe_vit_tiny_demo.py"
    result = knn_eval.main([str(config), "--work-dir", str(tmp_path), "--query-split", "val", "--cfg-options",
                            f"train_dataloader.dataset.data_root={imagenet}", "model.backbone.init_cfg=None"])
    records = samples.Records.load(tmp_path / "test_records.npz")
    assert records.n_images == 2 * 8 and sorted(records.image_ids.tolist())[0].count("/") == 1  # class/image
    assert samples.accuracy(records)[0] == pytest.approx(result["metrics"]["knn/top1"])
    assert samples.accuracy(records, k=5)[0] == pytest.approx(result["metrics"]["knn/top5"])
    assert json.loads((tmp_path / "test_results.json").read_text())["metrics"] == result["metrics"]


def test_knn_eval_cost_is_the_vit_forward_written_out():
    """--cost: FLOP per image of the tiny probe backbone (112^2, patch 16, 192-d, 4 blocks) equal to a ViT's forward
    counted by hand -- patch embedding, then per block qkv, QK^T and AV, projection and the 4x MLP, 2 FLOP per
    multiply-add -- and the total that per-image figure times the images."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adpe_tools_knn_eval_cost", ROOT / "tools/knn_eval.py")
    knn_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(knn_eval)
    cost = knn_eval.main([str(ROOT / "benchmarks/imagenet/linear_probe_adpe_vit_tiny_demo.py"), "--cost", "300"])
    patches, dim, depth = (112 // 16) ** 2, 192, 4
    tokens = patches + 1  # and the class token
    per_block = 12 * tokens * dim * dim + 2 * tokens * tokens * dim
    assert cost["flop_per_image"] == 2 * (patches * 3 * 16 * 16 * dim + depth * per_block)
    assert cost["flop"] == 300 * cost["flop_per_image"] and cost["seconds"] == 300 * cost["seconds_per_image"] > 0
