"""Logging backends beside the local one: ``--vis tensorboard|wandb`` (adpe.mm.runner.build_config)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mmengine")
pytestmark = pytest.mark.mm

from mmengine.runner import Runner  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.mm.runner import build_config  # noqa: E402
from adpe.report.collect import read_scalars  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train_cfg.max_epochs": 1, "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
        "train_dataloader.batch_size": 4, "default_hooks.logger.interval": 1, "log_level": "WARNING",
        "log_processor.window_size": 1}


def backend_types(cfg) -> list[str]:
    return [backend["type"] for backend in cfg.visualizer.vis_backends]


def tensorboard_scalars(work_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in the run's TensorBoard event files, read as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = []
    for events in sorted(work_dir.glob("*/vis_data/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            series += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return series


def test_tensorboard_run_writes_events_and_the_report_still_reads_it(image_folder, tmp_path):
    pytest.importorskip("tensorboard")  # pinned in requirements.txt; absent only in a hand-made environment
    cfg = build_config(str(ROOT / "pretrain/demo/mae_plus_vit_tiny_ape.py"), work_dir=str(tmp_path),
                       cfg_options={**TINY, "train_dataloader.dataset.data_root": str(image_folder)},
                       vis=["tensorboard"])
    assert backend_types(cfg) == ["LocalVisBackend", "TensorboardVisBackend"]
    Runner.from_cfg(cfg).train()
    losses = read_scalars(tmp_path)["loss"]  # what adpe.report plots, from the local backend's scalars.json
    assert len(losses) == 4  # 16 images / batch 4, logged every iteration
    in_tensorboard = tensorboard_scalars(tmp_path, "loss")
    assert [step for step, _ in in_tensorboard] == [step for step, _ in losses]
    assert [value for _, value in in_tensorboard] == pytest.approx([value for _, value in losses], rel=1e-6)


@pytest.mark.parametrize("config", ["pretrain/adpe_vitb_rpe_coord.py", "benchmarks/ade20k/upernet_adpe_vitb.py",
                                    "benchmarks/coco/mask_rcnn_adpe_vitb.py"])
def test_vis_backends_are_added_beside_the_local_one(config, tmp_path):
    cfg = build_config(str(ROOT / config), work_dir=str(tmp_path / "run"), vis=["wandb", "tensorboard", "wandb"])
    assert backend_types(cfg) == ["LocalVisBackend", "WandbVisBackend", "TensorboardVisBackend"]
    assert cfg.visualizer.vis_backends[1]["init_kwargs"] == {"name": str(tmp_path / "run")}
    assert backend_types(build_config(str(ROOT / config))) == ["LocalVisBackend"]  # nothing asked, nothing added
    with pytest.raises(ValueError, match="unknown logging backend"):
        build_config(str(ROOT / config), vis=["neptune"])


def test_train_tool_takes_vis_repeated_or_as_a_list():
    spec = importlib.util.spec_from_file_location("adpe_tools_train", ROOT / "tools/train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.parse_args(["c.py", "--vis", "tensorboard", "--vis", "wandb"]).vis == ["tensorboard", "wandb"]
    assert train.parse_args(["c.py", "--vis", "tensorboard", "wandb"]).vis == ["tensorboard", "wandb"]
    assert train.parse_args(["c.py"]).vis == [] and not train.parse_args(["c.py"]).auto_scale_lr
    with pytest.raises(SystemExit):
        train.parse_args(["c.py", "--vis", "neptune"])
