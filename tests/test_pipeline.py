"""The pipeline's plan: the right commands, in order, and skipping of finished stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adpe.report import RunInfo
from adpe.tooling.pipeline import PipelineConfig, main, plan, write_run_files

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
            expected.append(f"bash tools/dist_train.sh {cfg} 8 --work-dir {v}/{task} --amp --test --cfg-options "
                            f"model.backbone.init_cfg.checkpoint={v}/backbone.pth {data}")
    expected.append(f"{py} tools/report.py {work} --out {work}/report")
    assert lines == expected


def test_random_init_row_has_no_pretraining_and_no_checkpoint(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TWO_VARIANTS.format(work=tmp_path / "w").replace(
        "pretrain: pretrain/adpe_vitb_rpe_coord.py", "pretrain: null"))
    steps = [s for s in plan(PipelineConfig.load(path)) if s.variant == "adpe_rpe_coord"]
    assert [s.stage for s in steps] == ["ade20k", "coco"]
    assert "model.backbone.init_cfg=None" in steps[0].command


def test_finished_stages_are_skipped(config, tmp_path, capsys, monkeypatch):
    steps = plan(PipelineConfig.load(config))
    for step in steps[:-1]:
        step.work_dir.mkdir(parents=True, exist_ok=True)
        step.marker.write_text("done\n")
    ran = []
    monkeypatch.setattr("adpe.tooling.pipeline.run_step", lambda step, *a: ran.append(step.stage))
    monkeypatch.setattr("adpe.tooling.pipeline.write_run_files", lambda cfg: None)
    main(["--config", str(config)])
    assert ran == ["report"]
    assert capsys.readouterr().out.count("done before, skipped") == len(steps) - 1


def test_malformed_config_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("work_dir: x\nvariants: [{label: no name}]\ndata: {}\n")
    with pytest.raises(SystemExit, match="malformed pipeline config"):
        PipelineConfig.load(path)
    path.write_text("work_dir: x\nvariants: [\n  - name: a\n")  # not YAML at all
    with pytest.raises(SystemExit, match=r"(?s)bad\.yaml: not valid YAML .*line 3, column 3"):
        PipelineConfig.load(path)


def test_tool_is_the_same_command_line(config, capsys):
    main(["--config", str(config), "--dry-run"])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "tools/pipeline.py", "--config", str(config), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == capsys.readouterr().out


def test_run_files_are_what_the_report_reads(config, tmp_path, monkeypatch):
    monkeypatch.setattr("adpe.tooling.env.collect_env", lambda: {"device": "test"})
    cfg = PipelineConfig.load(config)
    write_run_files(cfg)
    assert [RunInfo.read(tmp_path / "work" / v.name / "run.json") for v in cfg.variants] == cfg.variants
    assert cfg.variants[0] == RunInfo("mae_plus_rpe", "mae_plus_rpe", "pretrain/mae_plus_vitb_rpe.py", True)
    assert json.loads((tmp_path / "work" / "env.json").read_text()) == {"device": "test"}


# --launcher slurm: each stage an sbatch job after the stages it reads; variants side by side; the report last.
PER_STAGE_GPUS = "gpus: {pretrain: 32, ade20k: 8, ade20k_tta: 16, coco: 16}"
CHAINS = {"pretrain": [], "export": ["pretrain"], "reconstruction": ["pretrain"], "ade20k": ["export"],
          "ade20k_tta": ["ade20k"], "coco": ["export"]}


@pytest.fixture
def cluster_config(tmp_path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(TWO_VARIANTS.format(work=tmp_path / "work").replace("gpus: 8", PER_STAGE_GPUS)
                    .replace("upernet_adpe_vitb.py}", "upernet_adpe_vitb.py, tta: true}"))
    return path


def sbatch_jobs(lines: list[str]) -> dict[str, dict]:
    """Job name -> {var, after, dependency kind, the sbatch options, the wrapped command} of dry-run lines
    ``Jn=$(sbatch ... --wrap=...)``."""
    jobs = {}
    for line in lines:
        var, _, rest = line.partition("=$(")
        assert rest.startswith("sbatch --parsable ") and rest.endswith(")"), line
        options, _, wrap = rest[:-1].partition(" '--wrap=")
        opts = dict(o.lstrip("-").split("=", 1) for o in options.split()[2:])
        kind, _, after = opts.get("dependency", ":").partition(":")
        jobs[opts["job-name"]] = {"var": var, "kind": kind, "after": after.split(":") if after else [],
                                  "opts": opts, "wrap": wrap.rstrip("'")}
    return jobs


def test_slurm_dry_run_prints_dependent_sbatch_lines(cluster_config, tmp_path, capsys):
    main(["--config", str(cluster_config), "--launcher", "slurm", "--partition", "gpu", "--dry-run",
          "--sbatch-args=--time=3-00:00:00"])
    lines = capsys.readouterr().out.strip().splitlines()
    jobs = sbatch_jobs(lines)
    assert [job["var"] for job in jobs.values()] == [f"J{n}" for n in range(1, 14)]
    order = list(jobs)
    for variant in ("mae_plus_rpe", "adpe_rpe_coord"):
        for stage, before in CHAINS.items():
            job = jobs[f"work.{variant}.{stage}"]
            assert job["after"] == [f"${jobs[f'work.{variant}.{b}']['var']}" for b in before]
            assert all(order.index(f"work.{variant}.{b}") < order.index(f"work.{variant}.{stage}") for b in before)
            assert job["kind"] == ("afterok" if before else "") and job["opts"]["time"] == "3-00:00:00"
            assert job["opts"]["partition"] == "gpu" and job["opts"]["kill-on-invalid-dep"] == "yes"
            marker = tmp_path / "work" / variant / ("" if stage in ("export", "reconstruction") else
                                                    stage.removesuffix("_tta")) / f".{stage}.done"
            assert job["wrap"].endswith(f" && date +%Y-%m-%dT%H:%M:%S > {marker}")
        pretrain, test = jobs[f"work.{variant}.pretrain"], jobs[f"work.{variant}.ade20k_tta"]
        assert pretrain["wrap"].startswith("env GPUS=32 GPUS_PER_NODE=8 CPUS_PER_TASK=10 bash tools/slurm_pretrain.sh "
                                           f"gpu work.{variant}.pretrain pretrain/")
        assert (pretrain["opts"]["nodes"], pretrain["opts"]["ntasks"], pretrain["opts"]["gres"]) == ("4", "32", "gpu:8")
        assert test["wrap"].startswith("env GPUS=16 GPUS_PER_NODE=8 CPUS_PER_TASK=5 bash tools/slurm_test.sh gpu "
                                       f"work.{variant}.ade20k_tta benchmarks/ade20k/upernet_adpe_vitb.py "
                                       f"$(cat {tmp_path}/work/{variant}/ade20k/last_checkpoint) --work-dir")
        assert " --tta " in test["wrap"] and " --test " in jobs[f"work.{variant}.coco"]["wrap"]
        assert "tools/slurm_train.sh gpu" in jobs[f"work.{variant}.ade20k"]["wrap"]
    # the two variants side by side: neither waits for the other; the report waits for everything, last
    assert jobs["work.adpe_rpe_coord.pretrain"]["after"] == []
    assert order[-1] == "work.report" and jobs["work.report"]["kind"] == "afterany"
    assert jobs["work.report"]["after"] == [f"$J{n}" for n in range(1, 13)]
    assert not (tmp_path / "work").exists()  # a dry run writes nothing


class FakeSbatch:
    """An ``sbatch`` on PATH that records its arguments and answers job ids 101, 102, ... as --parsable does."""

    def __init__(self, folder: Path, monkeypatch):
        self.log = folder / "sbatch.jsonl"
        script = folder / "sbatch"
        script.write_text(f"#!{sys.executable}\nimport json, os, sys\nlog = {str(self.log)!r}\n"
                          "calls = open(log).read().count('\\n') if os.path.exists(log) else 0\n"
                          "open(log, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                          "print(f'{101 + calls};cluster')\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def calls(self) -> dict[str, dict]:
        """Job name -> its sbatch options (``--key=value`` as key: value)."""
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return {opts["job-name"]: opts for opts in
                (dict(a.lstrip("-").split("=", 1) for a in argv if a.startswith("--") and "=" in a) for argv in calls)}


def test_slurm_resubmission_skips_finished_stages(cluster_config, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = FakeSbatch(bin_dir, monkeypatch)
    steps = plan(PipelineConfig.load(cluster_config))
    for step in steps:  # the first variant pretrained and exported before
        if step.variant == "mae_plus_rpe" and step.stage in ("pretrain", "export"):
            step.work_dir.mkdir(parents=True, exist_ok=True)
            step.marker.write_text("done\n")
    main(["--config", str(cluster_config), "--launcher", "slurm", "--partition", "gpu"])
    jobs = sbatch.calls()
    assert "work.mae_plus_rpe.pretrain" not in jobs and "work.mae_plus_rpe.export" not in jobs
    ids = {name: str(101 + n) for n, name in enumerate(jobs)}
    assert "dependency" not in jobs["work.mae_plus_rpe.ade20k"]  # its backbone is there: it starts at once
    assert jobs["work.mae_plus_rpe.ade20k_tta"]["dependency"] == f"afterok:{ids['work.mae_plus_rpe.ade20k']}"
    assert jobs["work.adpe_rpe_coord.export"]["dependency"] == f"afterok:{ids['work.adpe_rpe_coord.pretrain']}"
    assert jobs["work.report"]["dependency"] == "afterany:" + ":".join(
        ids[name] for name in jobs if name != "work.report")
    out = capsys.readouterr().out
    assert "# mae_plus_rpe pretrain: done before, skipped" in out and "submitted 11 jobs" in out
    work = tmp_path / "work"
    assert (work / "mae_plus_rpe" / "run.json").is_file() and not (work / "env.json").exists()
    assert (work / "adpe_rpe_coord" / "coco").is_dir()  # sbatch writes the job's log there


def test_per_stage_gpu_counts(cluster_config, tmp_path):
    cfg = PipelineConfig.load(cluster_config)
    assert [cfg.gpus_for(s) for s in ("pretrain", "ade20k", "ade20k_tta", "coco")] == [32, 8, 16, 16]
    steps = {(s.variant, s.stage): s for s in plan(cfg)}
    assert steps["mae_plus_rpe", "pretrain"].command[3] == "32"  # tools/pretrain.sh CONFIG GPUS
    assert steps["mae_plus_rpe", "ade20k_tta"].command[4] == "16"  # tools/dist_test.sh CONFIG CHECKPOINT GPUS
    cfg.gpus = {"pretrain": 32, "ade20k": 8, "coco": 8}
    assert cfg.gpus_for("ade20k_tta") == 8  # the --tta test falls back to its training stage's count
    cfg.gpus = {"pretrain": 32}
    with pytest.raises(SystemExit, match="no entry for the 'ade20k' stage"):
        plan(cfg)
    with pytest.raises(SystemExit, match="32 GPUs do not fill nodes of 6"):
        main(["--config", str(cluster_config), "--launcher", "slurm", "--partition", "gpu", "--gpus-per-node", "6",
              "--dry-run"])


PROTOCOLS = """
ade20k: {{config: benchmarks/ade20k/upernet_adpe_vitb.py, tta: true}}
coco: {{config: benchmarks/coco/cascade_mask_rcnn_adpe_vitb.py}}
imagenet:
  finetune: {{config: benchmarks/imagenet/finetune_adpe_vitb_rpe.py}}
  linear_probe: {{config: benchmarks/imagenet/linear_probe_adpe_vitb.py, seeds: [0, 1, 2]}}
