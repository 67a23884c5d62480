"""adpe.report and tools/report.py on generated work dirs; adpe.report.reconstruction and
tools/visualize_reconstruction.py on a fake checkpoint."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpe import report
from adpe.checkpoint import load_pretrainer
from adpe.models.mae import MaskedAutoencoder
from adpe.report import reconstruction as recon
from adpe.report.records import RunInfo, load_published

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV = {"python": "3.11.9", "torch": "2.6.0", "mmengine": "0.10.7", "device": "cpu", "threads": "torch 2, cpus 2"}


# ---------------------------------------------------------------------------------------------------------
# Fixture work dirs (the layout mmengine's Runner with LocalVisBackend writes)
# ---------------------------------------------------------------------------------------------------------
def _model_cfg(**model) -> str:
    items = ",\n".join(f"    {k}={v!r}" for k, v in sorted({"type": "AdPEPretrainer", **model}.items()))
    return f"model = dict(\n{items})\n"


def _write_timestamp(stage: Path, ts: str, rows: list[dict], config: str) -> None:
    vis_data = stage / ts / "vis_data"
    vis_data.mkdir(parents=True)
    (vis_data / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (vis_data / "config.py").write_text(config)
    (stage / ts / f"{ts}.log").write_text("log\n")


def _pretrain(variant_dir: Path, losses: list[tuple[int, float]], model: dict, max_epochs: int = 2,
              epochs_done: int | None = None, ts: str = "20240101_000000", adv: bool = False,
              extra: str = "") -> Path:
    """Pretraining stage: 20 iterations per epoch, a log row every 10; a checkpoint per finished epoch."""
    stage = variant_dir / "pretrain"
    rows = []
    for step, loss in losses:
        row = {"base_lr": 1e-3, "lr": 1e-3, "loss": loss, "time": 0.5, "data_time": 0.1,
               "epoch": (step - 1) // 20 + 1, "iter": step, "step": step}
        if adv:
            row.update(adv_lr=1e-3, adv_norm=0.1 * step / 10)
        rows.append(row)
    # KNNMonitorHook's rows: before training and after the last logged step
    rows += [{"knn/top1": 12.5, "knn/top5": 60.0, "step": 0}, {"knn/top1": 25.0, "knn/top5": 70.0, "step": step}]
    config = _model_cfg(size="tiny", img_size=112, **model) + extra
    config += f"train_cfg = dict(max_epochs={max_epochs}, type='EpochBasedTrainLoop')\n"
    _write_timestamp(stage, ts, rows, config)
    done = max_epochs if epochs_done is None else epochs_done
    for epoch in range(1, done + 1):
        (stage / f"epoch_{epoch}.pth").write_bytes(b"dummy")
    if done:
        (stage / "last_checkpoint").write_text(str(stage / f"epoch_{done}.pth"))
    return stage


def _ade20k(variant_dir: Path, val_miou: list[tuple[int, float]], test_miou: float | None, commit: str = "") -> None:
    stage = variant_dir / "ade20k"
    rows = []
    for step, miou in val_miou:
        rows.append({"lr": 1e-4, "loss": 2.0, "decode.loss_ce": 1.5, "aux.loss_ce": 0.5, "step": step - 5})
        rows.append({"aAcc": 20.0 + miou, "mIoU": miou, "mAcc": 2 * miou, "data_time": 0.1, "time": 0.2,
                     "step": step})
    _write_timestamp(stage, "20240102_000000", rows, "model = dict(type='EncoderDecoder')\n")
    if test_miou is not None:
        (stage / "test_results.json").write_text(json.dumps({
            "config": "benchmarks/ade20k/upernet_demo.py", "checkpoint": str(stage / "iter_20.pth"),
            "metrics": {"aAcc": 20.0 + test_miou, "mIoU": test_miou, "mAcc": 2 * test_miou},
            "time": "2024-01-02T01:00:00", "commit": commit, "world_size": 1}))


def _ade20k_tta(variant_dir: Path, miou: float) -> None:
    (variant_dir / "ade20k" / "test_results_tta.json").write_text(json.dumps({
        "config": "benchmarks/ade20k/upernet_demo.py", "metrics": {"aAcc": 30.0, "mIoU": miou}, "tta": True}))


def _coco(variant_dir: Path, box: float, mask: float, commit: str, cascade: bool = False) -> None:
    stage = variant_dir / "coco"
    rows = [{"loss": 3.0, "loss_cls": 1.0, "step": 10},
            {"coco/bbox_mAP": box / 2, "coco/bbox_mAP_50": box, "coco/segm_mAP": mask / 2, "step": 1},
            {"loss": 2.5, "loss_cls": 0.8, "step": 20},
            {"coco/bbox_mAP": box, "coco/bbox_mAP_50": 2 * box, "coco/segm_mAP": mask, "step": 2}]
    model = "model = dict(type='CascadeRCNN', roi_head=dict(type='CascadeRoIHead'))\n" if cascade else \
        "model = dict(type='MaskRCNN')\n"
    _write_timestamp(stage, "20240103_000000", rows, model)
    (stage / "test_results.json").write_text(json.dumps({
        "config": "benchmarks/coco/mask_rcnn_demo.py", "checkpoint": str(stage / "epoch_2.pth"),
        "metrics": {"coco/bbox_mAP": box, "coco/bbox_mAP_50": 2 * box, "coco/segm_mAP": mask},
        "time": "2024-01-03T01:00:00", "commit": commit, "world_size": 1}))


def _classification(stage: Path, top1: float, config: str) -> None:
    """An mmpretrain work dir: epoch-based validation rows and test_results.json."""
    rows = [{"loss": 2.0, "step": 5}, {"accuracy/top1": top1 / 2, "accuracy/top5": 90.0, "step": 1},
            {"loss": 1.0, "step": 10}, {"accuracy/top1": top1, "accuracy/top5": 95.0, "step": 2}]
    _write_timestamp(stage, "20240104_000000", rows, "model = dict(type='ImageClassifier')\n")
    (stage / "test_results.json").write_text(json.dumps({
        "config": config, "checkpoint": str(stage / "epoch_2.pth"),
        "metrics": {"accuracy/top1": top1, "accuracy/top5": 95.0}, "commit": "abc123", "world_size": 1}))


def _probes(variant_dir: Path, top1: dict[int, float | None]) -> None:
    """Linear probes per seed; None: a seed dir without test results (unfinished)."""
    for seed, value in top1.items():
        stage = variant_dir / "linear_probe" / f"seed_{seed}"
        if value is None:
            stage.mkdir(parents=True)
        else:
            _classification(stage, value, "benchmarks/imagenet/linear_probe_demo.py")


def make_run(root: Path) -> Path:
    """Three variants: a finished MAE+ baseline (ImageNet fine-tuning and three probes), a finished AdPE variant
    (resumed pretraining, ADE20K ms+flip, Cascade Mask R-CNN, two probes), and a variant without run.json whose
    ADE20K stage and probes are unfinished and whose COCO stage is missing."""
    run = root / "run"
    run.mkdir()
    (run / "env.json").write_text(json.dumps(ENV))

    base = run / "mae_plus"
    base.mkdir()
    (base / "run.json").write_text(json.dumps({"name": "mae_plus", "label": "MAE+ APE",
                                               "pretrain_config": "pretrain/demo/mae_plus_ape.py", "baseline": True}))
    losses = [(10 * i, v) for i, v in enumerate([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 1)]  # last 5: mean 0.6
    _pretrain(base, losses, dict(variant="mae_plus", position="ape", norm_pix_loss=True))
    _ade20k(base, [(20, 5.0), (40, 7.5)], 8.0, commit="abc123")
    _coco(base, 0.100, 0.090, commit="abc123")
    _classification(base / "imagenet", 60.0, "benchmarks/imagenet/finetune_demo.py")
    _probes(base, {0: 40.0, 1: 42.0, 2: 44.0})

    adpe = run / "adpe_ape_coord"
    adpe.mkdir()
    (adpe / "run.json").write_text(json.dumps({"name": "adpe_ape_coord", "label": "AdPE APE coord",
                                               "pretrain_config": "pretrain/demo/adpe_ape_coord.py",
                                               "baseline": False}))
    # Crashed after step 50 with the last checkpoint at step 30; the resumed run logs 40.. again (later wins).
    first = [(10, 1.0), (20, 0.9), (30, 0.8), (40, 0.7), (50, 0.65)]
    model = dict(variant="mae_plus", position="ape", adversary="coordinate", norm_pix_loss=True)
    _pretrain(adpe, first, model, epochs_done=1, adv=True)
    resumed = [(40, 0.6), (50, 0.55), (60, 0.5), (70, 0.45)]  # merged last 5: .8 .6 .55 .5 .45 -> 0.58
    _pretrain(adpe, resumed, model, ts="20240101_120000", adv=True)
    _ade20k(adpe, [(20, 6.0), (40, 9.0)], 10.0, commit="def456")
    _ade20k_tta(adpe, 10.5)
    _coco(adpe, 0.123, 0.101, commit="def456", cascade=True)
    _probes(adpe, {0: 50.0, 1: 53.0})

    partial = run / "adpe_rpe_embed"  # no run.json: the name is the folder's
    partial.mkdir()
    losses = [(10 * i, v) for i, v in enumerate([1.2, 1.1, 1.0, 0.9, 0.8, 0.7], 1)]  # last 5: mean 0.9
    _pretrain(partial, losses, dict(variant="mae_plus", position="rpe", rpe_lookup="discrete",
                                    adversary="embedding"), adv=True)
    _ade20k(partial, [(20, 4.0)], None)
    _probes(partial, {0: 30.0, 1: None})
    return run


EXPECTED_CSV = [
    {"name": "adpe_ape_coord", "label": "AdPE APE coord", "baseline": "",
     "pretrain_variant": "mae_plus, ape, adversary=coordinate, size=tiny",
     "ade20k_miou": "10.00", "ade20k_miou_delta": "+2.00", "ade20k_miou_msflip": "10.50",
     "ade20k_miou_msflip_delta": "n/a", "coco_ap_box": "12.3", "coco_ap_box_delta": "+2.3",
     "coco_ap_mask": "10.1", "coco_ap_mask_delta": "+1.1", "imagenet_top1": "missing",
     "imagenet_top1_delta": "missing", "linear_probe_top1": "51.5 ± 2.1", "linear_probe_top1_delta": "+9.5",
     "pretrain_loss": "0.5800", "pretrain_loss_delta": "-0.0200", "pretrain_status": "finished",
     "ade20k_status": "finished", "coco_status": "finished", "imagenet_status": "missing",
     "linear_probe_status": "finished", "pretrain_config": "pretrain/demo/adpe_ape_coord.py",
     "ade20k_config": "benchmarks/ade20k/upernet_demo.py", "coco_config": "benchmarks/coco/mask_rcnn_demo.py",
     "imagenet_config": "", "linear_probe_config": "benchmarks/imagenet/linear_probe_demo.py",
     "commit": "def456/abc123"},
    {"name": "adpe_rpe_embed", "label": "adpe_rpe_embed", "baseline": "",
     "pretrain_variant": "mae_plus, rpe (discrete), adversary=embedding, size=tiny",
     "ade20k_miou": "unfinished", "ade20k_miou_delta": "unfinished", "ade20k_miou_msflip": "unfinished",
     "ade20k_miou_msflip_delta": "unfinished", "coco_ap_box": "missing", "coco_ap_box_delta": "missing",
     "coco_ap_mask": "missing", "coco_ap_mask_delta": "missing", "imagenet_top1": "missing",
     "imagenet_top1_delta": "missing", "linear_probe_top1": "30.0", "linear_probe_top1_delta": "-12.0",
     "pretrain_loss": "0.9000", "pretrain_loss_delta": "+0.3000", "pretrain_status": "finished",
     "ade20k_status": "unfinished", "coco_status": "missing", "imagenet_status": "missing",
     "linear_probe_status": "unfinished", "pretrain_config": "", "ade20k_config": "", "coco_config": "",
     "imagenet_config": "", "linear_probe_config": "benchmarks/imagenet/linear_probe_demo.py", "commit": "abc123"},
    {"name": "mae_plus", "label": "MAE+ APE", "baseline": "yes",
     "pretrain_variant": "mae_plus, ape, adversary=none, size=tiny",
     "ade20k_miou": "8.00", "ade20k_miou_delta": "baseline", "ade20k_miou_msflip": "missing",
     "ade20k_miou_msflip_delta": "missing", "coco_ap_box": "10.0", "coco_ap_box_delta": "baseline",
     "coco_ap_mask": "9.0", "coco_ap_mask_delta": "baseline", "imagenet_top1": "60.0",
     "imagenet_top1_delta": "baseline", "linear_probe_top1": "42.0 ± 2.0", "linear_probe_top1_delta": "baseline",
     "pretrain_loss": "0.6000", "pretrain_loss_delta": "baseline", "pretrain_status": "finished",
     "ade20k_status": "finished", "coco_status": "finished", "imagenet_status": "finished",
     "linear_probe_status": "finished", "pretrain_config": "pretrain/demo/mae_plus_ape.py",
     "ade20k_config": "benchmarks/ade20k/upernet_demo.py", "coco_config": "benchmarks/coco/mask_rcnn_demo.py",
     "imagenet_config": "benchmarks/imagenet/finetune_demo.py",
     "linear_probe_config": "benchmarks/imagenet/linear_probe_demo.py", "commit": "abc123"},
]

# These runs predate per-image records: no interval columns (tests/test_intervals.py has runs with them)
for _row in EXPECTED_CSV:
    _row.update({c: "" for c in report.CSV_COLUMNS if c.endswith(("_low", "_high", "_sign_flip", "_verdict"))})

EXPECTED_MD_TABLE = """\
| Variant | Label | Pretraining | ADE20K mIoU | Δ mIoU | ADE20K mIoU ms+flip | Δ mIoU ms+flip | COCO AP box | \
Δ AP box | COCO AP mask | Δ AP mask | ImageNet fine-tune top-1 | Δ FT top-1 | Linear probe top-1 | Δ LP top-1 | \
Final pretrain loss | Δ loss |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| adpe_ape_coord | AdPE APE coord | mae_plus, ape, adversary=coordinate, size=tiny | 10.00 | +2.00 | 10.50 | n/a | \
12.3 | +2.3 | 10.1 | +1.1 | missing | missing | 51.5 ± 2.1 | +9.5 | 0.5800 | -0.0200 |
| adpe_rpe_embed | adpe_rpe_embed | mae_plus, rpe (discrete), adversary=embedding, size=tiny | unfinished | \
unfinished | unfinished | unfinished | missing | missing | missing | missing | missing | missing | 30.0 | -12.0 | \
0.9000 | +0.3000 |
| **mae_plus** (baseline) | MAE+ APE | mae_plus, ape, adversary=none, size=tiny | 8.00 | baseline | missing | \
missing | 10.0 | baseline | 9.0 | baseline | 60.0 | baseline | 42.0 ± 2.0 | baseline | 0.6000 | baseline |"""

PLOTS = ("pretrain_loss.png", "pretrain_knn.png", "adv_norm.png", "ade20k_miou.png", "coco_ap.png", "imagenet_top1.png",
         "final_metrics.png")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 2000, (path, len(data))
    with Image.open(path) as img:
        img.verify()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path)


def test_collect_rows_reads_stages_statuses_and_merges_resumed_logs(run_dir):
    rows = report.collect_rows([run_dir])
    assert [r.name for r in rows] == ["adpe_ape_coord", "adpe_rpe_embed", "mae_plus"]
    adpe, partial, base = rows
    assert base.is_baseline and not adpe.is_baseline
    assert adpe.values == {"ade20k_miou": 10.0, "ade20k_miou_msflip": 10.5, "coco_ap_box": 12.3,
                           "coco_ap_mask": 10.1, "imagenet_top1": None, "linear_probe_top1": 51.5,
                           "pretrain_loss": 0.58}
    assert adpe.spread == {"linear_probe_top1": 2.1}  # stdev of 50 and 53
    assert partial.values == {"ade20k_miou": None, "ade20k_miou_msflip": None, "coco_ap_box": None,
                              "coco_ap_mask": None, "imagenet_top1": None, "linear_probe_top1": 30.0,
                              "pretrain_loss": 0.9}
    assert partial.spread == {} and partial.linear_probe.status == "unfinished"
    assert base.values["linear_probe_top1"] == 42.0 and base.spread == {"linear_probe_top1": 2.0}
    assert base.linear_probe.seeds[1] == {"accuracy/top1": 42.0, "accuracy/top5": 95.0}
    assert (base.coco.protocol, adpe.coco.protocol) == ("coco_mask_rcnn", "coco_cascade")
    loss = adpe.pretrain.series["loss"]
    assert loss == [(10, 1.0), (20, 0.9), (30, 0.8), (40, 0.6), (50, 0.55), (60, 0.5), (70, 0.45)]
    assert adpe.pretrain.series["adv_norm"][-1] == (70, pytest.approx(0.7))
    assert "adv_norm" not in base.pretrain.series
    assert adpe.pretrain.status == "finished"
    assert adpe.pretrain.max_epochs == 2
    assert adpe.pretrain.checkpoint.endswith("epoch_2.pth")
    assert adpe.pretrain.dumped_config.endswith("20240101_120000/vis_data/config.py")
    assert adpe.pretrain.model["adversary"] == "coordinate"
    # validation series: mIoU from val rows only; COCO val steps are epochs here
    assert base.ade20k.series["mIoU"] == [(20, 5.0), (40, 7.5)]
    assert base.coco.series["coco/segm_mAP"] == [(1, 0.045), (2, 0.09)]
    assert [partial.stages[s].status for s in report.STAGES] == ["finished", "unfinished", "missing", "missing",
                                                                 "unfinished"]
    assert base.env == ENV
    # a variant dir given directly gives the same row
    assert report.collect_rows([run_dir / "mae_plus"])[0].values == base.values


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """tools/report.py as the pipeline runs it: from the checkout, adpe importable from there."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "tools/report.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_the_exact_tables(run_dir, tmp_path):
    out = tmp_path / "report"
    done = run_cli(str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "report.md")

    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.CSV_COLUMNS
        assert list(reader) == EXPECTED_CSV

    doc = json.loads((out / "results.json").read_text())
    assert doc["baseline"] == "mae_plus"
    assert [r["cells"] for r in doc["rows"]] == EXPECTED_CSV
    by_name = {r["name"]: r for r in doc["rows"]}
    assert by_name["adpe_ape_coord"]["values"]["coco_ap_box"] == 12.3
    assert by_name["adpe_ape_coord"]["spread"] == {"linear_probe_top1": 2.1}
    assert by_name["adpe_rpe_embed"]["values"]["ade20k_miou"] is None  # never 0
    assert by_name["adpe_rpe_embed"]["stages"]["coco"]["status"] == "missing"
    assert by_name["mae_plus"]["stages"]["coco"]["metrics"]["coco/bbox_mAP"] == 0.1
    assert by_name["mae_plus"]["commit"] == "abc123"
    assert "series" not in by_name["mae_plus"]["stages"]["pretrain"]
    published = doc["published"]
    by_protocol = {}
    for number in published["numbers"]:
        by_protocol.setdefault(number["protocol"], []).append((number["method"], number["metric"], number["value"]))
    assert by_protocol["ade20k_msflip"] == [("MAE (mmseg)", "ade20k_miou_msflip", 48.7),
                                            ("AdPE", "ade20k_miou_msflip", 50.7)]
    assert by_protocol["coco_cascade"] == [("AdPE", "coco_ap_box", 53.5), ("AdPE", "coco_ap_mask", 46.5)]
    assert by_protocol["coco_mask_rcnn"] == [("MAE", "coco_ap_box", 50.3), ("MAE", "coco_ap_mask", 44.9)]
    assert [v for *_, v in by_protocol["imagenet_ft"]] == [83.6, 84.4, 83.9, 84.1, 84.2, 84.2, 84.3, 84.4]
    assert "not comparable" in published["note"].lower()
    assert doc["environment"] == ENV
    assert sorted(doc["plots"].values()) == sorted(PLOTS)

    text = (out / "report.md").read_text()
    assert EXPECTED_MD_TABLE in text
    assert "NOT comparable" in text
    # each column beside the published numbers of its own protocol only
    assert "| ADE20K mIoU | ADE20K val mIoU (%), UperNet, 160k iterations at 512^2, single-scale test | MAE 48.1; " \
        "MAE (mmseg) 48.13 |" in text
    assert "multi-scale (0.5-1.75) + flip test (the release trains with mmseg's upernet_mae ..._ms config) | " \
        "MAE (mmseg) 48.7; AdPE 50.7 |" in text
    assert "| COCO AP box | COCO val2017 AP (%), Mask R-CNN with a ViT-B backbone | MAE 50.3 |" in text
    assert "cascade_mask_rcnn_vitdet_b_100ep: batch 32, 400k iterations) | AdPE 53.5 |" in text
    assert "| Linear probe top-1 | - | no published ViT-B number of this protocol in this report |" in text
    assert "| AdPE RPE coordinate, 400 ep (released) | ImageNet fine-tune top-1 | 84.4 | [3] |" in text
    assert "[1] AdPE paper (Adversarial Positional Embeddings, arXiv 2303.07598), ViT-B" in text
    assert "[3] AdPE release README (github.com/maple-research-lab/AdPE" in text
    assert "  - seed 2: accuracy/top1=44, accuracy/top5=95" in text
    assert "  - test-time augmentation: aAcc=30, mIoU=10.5" in text
    for name in PLOTS:
        assert f"]({name})" in text  # relative links
        assert_png(out / name)
    assert "## Environment" in text and "| mmengine | 0.10.7 |" in text
    assert "commit: `def456`" in text and "`pretrain/demo/adpe_ape_coord.py`" in text
    assert "adversary='coordinate'" in text


