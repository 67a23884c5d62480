"""Record sizes and bootstrap times at the real test sets' sizes, with simulated predictions (prints figures).

    python tools/benchmark_stats.py [--coco-draws 200] [--miou-draws 1000] [--top1-draws 1000] [--out DIR]

ADE20K val: 2,000 images x 150 classes of areas; COCO val: 5,000 images, 80 categories, 100 detections per image
(box and mask); ImageNet val: 50,000 images, top-5. Each is written as test_records.npz would be (size on disk),
then timed: the 95% interval of one run, and the paired delta of two runs (docs/statistics.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from adpe.report import samples, stats


def simulated_seg(rng: np.random.Generator, n_images: int = 2000, n_classes: int = 150) -> samples.Records:
    """ADE20K-like areas: each image holds a few classes of a 512 x 683 image."""
    present = rng.random((n_images, n_classes)) < 8 / n_classes
    label = (present * rng.gamma(1.0, 512 * 683 / 8, (n_images, n_classes))).astype(np.int64)
    inter = (label * rng.beta(4, 2, label.shape)).astype(np.int64)
    false_pos = ((rng.random(label.shape) < 0.05) * rng.gamma(1.0, 5000, label.shape)).astype(np.int64)
    pred = inter + false_pos
    areas = np.stack([inter, label + pred - inter, pred, label], axis=1)
    return samples.seg_records([f"ADE_val_{i:08d}" for i in range(1, n_images + 1)], areas)


def simulated_det(rng: np.random.Generator, n_images: int = 5000, n_cats: int = 80, per_image: int = 100,
                  iou_types=("bbox", "segm")) -> samples.Records:
    """COCO-like per-image matches: 100 detections per image, matched (at the IoU thresholds below its simulated
    IoU) more often the higher their score; each matched detection is a ground truth, and a few ground truths
    per image are missed. Area ranges: the ground truths and detections split at random."""
    arrays = {}
    n_area, n_thr = 4, 10
    image = np.repeat(np.arange(n_images), per_image)
    cat = rng.integers(0, n_cats, image.size)
    for iou_type in iou_types:
        score = rng.random(image.size)
        order = np.lexsort((-score, image, cat))  # category, image, then by score: the rank in the image
        image_s, cat_s, score_s = image[order], cat[order], score[order]
        start = np.r_[0, np.flatnonzero(np.diff(cat_s * n_images + image_s)) + 1]
        rank = np.arange(image_s.size) - np.repeat(start, np.diff(np.r_[start, image_s.size]))
        hit = rng.random(image_s.size) < score_s**3 * 0.9
        iou = np.where(hit, rng.uniform(0.5, 1.0, image_s.size), 0.0)
        matched = iou[:, None] >= np.linspace(0.5, 0.95, n_thr)[None]  # (N, T)
        size = rng.integers(1, n_area, image_s.size)  # small / medium / large
        in_area = np.stack([np.ones(image_s.size, bool)] + [size == a for a in range(1, n_area)], axis=1)  # (N, A)
        matched_a = matched[:, None, :] & in_area[:, :, None]
        ignored_a = ~in_area[:, :, None] & ~matched_a  # outside the range and unmatched: ignored
        ignored_a = np.broadcast_to(ignored_a, matched_a.shape)
        npig = np.zeros((n_area, n_cats, n_images), dtype=np.int32)
        for a in range(n_area):  # the matched ones at IoU 0.5, and missed ones
            np.add.at(npig[a], (cat_s, image_s), matched_a[:, a, 0])
        missed = rng.poisson(0.01, (n_cats, n_images))
        npig[0] += missed
        p = iou_type + "."
        arrays.update({p + "det_image": image_s.astype(np.int32), p + "det_cat": cat_s.astype(np.int32),
                       p + "det_rank": rank.astype(np.int32), p + "det_score": score_s,
                       p + "det_flags": np.packbits(np.concatenate([matched_a, ignored_a], axis=1)
                                                    .reshape(image_s.size, -1), axis=1),
                       p + "npig": npig, p + "cat_ids": np.arange(1, n_cats + 1),
                       p + "iou_thrs": np.linspace(0.5, 0.95, n_thr), p + "rec_thrs": np.linspace(0, 1, 101),
                       p + "area_rng": np.array([[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]]),
                       p + "area_lbl": np.array(["all", "small", "medium", "large"]),
                       p + "max_dets": np.array([100, 300, 1000]), p + "stats": np.zeros(12)})
    return samples.det_records(range(1, n_images + 1), arrays)


def simulated_cls(rng: np.random.Generator, n_images: int = 50000, n_classes: int = 1000) -> samples.Records:
    """ImageNet-like top-5: right 84% of the time at rank 1."""
    label = rng.integers(0, n_classes, n_images)
    top = rng.integers(0, n_classes, (n_images, 5))
    top[:, 0] = np.where(rng.random(n_images) < 0.84, label, top[:, 0])
    scores = np.sort(rng.random((n_images, 5)), axis=1)[:, ::-1]
    return samples.cls_records([f"ILSVRC2012_val_{i:08d}" for i in range(1, n_images + 1)], label, top, scores)


def _size(records: samples.Records, folder: Path) -> float:
    """MiB on disk of the records as TestRecordsHook writes them."""
    return records.save(folder / "test_records.npz").stat().st_size / 2**20


def _timed(label: str, fn) -> None:
    start = time.perf_counter()
    result = fn()
    print(f"  {label}: {time.perf_counter() - start:6.1f} s  -> {result.point:.4g} [{result.low:.4g}, "
          f"{result.high:.4g}]" + (f" {result.verdict}" if hasattr(result, "verdict") else ""), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco-draws", type=int, default=stats.COCO_DRAWS)
    parser.add_argument("--miou-draws", type=int, default=stats.DRAWS)
    parser.add_argument("--top1-draws", type=int, default=stats.DRAWS)
    parser.add_argument("--skip-coco", action="store_true", help="sizes and mIoU / top-1 only")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seg_a, seg_b = simulated_seg(rng), simulated_seg(rng)
        print(f"ADE20K val (2,000 images x 150 classes): records {_size(seg_a, folder):.2f} MiB")
        _timed(f"mIoU interval, B={args.miou_draws}",
               lambda: stats.interval(lambda w: samples.miou(seg_a, w), seg_a.n_images, args.miou_draws))
        _timed(f"mIoU paired delta, B={args.miou_draws}",
               lambda: stats.paired_delta([lambda w: samples.miou(seg_a, w)], [lambda w: samples.miou(seg_b, w)],
                                          seg_a.n_images, args.miou_draws))
        cls_a = simulated_cls(rng)
        print(f"ImageNet val (50,000 images, top-5): records {_size(cls_a, folder):.2f} MiB")
        _timed(f"top-1 interval, B={args.top1_draws}",
               lambda: stats.interval(lambda w: samples.accuracy(cls_a, w), cls_a.n_images, args.top1_draws))
        det = simulated_det(rng)
        n_det = len(det.arrays["bbox.det_score"])
        print(f"COCO val (5,000 images, 80 categories, {n_det:,} detections per IoU type, box + mask): records "
              f"{_size(det, folder):.2f} MiB")
        if not args.skip_coco:
            _timed(f"box AP interval, B={args.coco_draws} (basic, as the report)",
                   lambda: stats.interval(lambda w: samples.coco_ap(det, "bbox", w), det.n_images, args.coco_draws,
                                          method="basic"))


if __name__ == "__main__":
    main()
