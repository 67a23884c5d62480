"""Intervals, paired deltas and verdicts (adpe.report.stats), the weighted COCO AP (adpe.report.samples), the
pipeline's seeds, the report's interval cells and tools/compare.py. No OpenMMLab module: simulated records."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adpe import report
from adpe.report import samples, stats
from adpe.tooling.pipeline import PipelineConfig, plan
from adpe.tooling.pipeline import main as pipeline_main

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- weighted COCO AP
def _coco(rng: np.random.Generator, n_img: int = 24, n_cat: int = 4) -> tuple[dict, list[dict]]:
    """A small COCO ground truth (crowd boxes included) and detections near it, with continuous scores."""
    images, anns, dets = [], [], []
    for i in range(n_img):
        image_id = 1000 + 7 * i
        images.append({"id": image_id, "width": 640, "height": 480})
        for _ in range(rng.integers(0, 6)):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(5, 140), rng.uniform(5, 100)
            cat = int(rng.integers(1, n_cat + 1))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            for _ in range(rng.integers(0, 3)):  # near misses and hits, sometimes of another category
                j = rng.normal(0, 8, 4)
                dets.append({"image_id": image_id, "score": float(rng.random()),
                             "category_id": cat if rng.random() < 0.8 else int(rng.integers(1, n_cat + 1)),
                             "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
        for _ in range(rng.integers(0, 4)):  # false positives
            dets.append({"image_id": image_id, "category_id": int(rng.integers(1, n_cat + 1)),
                         "score": float(rng.random()), "bbox": [*rng.uniform(0, 380, 2), *rng.uniform(5, 100, 2)]})
    cats = [{"id": c, "name": str(c)} for c in range(1, n_cat + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _cocoeval(gt: dict, dets: list[dict], max_dets: list[int]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.params.maxDets = max_dets
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _duplicated(gt: dict, dets: list[dict], weights: np.ndarray) -> tuple[dict, list[dict]]:
    """The dataset in which image i appears weights[i] times, each copy under a new id (next to each other in
    id order, as pycocotools sorts images), with its annotations and detections."""
    images, anns, out = [], [], []
    for image, w in zip(gt["images"], weights, strict=True):
        for copy_index in range(int(w)):
            new_id = image["id"] * 100 + copy_index
            images.append({**image, "id": new_id})
            anns += [{**a, "id": len(anns) + 1 + n, "image_id": new_id}
                     for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == image["id"])]
            out += [{**d, "image_id": new_id} for d in dets if d["image_id"] == image["id"]]
    return {**gt, "images": images, "annotations": anns}, out


@pytest.mark.parametrize("max_dets", [[100, 300, 1000], [1, 10, 100]])
def test_weighted_coco_ap_equals_pycocotools_on_duplicated_images(max_dets):
    rng = np.random.default_rng(1)
    gt, dets = _coco(rng)
    ids, arrays = samples.coco_arrays(_cocoeval(gt, dets, max_dets), "bbox.")
    records = samples.det_records(ids, arrays)
    assert records.image_ids.tolist() == [str(i["id"]) for i in gt["images"]]
    ones = samples.coco_stats(records, "bbox")
    assert np.allclose([v[0] for v in ones.values()], arrays["bbox.stats"][:6], atol=1e-12, rtol=0)
    weightings = rng.integers(0, 4, (4, len(gt["images"])))
    ours = samples.coco_stats(records, "bbox", weightings)  # all weightings at once: (B,) per stat
    for b, weights in enumerate(weightings):
        theirs = _cocoeval(*_duplicated(gt, dets, weights), max_dets).stats[:6]
        assert np.abs(np.array([v[b] for v in ours.values()]) - theirs).max() <= 1e-9, (b, weights)


# ------------------------------------------------------------------------------------------- coverage
def _accuracy_pair(rng: np.random.Generator, n: int) -> tuple[samples.Records, samples.Records]:
    """Two classifiers on the same n images, errors correlated through a shared difficulty: A is right when
    u < 0.72, B when u < 0.70 with 10% of its answers flipped: 72% and 66% in the population (delta 6 points)."""
    u = rng.random(n)
    right_a = u < 0.72
    right_b = (u < 0.70) ^ (rng.random(n) < 0.10)
    label = np.zeros(n, dtype=np.int64)

    def records(right):
        top = np.where(right, 0, 1)[:, None]
        return samples.cls_records([str(i) for i in range(n)], label, top, np.ones((n, 1)))

    return records(right_a), records(right_b)


ACCURACY_DELTA = 72.0 - (70.0 * 0.9 + 30.0 * 0.1)


def _miou_pair(rng: np.random.Generator, n: int, classes: int = 8) -> tuple[samples.Records, samples.Records]:
    """Two segmenters of simulated areas. Class c is in an image with probability p_c, with an area of mean 2000
    px; A covers a Beta(8, 2) share of it (mean 0.8), B 0.95 of A's share (correlated); both predict the same
    false positives (mean 40 px per image and class), B also its own (mean 20). Union = label + false positives."""
    p = np.linspace(0.1, 0.6, classes)
    label = (rng.random((n, classes)) < p) * rng.gamma(2.0, 1000.0, (n, classes))
    inter_a = label * rng.beta(8, 2, (n, classes))
    inter_b = 0.95 * inter_a
    fp_a = (rng.random((n, classes)) < 0.1) * rng.gamma(2.0, 200.0, (n, classes))
    fp_b = fp_a + (rng.random((n, classes)) < 0.1) * rng.gamma(2.0, 100.0, (n, classes))

    def records(inter, fp):
        areas = np.stack([inter, label + fp, inter + fp, label], axis=1)
        return samples.seg_records([str(i) for i in range(n)], np.rint(areas))

    return records(inter_a, fp_a), records(inter_b, fp_b)


def _true_miou_delta(classes: int = 8) -> float:
    """The population's mIoU difference: mean over classes of E[intersection] / E[union], A minus B."""
    label = np.linspace(0.1, 0.6, classes) * 2000.0
    iou_a = 0.8 * label / (label + 40.0)
    iou_b = 0.95 * 0.8 * label / (label + 60.0)
    return float(np.mean(iou_a - iou_b) * 100)


