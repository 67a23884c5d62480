"""What the launchers accept: unknown top-level keys, option values, and several processes on a CPU (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

mmengine = pytest.importorskip("mmengine")
pytestmark = pytest.mark.mm

from mmengine.registry import MODELS  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.mm.runner import build_config  # noqa: E402
from adpe.models.mae import MaskedAutoencoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "pretrain/demo/adpe_vit_tiny_ape_coord.py")


def test_misspelt_top_level_key_is_refused_naming_the_closest_key():
    with pytest.raises(ValueError) as err:
        build_config(DEMO, cfg_options={"effective_bach": 4096, "train_dataloader.batch_size": 4})
    message = str(err.value)
    assert "'effective_bach' (did you mean 'effective_batch'?)" in message
    assert "_base_ = [" in message  # how to add a genuinely new key


def test_every_unknown_top_level_key_is_named_even_without_a_close_match():
    with pytest.raises(ValueError, match=r"'qqq', 'train_dataloder' \(did you mean 'train_dataloader'\?\)"):
        build_config(DEMO, cfg_options={"train_dataloder.batch_size": 4, "qqq": 1})


def test_keys_the_runner_takes_are_accepted_although_the_config_lacks_them():
    options = {"load_from": "x.pth", "randomness.seed": 3, "find_unused_parameters": True, "compile": False,
               "experiment_name": "x", "model.adv_radius": 2.0}
    cfg = build_config(DEMO, cfg_options=options)
    assert (cfg.load_from, cfg.randomness.seed, cfg.find_unused_parameters, cfg.model.adv_radius) == (
        "x.pth", 3, True, 2.0)


@pytest.mark.parametrize("ratio", ["high", 1.5, 0, 0.999, True, None])
def test_invalid_mask_ratio_names_the_option_and_its_range(ratio):
    cfg = build_config(DEMO, cfg_options={"model.mask_ratio": ratio})
    with pytest.raises(ValueError, match=r"mask_ratio.* 0 < mask_ratio <= 1 - 1/49 .*e\.g\. 0\.75"):
        MODELS.build(cfg.model)


def test_valid_mask_ratios_build():
    for ratio in (0.75, 0.5, 0.9):
        assert MaskedAutoencoder("tiny", mask_ratio=ratio).random_masking(2)[0].sum().item() == 2 * (
            49 - int(49 * (1 - ratio)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_train(image_folder: Path, work_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """tools/dist_train.sh DEMO 2 on this machine's CPUs: 2 processes x 4 images, one epoch of 16 images."""
    env = {**os.environ, "PYTHON": sys.executable, "PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, also on a GPU machine
    command = ["bash", str(ROOT / "tools/dist_train.sh"), DEMO, "2", "--work-dir", str(work_dir), "--cfg-options",
               f"train_dataloader.dataset.data_root={image_folder}", "train_dataloader.batch_size=4",
               "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
               "train_cfg.max_epochs=1", "default_hooks.logger.interval=1", *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_cpu_processes_train_with_gloo_and_keep_the_effective_batch(image_folder, tmp_path):
    done = dist_train(image_folder, tmp_path / "ok", "effective_batch=16")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # 16 images per step = 2 processes x 4 images x 2 accumulation steps: the world size is that of torchrun.
    assert "effective batch 16 images = 2 processes x 4 images x 2 accumulation steps" in output
    assert (tmp_path / "ok" / "epoch_1.pth").is_file()

    done = dist_train(image_folder, tmp_path / "bad", "effective_batch=12")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "effective_batch=12 is not a multiple of 2 processes x batch_size 4 = 8" in output
