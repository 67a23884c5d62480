"""Bad data named (adpe.mm.datasets): ADE20K label checks, COCO drop counts and JSON errors, the core's skip lines
in the run's log file."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mmseg")
pytest.importorskip("mmdet")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import DATASETS, TRANSFORMS, init_default_scope  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.tooling.demo_data import CLASSES, write_ade20k, write_coco  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADE_DEMO = ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py"
ADE_CONFIGS = sorted((ROOT / "benchmarks/ade20k").glob("*.py"))
COCO_CONFIGS = sorted((ROOT / "benchmarks/coco").glob("*.py"))
MMSEG_ADE20K = ".mim/configs/_base_/datasets/ade20k.py"  # in the mmseg package: its ADE20K pipelines


def test_importing_adpe_mm_loads_neither_mmseg_nor_mmdet():
    """Pretraining imports adpe.mm: the checked transform and dataset import mmseg / mmdet only when built."""
    code = ("import sys, adpe.mm; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmseg', 'mmdet')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- core skip lines in the run's log


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skipped_image_lands_in_the_runner_log_file(image_folder, tmp_path, num_workers):
    """adpe.data logs an unreadable file on the stdlib logger; the run's TIMESTAMP.log has the line too (from a
    forked loader worker as well)."""
    from mmengine.runner import Runner

    data = shutil.copytree(image_folder, tmp_path / "data")
    bad = data / "train" / "class0" / "000_bad.png"
    bad.write_bytes(b"not a png at all" * 4)
    cfg = Config.fromfile(ROOT / "pretrain/demo/mae_plus_vit_tiny_ape.py")
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": str(data), "train_dataloader.batch_size": 4,
                         "train_dataloader.num_workers": num_workers, "train_dataloader.persistent_workers": False})
    cfg.work_dir = str(tmp_path / "work")
    # mmengine names a runner's MMLogger <config>_<timestamp>: a second runner in the same second would get the
    # first one's logger (and log file) back
    cfg.experiment_name = f"skip_log_{tmp_path.name}"
    runner = Runner.from_cfg(cfg)
    for _ in runner.train_dataloader:
        pass
    log = (Path(runner.log_dir) / f"{runner.timestamp}.log").read_text()
    assert re.search(rf"WARNING - Skipping unreadable image {re.escape(str(bad))} \(UnidentifiedImageError", log), log


# --------------------------------------------------------------------------- ADE20K labels


@pytest.fixture
def ade(tmp_path) -> Path:
    return write_ade20k(tmp_path / "ade20k", n_train=2, n_val=2, size=64, seed=0)


def ade_dataset(root: Path, split: str):
    """The demo config's train / test / TTA dataset on ``root``."""
    init_default_scope("mmseg")
    cfg = Config.fromfile(ADE_DEMO)
    dataset = copy.deepcopy(cfg.train_dataloader.dataset if split == "train" else cfg.test_dataloader.dataset)
    dataset.data_root = str(root)
    if split == "tta":
        dataset.pipeline = cfg.tta_pipeline
    return DATASETS.build(dataset)


def first_label(root: Path, split: str) -> Path:
    return root / "annotations" / ("training" if split == "train" else "validation") / \
        ("ADE_train_00000001.png" if split == "train" else "ADE_val_00000001.png")


@pytest.mark.parametrize("split", ["train", "test", "tta"])
def test_wrong_sized_label_is_named(ade, split):
    label = first_label(ade, split)
    Image.fromarray(np.ones((32, 48), np.uint8)).save(label)
    dataset = ade_dataset(ade, split)
    image = dataset.get_data_info(0)["img_path"]
    expected = f"label {label} is 32 x 48 but its image {image} is 64 x 64"
    with pytest.raises(ValueError, match=re.escape(expected)) as err:
        dataset[0]
    assert "Fix or remove this pair" in str(err.value)


@pytest.mark.parametrize("split", ["train", "test", "tta"])
def test_label_value_outside_the_classes_is_named(ade, split):
    label = first_label(ade, split)
    values = np.array(Image.open(label))
    values[:3, :2] = 200
    Image.fromarray(values).save(label)
    dataset = ade_dataset(ade, split)
    with pytest.raises(ValueError, match=re.escape(f"label {label} (image {dataset.get_data_info(0)['img_path']}) "
                                                   "holds values 200 in 6 pixels")) as err:
        dataset[0]
    assert "ADE20K labels are 0..150" in str(err.value) and "Fix or remove this pair" in str(err.value)


def test_clean_labels_pass_unchanged_and_are_checked_once(ade):
    """On clean data the checked transform's output is mmseg's LoadAnnotations' own; each file is checked once."""
    init_default_scope("mmseg")
    dataset = ade_dataset(ade, "train")
    load_image = TRANSFORMS.build(dict(type="LoadImageFromFile"))
    checked = TRANSFORMS.build(dict(type="CheckedLoadAnnotations", reduce_zero_label=True))
    plain = TRANSFORMS.build(dict(type="LoadAnnotations", reduce_zero_label=True))
    for i in range(len(dataset)):
        info = load_image(dataset.get_data_info(i))
        ours, theirs = checked(copy.deepcopy(info)), plain(copy.deepcopy(info))
        assert np.array_equal(ours["gt_seg_map"], theirs["gt_seg_map"]) and ours["seg_fields"] == theirs["seg_fields"]
    assert checked.checked == {dataset.get_data_info(i)["seg_map_path"] for i in range(len(dataset))}
    bare = load_image({"img_path": dataset.get_data_info(0)["img_path"]})  # mmseg's inferencers: no label
    assert checked(dict(bare)).keys() == bare.keys()
    for split in ("train", "test", "tta"):  # every clean sample of every pipeline loads
        every = ade_dataset(ade, split)
        assert all(every[i] is not None for i in range(len(every)))