@pytest.mark.parametrize("metric", ["accuracy", "miou"])
def test_paired_delta_interval_covers_the_true_difference_95_percent_of_the_time(metric):
    rng = np.random.default_rng(7)
    make, stat, truth, n = {
        "accuracy": (_accuracy_pair, samples.accuracy, ACCURACY_DELTA, 400),
        "miou": (_miou_pair, samples.miou, _true_miou_delta(), 300),
    }[metric]
    covered = 0
    for trial in range(400):  # 400 simulated test sets
        a, b = make(rng, n)
        delta = stats.paired_delta([lambda w, a=a: stat(a, w)], [lambda w, b=b: stat(b, w)], n, draws=500,
                                   seed=trial)
        covered += delta.low <= truth <= delta.high
    assert 0.93 <= covered / 400 <= 0.97, covered / 400


def test_paired_interval_is_narrower_than_unpaired_with_correlated_errors():
    a, b = _accuracy_pair(np.random.default_rng(3), 1000)
    fa, fb = (lambda w: samples.accuracy(a, w)), (lambda w: samples.accuracy(b, w))
    paired = stats.paired_delta([fa], [fb], 1000, draws=1000)
    unpaired = stats.unpaired_delta(fa, fb, 1000, draws=1000)
    assert paired.point == pytest.approx(unpaired.point)
    assert (paired.high - paired.low) < 0.8 * (unpaired.high - unpaired.low)


def test_verdicts():
    rng = np.random.default_rng(5)
    a, b = _accuracy_pair(rng, 2000)
    same = stats.paired_delta([lambda w: samples.accuracy(a, w)], [lambda w: samples.accuracy(a, w)], 2000)
    assert same.verdict == "not distinguishable" and same.point == same.low == same.high == 0.0
    assert same.sign_flip == 1.0
    better = stats.paired_delta([lambda w: samples.accuracy(a, w)], [lambda w: samples.accuracy(b, w)], 2000)
    assert better.verdict == "better" and better.low > 0 and better.sign_flip == 0.0
    worse = stats.paired_delta([lambda w: samples.accuracy(b, w)], [lambda w: samples.accuracy(a, w)], 2000)
    assert worse.verdict == "worse" and worse.high < 0
    assert stats.verdict(-0.1, 0.2) == "not distinguishable"
    # deterministic: the same draws for the same seed
    again = stats.paired_delta([lambda w: samples.accuracy(a, w)], [lambda w: samples.accuracy(b, w)], 2000)
    assert (again.low, again.high) == (better.low, better.high)


