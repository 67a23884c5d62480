"""Per-image test records: the frameworks' metrics keeping what they compute per image, and the hook that writes it.

``RecordedIoUMetric`` (mmseg ``IoUMetric``), ``RecordedCocoMetric`` (mmdet ``CocoMetric``) and ``RecordedAccuracy``
(mmpretrain ``Accuracy``) compute and report exactly what their parents do. They also tag each image's result with
its image (gathered across ranks with the result, as mmengine gathers metrics), and when asked to
(``keep_records``), turn the gathered per-image data into ``adpe.report.samples.Records`` on the main process.
``TestRecordsHook`` asks for them at test time only (a validation during training keeps nothing) and writes them
beside the test results: ``WORK_DIR/test_records.npz``, ``test_records_tta.npz`` for a test-time-augmented model,
or the ``out_file`` that tools/test.py sets for ``--metrics-json``. The configs of benchmarks/ name these metrics
and the hook, so that our tools, mmseg's / mmdet's own tools and ``Runner.from_cfg`` all write the records.

The registered names are builder functions: mmseg, mmdet and mmpretrain are imported when a metric is built, not
when ``adpe.mm`` is (as ``AdPEDetTTAModel`` in adpe/mm/inference.py).
"""

from __future__ import annotations

import functools
import os.path as osp
from unittest import mock

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel
from mmengine.registry import HOOKS, METRICS

from adpe.mm.optim import bare_model
from adpe.report import samples


@functools.cache
def _seg_metric_class() -> type:
    from mmseg.evaluation import IoUMetric

    class RecordedIoUMetric(IoUMetric):
        """mmseg's ``IoUMetric`` keeping each image's intersection, union, predicted and label areas."""

        keep_records = False

        def process(self, data_batch: dict, data_samples) -> None:
            start = len(self.results)
            super().process(data_batch, data_samples)
            # IoUMetric appends one (intersect, union, pred, label) per image: add the image's path to each
            for j, sample in enumerate(data_samples[:len(self.results) - start]):
                self.results[start + j] = (*self.results[start + j], sample["img_path"])

        def compute_metrics(self, results: list) -> dict:
            metrics = super().compute_metrics([r[:4] for r in results])
            if self.keep_records and results:
                areas = np.stack([torch.stack([a.float().cpu() for a in r[:4]]).numpy() for r in results])
                self.records = samples.seg_records(samples.relative_ids([r[4] for r in results]), areas,
                                                   _numbers(metrics))
            return metrics

    return RecordedIoUMetric


def _recording(base: type, found: list) -> type:
    """A subclass of the COCOeval class ``base`` that appends each evaluated instance to ``found``."""
    class Recording(base):
        def evaluate(self):
            super().evaluate()
            found.append(self)

    return Recording


@functools.cache
def _coco_metric_class() -> type:
    from mmdet.evaluation.metrics import coco_metric
    from mmdet.evaluation.metrics.coco_metric import CocoMetric

    class RecordedCocoMetric(CocoMetric):
        """mmdet's ``CocoMetric`` keeping what ``COCOeval.evaluate`` computes per image, for box and mask."""

        keep_records = False

        def compute_metrics(self, results: list) -> dict:
            if not self.keep_records:
                return super().compute_metrics(results)
            evals: list = []
            # CocoMetric builds its COCOeval inside compute_metrics and drops it: hand it one that reports back
            with mock.patch.multiple(coco_metric, COCOeval=_recording(coco_metric.COCOeval, evals),
                                     COCOevalMP=_recording(coco_metric.COCOevalMP, evals)):
                metrics = super().compute_metrics(results)
            image_ids, arrays = None, {}
            for coco_eval in evals:
                ids, found = samples.coco_arrays(coco_eval, coco_eval.params.iouType + ".")
                if image_ids is not None and ids != image_ids:
                    raise ValueError("box and mask evaluations over different images")
                image_ids = ids
                arrays.update(found)
            if image_ids is not None:
                self.records = samples.det_records(image_ids, arrays, _numbers(metrics))
            return metrics

    return RecordedCocoMetric


