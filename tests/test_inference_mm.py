"""Trained models carry their structure; tools/test.py's mmseg / mmdet options; tools/infer.py."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg")
pytest.importorskip("mmdet")
pytestmark = pytest.mark.mm

from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.checkpoint import CheckpointMismatchError  # noqa: E402
from adpe.mm.hooks import ResolvedBackboneHook  # noqa: E402
from adpe.mm.inference import trained_model_config  # noqa: E402
from adpe.models.backbone import STRUCTURE_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SEG_CONFIG = ROOT / "benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py"
DET_CONFIG = ROOT / "benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RPE_CONTINUOUS = {"rel_pos": "irpe", "rpe_lookup": "continuous", "rpe_query_scale": False}


def save_trained(model, cfg: Config, work: Path, dataset_meta: dict) -> SimpleNamespace:
    """A work dir as a training run leaves it: the config with the resolved backbone (ResolvedBackboneHook) and a
    checkpoint as mmengine writes one. Random heads: only the structure matters here."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / Path(cfg.filename).name
    runner = SimpleNamespace(model=model, cfg=cfg, dump_config=lambda: None)
    ResolvedBackboneHook().before_run(runner)
    cfg.dump(config)
    checkpoint = work / "iter_1.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"cfg": cfg.pretty_text, "dataset_meta": dataset_meta}},
               checkpoint)
    return SimpleNamespace(model=model.eval(), config=config, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory, release_rpe_coordinate_checkpoint):
    """A tiny UperNet fine-tuned (untrained heads) from an RPE-coordinate release checkpoint."""
    from mmseg.datasets import ADE20KDataset

    init_default_scope("mmseg")
    tmp = tmp_path_factory.mktemp("seg")
    cfg = Config.fromfile(SEG_CONFIG)
    cfg.model.backbone.img_size = (64, 64)
    cfg.model.backbone.init_cfg.checkpoint = str(release_rpe_coordinate_checkpoint(tmp / "release_rpe_coord.pth"))
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    assert model.backbone.structure() == RPE_CONTINUOUS
    meta = {k: ADE20KDataset.METAINFO[k] for k in ("classes", "palette")}
    return save_trained(model, cfg, tmp / "work", meta)


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """A tiny Mask R-CNN (random init: 'auto' means the decomposed relative bias)."""
    from mmdet.datasets import CocoDataset

    init_default_scope("mmdet")
    cfg = Config.fromfile(DET_CONFIG)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = {"classes": cfg.metainfo.classes, "palette": CocoDataset.METAINFO["palette"]}
    return save_trained(model, cfg, tmp_path_factory.mktemp("det") / "work", meta)


@pytest.fixture(scope="module")
def ade_data(tmp_path_factory):
    from adpe.tooling.demo_data import write_ade20k

    # the demo's real-shape images (ADE20K's aspect ratios, short side 96-160), not squares
    return write_ade20k(tmp_path_factory.mktemp("ade") / "ade20k", n_train=1, n_val=2, size=[96, 160], seed=0)


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    from adpe.tooling.demo_data import write_coco

    return write_coco(tmp_path_factory.mktemp("coco") / "coco", n_train=1, n_val=2, size=[96, 160], seed=0)


def seg_model(**backbone):
    init_default_scope("mmseg")
    cfg = Config.fromfile(SEG_CONFIG)
    cfg.model.backbone.update(img_size=(64, 64), init_cfg=None, **backbone)
    return MODELS.build(cfg.model)


# ---------------------------------------------------------------- the structure in the weights
def test_checkpoint_records_the_structure_and_init_model_rebuilds_it(seg_run):
    from mmseg.apis import init_model

    state = torch.load(seg_run.checkpoint, weights_only=True)["state_dict"]
    assert state[f"backbone.{STRUCTURE_KEY}"].tolist() == [2, 1, 0]  # irpe, continuous, unscaled
    loaded = init_model(str(seg_run.config), str(seg_run.checkpoint), device="cpu")
    assert loaded.backbone.structure() == RPE_CONTINUOUS
    # tools/test.py / tools/infer.py: the benchmark config, the backbone built as the checkpoint records
    cfg = trained_model_config(SEG_CONFIG, seg_run.checkpoint)
    cfg.model.backbone.img_size = (64, 64)
    launched = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    load_checkpoint(launched, str(seg_run.checkpoint))
    assert launched.backbone.structure() == RPE_CONTINUOUS
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = seg_run.model(x, mode="tensor")
        for model in (loaded, launched):
            torch.testing.assert_close(model(x, mode="tensor"), expected, rtol=0, atol=1e-5)


