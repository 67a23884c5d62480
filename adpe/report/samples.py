"""Per-image test records (``test_records*.npz``) and the metrics recomputed from them under image weights.

Every test writes, beside its ``test_results*.json``, one compressed ``.npz`` file keyed by the dataset's image
ids (written by ``adpe/mm/records.py``'s metrics). What a task keeps per image is what its framework metric sums
or accumulates over images, so that the metric can be recomputed for any integer weighting of the images (a
bootstrap draw is such a weighting: image i drawn w_i times):

- ``seg`` (mmseg ``IoUMetric``): per image and class the intersection, union, predicted and label areas, (I, C).
- ``cls`` (mmpretrain ``Accuracy``): per image the label, the top-k classes and their scores, (I,), (I, k), (I, k).
- ``det`` (mmdet ``CocoMetric`` / pycocotools ``COCOeval``), per IoU type ('bbox', 'segm'): per detection its
  image, category, rank in its image, score and, per area range and IoU threshold, whether it matched a ground
  truth and whether it is ignored; per area range, category and image the number of ground truths not ignored.

With all weights 1 the recomputed numbers are the frameworks' (tests/test_records_mm.py). Pure numpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1  # bumped when the file layout changes
# test_results.json -> test_records.npz, test_results_tta.json -> test_records_tta.npz (adpe.report.records)
RECORDS = {False: "test_records.npz", True: "test_records_tta.npz"}
COCO_STATS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")  # mmdet's names of COCOeval.stats[:6]


def records_path(results_path: str | Path) -> Path:
    """Where the records of a results file go: ``test_results*.json`` -> ``test_records*.npz``, any other
    ``X.json`` -> ``X.records.npz`` (tools/test.py --metrics-json X.json)."""
    path = Path(results_path)
    if path.name.startswith("test_results"):
        return path.with_name(path.name.replace("test_results", "test_records", 1)).with_suffix(".npz")
    return path.with_suffix(".records.npz")


def relative_ids(paths: Sequence[str]) -> list[str]:
    """Image ids from image paths: each path relative to their common folder, without the extension, so that two
    runs on the same images in different places get the same ids. (N,) -> (N,)"""
    paths = [str(p) for p in paths]
    if not paths:
        return []
    root = Path(paths[0]).parent if len(paths) == 1 else Path(_common_folder(paths))
    return [str(Path(p).relative_to(root).with_suffix("")) for p in paths]


def _common_folder(paths: list[str]) -> str:
    import os.path

    common = os.path.commonpath(paths)
    return common if not any(p == common for p in paths) else os.path.dirname(common)


# ---------------------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Records:
    """One test's per-image records: ``task`` ('seg', 'cls' or 'det'), ``image_ids`` (I,) strings in the order of
    every per-image axis, ``arrays`` the task's arrays (module docstring) and ``metrics`` the framework's numbers
    as it reported them (for reference)."""

    task: str
    image_ids: np.ndarray
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def save(self, path: str | Path) -> Path:
        """Write the compressed .npz (no pickled objects: strings as unicode arrays, metrics as JSON)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")  # savez appends .npz to a name without it
        np.savez_compressed(tmp, format=np.int64(FORMAT), task=np.str_(self.task),
                            image_ids=np.asarray(self.image_ids, dtype=str),
                            metrics=np.str_(json.dumps(self.metrics)), **self.arrays)
        tmp.replace(path)  # a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> Records:
        """Read a file that ``save`` wrote; ValueError naming the file for another format."""
        with np.load(path, allow_pickle=False) as data:
            if int(data.get("format", -1)) != FORMAT:
                raise ValueError(f"{path}: not a test records file of format {FORMAT}")
            arrays = {k: data[k] for k in data.files if k not in ("format", "task", "image_ids", "metrics")}
            return cls(str(data["task"]), data["image_ids"], arrays, json.loads(str(data["metrics"])))

    def take(self, ids: Sequence[str]) -> Records:
        """The records of the images ``ids`` (a subset, in that order): for a comparison on shared images."""
        where = {i: n for n, i in enumerate(self.image_ids.tolist())}
        index = np.array([where[i] for i in ids], dtype=np.int64)
        if self.task != "det":
            per_image = {k: v[index] for k, v in self.arrays.items() if v.ndim and len(v) == self.n_images}
            return Records(self.task, self.image_ids[index], {**self.arrays, **per_image}, self.metrics)
        # detections keep their image's position in the new order (pycocotools sorts images by id: the
        # within-score-tie order may change, nothing else)
        arrays = dict(self.arrays)
        remap = np.full(self.n_images, -1, dtype=np.int64)
        remap[index] = np.arange(len(index))
        for prefix in det_prefixes(self):
            keep = remap[arrays[prefix + "det_image"]] >= 0
            order = np.lexsort((arrays[prefix + "det_rank"][keep], remap[arrays[prefix + "det_image"][keep]],
                                arrays[prefix + "det_cat"][keep]))
            for name in ("det_image", "det_cat", "det_rank", "det_score", "det_flags"):
                arrays[prefix + name] = arrays[prefix + name][keep][order]
            arrays[prefix + "det_image"] = remap[arrays[prefix + "det_image"]].astype(np.int32)
            arrays[prefix + "npig"] = arrays[prefix + "npig"][:, :, index]
        return Records(self.task, self.image_ids[index], arrays, self.metrics)