@pytest.mark.parametrize("path", ADE_CONFIGS, ids=lambda p: p.name)
def test_every_ade20k_pipeline_checks_its_labels(path):
    """Train, test and TTA pipelines load labels with CheckedLoadAnnotations; the ViT-B ones are mmseg's ADE20K
    pipelines otherwise."""
    cfg = Config.fromfile(path)
    pipelines = {"train": cfg.train_dataloader.dataset.pipeline, "test": cfg.test_dataloader.dataset.pipeline,
                 "tta": cfg.tta_pipeline[1]["transforms"][2]}
    for name, pipeline in pipelines.items():
        types = [t["type"] for t in pipeline]
        assert "CheckedLoadAnnotations" in types and "LoadAnnotations" not in types, (name, types)
    if path.name != "upernet_adpe_vit_tiny_demo.py":
        mmseg_ade = Config.fromfile(Path(__import__("mmseg").__file__).parent / MMSEG_ADE20K)
        for ours, theirs in ((pipelines["train"], mmseg_ade.train_pipeline),
                             (pipelines["test"], mmseg_ade.test_pipeline)):
            assert [dict(t, type=t["type"].replace("Checked", "")) for t in ours] == theirs


# --------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path) -> Path:
    return write_coco(tmp_path / "coco", n_train=2, n_val=1, size=64, seed=0)


def coco_dataset(root: Path, log_file: Path, ann_file: str = "annotations/instances_train2017.json", **kwargs):
    """A CheckedCocoDataset on ``root``, with a fresh current MMLogger writing to ``log_file``."""
    MMLogger.get_instance(f"coco-{log_file}", log_file=str(log_file))
    init_default_scope("mmdet")
    return DATASETS.build(dict(type="CheckedCocoDataset", data_root=str(root), ann_file=ann_file,
                               data_prefix=dict(img="train2017/"), metainfo=dict(classes=CLASSES), pipeline=[],
                               **kwargs))


def test_dropped_annotations_are_counted_in_one_log_line(coco, tmp_path):
    ann_file = coco / "annotations/instances_train2017.json"
    doc = json.loads(ann_file.read_text())
    kept = len(doc["annotations"])
    template, next_id = doc["annotations"][0], max(a["id"] for a in doc["annotations"]) + 1
    x, y, w, h = template["bbox"]
    faults = [{"bbox": [x, y, 0, h]}, {"area": 0}, {"segmentation": [[x, y, x + w, y + h]]}]
    doc["annotations"] += [{**template, **fault, "id": next_id + i} for i, fault in enumerate(faults)]
    ann_file.write_text(json.dumps(doc))

    dataset = coco_dataset(coco, tmp_path / "run.log")
    lines = [line for line in (tmp_path / "run.log").read_text().splitlines() if "dropped" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"WARNING - {ann_file}: 3 of {kept + 3} annotations dropped or ignored by mmdet: "
                             "2 zero-area boxes, 1 polygon with < 3 points. Fix them in that file to train on them.")
    # mmdet's own parse is unchanged: it keeps the polygon one (its LoadAnnotations ignores it), drops the boxes
    from mmdet.datasets import CocoDataset

    theirs = CocoDataset(data_root=str(coco), ann_file="annotations/instances_train2017.json",
                         data_prefix=dict(img="train2017/"), metainfo=dict(classes=CLASSES), pipeline=[])
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert infos == [theirs.get_data_info(i) for i in range(len(theirs))]
    assert sum(len(info["instances"]) for info in infos) == kept + 1
    from mmdet.datasets.transforms import LoadAnnotations

    image = next(info for info in infos if info["img_id"] == template["image_id"])
    flags = LoadAnnotations(with_bbox=True, with_mask=True)({**image, "ori_shape": (64, 64)})["gt_ignore_flags"]
    assert flags.sum() == 1 and flags[-1]  # the 2-point polygon's instance, as counted


def test_clean_coco_logs_no_drop_line(coco, tmp_path):
    dataset = coco_dataset(coco, tmp_path / "run.log")
    assert len(dataset) == 2 and "dropped" not in (tmp_path / "run.log").read_text()


def test_truncated_coco_json_is_named(coco, tmp_path):
    ann_file = coco / "annotations/instances_train2017.json"
    text = ann_file.read_text()
    ann_file.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=re.escape(f"COCO annotation file {ann_file} is not valid JSON")) as err:
        coco_dataset(coco, tmp_path / "run.log")
    assert "Download or write it again" in str(err.value)


def test_malformed_coco_annotation_is_named(coco, tmp_path):
    ann_file = coco / "annotations/instances_train2017.json"
    doc = json.loads(ann_file.read_text())
    del doc["annotations"][0]["bbox"]
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(f"COCO annotation file {ann_file}: an annotation of image")):
        coco_dataset(coco, tmp_path / "run.log")


@pytest.mark.parametrize("path", COCO_CONFIGS, ids=lambda p: p.name)
def test_every_coco_config_uses_the_checked_dataset(path):
    cfg = Config.fromfile(path)
    assert cfg.train_dataloader.dataset.type == "CheckedCocoDataset"
    assert cfg.val_dataloader.dataset.type == cfg.test_dataloader.dataset.type == "CheckedCocoDataset"