def test_weights_of_another_structure_are_refused_by_non_strict_loaders(seg_run):
    from mmseg.apis import init_model

    state = torch.load(seg_run.checkpoint, weights_only=True)["state_dict"]
    for backbone, named in ((dict(rel_pos="bias"), "rel_pos='irpe'"),
                            (dict(rel_pos="none"), "rel_pos='irpe'"),
                            (dict(rel_pos="irpe", rpe_lookup="discrete"), "rpe_lookup='continuous'"),
                            (dict(rel_pos="irpe", rpe_lookup="continuous", rpe_query_scale=True),
                             "rpe_query_scale=False")):
        with pytest.raises(CheckpointMismatchError, match=named):
            seg_model(**backbone).load_state_dict(state, strict=False)
    with pytest.raises(CheckpointMismatchError, match="saved config"):  # mmengine's loader: non-strict, logs only
        load_checkpoint(seg_model(rel_pos="bias"), str(seg_run.checkpoint))
    with pytest.raises(CheckpointMismatchError, match="saved config"):  # the benchmark config: 'auto' -> 'bias'
        init_model(str(SEG_CONFIG), str(seg_run.checkpoint), device="cpu")


def test_state_dicts_without_the_record_load_unless_iRPE_tables_would_be_dropped(seg_run):
    """Pretraining checkpoints and fine-tuned ones older than the record: absence means unknown, accepted."""
    state = torch.load(seg_run.checkpoint, weights_only=True)["state_dict"]
    unrecorded = {k: v for k, v in state.items() if not k.endswith(STRUCTURE_KEY)}
    model = seg_model(**RPE_CONTINUOUS)
    model.load_state_dict(unrecorded, strict=True)
    assert model.backbone.structure_code.tolist() == [2, 1, 0]
    with pytest.raises(CheckpointMismatchError, match="iRPE tables"):
        seg_model(rel_pos="bias").load_state_dict(unrecorded, strict=False)


# ---------------------------------------------------------------- mask-aware flip TTA
def test_det_tta_merges_flipped_views_with_their_masks():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    class Detector(torch.nn.Module):  # the views' predictions are given: merging is under test
        def test_step(self, data):
            return data

    tta = MODELS.build(dict(type="AdPEDetTTAModel", module=Detector(),
                            tta_cfg=dict(nms=dict(type="nms", iou_threshold=0.5), max_per_img=10)))
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 0:3] = True

    def view(flip: bool, score: float) -> DetDataSample:
        sample = DetDataSample(metainfo=dict(ori_shape=(8, 8), flip=flip, flip_direction="horizontal"))
        box = torch.tensor([[5.0, 2.0, 8.0, 5.0]]) if flip else torch.tensor([[0.0, 2.0, 3.0, 5.0]])
        sample.pred_instances = InstanceData(bboxes=box, scores=torch.tensor([score]), labels=torch.tensor([1]),
                                             masks=mask.flip(-1) if flip else mask)
        return sample

    merged = tta.merge_preds([[view(False, 0.6), view(True, 0.9)]])[0].pred_instances
    assert len(merged) == 1 and merged.scores.item() == pytest.approx(0.9)
    torch.testing.assert_close(merged.bboxes, torch.tensor([[0.0, 2.0, 3.0, 5.0]]))
    assert torch.equal(merged.masks, mask)


# ---------------------------------------------------------------- tools/test.py options
def dist_test(config, checkpoint, *args):
    return subprocess.run(["bash", str(ROOT / "tools/dist_test.sh"), str(config), str(checkpoint), "1", *args],
                          env=ENV, cwd=ROOT, capture_output=True, text=True)


def seg_data_options(data: Path) -> list[str]:
    # The training set too: mmseg's SegVisualizationHook names drawings by runner.iter, which builds the train loop.
    return ["--cfg-options", *(f"{k}.dataset.data_root={data}" for k in ("train_dataloader", "test_dataloader")),
            "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False"]