# ---------------------------------------------------------------------------------------------------------
# Semantic segmentation: mmseg's IoUMetric
# ---------------------------------------------------------------------------------------------------------
SEG_AREAS = ("intersect", "union", "pred", "label")


def seg_records(image_ids: Sequence[str], areas: np.ndarray, metrics: dict | None = None) -> Records:
    """Records of mmseg's per-image areas ``areas`` (I, 4, C): intersection, union, predicted, label."""
    areas = np.asarray(areas)
    if areas.ndim != 3 or areas.shape[1] != 4:
        raise ValueError(f"areas of shape {areas.shape}: expected (images, 4, classes)")
    # exact pixel counts: an image's class area fits uint32 (mmseg's histc counts are whole floats)
    arrays = {name: np.rint(areas[:, j]).astype(np.uint32) for j, name in enumerate(SEG_AREAS)}
    return Records("seg", np.asarray(image_ids, dtype=str), arrays, metrics or {})


def miou(records: Records, weights: np.ndarray | None = None) -> np.ndarray:
    """mmseg's mIoU in % (unrounded) under image weights (B, I) -> (B,); None: all 1 -> (1,).

    As IoUMetric: areas summed over images, IoU per class, mean over classes whose union is not 0 (nanmean).
    The sums are exact integers here; mmseg sums float32 tensors, exact below 2^24 pixels per class.
    """
    w = _weights(weights, records.n_images)
    inter = w @ records.arrays["intersect"].astype(np.float64)  # (B, C)
    union = w @ records.arrays["union"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.nanmean(iou, axis=1) * 100


# ---------------------------------------------------------------------------------------------------------
# Classification: mmpretrain's Accuracy
# ---------------------------------------------------------------------------------------------------------
def cls_records(image_ids: Sequence[str], labels: np.ndarray, topk_classes: np.ndarray, topk_scores: np.ndarray,
                thr: float | None = 0.0, metrics: dict | None = None) -> Records:
    """Records of a classifier: labels (I,), its top-k classes and scores (I, k) as ``torch.topk`` orders them;
    ``thr``: Accuracy's score threshold (a prediction at or below it is not counted correct; None: none)."""
    arrays = {"label": np.asarray(labels, dtype=np.int64), "topk_classes": np.asarray(topk_classes, dtype=np.int64),
              "topk_scores": np.asarray(topk_scores, dtype=np.float32),
              "thr": np.float64(np.nan if thr is None else thr)}
    return Records("cls", np.asarray(image_ids, dtype=str), arrays, metrics or {})


def topk_correct(records: Records, k: int = 1) -> np.ndarray:
    """Whether each image's label is among its top ``k`` predictions scored above the threshold: (I,) bool."""
    a = records.arrays
    if k > a["topk_classes"].shape[1]:
        raise ValueError(f"top-{k}: the records keep the top {a['topk_classes'].shape[1]} classes only")
    hit = a["topk_classes"][:, :k] == a["label"][:, None]
    if not np.isnan(a["thr"]):
        hit &= a["topk_scores"][:, :k] > a["thr"]
    return hit.any(axis=1)


def accuracy(records: Records, weights: np.ndarray | None = None, k: int = 1) -> np.ndarray:
    """mmpretrain's top-k accuracy in % under image weights (B, I) -> (B,). mmpretrain computes it in float32;
    this is the exact fraction in float64 (the same count of correct images)."""
    w = _weights(weights, records.n_images)
    return w @ topk_correct(records, k).astype(np.float64) / w.sum(axis=1) * 100


# ---------------------------------------------------------------------------------------------------------
# Detection: pycocotools' COCOeval with image weights
# ---------------------------------------------------------------------------------------------------------
def det_prefixes(records: Records) -> list[str]:
    """The IoU types of detection records as key prefixes ('bbox.', 'segm.')."""
    return sorted({k.split(".", 1)[0] + "." for k in records.arrays if k.endswith(".det_score")})


def coco_arrays(coco_eval, prefix: str) -> tuple[list, dict[str, np.ndarray]]:
    """The per-image arrays of an evaluated ``COCOeval`` (after ``evaluate()``), keys prefixed by ``prefix``.

    Returns (image ids in the order of the per-image axes: ``params.imgIds``, arrays). The detections are kept in
    pycocotools' accumulate order: category, image, rank in the image (``evalImgs``' dtScores order, at most
    ``maxDets[-1]``); ``det_flags`` packs (A, T) bits of "matched" then (A, T) of "ignored" (np.packbits).
    """
    p = coco_eval.params
    n_img, n_area, n_thr = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    cats = p.catIds if p.useCats else [-1]
    npig = np.zeros((n_area, len(cats), n_img), dtype=np.int32)
    det_image, det_cat, det_rank, det_score, flags = [], [], [], [], []
    for k in range(len(cats)):
        for i in range(n_img):
            per_area = [coco_eval.evalImgs[(k * n_area + a) * n_img + i] for a in range(n_area)]
            if per_area[0] is None:  # no ground truth and no detection of this category here
                continue
            for a, e in enumerate(per_area):
                npig[a, k, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            n_det = len(per_area[0]["dtScores"])
            if not n_det:
                continue
            # pycocotools counts dtMatches != 0 as matched (a ground truth's id)
            matched = np.stack([np.asarray(e["dtMatches"]) != 0 for e in per_area])  # (A, T, D)
            ignored = np.stack([np.asarray(e["dtIgnore"]).astype(bool) for e in per_area])
            bits = np.concatenate([matched, ignored]).reshape(2 * n_area * n_thr, n_det).T  # (D, 2AT)
            flags.append(np.packbits(bits, axis=1))
            det_image.append(np.full(n_det, i))
            det_cat.append(np.full(n_det, k))
            det_rank.append(np.arange(n_det))
            det_score.append(np.asarray(per_area[0]["dtScores"], dtype=np.float64))
    n_bytes = -(-2 * n_area * n_thr // 8)
    arrays = {
        "det_image": _cat(det_image, np.int32), "det_cat": _cat(det_cat, np.int32),
        "det_rank": _cat(det_rank, np.int32), "det_score": _cat(det_score, np.float64),
        "det_flags": np.concatenate(flags) if flags else np.zeros((0, n_bytes), np.uint8),
        "npig": npig, "cat_ids": np.asarray(cats, dtype=np.int64),
        "iou_thrs": np.asarray(p.iouThrs, dtype=np.float64), "rec_thrs": np.asarray(p.recThrs, dtype=np.float64),
        "area_rng": np.asarray(p.areaRng, dtype=np.float64), "area_lbl": np.asarray(p.areaRngLbl, dtype=str),
        "max_dets": np.asarray(p.maxDets, dtype=np.int64),
        "stats": np.asarray(getattr(coco_eval, "stats", np.zeros(0)), dtype=np.float64),
    }
    return list(p.imgIds), {prefix + k: v for k, v in arrays.items()}


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def det_records(image_ids: Sequence, arrays: dict[str, np.ndarray], metrics: dict | None = None) -> Records:
    """Records of one or more ``coco_arrays`` results (the same image ids)."""
    return Records("det", np.asarray([str(i) for i in image_ids], dtype=str), arrays, metrics or {})


def _det_flags(records: Records, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The detections' (matched, ignored) bits, each (N, A, T) bool."""
    a = records.arrays
    n_area, n_thr = len(a[prefix + "area_rng"]), len(a[prefix + "iou_thrs"])
    bits = np.unpackbits(a[prefix + "det_flags"], axis=1, count=2 * n_area * n_thr).astype(bool)
    bits = bits.reshape(-1, 2, n_area, n_thr)
    return bits[:, 0], bits[:, 1]


def coco_ap(records: Records, iou_type: str = "bbox", weights: np.ndarray | None = None, *,
            iou_thr: float | None = None, area: str = "all", max_dets: int | None = None,
            block: int = 25) -> np.ndarray:
    """COCOeval's AP (a fraction, as ``stats``) under integer image weights (B, I) -> (B,).

    What ``COCOeval.accumulate`` and ``summarize`` compute, with each image counted ``w_i`` times: its
    detections enter the cumulative true / false positive counts with weight w_i, its ground truths the
    recall's denominator w_i times. Equal to pycocotools on a dataset where each image appears w_i times
    (tests/test_records.py). A category without ground truth in a draw is left out of that draw's mean, as
    pycocotools leaves out its -1. ``iou_thr``: one IoU threshold (AP50: 0.5) or all; ``max_dets``: default as
    ``stats``: 100 for AP over all thresholds, the largest ``maxDets`` otherwise. ``block``: draws at a time.
    """
    a, prefix = records.arrays, iou_type + "."
    if prefix + "det_score" not in a:
        raise KeyError(f"no {iou_type} records (has {', '.join(p[:-1] for p in det_prefixes(records))})")
    w = _weights(weights, records.n_images)
    thrs = a[prefix + "iou_thrs"]
    t_index = np.arange(len(thrs)) if iou_thr is None else np.where(iou_thr == thrs)[0]
    area_index = list(a[prefix + "area_lbl"]).index(area)
    if max_dets is None:
        max_dets = 100 if iou_thr is None and area == "all" else int(a[prefix + "max_dets"][-1])
    if max_dets not in a[prefix + "max_dets"] or not len(t_index):
        return np.full(len(w), -1.0)  # as pycocotools: nothing to average
    matched, ignored = _det_flags(records, prefix)
    keep = a[prefix + "det_rank"] < max_dets
    tps = (matched & ~ignored)[keep][:, area_index][:, t_index]  # (N, T)
    fps = (~matched & ~ignored)[keep][:, area_index][:, t_index]
    det_cat, det_image, score = (a[prefix + name][keep] for name in ("det_cat", "det_image", "det_score"))
    npig = a[prefix + "npig"][area_index].astype(np.float64)  # (K, I)
    rec_thrs = a[prefix + "rec_thrs"]
    total = np.zeros(len(w))
    valid = np.zeros(len(w))
    for k in range(npig.shape[0]):
        dets = np.flatnonzero(det_cat == k)
        # pycocotools' order: images in id order, each image's detections by rank; then a stable sort by score
        dets = dets[np.argsort(-score[dets], kind="mergesort")]
        n_gt = w @ npig[k]  # (B,)
        for start in range(0, len(w), block):
            rows = slice(start, start + block)
            mean_p = _category_precision(w[rows][:, det_image[dets]], tps[dets].T, fps[dets].T, n_gt[rows], rec_thrs)
            ok = n_gt[rows] > 0
            total[rows] += np.where(ok, mean_p, 0.0)
            valid[rows] += ok
    with np.errstate(invalid="ignore"):
        return np.where(valid > 0, total / np.maximum(valid, 1), -1.0)


def _category_precision(wd: np.ndarray, tps: np.ndarray, fps: np.ndarray, n_gt: np.ndarray,
                        rec_thrs: np.ndarray) -> np.ndarray:
    """One category's precision averaged over IoU thresholds and recall thresholds, per draw.

    wd (B, N): each sorted detection's image weight; tps / fps (T, N) bool; n_gt (B,) -> (B,). As
    ``COCOeval.accumulate``: cumulative counts, precision made non-increasing from the right, read at the first
    detection reaching each recall threshold (0 past the last recall).
    """
    n_draws, n_det = wd.shape
    n_thr = tps.shape[0]
    if n_det == 0:
        return np.zeros(n_draws)
    tp = np.cumsum(wd[:, None, :] * tps[None], axis=2)  # (B, T, N)
    fp = np.cumsum(wd[:, None, :] * fps[None], axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rc = tp / n_gt[:, None, None]
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]  # pycocotools' right-to-left max loop
    q = np.zeros((n_draws, n_thr, len(rec_thrs)))
    if n_det * len(rec_thrs) <= 8192:  # few detections: count "recall < threshold" at once (what searchsorted does)
        index = (rc[..., None, :] < rec_thrs[:, None]).sum(axis=-1)  # (B, T, R)
        inside = (index < n_det) & (n_gt[:, None, None] > 0)
        q[inside] = np.take_along_axis(pr, np.minimum(index, n_det - 1), axis=2)[inside]
        return q.mean(axis=(1, 2))
    for b in range(n_draws):
        if n_gt[b] <= 0:
            continue
        for t in range(n_thr):
            index = np.searchsorted(rc[b, t], rec_thrs, side="left")
            inside = index < n_det
            q[b, t, inside] = pr[b, t, index[inside]]
    return q.mean(axis=(1, 2))


def coco_stats(records: Records, iou_type: str = "bbox", weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """mmdet's bbox_/segm_ mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l (fractions, unrounded) -> {name: (B,)}."""
    args = {"mAP": {}, "mAP_50": {"iou_thr": 0.5}, "mAP_75": {"iou_thr": 0.75}, "mAP_s": {"area": "small"},
            "mAP_m": {"area": "medium"}, "mAP_l": {"area": "large"}}
    return {f"{iou_type}_{name}": coco_ap(records, iou_type, weights, **kw) for name, kw in args.items()}


def _weights(weights: np.ndarray | None, n_images: int) -> np.ndarray:
    """Image weights as a float (B, I) matrix; None: one draw of all ones."""
    if weights is None:
        return np.ones((1, n_images))
    w = np.asarray(weights, dtype=np.float64)
    w = w[None] if w.ndim == 1 else w
    if w.shape[1] != n_images:
        raise ValueError(f"weights for {w.shape[1]} images, records of {n_images}")
    return w
