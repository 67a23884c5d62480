"""Bad data named: checks on ADE20K labels and COCO annotations, and the core's data warnings in the run's log.

* ``CheckedLoadAnnotations`` (mmseg transform): mmseg's ``LoadAnnotations``, which then checks each label map
  once per file and process: it must be single-channel, have its image's height x width, and hold only the
  dataset's classes or the ignore index. Anything else raises a ValueError naming the label and image files (mmseg
  would crop a wrong-sized label and train on it, then fail in collate; it counts out-of-range values in its
  metrics). The benchmark ADE20K configs use it in their train, test and TTA pipelines.
* ``CheckedCocoDataset`` (mmdet dataset): mmdet's ``CocoDataset``, which reports in one log line per annotation
  file how many annotations mmdet drops (zero-area boxes, boxes outside the image, ...) or ignores (no polygon of
  3 points or more), and names the file of a truncated JSON or a malformed annotation.
* :func:`forward_core_logs`: the core's stdlib loggers (``adpe.*``: skipped images of ``adpe.data``) also write to
  mmengine's current ``MMLogger``, i.e. the run's console and ``WORK_DIR/TIMESTAMP/TIMESTAMP.log``. Called at import.

mmseg and mmdet are imported when a checked transform or dataset is first built, not at ``import adpe.mm``
(pretraining loads neither): the registered names are builder functions in mmengine's root registries, which
mmseg's and mmdet's fall back to (as ``AdPEDetTTAModel`` in adpe/mm/inference.py).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter

import numpy as np
from mmengine.logging import MMLogger, print_log
from mmengine.registry import DATASETS, TRANSFORMS

__all__ = ["DROP_REASONS", "check_label_map", "coco_drop_reason", "drop_summary", "forward_core_logs"]


# ---------------------------------------------------------------------------------------------------------
# the core's warnings in the run's log
# ---------------------------------------------------------------------------------------------------------
class _ToRunLog(logging.Handler):
    """Passes records of the core's loggers on to mmengine's current MMLogger (console and run log file)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # The formatted text, not the record: MMLogger drops a WARNING whose unformatted msg it has seen
            # (FilterDuplicateWarning), which would keep one "Skipping unreadable image %s" line per run.
            MMLogger.get_current_instance().log(record.levelno, record.getMessage())
        except Exception:  # logging must never stop a run
            self.handleError(record)


def forward_core_logs(name: str = "adpe") -> None:
    """Have the stdlib logger ``name`` (and its children, e.g. ``adpe.data``) write to mmengine's current MMLogger as
    well; idempotent. The records still propagate to the root logger (pytest's caplog, a user's own handlers).

    Loader workers started by fork inherit the handler and the run's log file; spawned ones log to the console.
    """
    core = logging.getLogger(name)
    if not any(isinstance(handler, _ToRunLog) for handler in core.handlers):
        core.addHandler(_ToRunLog())


forward_core_logs()


# ---------------------------------------------------------------------------------------------------------
# ADE20K labels (mmseg)
# ---------------------------------------------------------------------------------------------------------
def _valid_label_text(num_classes: int, ignore_index: int, reduce_zero_label: bool) -> str:
    """The values a label file may hold, in the file's own terms."""
    if reduce_zero_label:
        ade = "; ADE20K labels are 0..150" if num_classes == 150 else ""
        return f"0 (ignored), 1..{num_classes} (the classes{ade}) and {ignore_index} (ignored)"
    return f"0..{num_classes - 1} (the classes) and {ignore_index} (ignored)"