"""


def test_protocol_stages_ms_flip_test_fine_tuning_and_one_probe_per_seed(tmp_path, capsys):
    path = tmp_path / "protocols.yaml"
    text = TWO_VARIANTS.format(work=tmp_path / "work").split("ade20k: {")[0] + PROTOCOLS.format()
    path.write_text(text.replace("gpus: 8", "gpus: {pretrain: 32, ade20k: 8, coco: 8, imagenet: 32, linear_probe: 8}"))
    steps = [s for s in plan(PipelineConfig.load(path)) if s.variant == "adpe_rpe_coord"]
    assert [s.stage for s in steps] == ["pretrain", "export", "reconstruction", "ade20k", "ade20k_tta", "coco",
                                        "imagenet", "linear_probe", "linear_probe", "linear_probe"]
    v = tmp_path / "work" / "adpe_rpe_coord"
    tta = steps[4].shell()
    assert f"--work-dir {v}/ade20k --tta --cfg-options" in tta and tta.startswith("bash tools/dist_test.sh")
    finetune = steps[6].shell()
    assert finetune.startswith("bash tools/dist_train.sh benchmarks/imagenet/finetune_adpe_vitb_rpe.py 32 ")
    assert f"model.backbone.init_cfg.checkpoint={v}/backbone.pth" in finetune
    assert "train_dataloader.dataset.data_root=/data/in1k/" in finetune
    probes = steps[7:]
    for seed, probe in enumerate(probes):
        assert probe.seed == seed and probe.work_dir == v / "linear_probe" / f"seed_{seed}"
        assert probe.command[:5] == ["bash", "tools/dist_train.sh", "benchmarks/imagenet/linear_probe_adpe_vitb.py",
                                     "8", "--work-dir"]
        assert "--test" in probe.command and probe.command[-1] == f"randomness.seed={seed}"
    # on Slurm every probe waits for the backbone only, the report for everything
    main(["--config", str(path), "--launcher", "slurm", "--partition", "gpu", "--dry-run"])
    jobs = sbatch_jobs(capsys.readouterr().out.strip().splitlines())
    export = jobs["work.adpe_rpe_coord.export"]["var"]
    assert [jobs[f"work.adpe_rpe_coord.linear_probe.seed{s}"]["after"] for s in range(3)] == [[f"${export}"]] * 3
    assert jobs["work.adpe_rpe_coord.ade20k_tta"]["after"] == [f"${jobs['work.adpe_rpe_coord.ade20k']['var']}"]


# --jobs: local stages side by side, each after the stages it reads.
def _fake_runs(monkeypatch, fail: str | None = None) -> list[tuple[str, str, str]]:
    """Replace run_step with one that logs (event, variant, stage) and sleeps; ``fail``: the stage that fails."""
    import threading
    import time

    events: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def fake(step, index, total, started, threads=None):
        with lock:
            events.append(("start", step.variant, step.stage, threads))
        time.sleep(0.05)
        if step.stage == fail:
            raise SystemExit(f"[pipeline] {step.stage} failed")
        step.work_dir.mkdir(parents=True, exist_ok=True)
        step.marker.write_text("done\n")
        with lock:
            events.append(("end", step.variant, step.stage, threads))

    monkeypatch.setattr("adpe.tooling.pipeline.run_step", fake)
    monkeypatch.setattr("adpe.tooling.pipeline.write_run_files", lambda cfg: None)
    monkeypatch.setattr("adpe.tooling.pipeline.available_cpus", lambda: 4)
    return events


def test_jobs_run_stages_side_by_side_after_what_they_read(config, monkeypatch):
    events = _fake_runs(monkeypatch)
    main(["--config", str(config), "--jobs", "2"])
    steps = plan(PipelineConfig.load(config))
    assert sorted(map(str, ((e[1], e[2]) for e in events if e[0] == "end"))) == sorted(
        map(str, ((s.variant, s.stage) for s in steps)))
    running, most = set(), 0
    for event, variant, stage, threads in events:
        assert threads == 2  # 4 CPUs shared by 2 jobs
        if event == "start":
            for before in {"pretrain": [], "export": ["pretrain"], "reconstruction": ["pretrain"],
                           "ade20k": ["export"], "coco": ["export"]}.get(stage, []):
                ended = [i for i, e in enumerate(events) if e[:3] == ("end", variant, before)]
                assert ended and ended[0] < events.index((event, variant, stage, threads)), (stage, before)
            running.add((variant, stage))
        else:
            running.discard((variant, stage))
        most = max(most, len(running))
    assert most == 2
    assert events[-2][2] == "report" and events[-1][2] == "report"  # after everything else
    first_two = [e[2] for e in events[:2]]
    assert first_two == ["pretrain", "pretrain"]  # the two variants' pretraining at once


def test_jobs_stop_starting_after_a_failure(config, monkeypatch):
    events = _fake_runs(monkeypatch, fail="export")
    with pytest.raises(SystemExit, match="export failed"):
        main(["--config", str(config), "--jobs", "2"])
    starts = [e[2] for e in events if e[0] == "start"]
    assert "report" not in starts and "ade20k" not in starts and "coco" not in starts


def test_one_job_keeps_the_plan_order_and_all_threads(config, monkeypatch):
    events = _fake_runs(monkeypatch)
    main(["--config", str(config)])
    assert [e[2] for e in events if e[0] == "start"] == [s.stage for s in plan(PipelineConfig.load(config))]
    assert {e[3] for e in events} == {None}


def test_a_stage_gets_its_share_of_threads(tmp_path, monkeypatch):
    """The thread count reaches the stage's process (torch reads OMP_NUM_THREADS at start), unless the user set it."""
    from adpe.tooling.pipeline import Step, run_step

    code = "import os; print('threads', os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))"
    step = Step("report", None, [sys.executable, "-c", code], tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_step(step, 1, 1, 0.0, threads=3)
    assert "threads 3 3" in (tmp_path / "report.log").read_text()
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    run_step(step, 1, 1, 0.0, threads=3)
    assert "threads 5 None" in (tmp_path / "report.log").read_text()


def test_a_checkout_on_another_checkouts_package_is_refused(tmp_path):
    """tools/pipeline.py of one checkout on a Python whose adpe is installed (editable) from another: its stages
    would run in, and write into, that other checkout, so it stops first and names both."""
    other = tmp_path / "clone"
    (other / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "pipeline.py", other / "tools" / "pipeline.py")
    done = subprocess.run([sys.executable, str(other / "tools" / "pipeline.py"), "--dry-run"], capture_output=True,
                          text=True, cwd=other)
    assert done.returncode == 1 and not (other / "work_dirs").exists()
    installed = subprocess.run([sys.executable, "-c", "from adpe.tooling import checkout_root; print(checkout_root())"],
                               capture_output=True, text=True, cwd=other, check=True).stdout.strip()
    assert f"{other}/tools/pipeline.py" in done.stderr and f"adpe installed from {installed}" in done.stderr