def test_two_level_interval_holds_the_seed_variance():
    """Two seeds far apart: the two-level interval is wider than either seed's own image interval."""
    rng = np.random.default_rng(2)
    a, _ = _accuracy_pair(rng, 1000)
    b, _ = _accuracy_pair(np.random.default_rng(9), 1000)
    b.image_ids = a.image_ids
    fa, fb = (lambda w: samples.accuracy(a, w)), (lambda w: samples.accuracy(b, w) - 5)  # a seed 5 points lower
    one = stats.seed_interval([fa], 1000)
    two = stats.seed_interval([fa, fb], 1000)
    assert two.seeds == 2 and two.seed_std == pytest.approx(abs(fa(np.ones((1, 1000)))[0]
                                                                - fb(np.ones((1, 1000)))[0]) / np.sqrt(2))
    assert (two.high - two.low) > 1.5 * (one.high - one.low)


# ------------------------------------------------------------------------------------------- pipeline seeds
SEEDED = """
work_dir: {work}
gpus: 8
data: {{imagenet: /data/in1k, ade20k: /data/ade, coco: /data/coco}}
variants:
  - {{name: mae, pretrain: null, baseline: true}}
ade20k: {{config: benchmarks/ade20k/upernet_adpe_vitb.py, tta: true, seeds: [0, 1]}}
coco: {{config: benchmarks/coco/mask_rcnn_adpe_vitb.py, seeds: [3, 4]}}
imagenet:
  finetune: {{config: benchmarks/imagenet/finetune_adpe_vitb.py, seeds: [0, 1, 2]}}
"""