def check_label_map(results: dict, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False) -> None:
    """Raise a ValueError naming the label and image files unless ``results['gt_seg_map']`` (H, W) uint8, as mmseg's
    ``LoadAnnotations`` leaves it (reduced and label-mapped) is single-channel, has the loaded image's
    ``ori_shape`` (H, W), and holds only 0..num_classes-1 and ``ignore_index``."""
    label, seg_path, img_path = results["gt_seg_map"], results["seg_map_path"], results.get("img_path")
    image_shape = results.get("ori_shape")
    if label.ndim != 2 or (image_shape is not None and label.shape != tuple(image_shape[:2])):
        raise ValueError(
            f"label {seg_path} is {' x '.join(map(str, label.shape))} but its image {img_path} is "
            f"{' x '.join(map(str, image_shape[:2])) if image_shape is not None else 'not loaded yet'} "
            "(height x width): a label must be a single-channel image of its image's size. Fix or remove this pair.")
    counts = np.bincount(label.ravel(), minlength=256)
    allowed = np.zeros(counts.size, dtype=bool)
    allowed[:num_classes] = True
    allowed[ignore_index] = True
    bad = np.flatnonzero((counts > 0) & ~allowed)
    if bad.size:
        stored = bad + 1 if reduce_zero_label else bad  # reduce_zero_label stores value v as v - 1
        shown = ", ".join(map(str, stored[:10].tolist())) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"label {seg_path} (image {img_path}) holds values {shown} in {int(counts[bad].sum())} pixels, outside "
            f"the dataset's classes: it may hold {_valid_label_text(num_classes, ignore_index, reduce_zero_label)}. "
            "Fix or remove this pair.")


@functools.cache
def _checked_load_annotations_class() -> type:
    """The transform class, defined on first use: mmseg is imported here, not when ``adpe.mm`` is."""
    from mmseg.datasets.transforms import LoadAnnotations

    class CheckedLoadAnnotations(LoadAnnotations):
        """mmseg's ``LoadAnnotations`` plus :func:`check_label_map`, once per label file in each process (a clean
        file is not read again for it; the loaded label is left as mmseg made it).

        Args:
            num_classes: the dataset's classes (ADE20K: 150), after ``reduce_zero_label``.
            ignore_index: the label value the loss and metric ignore (mmseg's 255).
            **kwargs: mmseg's ``LoadAnnotations`` arguments (``reduce_zero_label``, ...).
        """

        def __init__(self, num_classes: int = 150, ignore_index: int = 255, **kwargs):
            super().__init__(**kwargs)
            self.num_classes = num_classes
            self.ignore_index = ignore_index
            self.checked: set[str] = set()

        def transform(self, results: dict) -> dict:
            # mmseg's MMSegInferencer and inference_model remove 'LoadAnnotations' from the test pipeline by its
            # type name, so this one stays there: an image given without a label has nothing to load or check.
            return super().transform(results) if "seg_map_path" in results else results

        def _load_seg_map(self, results: dict) -> None:
            super()._load_seg_map(results)  # also sets reduce_zero_label from the dataset when it was None
            path = str(results["seg_map_path"])
            if path not in self.checked:
                check_label_map(results, self.num_classes, self.ignore_index, bool(self.reduce_zero_label))
                self.checked.add(path)

        def __repr__(self) -> str:
            return f"{super().__repr__()[:-1]}, num_classes={self.num_classes}, ignore_index={self.ignore_index})"

    return CheckedLoadAnnotations