def test_seg_test_writes_drawings_predictions_and_metrics_where_asked(seg_run, ade_data, tmp_path):
    show, out, metrics = tmp_path / "show", tmp_path / "preds", tmp_path / "m" / "metrics.json"
    done = dist_test(seg_run.config, seg_run.checkpoint, "--work-dir", str(tmp_path / "work"), "--show-dir",
                     str(show), "--out", str(out), "--metrics-json", str(metrics), *seg_data_options(ade_data))
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.stem for p in (ade_data / "images/validation").glob("*.jpg"))
    assert sorted(p.stem for p in out.glob("*.png")) == names  # mmseg: label PNGs in ADE's 0..150 space
    for name in names:  # a label map of the image's own shape (not the crop's), classes in ADE's 1..150
        labels = np.asarray(Image.open(out / f"{name}.png"))
        with Image.open(ade_data / "images/validation" / f"{name}.jpg") as image:
            assert labels.shape == (image.height, image.width) != (128, 128)
        assert labels.min() >= 1 and labels.max() <= 150
    drawings = sorted((show / "vis_data/vis_image").glob("*.png"))
    assert len(drawings) == len(names) and all(n in str(d) for d, n in zip(drawings, names, strict=True))
    assert 0 <= json.loads(metrics.read_text())["metrics"]["mIoU"] <= 100
    assert not (tmp_path / "work/test_results.json").exists()
    # the per-image records go beside the metrics file (docs/statistics.md)
    assert np.load(tmp_path / "m" / "metrics.records.npz")["intersect"].shape[0] == len(names)
    assert not (tmp_path / "work/test_records.npz").exists()


def test_seg_test_time_augmentation_runs(seg_run, ade_data, tmp_path):
    done = dist_test(seg_run.config, seg_run.checkpoint, "--work-dir", str(tmp_path), "--tta",
                     *seg_data_options(ade_data))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "test_results_tta.json").read_text())  # beside a single-scale test's file
    assert result["tta"] is True and 0 <= result["metrics"]["mIoU"] <= 100
    assert not (tmp_path / "test_results.json").exists()
    assert str(np.load(tmp_path / "test_records_tta.npz")["task"]) == "seg"  # beside it, named alike
    assert not (tmp_path / "test_records.npz").exists()


def test_det_test_with_tta_dumps_predictions_and_draws(det_run, coco_data, tmp_path):
    ann = f"{coco_data}/annotations/instances_val2017.json"
    out, show = tmp_path / "preds.pkl", tmp_path / "show"
    done = dist_test(det_run.config, det_run.checkpoint, "--work-dir", str(tmp_path), "--tta", "--out", str(out),
                     "--show-dir", str(show), "--cfg-options", f"test_dataloader.dataset.data_root={coco_data}/",
                     f"test_evaluator.ann_file={ann}", "test_dataloader.num_workers=0",
                     "test_dataloader.persistent_workers=False")
    assert done.returncode == 0, done.stderr[-3000:]
    with out.open("rb") as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2 and all(len(p["pred_instances"]["masks"]) > 0 for p in predictions)
    assert all(len(p["pred_instances"]["masks"]) == len(p["pred_instances"]["bboxes"]) for p in predictions)
    assert len(list(show.glob("*.jpg"))) == 2
    assert json.loads((tmp_path / "test_results_tta.json").read_text())["tta"] is True
    assert len(np.load(tmp_path / "test_records_tta.npz")["segm.det_score"]) > 0


# ---------------------------------------------------------------- tools/infer.py
@pytest.mark.parametrize("task", ["seg", "det"])
def test_infer_draws_one_image_per_input(task, request, ade_data, coco_data, tmp_path):
    run = request.getfixturevalue(f"{task}_run")
    images = sorted((ade_data / "images/validation").glob("*.jpg") if task == "seg"
                    else (coco_data / "val2017").glob("*.jpg"))
    done = subprocess.run([sys.executable, str(ROOT / "tools/infer.py"), str(run.config),
                           str(run.checkpoint), *map(str, images), "--out", str(tmp_path), "--device", "cpu"],
                          env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = sorted((tmp_path / "vis").iterdir())
    assert [p.name for p in drawn] == [p.name for p in images]
    assert all(Image.open(p).size == Image.open(i).size for p, i in zip(drawn, images, strict=True))
