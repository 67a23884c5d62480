"""make study (tools/study_pipeline.yaml): its YAML end to end in a shortened form, and the report's curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from adpe.report.study import Point, crossing
from adpe.tooling.pipeline import PipelineConfig, main, plan

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "tools" / "study_pipeline.yaml"


def _points(values: list[tuple[int, float]]) -> list[Point]:
    return [Point(f"p{s}", f"p{s}", "c", None, s, {"m": v}) for s, v in values]


def test_crossing_between_measured_points_is_interpolated():
    assert crossing(_points([(100, 10.0), (200, 20.0)]), 15.0, "m") == \
        "measured: above random init from about 150 steps"


def test_crossing_below_reference_is_extrapolated_in_log_steps_or_refused():
    # 10 points per decade of steps, from 10 at 100 steps: 30 is reached at 10,000 steps
    text = crossing(_points([(100, 10.0), (1000, 20.0)]), 30.0, "m")
    assert text.startswith("extrapolated") and "about 10000 steps" in text
    assert "no crossing in sight" in crossing(_points([(10, 20.0), (20, 10.0)]), 30.0, "m")


def test_study_yaml_plans_every_checkpoint_as_its_own_row(tmp_path):
    cfg = PipelineConfig.load(STUDY)
    rows = {row.name: row for row in cfg.rows()}
    assert rows["mae_plus_ape_ep4"].curve == "mae_plus_ape" and rows["mae_plus_ape_ep4"].pretrain_epoch == 4
    assert rows["mae_plus_ape"].curve == "mae_plus_ape" and rows["random_init"].curve is None
    steps = plan(cfg)
    export = next(s for s in steps if s.stage == "export" and s.variant == "adpe_ape_coord_ep8")
    assert export.command[2].endswith("adpe_ape_coord/pretrain/epoch_8.pth") and export.parent == "adpe_ape_coord"
    for name in rows:  # every row: kNN, fine-tuning and the three probes
        assert sorted(s.stage for s in steps if s.variant == name and s.stage in ("knn", "imagenet",
                                                                                  "linear_probe")) == \
            ["imagenet", "knn", "linear_probe", "linear_probe", "linear_probe"]
    assert steps[-1].command[-1] == "--study"


@pytest.mark.mm  # about 15 processes (pretraining, exports, kNN, probes, fine-tuning): 60 s on 2 idle cores
def test_study_runs_end_to_end_shortened_and_draws_its_curves(tmp_path, monkeypatch):
    """The study's YAML with tiny data, MAE+ for 2 one-step epochs (a checkpoint after the first), one probe
    seed and one-epoch transfers: every stage runs, and the report draws the curve figure."""
    raw = yaml.safe_load(STUDY.read_text())
    raw["work_dir"] = str(tmp_path / "work")
    raw["data"] = {"generate": str(tmp_path / "data"), "scale": "study_tiny",
                   "imagenet": str(tmp_path / "data" / "imagenet")}
    mae = raw["variants"][0]
    mae.update(checkpoints=[1], pretrain_options=["train_cfg.max_epochs=2", "default_hooks.checkpoint.interval=1",
                                                  "train_dataloader.num_workers=0",
                                                  "train_dataloader.persistent_workers=False"])
    raw["variants"] = [mae, raw["variants"][-1]]
    short = ["train_cfg.max_epochs=1", "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
             "val_dataloader.num_workers=0", "test_dataloader.num_workers=0"]
    raw["imagenet"]["finetune"]["cfg_options"] = [*short, "train_dataloader.batch_size=8"]
    raw["imagenet"]["linear_probe"].update(seeds=[0], cfg_options=[*short, "train_dataloader.batch_size=8"])
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(ROOT)
    main(["--config", str(config)])
    report = tmp_path / "work" / "report"
    assert (report / "study_curves.png").stat().st_size > 10_000
    points = {p["name"]: p for p in json.loads((report / "study.json").read_text())}
    assert set(points) == {"mae_plus_ape", "mae_plus_ape_ep1", "random_init"}
    # one step per epoch (32 images, batch 32): the checkpoint after epoch 1 is step 1 of 2
    assert (points["mae_plus_ape_ep1"]["steps"], points["mae_plus_ape"]["steps"]) == (1, 2)
    assert points["random_init"]["curve"] is None
    for point in points.values():
        assert all(isinstance(point["values"][k], float) for k in ("knn_top1", "linear_probe_top1", "imagenet_top1"))
    assert "![study curves](study_curves.png)" in (report / "study.md").read_text()


def _results(folder: Path, metrics: dict, records: bool = True) -> None:
    """A stage's test results and, with ``records``, per-image records of 200 test images that give its top-1:
    the first images correct (so a higher value's correct images include a lower one's: paired deltas)."""
    from adpe.report import samples

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_results.json").write_text(json.dumps({"metrics": metrics}))
    if records:
        n, correct = 200, round(2 * next(iter(metrics.values())))
        labels = np.arange(n) % 8
        top = np.where(np.arange(n) < correct, labels, (labels + 1) % 8)[:, None]  # (images, top-1)
        samples.cls_records([f"c{c}/img{i}" for i, c in enumerate(labels)], labels, top, np.ones_like(top, float),
                            thr=None).save(folder / "test_records.npz")


def test_study_report_reads_curves_from_work_dirs_and_draws_them(tmp_path):
    """A fabricated study run (no training): steps from the curve's logged epochs, values from each row's test
    results, random init as the reference, and the figure and verdicts written."""
    from adpe.report import RunInfo, collect_rows
    from adpe.report.study import write_study

    work = tmp_path / "work"
    RunInfo("mae", "MAE+", "pretrain/x.py", curve="mae").write((work / "mae").mkdir(parents=True) or
                                                               work / "mae" / "run.json")
    RunInfo("mae_ep2", "MAE+, epoch 2", "pretrain/x.py", curve="mae", pretrain_epoch=2).write(
        (work / "mae_ep2").mkdir() or work / "mae_ep2" / "run.json")
    RunInfo("random_init", "random init", None).write((work / "random_init").mkdir() or
                                                      work / "random_init" / "run.json")
    vis = work / "mae" / "pretrain" / "20260101_000000" / "vis_data"
    vis.mkdir(parents=True)
    # 10 steps per epoch, logged every 4 steps and at each epoch's end, 4 epochs
    lines = [{"loss": 1.0, "epoch": (s - 1) // 10 + 1, "iter": s, "step": s} for s in (4, 8, 10, 14, 18, 20, 30, 40)]
    lines += [{"knn/top1": 20.0 + s / 10, "step": s} for s in (0, 20, 40)]
    (vis / "scalars.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (vis / "config.py").write_text("model = dict(type='AdPEPretrainer')\ntrain_cfg = dict(max_epochs=4)\n")
    for name, knn, probe, finetune in (("mae", 30.0, (40.0, 42.0, 44.0), 35.0), ("mae_ep2", 22.0, (30.0, 31.0, 32.0),
                                                                                   20.0),
                                       ("random_init", 25.0, (20.0, 21.0, 22.0), 12.0)):
        _results(work / name / "knn", {"knn/top1": knn})
        _results(work / name / "imagenet", {"accuracy/top1": finetune}, records=name != "mae")  # one side lacks them
        for seed, value in enumerate(probe):
            _results(work / name / "linear_probe" / f"seed_{seed}", {"accuracy/top1": value})
    paths = write_study(collect_rows([work]), tmp_path / "report")
    assert paths["figure"].stat().st_size > 10_000
    points = {p["name"]: p for p in json.loads(paths["json"].read_text())}
    assert (points["mae_ep2"]["steps"], points["mae"]["steps"]) == (20, 40)
    assert points["mae"]["values"] == {"knn_top1": 30.0, "linear_probe_top1": 42.0, "imagenet_top1": 35.0}
    assert points["mae"]["seeds"]["linear_probe_top1"] == [40.0, 42.0, 44.0]
    assert points["mae"]["intervals"]["knn_top1"]["n_images"] == 200
    assert "imagenet_top1" not in points["mae"]["intervals"]  # its fine-tuning has no records
    probe = points["mae"]["intervals"]["linear_probe_top1"]
    assert probe["seeds"] == 3 and probe["low"] < 42.0 < probe["high"]
    text = paths["md"].read_text()
    assert (f"| MAE+ | 40 | 4 | 30.0 [{points['mae']['intervals']['knn_top1']['low']:.1f}, "
            f"{points['mae']['intervals']['knn_top1']['high']:.1f}] | 42.0 [{probe['low']:.1f}, {probe['high']:.1f}] "
            "(40.0 / 42.0 / 44.0) | 35.0 |") in text
    # kNN: below random init at 20 steps (22 < 25), above at 40 (30): crossing between them, at 27.5 steps; its
    # 10 more correct images of 200 (all paired the same way) make the +5 a difference, as does the probe's +21
    knn = points["mae"]["deltas"]["knn_top1"]
    assert knn["verdict"] == "better" and 0 < knn["low"] < 5 < knn["high"] < 10
    assert f"kNN top-1 (test): +5.0 points [{knn['low']:+.1f}, {knn['high']:+.1f}], better" in text
    assert "from about 28 steps" in text
    assert points["mae"]["deltas"]["linear_probe_top1"]["verdict"] == "better"
    assert "+23.0 points (no per-image records on both sides: no interval)" in text  # fine-tuning: 35 against 12
    assert "**Target**" in text and "reached: MAE+ on kNN top-1 (test); MAE+ on linear probe top-1 (test)." in text
    # the epoch-2 point's kNN is below random init: its paired verdict says so
    assert points["mae_ep2"]["deltas"]["knn_top1"]["verdict"] == "worse"


def test_gpus_on_the_command_line_replace_the_yaml_count(capsys):
    main(["--config", str(STUDY), "--dry-run", "--gpus", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("bash tools/pretrain.sh pretrain/study/mae_plus_vit_tiny_ape.py 2 ") for line in lines)
    assert all(" 1 --work-dir" not in line for line in lines if "dist_train.sh" in line)
