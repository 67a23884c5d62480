"""End-to-end pipeline: pretrain -> export -> ADE20K train/test -> COCO train/test -> report.

python tools/pipeline.py --config tools/demo_pipeline.yaml [--dry-run] [--only VARIANT ...] [--stages ...]

The YAML config names the work dir, the data folders, the GPU count and the variants (see
tools/demo_pipeline.yaml and tools/pipeline_vitb.yaml). Each stage writes a ``.done`` marker when it
succeeds; a re-run skips finished stages, and an interrupted stage resumes from its newest checkpoint
(the configs set ``resume = True``). ``--dry-run`` prints every command instead of running it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adpe.report.records import RUN_FILE, RunInfo

# The checkout: every stage runs a script of tools/ from here, with relative paths as in the YAML configs.
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "pretrain", "export", "reconstruction", "ade20k", "ade20k_test", "coco", "coco_test", "report")
# Lines of a stage's output echoed to the console (everything goes to the stage's log).
PROGRESS_MARKERS = ("- INFO - Epoch(train)", "- INFO - Iter(train)", "- INFO - Iter(val) [", "_mAP_copypaste",
                    "Error", "Traceback", "[adpe]")


@dataclass
class PipelineConfig:
    """A pipeline YAML file. ``variants`` are what each variant dir's run.json will hold; ``ade20k`` / ``coco``
    are {config, cfg_options} (empty: the task is skipped)."""

    work_dir: Path
    gpus: int
    data: dict
    variants: list[RunInfo]
    ade20k: dict = field(default_factory=dict)
    coco: dict = field(default_factory=dict)
    amp: bool = False

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read a pipeline YAML file; SystemExit naming the file when an entry is missing or malformed."""
        import yaml  # PyYAML comes with mmengine; only reading a config needs it

        raw = yaml.safe_load(Path(path).read_text())
        try:
            variants = [RunInfo(v["name"], v.get("label", v["name"]), v.get("pretrain"), bool(v.get("baseline")))
                        for v in raw["variants"]]
            return cls(Path(raw["work_dir"]), int(raw.get("gpus", 1)), raw["data"], variants,
                       raw.get("ade20k", {}), raw.get("coco", {}), bool(raw.get("amp", False)))
        except (KeyError, TypeError) as err:
            raise SystemExit(f"{path}: malformed pipeline config ({err!r}); see tools/demo_pipeline.yaml") from err


@dataclass(frozen=True)
class LatestCheckpoint:
    """The newest checkpoint of an earlier stage, known only once that stage has run."""

    work_dir: Path

    def resolve(self) -> str:
        """The path that the stage's mmengine ``last_checkpoint`` file names."""
        pointer = self.work_dir / "last_checkpoint"
        if not pointer.is_file():
            raise SystemExit(f"[pipeline] {self.work_dir} has no last_checkpoint: did its training stage finish?")
        return pointer.read_text().strip()

    def shell(self) -> str:
        """The same path, for a printed command that is run later."""
        return f"$(cat {shlex.quote(str(self.work_dir / 'last_checkpoint'))})"


@dataclass
class Step:
    """One command of the pipeline: strings, and LatestCheckpoint placeholders resolved when it runs."""

    stage: str
    variant: str | None
    command: list
    work_dir: Path  # holds the stage's .done marker and log

    @property
    def marker(self) -> Path:
        """The file whose existence says the step finished."""
        return self.work_dir / f".{self.stage}.done"

    def shell(self) -> str:
        """The command as a shell line."""
        return " ".join(p.shell() if isinstance(p, LatestCheckpoint) else shlex.quote(str(p)) for p in self.command)

    def argv(self) -> list[str]:
        """The command to run now (the earlier stages have written their checkpoints)."""
        return [p.resolve() if isinstance(p, LatestCheckpoint) else str(p) for p in self.command]


def transfer_steps(cfg: PipelineConfig, variant: RunInfo, task: str, backbone: Path | None) -> list[Step]:
    """Train and test steps of ``task`` ("ade20k" or "coco") from ``backbone`` (None: random init)."""
    spec = getattr(cfg, task)
    if not spec:
        return []
    work = cfg.work_dir / variant.name / task
    data = cfg.data[task]
    options = [f"{loader}.dataset.data_root={data}/" for loader in
               ("train_dataloader", "val_dataloader", "test_dataloader")]
    if task == "coco":
        ann = f"{data}/annotations/instances_val2017.json"
        options += [f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}"]
    options += list(spec.get("cfg_options", []))
    init = [f"model.backbone.init_cfg.checkpoint={backbone}"] if backbone else ["model.backbone.init_cfg=None"]
    amp = ["--amp"] if cfg.amp else []
    train = Step(task, variant.name, ["bash", "tools/dist_train.sh", spec["config"], str(cfg.gpus),
                                      "--work-dir", str(work), *amp, "--cfg-options", *init, *options], work)
    test = Step(f"{task}_test", variant.name, ["bash", "tools/dist_test.sh", spec["config"],
                                               LatestCheckpoint(work), str(cfg.gpus), "--work-dir", str(work),
                                               "--cfg-options", *options], work)
    return [train, test]