def test_baseline_option_statuses_and_no_adversary(tmp_path):
    run = tmp_path / "run2"
    short = run / "mae_short"
    short.mkdir(parents=True)
    (short / "run.json").write_text(json.dumps({"name": "mae_short", "label": "MAE+ short",
                                                "pretrain_config": "pretrain/demo/mae_plus_ape.py"}))
    _pretrain(short, [(10, 1.0), (20, 0.5)], dict(variant="mae_plus", position="ape"), max_epochs=4, epochs_done=2)
    _ade20k(short, [(20, 3.0)], 3.0)
    scratch = run / "random_init"
    scratch.mkdir()
    (scratch / "run.json").write_text(json.dumps({"name": "random_init", "label": "Random init",
                                                  "pretrain_config": None}))
    _ade20k(scratch, [(20, 1.0)], 1.5)
    _probes(short, {0: 30.0, 1: 31.0, 2: 32.0})
    _probes(scratch, {0: 20.0, 1: 22.0})

    rows = report.collect_rows([run])
    assert [r.name for r in rows] == ["mae_short", "random_init"]
    cells = {c["name"]: c for c in report.table_rows(rows)}  # no baseline flag: the first row
    assert cells["mae_short"]["baseline"] == "yes"
    assert cells["random_init"]["ade20k_miou_delta"] == "-1.50"
    assert cells["mae_short"]["pretrain_status"] == "unfinished"
    assert cells["mae_short"]["pretrain_loss"] == "0.7500"
    assert cells["random_init"]["pretrain_loss"] == cells["random_init"]["pretrain_loss_delta"] == "none"
    assert cells["random_init"]["pretrain_variant"] == "none (no pretraining)"

    cells = {c["name"]: c for c in report.table_rows(rows, baseline="random_init")}
    assert cells["mae_short"]["ade20k_miou_delta"] == "+1.50"
    assert cells["mae_short"]["pretrain_loss_delta"] == "n/a"  # the baseline has no loss
    with pytest.raises(ValueError, match="nope"):
        report.table_rows(rows, baseline="nope")

    out = tmp_path / "out2"
    paths = report.write_report(rows, out, baseline="random_init", env={"device": "test"})
    assert "adv_norm" not in paths and not (out / "adv_norm.png").exists()
    assert "coco_ap" not in paths  # no COCO data anywhere
    for key in ("pretrain_loss", "ade20k_miou", "final_metrics"):
        assert_png(paths[key])
    text = paths["md"].read_text()
    assert "0.7500 (unfinished)" in text
    # runs without per-image records: the point estimate, and the command that writes the records
    assert "the interval needs a re-test" in text
    assert f"- MAE+ short, ADE20K mIoU: `python tools/test.py {short}/ade20k/" in text
    assert "above 3 std" not in text  # the old noise prose gave way to intervals
    assert "No row has: ADE20K mIoU ms+flip, COCO AP box, COCO AP mask, ImageNet fine-tune top-1." in text
    assert "_Not plotted: no adversarial variant._" in text
    assert json.loads(paths["json"].read_text())["baseline"] == "random_init"