def test_pipeline_seeds_give_one_work_dir_per_seed_locally_and_on_slurm(tmp_path, capsys):
    path = tmp_path / "seeded.yaml"
    path.write_text(SEEDED.format(work=tmp_path / "work"))
    steps = plan(PipelineConfig.load(path))
    v = tmp_path / "work" / "mae"
    got = [(s.stage, s.seed, s.work_dir) for s in steps if s.variant == "mae"]
    assert got == [("ade20k", 0, v / "ade20k/seed_0"), ("ade20k_tta", 0, v / "ade20k/seed_0"),
                   ("ade20k", 1, v / "ade20k/seed_1"), ("ade20k_tta", 1, v / "ade20k/seed_1"),
                   ("coco", 3, v / "coco/seed_3"), ("coco", 4, v / "coco/seed_4"),
                   ("imagenet", 0, v / "imagenet/seed_0"), ("imagenet", 1, v / "imagenet/seed_1"),
                   ("imagenet", 2, v / "imagenet/seed_2")]
    for step in steps[:-1]:
        assert f"--work-dir {step.work_dir} " in step.shell() and step.shell().endswith(f"randomness.seed={step.seed}")
    pipeline_main(["--config", str(path), "--dry-run"])
    local = capsys.readouterr().out
    assert local.count("--work-dir") == 9 and f"--work-dir {v}/coco/seed_4 " in local
    pipeline_main(["--config", str(path), "--launcher", "slurm", "--partition", "gpu", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split("--job-name=")[1].split()[0].strip("'") for line in lines]
    assert names[:4] == ["work.mae.ade20k.seed0", "work.mae.ade20k_tta.seed0", "work.mae.ade20k.seed1",
                         "work.mae.ade20k_tta.seed1"]
    assert "--dependency=afterok:$J1" in lines[1] and "--dependency=afterok:$J3" in lines[3]  # its own seed
    assert names[-1] == "work.report" and len(lines) == 10


# ------------------------------------------------------------------------------------------- the report
def _tested(folder: Path, metrics: dict, records: samples.Records | None, tta: bool = False) -> None:
    """A tested work dir: test_results*.json and (unless None) its records."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / report.records.TEST_RESULTS[tta]).write_text(json.dumps({"config": "c.py", "metrics": metrics}))
    if records is not None:
        records.save(folder / samples.RECORDS[tta])


def _seeded_run(tmp_path: Path) -> Path:
    """Two variants: ADE20K with two seeds (simulated areas: 'better' is clearly better), the linear probe with
    one seed each; an old variant without records."""
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    for name, baseline in (("base", True), ("better", False), ("old", False)):
        (run / name).mkdir(parents=True)
        report.RunInfo(name, name.title(), None, baseline).write(run / name / "run.json")
    for seed in (0, 1):
        good, bad = _miou_pair(rng, 200)
        for name, rec in (("better", good), ("base", bad)):
            _tested(run / name / "ade20k" / f"seed_{seed}", {"mIoU": float(samples.miou(rec)[0])}, rec)
    a, b = _accuracy_pair(rng, 500)
    for name, rec in (("better", a), ("base", b)):
        _tested(run / name / "linear_probe" / "seed_0", {"accuracy/top1": float(samples.accuracy(rec)[0])}, rec)
    _tested(run / "old" / "ade20k", {"mIoU": 40.0}, None)
    return run


def test_report_shows_intervals_seeds_paired_deltas_and_retest_commands(tmp_path):
    rows = report.collect_rows([_seeded_run(tmp_path)])
    paths = report.write_report(rows, tmp_path / "out", env={"device": "test"})
    doc = json.loads(paths["json"].read_text())
    by = {r["name"]: r for r in doc["rows"]}
    cells = by["better"]["cells"]
    # mean ± std over the two seeds, then the interval
    assert by["better"]["stages"]["ade20k"]["seeds"].keys() == {"0", "1"}
    value = by["better"]["intervals"]["ade20k_miou"]
    assert value["seeds"] == 2 and value["n_images"] == 200 and value["draws"] == 1000
    assert cells["ade20k_miou"] == (f"{by['better']['values']['ade20k_miou']:.2f} ± "
                                    f"{by['better']['spread']['ade20k_miou']:.2f} [{value['low']:.2f}, "
                                    f"{value['high']:.2f}]")
    delta = by["better"]["deltas"]["ade20k_miou"]
    assert delta["verdict"] == "better" and cells["ade20k_miou_delta"].endswith(" better")
    assert cells["ade20k_miou_delta"].startswith(f"+{delta['point']:.2f} [+")
    assert cells["linear_probe_top1_delta"].endswith("] better")
    assert by["base"]["cells"]["ade20k_miou_delta"] == "baseline"
    # the old run: its point estimate, no interval, and the command that writes the records
    assert by["old"]["cells"]["ade20k_miou"] == "40.00" and by["old"]["intervals"] == {}
    with paths["csv"].open(newline="") as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["better"]["ade20k_miou_delta_low"]) == pytest.approx(delta["low"], abs=1e-4)
    assert csv_rows["better"]["ade20k_miou_verdict"] == "better" and csv_rows["old"]["ade20k_miou_low"] == ""
    text = paths["md"].read_text()
    assert "ADE20K mIoU: 200 images, 2 seed(s), B = 1000 draws (percentile)" in text
    assert f"- Old, ADE20K mIoU: `python tools/test.py CONFIG $(cat {tmp_path}/run/old/ade20k/last_checkpoint)" in text
    assert paths["deltas"].read_bytes()[:4] == b"\x89PNG"


def test_report_notes_runs_on_different_images(tmp_path):
    run = _seeded_run(tmp_path)
    rec = samples.Records.load(run / "better/linear_probe/seed_0/test_records.npz")
    rec.take(rec.image_ids[:400].tolist()).save(run / "better/linear_probe/seed_0/test_records.npz")
    rows = report.collect_rows([run])
    uncertainty = report.intervals.compute(rows, report.resolve_baseline(rows))
    assert "linear_probe_top1" not in uncertainty.deltas["better"]
    assert any("different test images: 400 and 500 images, 400 shared" in n for n in uncertainty.notes)


# ------------------------------------------------------------------------------------------- tools/compare.py
def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/compare.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_compare_cli_pairs_two_work_dirs(tmp_path):
    a, b = _accuracy_pair(np.random.default_rng(4), 800)
    _tested(tmp_path / "a", {"accuracy/top1": 1.0}, a)
    _tested(tmp_path / "b", {"accuracy/top1": 1.0}, b)
    done = _compare(str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert "top-1" in done.stdout and "better" in done.stdout and "800 images" in done.stdout
    _tested(tmp_path / "c", {"accuracy/top1": 1.0}, b.take(b.image_ids[100:].tolist()))
    done = _compare(str(tmp_path / "a"), str(tmp_path / "c"))
    assert done.returncode == 1 and "800 and 700 images, 700 shared" in done.stderr
    done = _compare(str(tmp_path / "a"), str(tmp_path / "c"), "--shared-only")
    assert done.returncode == 0 and "700 images" in done.stdout
    done = _compare(str(tmp_path / "a"), str(tmp_path))
    assert done.returncode == 1 and "no test records" in done.stderr