def plan(cfg: PipelineConfig) -> list[Step]:
    """Every command of the pipeline, in order."""
    py = sys.executable
    steps: list[Step] = []
    if cfg.data.get("generate"):
        steps.append(Step("data", None, [py, "tools/make_demo_data.py", "--root", str(cfg.data["generate"])],
                          cfg.work_dir))
    for variant in cfg.variants:
        vdir = cfg.work_dir / variant.name
        backbone = None
        if variant.pretrain_config:
            pre = vdir / "pretrain"
            amp = ["--amp"] if cfg.amp else []
            steps.append(Step("pretrain", variant.name, [
                "bash", "tools/pretrain.sh", variant.pretrain_config, str(cfg.gpus), "--work-dir", str(pre), *amp,
                "--cfg-options", f"train_dataloader.dataset.data_root={cfg.data['imagenet']}"], pre))
            backbone = vdir / "backbone.pth"
            steps.append(Step("export", variant.name, [py, "tools/convert_checkpoint.py", LatestCheckpoint(pre),
                                                       str(backbone)], vdir))
            steps.append(Step("reconstruction", variant.name, [
                py, "tools/visualize_reconstruction.py", LatestCheckpoint(pre), "--images", cfg.data["imagenet"],
                "--out", str(vdir / "reconstruction.png")], vdir))
        steps += transfer_steps(cfg, variant, "ade20k", backbone)
        steps += transfer_steps(cfg, variant, "coco", backbone)
    steps.append(Step("report", None, [py, "tools/report.py", str(cfg.work_dir), "--out",
                                       str(cfg.work_dir / "report")], cfg.work_dir))
    return steps


def write_run_files(cfg: PipelineConfig) -> None:
    """Each variant dir's run.json, and the run's env.json (what the report reads besides the work dirs)."""
    for variant in cfg.variants:
        vdir = cfg.work_dir / variant.name
        vdir.mkdir(parents=True, exist_ok=True)
        variant.write(vdir / RUN_FILE)
    from adpe.env import collect_env  # imports torch and probes OpenMMLab: only when the pipeline runs

    (cfg.work_dir / "env.json").write_text(json.dumps(collect_env(), indent=2))


def run_step(step: Step, index: int, total: int, started: float) -> None:
    """Run one command, streaming its progress lines; the full output goes to the stage's log."""
    step.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = step.work_dir / f"{step.stage}.log"
    who = f"{step.variant}: " if step.variant else ""
    print(f"\n[pipeline {index}/{total} {time.time() - started:6.0f}s] {who}{step.stage}\n  $ {step.shell()}",
          flush=True)
    command = step.argv()
    # the tools import adpe: from the checkout, also when it is not installed
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with log_path.open("w") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in PROGRESS_MARKERS):
                print("  " + line.rstrip()[:200], flush=True)
    if proc.returncode:
        tail = log_path.read_text().splitlines()[-30:]
        print("\n".join("  | " + line for line in tail), file=sys.stderr)
        raise SystemExit(f"[pipeline] {who}{step.stage} failed (exit {proc.returncode}); full log: {log_path}\n"
                         "Fix the cause and re-run the same command: finished stages are skipped and this one "
                         "resumes from its newest checkpoint.")
    step.marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def main(argv=None) -> None:
    """The command line of tools/pipeline.py (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "tools/demo_pipeline.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants (and the report)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages")
    args = parser.parse_args(argv)
    cfg = PipelineConfig.load(args.config)
    steps = [s for s in plan(cfg)
             if (not args.only or s.variant is None or s.variant in args.only)
             and (not args.stages or s.stage in args.stages)]
    if args.dry_run:
        for step in steps:
            print(step.shell())
        return
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(cfg)
    started = time.time()
    for index, step in enumerate(steps, 1):
        if step.stage != "report" and step.marker.exists():
            print(f"[pipeline {index}/{len(steps)}] {step.variant or ''} {step.stage}: done before, skipped")
            continue
        run_step(step, index, len(steps), started)
    print(f"\n[pipeline] finished in {time.time() - started:.0f}s. Report: {cfg.work_dir / 'report' / 'report.md'}")