def test_cli_errors_on_missing_work_dir(tmp_path):
    done = run_cli(str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "error: work dir not found" in done.stderr
    (tmp_path / "empty").mkdir()
    done = run_cli(str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "neither a variant dir" in done.stderr
    with pytest.raises(FileNotFoundError, match="not found"):
        report.collect_rows([tmp_path / "nothing"])


def test_run_json_format_is_stable(tmp_path):
    """run.json as the pipeline has always written it: old work dirs keep reading."""
    run = RunInfo("adpe_rpe_coord", "AdPE RPE coord", "pretrain/adpe_vitb_rpe_coord.py", baseline=True)
    run.write(tmp_path / "run.json")
    assert (tmp_path / "run.json").read_text() == json.dumps(
        {"name": "adpe_rpe_coord", "label": "AdPE RPE coord", "pretrain_config": "pretrain/adpe_vitb_rpe_coord.py",
         "baseline": True}, indent=2)
    assert RunInfo.read(tmp_path / "run.json") == run
    variant = tmp_path / "random_init"
    variant.mkdir()
    (variant / "run.json").write_text('{"pretrain_config": null}')  # hand-written: the rest defaults
    assert RunInfo.read(variant / "run.json") == RunInfo("random_init", "random_init", None, False)
    assert RunInfo.read(variant / "absent.json") is None


def test_published_numbers_name_their_sources_and_protocols():
    published = load_published()
    adpe = {n.metric: n for n in published.numbers if n.method == "AdPE"}
    assert adpe["ade20k_miou_msflip"].protocol == "ade20k_msflip" and adpe["ade20k_miou_msflip"].value == 50.7
    assert "2303.07598" in adpe["ade20k_miou_msflip"].source and adpe["coco_ap_box"].protocol == "coco_cascade"
    released = [n for n in published.numbers if "released" in n.method]
    assert len(released) == 6 and all("maple-research-lab/AdPE" in n.source for n in released)
    assert set(published.protocols) == {n.protocol for n in published.numbers}


# ---------------------------------------------------------------------------------------------------------
# Reconstruction figure
# ---------------------------------------------------------------------------------------------------------
def _images(folder: Path, count: int = 2) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (96 + 16 * i, 128, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_reconstruct_keeps_visible_patches_exactly():
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny", img_size=112)
    imgs = torch.randn(2, 3, 112, 112)
    result = recon.reconstruct(model, imgs, seed=3)
    assert model.training  # mode restored
    assert result["pred"].shape == (2, 49, 16 * 16 * 3) and result["mask"].shape == (2, 49)
    assert result["pasted"].shape == result["reconstruction"].shape == result["masked"].shape == (2, 3, 112, 112)
    visible = result["mask"] == 0
    assert visible.sum(1).tolist() == [12, 12]
    pasted, target = model.patchify(result["pasted"]), model.patchify(imgs)
    assert torch.equal(pasted[visible], target[visible])
    assert torch.equal(pasted[~visible], result["pred_pixels"][~visible])
    # norm_pix_loss: predictions un-normalised with the target patch statistics
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    assert torch.allclose(result["pred_pixels"], result["pred"] * (var + 1e-6) ** 0.5 + mean)
    # the masked input is mid-grey where masked, the original where visible
    masked = recon.denormalize(result["masked"])
    assert torch.allclose(model.patchify(masked)[~visible], torch.full_like(pasted[~visible], 0.5), atol=1e-6)
    assert torch.equal(model.patchify(result["masked"])[visible], target[visible])
    # same seed, same mask
    assert torch.equal(recon.reconstruct(model, imgs, seed=3)["mask"], result["mask"])


@pytest.mark.mm
def test_visualize_reconstruction_cli(tmp_path, capsys):
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny")
    cfg = "model = dict(type='AdPEPretrainer', size='tiny', img_size=112, variant='mae_plus', position='ape')\n"
    ckpt = {"meta": {"cfg": cfg}, "state_dict": {"mae." + k: v for k, v in model.state_dict().items()}}
    path = tmp_path / "epoch_1.pth"
    torch.save(ckpt, path)
    images = _images(tmp_path / "images")

    out = tmp_path / "recon.png"
    run = subprocess.run([sys.executable, str(ROOT / "tools/visualize_reconstruction.py"), str(path), "--images",
                          str(images), "--num", "4", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert_png(out)
    with Image.open(out) as img:
        assert img.height > 300 and img.width > 600  # 2 rows x 4 columns

    loaded = load_pretrainer(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    imgs = recon.load_images(images, recon.input_size(loaded), 4)
    assert imgs.shape == (2, 3, 112, 112)
    result = recon.reconstruct(loaded, imgs, seed=0)
    visible = result["mask"] == 0
    assert torch.equal(loaded.patchify(result["pasted"])[visible], loaded.patchify(imgs)[visible])
    assert result["pred"].shape == (2, 49, 768)

    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}}, bad)
    run = subprocess.run([sys.executable, str(ROOT / "tools/visualize_reconstruction.py"), str(bad), "--images",
                          str(images)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "not a pretraining checkpoint" in run.stderr


def test_readme_states_only_published_numbers_of_the_protocol_it_names():
    """The README's configs table names a protocol key of published.json in its 'expected (published)' column;
    every number there is a published number of a protocol named in the same cell (the file is the one source)."""
    by_protocol: dict[str, set[float]] = {}
    for number in report.load_published().numbers:
        by_protocol.setdefault(number.protocol, set()).add(number.value)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Configs", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ")[3] for line in table.splitlines() if line.startswith("| `")]
    assert len(cells) > 20
    for cell in cells:
        numbers = [float(n) for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", cell)]
        protocols = re.findall(r"`(\w+)`", cell)
        assert all(p in by_protocol for p in protocols), cell
        allowed = set().union(*(by_protocol[p] for p in protocols))
        assert all(n in allowed for n in numbers), f"not in published.json under {protocols}: {cell}"