@functools.cache
def _cls_metric_class() -> type:
    from mmpretrain.evaluation import Accuracy

    class RecordedAccuracy(Accuracy):
        """mmpretrain's ``Accuracy`` keeping each image's label and top-k classes and scores."""

        keep_records = False

        def process(self, data_batch, data_samples) -> None:
            start = len(self.results)
            super().process(data_batch, data_samples)
            for j, sample in enumerate(data_samples):
                self.results[start + j]["img_path"] = sample.get("img_path") or str(sample.get("sample_idx"))

        def compute_metrics(self, results: list) -> dict:
            metrics = super().compute_metrics(results)
            if self.keep_records and results and "pred_score" in results[0]:
                # Accuracy.calculate's own top-k: pred.float().topk(max(topk)), the same classes in the same order
                scores, classes = torch.stack([r["pred_score"] for r in results]).float().topk(max(self.topk), dim=1)
                labels = torch.cat([r["gt_label"] for r in results])
                self.records = samples.cls_records(
                    samples.relative_ids([r["img_path"] for r in results]), labels.numpy(), classes.numpy(),
                    scores.numpy(), thr=self.thrs[0], metrics=_numbers(metrics))
            return metrics

    return RecordedAccuracy


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.floating | torch.Tensor)
            and np.size(v) == 1}


@METRICS.register_module(name="RecordedIoUMetric")
def build_recorded_iou_metric(**kwargs):
    """``dict(type='RecordedIoUMetric', iou_metrics=['mIoU'])``: mmseg's IoUMetric that keeps per-image areas."""
    return _seg_metric_class()(**kwargs)


@METRICS.register_module(name="RecordedCocoMetric")
def build_recorded_coco_metric(**kwargs):
    """``dict(type='RecordedCocoMetric', metric=['bbox', 'segm'], ...)``: mmdet's CocoMetric that keeps COCOeval's
    per-image matches."""
    return _coco_metric_class()(**kwargs)


@METRICS.register_module(name="RecordedAccuracy")
def build_recorded_accuracy(**kwargs):
    """``dict(type='RecordedAccuracy', topk=(1, 5))``: mmpretrain's Accuracy that keeps per-image top-k."""
    return _cls_metric_class()(**kwargs)


@HOOKS.register_module()
class TestRecordsHook(Hook):
    """Writes the test's per-image records (``adpe.report.samples``) beside its test results.

    ``out_file``: where they go; default ``WORK_DIR/test_records.npz`` (``test_records_tta.npz`` when the tested
    model is a TTA model). The main process writes, after the metrics have gathered every rank's images.
    """

    priority = "LOW"

    def __init__(self, out_file: str | None = None):
        self.out_file = out_file

    def _metrics(self, runner) -> list:
        return [m for m in runner.test_loop.evaluator.metrics if hasattr(m, "keep_records")]

    def before_test(self, runner) -> None:
        for metric in self._metrics(runner):
            metric.keep_records, metric.records = True, None

    def after_test_epoch(self, runner, metrics: dict | None = None) -> None:
        found = [m.records for m in self._metrics(runner) if getattr(m, "records", None) is not None]
        for metric in self._metrics(runner):
            metric.keep_records, metric.records = False, None
        if not found or not is_main_process():
            return
        if len(found) > 1:
            print_log(f"[adpe] {len(found)} metrics kept records; writing the first's", logger="current")
        tta = isinstance(bare_model(runner.model), BaseTTAModel)
        path = self.out_file or osp.join(runner.work_dir, samples.RECORDS[tta])
        found[0].save(path)
        print_log(f"[adpe] per-image records of {found[0].n_images} images written to {path}", logger="current")


def set_records_file(cfg, path: str) -> None:
    """Make the config's TestRecordsHook write to ``path`` (tools/test.py --metrics-json)."""
    for hook in cfg.get("custom_hooks", []):
        if hook.get("type") == "TestRecordsHook":
            hook["out_file"] = path
