"""The pipeline's plan: the right commands, in order, and skipping of finished stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adpe.pipeline import PipelineConfig, main, plan, write_run_files
from adpe.report import RunInfo

ROOT = Path(__file__).resolve().parents[1]
TWO_VARIANTS = """
work_dir: {work}
gpus: 8
amp: true
data: {{imagenet: /data/in1k, ade20k: /data/ade, coco: /data/coco}}
variants:
  - {{name: mae_plus_rpe, pretrain: pretrain/mae_plus_vitb_rpe.py, baseline: true}}
  - {{name: adpe_rpe_coord, pretrain: pretrain/adpe_vitb_rpe_coord.py}}
ade20k: {{config: benchmarks/ade20k/upernet_adpe_vitb.py}}
coco: {{config: benchmarks/coco/mask_rcnn_adpe_vitb.py}}
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(TWO_VARIANTS.format(work=tmp_path / "work"))
    return path


def test_dry_run_lists_every_command_in_order(config, tmp_path, capsys):
    main(["--config", str(config), "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    work = tmp_path / "work"
    py = sys.executable
    expected = []
    for name, pretrain in (("mae_plus_rpe", "pretrain/mae_plus_vitb_rpe.py"),
                           ("adpe_rpe_coord", "pretrain/adpe_vitb_rpe_coord.py")):
        v = work / name
        expected += [
            f"bash tools/pretrain.sh {pretrain} 8 --work-dir {v}/pretrain --amp "
            "--cfg-options train_dataloader.dataset.data_root=/data/in1k",
            f"{py} tools/convert_checkpoint.py $(cat {v}/pretrain/last_checkpoint) {v}/backbone.pth",
            f"{py} tools/visualize_reconstruction.py $(cat {v}/pretrain/last_checkpoint) --images /data/in1k "
            f"--out {v}/reconstruction.png",
        ]
        for task, cfg, root in (("ade20k", "benchmarks/ade20k/upernet_adpe_vitb.py", "/data/ade"),
                                ("coco", "benchmarks/coco/mask_rcnn_adpe_vitb.py", "/data/coco")):
            data = " ".join(f"{loader}.dataset.data_root={root}/"
                            for loader in ("train_dataloader", "val_dataloader", "test_dataloader"))
            if task == "coco":
                ann = f"{root}/annotations/instances_val2017.json"
                data += f" val_evaluator.ann_file={ann} test_evaluator.ann_file={ann}"
            expected += [
                f"bash tools/dist_train.sh {cfg} 8 --work-dir {v}/{task} --amp --cfg-options "
                f"model.backbone.init_cfg.checkpoint={v}/backbone.pth {data}",
                f"bash tools/dist_test.sh {cfg} $(cat {v}/{task}/last_checkpoint) 8 --work-dir {v}/{task} "
                f"--cfg-options {data}",
            ]
    expected.append(f"{py} tools/report.py {work} --out {work}/report")
    assert lines == expected


def test_random_init_row_has_no_pretraining_and_no_checkpoint(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TWO_VARIANTS.format(work=tmp_path / "w").replace(
        "pretrain: pretrain/adpe_vitb_rpe_coord.py", "pretrain: null"))
    steps = [s for s in plan(PipelineConfig.load(path)) if s.variant == "adpe_rpe_coord"]
    assert [s.stage for s in steps] == ["ade20k", "ade20k_test", "coco", "coco_test"]
    assert "model.backbone.init_cfg=None" in steps[0].command


def test_finished_stages_are_skipped(config, tmp_path, capsys, monkeypatch):
    steps = plan(PipelineConfig.load(config))
    for step in steps[:-1]:
        step.work_dir.mkdir(parents=True, exist_ok=True)
        step.marker.write_text("done\n")
    ran = []
    monkeypatch.setattr("adpe.pipeline.run_step", lambda step, *a: ran.append(step.stage))
    monkeypatch.setattr("adpe.pipeline.write_run_files", lambda cfg: None)
    main(["--config", str(config)])
    assert ran == ["report"]
    assert capsys.readouterr().out.count("done before, skipped") == len(steps) - 1


def test_malformed_config_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("work_dir: x\nvariants: [{label: no name}]\ndata: {}\n")
    with pytest.raises(SystemExit, match="malformed pipeline config"):
        PipelineConfig.load(path)


def test_tool_is_the_same_command_line(config, capsys):
    main(["--config", str(config), "--dry-run"])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "tools/pipeline.py", "--config", str(config), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == capsys.readouterr().out


def test_run_files_are_what_the_report_reads(config, tmp_path, monkeypatch):
    monkeypatch.setattr("adpe.env.collect_env", lambda: {"device": "test"})
    cfg = PipelineConfig.load(config)
    write_run_files(cfg)
    assert [RunInfo.read(tmp_path / "work" / v.name / "run.json") for v in cfg.variants] == cfg.variants
    assert cfg.variants[0] == RunInfo("mae_plus_rpe", "mae_plus_rpe", "pretrain/mae_plus_vitb_rpe.py", True)
    assert json.loads((tmp_path / "work" / "env.json").read_text()) == {"device": "test"}