@TRANSFORMS.register_module(name="CheckedLoadAnnotations")
def build_checked_load_annotations(**kwargs):
    """``dict(type='CheckedLoadAnnotations', reduce_zero_label=True)`` in an mmseg pipeline.

    A builder function rather than the class, so that registering it does not import mmseg.
    """
    return _checked_load_annotations_class()(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# COCO annotations (mmdet)
# ---------------------------------------------------------------------------------------------------------
#: Why mmdet 3.3.0 drops or ignores an annotation, as the log line says it (one, several).
DROP_REASONS = {
    "ignore": ("marked ignore", "marked ignore"),
    "zero_area": ("zero-area box", "zero-area boxes"),  # width or height < 1 px, or area <= 0
    "outside": ("box outside the image", "boxes outside the image"),
    "category": ("of a category not in the config's classes", "of categories not in the config's classes"),
    "polygon": ("polygon with < 3 points", "polygons with < 3 points"),  # LoadAnnotations ignores box and mask
}


def coco_drop_reason(ann: dict, img_info: dict, cat_ids: list[int]) -> str | None:
    """The key in :data:`DROP_REASONS` for which mmdet drops annotation ``ann`` of image ``img_info``, or None
    for one it keeps. Mirrors ``CocoDataset.parse_data_info`` (the boxes, category and ignore flag) and
    ``LoadAnnotations._process_masks`` (an instance without a polygon of 3 points or more is ignored)."""
    if ann.get("ignore", False):
        return "ignore"
    x1, y1, w, h = ann["bbox"]
    if ann["area"] <= 0 or w < 1 or h < 1:
        return "zero_area"
    inside_w = max(0, min(x1 + w, img_info["width"]) - max(x1, 0))
    inside_h = max(0, min(y1 + h, img_info["height"]) - max(y1, 0))
    if inside_w * inside_h == 0:
        return "outside"
    if ann["category_id"] not in cat_ids:
        return "category"
    polygons = ann.get("segmentation")
    if isinstance(polygons, list) and polygons and not any(len(p) % 2 == 0 and len(p) >= 6 for p in polygons):
        return "polygon"
    return None


def drop_summary(ann_file: str, reasons: Counter) -> str | None:
    """The log line for the counts of :func:`coco_drop_reason` over a file (None: the kept ones), or None if
    nothing was dropped."""
    dropped = {k: n for k, n in reasons.items() if k is not None and n}
    if not dropped:
        return None
    parts = ", ".join(f"{n} {DROP_REASONS[k][n > 1]}" for k, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
    return (f"{ann_file}: {sum(dropped.values())} of {sum(reasons.values())} annotations dropped or ignored by "
            f"mmdet: {parts}. Fix them in that file to train on them.")


@functools.cache
def _checked_coco_dataset_class() -> type:
    """The dataset class, defined on first use: mmdet is imported here, not when ``adpe.mm`` is."""
    from mmdet.datasets import CocoDataset

    class CheckedCocoDataset(CocoDataset):
        """mmdet's ``CocoDataset`` that logs one line per annotation file counting what mmdet drops or ignores
        (:func:`coco_drop_reason`), and names the file of a truncated JSON or a malformed annotation. The data
        list is mmdet's own."""

        def load_data_list(self) -> list[dict]:
            self._drop_reasons: Counter = Counter()
            try:
                data_list = super().load_data_list()
            except (json.JSONDecodeError, UnicodeDecodeError) as err:  # pycocotools names no file
                raise ValueError(f"COCO annotation file {self.ann_file} is not valid JSON ({err}): it is truncated "
                                 "or corrupt. Download or write it again.") from err
            summary = drop_summary(self.ann_file, self._drop_reasons)
            if summary:
                print_log(summary, logger="current", level=logging.WARNING)
            return data_list

        def parse_data_info(self, raw_data_info: dict) -> dict | list[dict]:
            img_info = raw_data_info["raw_img_info"]
            try:
                for ann in raw_data_info["raw_ann_info"]:
                    self._drop_reasons[coco_drop_reason(ann, img_info, self.cat_ids)] += 1
                return super().parse_data_info(raw_data_info)
            except (KeyError, TypeError, ValueError) as err:  # a missing field or a wrong type in the JSON
                raise ValueError(f"COCO annotation file {self.ann_file}: an annotation of image {img_info.get('id')} "
                                 f"({img_info.get('file_name')}) is malformed ({type(err).__name__}: {err}). "
                                 "Fix or remove it.") from err

    return CheckedCocoDataset


@DATASETS.register_module(name="CheckedCocoDataset")
def build_checked_coco_dataset(**kwargs):
    """``dict(type='CheckedCocoDataset', ...)`` in an mmdet config, with ``CocoDataset``'s arguments.

    A builder function rather than the class, so that registering it does not import mmdet.
    """
    return _checked_coco_dataset_class()(**kwargs)
