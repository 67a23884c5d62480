"""Datasets and transforms (mmengine's DATASETS, TRANSFORMS and FUNCTIONS registries); bad data named.

* ``CheckedLoadAnnotations`` (mmseg transform): mmseg's ``LoadAnnotations``, which then checks each label map
  once per file and process: it must be single-channel, have its image's height x width, and hold only the
  dataset's classes or the ignore index. Anything else raises a ValueError naming the label and image files (mmseg
  would crop a wrong-sized label and train on it, then fail in collate; it counts out-of-range values in its
  metrics). The benchmark ADE20K configs use it in their train, test and TTA pipelines.
* ``CheckedCocoDataset`` (mmdet dataset): mmdet's ``CocoDataset``, which reports in one log line per annotation
  file how many annotations mmdet drops (zero-area boxes, boxes outside the image, ...) or ignores (no polygon of
  3 points or more), and names the file of a truncated JSON or a malformed annotation.
* ``AdPEImageFolder`` (dataset) and ``adpe_multicrop_collate`` (FUNCTIONS): pretraining's image folder with the
  MAE+ multi-crop transform, and its collate.

mmseg and mmdet are imported when a checked transform or dataset is first built, not at ``import adpe.mm``
(pretraining loads neither): the registered names are builder functions in mmengine's root registries, which
mmseg's and mmdet's fall back to (as ``AdPEDetTTAModel`` in adpe/mm/inference.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
from mmengine.logging import print_log
from mmengine.registry import DATASETS, FUNCTIONS, TRANSFORMS

from adpe.data import ImageFolderDataset, MultiCropTransform, multicrop_collate
from adpe.mm.lazy import registered_lazily

__all__ = ["DROP_REASONS", "AdPEImageFolder", "adpe_multicrop_collate", "check_label_map", "coco_drop_reason",
           "drop_summary"]


# ---------------------------------------------------------------------------------------------------------
# pretraining images
# ---------------------------------------------------------------------------------------------------------
@DATASETS.register_module()
class AdPEImageFolder(ImageFolderDataset):
    """ImageNet-style or flat image folder with the MAE+ multi-crop transform (labels unused).

    decode: 'cpu' decodes and crops in the loader workers (PIL); 'device' has them read the files' bytes only,
    and the model's ``AdPEMultiCropPreprocessor`` decodes and crops the batch on the training device
    (``adpe.data.decode_multicrop``: nvJPEG on a GPU) -- for GPUs that the loader's cores cannot keep fed.
    """

    def __init__(self, data_root: str, num_crops: int = 4, crop_size: int = 112,
                 scale: tuple[float, float] = (0.08, 1.0), decode: str = "cpu"):
        if decode not in ("cpu", "device"):
            raise ValueError(f"AdPEImageFolder: decode must be 'cpu' or 'device', got {decode!r}")
        super().__init__(data_root, transform=MultiCropTransform(num_crops, crop_size, tuple(scale)),
                         encoded=decode == "device")
        self.metainfo = {"num_crops": num_crops, "crop_size": crop_size, "decode": decode}

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        return {"encoded": item, "transform": self.transform} if self.encoded else item


@FUNCTIONS.register_module()
def adpe_multicrop_collate(batch: list) -> dict:
    """One batch: {'inputs': (B * crops, C, H, W)} stacked crops, or for ``decode='device'`` the encoded
    images and their transform, which the model's preprocessor decodes on its device."""
    if batch and isinstance(batch[0], dict):
        return {"inputs": {"encoded": [item["encoded"] for item in batch], "transform": batch[0]["transform"]}}
    return {"inputs": multicrop_collate(batch)}


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


@registered_lazily(TRANSFORMS, "CheckedLoadAnnotations")
def _checked_load_annotations_class() -> type:
    """``dict(type='CheckedLoadAnnotations', reduce_zero_label=True)`` in an mmseg pipeline. The transform class,
    defined on first use: mmseg is imported here, not when ``adpe.mm`` is."""
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


@registered_lazily(DATASETS, "CheckedCocoDataset")
def _checked_coco_dataset_class() -> type:
    """``dict(type='CheckedCocoDataset', ...)`` in an mmdet config, with ``CocoDataset``'s arguments. The dataset
    class, defined on first use: mmdet is imported here, not when ``adpe.mm`` is."""
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
