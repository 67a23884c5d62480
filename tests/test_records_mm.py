"""Per-image test records from real tests of the tiny demo models, and the metrics recomputed from them.

Each test builds a demo config's runner (random init: the predictions are poor but real, which is what parity
needs), runs ``runner.test()`` as tools/test.py does, and checks that TestRecordsHook wrote ``test_records.npz``
beside the work dir and that the metric recomputed from it with all image weights 1 equals the framework's:
mmseg's mIoU, pycocotools' AP / AP50 / AP75 for box and mask, mmpretrain's top-1 / top-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import adpe.mm  # noqa: F401  (registration)
from adpe.report import samples

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.mm


def _test(config: str, data_root: str, work, options: dict | None = None) -> tuple[dict, samples.Records]:
    """Test the config's randomly initialised model on ``data_root``; (metrics, the written records)."""
    cfg = Config.fromfile(str(ROOT / config))
    cfg.work_dir = str(work)
    cfg.model.backbone.init_cfg = None
    for loader in ("val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.merge_from_dict(options or {})
    cfg.log_level = "WARNING"
    torch.manual_seed(0)
    metrics = Runner.from_cfg(cfg).test()
    return metrics, samples.Records.load(work / "test_records.npz")


def test_ade20k_records_recompute_mmseg_miou(tmp_path):
    from mmseg.evaluation import IoUMetric

    from adpe.tooling.demo_data import write_ade20k

    data = write_ade20k(tmp_path / "ade20k", n_train=1, n_val=6, size=(96, 160), seed=0)
    metrics, records = _test("benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py", str(data), tmp_path / "work")
    assert records.task == "seg" and records.n_images == 6
    assert sorted(records.image_ids) == [f"ADE_val_{i:08d}" for i in range(1, 7)]
    ours = float(samples.miou(records)[0])
    # mmseg's own arithmetic (IoUMetric.total_area_to_metrics, nanmean) on its per-image areas, unrounded: in
    # float64 the same to 1e-9; as mmseg runs it, in float32, to float32's precision
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-6 * ours)):
        totals = [sum(torch.from_numpy(records.arrays[k].astype(np.float64)).to(dtype)) for k in samples.SEG_AREAS]
        theirs = float(np.nanmean(IoUMetric.total_area_to_metrics(*totals, ["mIoU"])["IoU"]) * 100)
        assert abs(ours - theirs) <= tolerance, dtype
    assert round(ours, 2) == metrics["mIoU"] == records.metrics["mIoU"]
    assert 0 < records.arrays["label"].sum() and (records.arrays["intersect"] <= records.arrays["union"]).all()


def test_coco_records_recompute_pycocotools_box_and_mask_ap(tmp_path):
    from adpe.tooling.demo_data import write_coco

    data = write_coco(tmp_path / "coco", n_train=1, n_val=6, size=128, seed=0)
    ann = f"{data}/annotations/instances_val2017.json"
    metrics, records = _test("benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py", f"{data}/", tmp_path / "work",
                             {"test_evaluator.ann_file": ann, "val_evaluator.ann_file": ann,
                              "model.test_cfg.rcnn.score_thr": 0.0, "model.test_cfg.rcnn.max_per_img": 100})
    assert records.task == "det" and records.n_images == 6
    for iou_type in ("bbox", "segm"):
        stats = records.arrays[f"{iou_type}.stats"]  # COCOeval.stats as pycocotools computed them, unrounded
        ours = samples.coco_stats(records, iou_type)
        assert len(records.arrays[f"{iou_type}.det_score"]) > 50  # real detections
        for i, name in enumerate(samples.COCO_STATS):
            assert abs(float(ours[f"{iou_type}_{name}"][0]) - stats[i]) <= 1e-9, (iou_type, name)
            assert metrics[f"coco/{iou_type}_{name}"] == round(float(stats[i]), 3)
    assert max(records.arrays["bbox.stats"][:3]) > 0  # not a trivial zero


def test_imagenet_records_recompute_mmpretrain_accuracy(tmp_path):
    from mmpretrain.evaluation import Accuracy

    from adpe.tooling.demo_data import write_imagenet

    data = write_imagenet(tmp_path / "imagenet", n_per_class=1, n_val_per_class=6, size=64)
    metrics, records = _test("benchmarks/imagenet/finetune_adpe_vit_tiny_demo.py", str(data), tmp_path / "work")
    n = records.n_images
    assert records.task == "cls" and n == len(list((data / "val").rglob("*.JPEG")))
    for k in (1, 5):
        ours = float(samples.accuracy(records, k=k)[0])
        correct = int(samples.topk_correct(records, k).sum())
        assert abs(ours - 100 * correct / n) <= 1e-9
        # mmpretrain computes count x (100 / n) in float32: the same count, to float32's precision
        assert metrics[f"accuracy/top{k}"] == pytest.approx(ours, rel=1e-6, abs=1e-5)
        scores = torch.zeros(n, records.arrays["topk_classes"].max() + 1)
        scores.scatter_(1, torch.from_numpy(records.arrays["topk_classes"]),
                        torch.from_numpy(records.arrays["topk_scores"]))
        again = Accuracy.calculate(scores, torch.from_numpy(records.arrays["label"]), topk=(k,), thrs=(0.0,))
        assert float(again[0][0]) == metrics[f"accuracy/top{k}"]
