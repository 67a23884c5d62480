"""End-to-end pipeline: pretrain -> export -> ADE20K / COCO / ImageNet train and test, linear probes -> report.

python tools/pipeline.py --config tools/demo_pipeline.yaml [--dry-run] [--only VARIANT ...] [--stages ...] [--gpus N]
                          [--launcher slurm --partition P [--gpus-per-node 8] [--sbatch-args "..."]]

The YAML config names the work dir, the data folders, the GPU count (one for every stage, or one per stage:
``gpus: {pretrain: 32, ade20k: 8, coco: 8, imagenet: 8, linear_probe: 8}``), the variants and the transfer tasks
(see tools/demo_pipeline.yaml and tools/pipeline_vitb.yaml): ``ade20k`` / ``coco`` {config, cfg_options, and for
ADE20K ``tta: true`` to add the multi-scale + flip test}, ``imagenet`` {``finetune``: {config, cfg_options},
``linear_probe``: {config, cfg_options, seeds: [0, 1, 2]}} -- one probe per seed, which the report averages --
and ``knn`` {config, cfg_options}: tools/knn_eval.py on every backbone, with a linear-probe config.
``seeds: [...]`` works the same for ``ade20k``, ``coco`` and ``finetune``: one work dir ``TASK/seed_N`` per seed.
A variant may list ``checkpoints: [EPOCH, ...]``: those pretraining checkpoints are also exported and
transferred, each as its own row ``<name>_ep<EPOCH>`` on the variant's curve, and the report adds the study's
curves against pretraining steps (tools/study_pipeline.yaml, make study); ``pretrain_options`` adds --cfg-options
to its pretraining. ``data: {generate: DIR, scale: NAME}`` picks tools/make_demo_data.py's --scale.
Each stage writes a ``.done`` marker when it succeeds; a re-run skips finished stages, and an interrupted stage
resumes from its newest checkpoint (the configs set ``resume = True``).
``--dry-run`` prints every command instead of running it.

By default the stages run here, one after the other; ``--jobs N`` (or ``jobs: N`` in the YAML) runs up to N of them
at once, each stage as soon as the stages it reads have finished, with the CPU threads shared among them (small
models on a few cores finish sooner side by side than one after the other on all cores). ``--launcher slurm``
submits each stage as an ``sbatch`` job instead (the training and test stages through tools/slurm_*.sh), each
waiting for the stages it reads (``--dependency=afterok``): the variants run side by side, and the report is the
last job, after all others.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from adpe.report.records import RUN_FILE, SEED_DIR, RunInfo
from adpe.tooling import checkout_root
from adpe.tooling import env as environment

# The checkout: every stage runs a script of tools/ from here, with relative paths as in the YAML configs.
ROOT = checkout_root()
STAGES = ("data", "pretrain", "export", "reconstruction", "ade20k", "ade20k_tta", "coco", "imagenet", "linear_probe",
          "knn", "report")
# Lines of a stage's output echoed to the console (everything goes to the stage's log).
PROGRESS_MARKERS = ("- INFO - Epoch(train)", "- INFO - Iter(train)", "- INFO - Iter(val) [", "_mAP_copypaste",
                    "Error", "Traceback", "[adpe]")


@dataclass
class PipelineConfig:
    """A pipeline YAML file. ``variants`` are what each variant dir's run.json will hold; ``ade20k`` / ``coco``
    are {config, cfg_options} (empty: the task is skipped); ``gpus``: one count for every stage, or a count per
    stage (see ``gpus_for``)."""

    work_dir: Path
    gpus: int | dict[str, int]
    data: dict
    variants: list[RunInfo]
    ade20k: dict = field(default_factory=dict)
    coco: dict = field(default_factory=dict)
    imagenet: dict = field(default_factory=dict)
    amp: bool = False
    jobs: int = 1  # stages run at once by the local launcher
    knn: dict = field(default_factory=dict)  # {config}: tools/knn_eval.py of every backbone (empty: skipped)
    # variant name -> the epochs whose checkpoints are also exported and transferred, each as its own row
    checkpoints: dict[str, list[int]] = field(default_factory=dict)
    # variant name -> more --cfg-options of its pretraining (e.g. a shorter schedule)
    pretrain_options: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read a pipeline YAML file; SystemExit naming the file when an entry is missing or malformed."""
        import yaml  # PyYAML comes with mmengine; only reading a config needs it

        try:
            with open(path) as stream:  # a named stream: the parser's message names the file, line and column
                raw = yaml.safe_load(stream)
        except yaml.YAMLError as err:
            raise SystemExit(f"{path}: not valid YAML ({err}); fix that line (see tools/demo_pipeline.yaml)") from err
        try:
            checkpoints = {v["name"]: sorted(int(e) for e in v.get("checkpoints") or []) for v in raw["variants"]}
            for v in raw["variants"]:
                if checkpoints[v["name"]] and (not v.get("pretrain") or min(checkpoints[v["name"]]) < 1):
                    raise ValueError(f"variant {v['name']}: checkpoints need a pretrain config and epochs >= 1")
            # a variant with checkpoints is a curve: its own row is the end of the schedule
            variants = [RunInfo(v["name"], v.get("label", v["name"]), v.get("pretrain"), bool(v.get("baseline")),
                                curve=v["name"] if checkpoints[v["name"]] else None)
                        for v in raw["variants"]]
            gpus = raw.get("gpus", 1)
            gpus = {str(k): int(v) for k, v in gpus.items()} if isinstance(gpus, dict) else int(gpus)
            imagenet = raw.get("imagenet") or {}
            unknown = set(imagenet) - {"finetune", "linear_probe"}
            if unknown:
                raise ValueError(f"imagenet: unknown entries {sorted(unknown)} (finetune, linear_probe)")
            jobs = int(raw.get("jobs", 1))
            if jobs < 1:
                raise ValueError(f"jobs: {jobs} (at least 1)")
            return cls(Path(raw["work_dir"]), gpus, raw["data"], variants, raw.get("ade20k") or {},
                       raw.get("coco") or {}, imagenet, bool(raw.get("amp", False)), jobs, raw.get("knn") or {},
                       {name: epochs for name, epochs in checkpoints.items() if epochs},
                       {v["name"]: [str(o) for o in v["pretrain_options"]] for v in raw["variants"]
                        if v.get("pretrain_options")})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SystemExit(f"{path}: malformed pipeline config ({err!r}); see tools/demo_pipeline.yaml") from err

    def points(self, variant: RunInfo) -> list[RunInfo]:
        """The rows of ``variant``'s intermediate checkpoints (``checkpoints: [EPOCH, ...]``), each in its own
        variant dir ``<name>_ep<EPOCH>`` of the work dir, on the variant's curve."""
        return [replace(variant, name=f"{variant.name}_ep{epoch}", label=f"{variant.label}, epoch {epoch}",
                        baseline=False, curve=variant.name, pretrain_epoch=epoch)
                for epoch in self.checkpoints.get(variant.name, [])]

    def rows(self) -> list[RunInfo]:
        """Every row of the report: each variant, then its checkpoints' rows."""
        return [row for variant in self.variants for row in (variant, *self.points(variant))]

    def gpus_for(self, stage: str) -> int:
        """GPUs (processes) of a training or test stage: ``gpus`` itself when it is a number; else its entry for
        the stage, the --tta test falling back to its training stage's (``ade20k_tta`` -> ``ade20k``)."""
        if isinstance(self.gpus, int):
            return self.gpus
        for key in (stage, stage.removesuffix("_tta")):
            if key in self.gpus:
                return self.gpus[key]
        raise SystemExit(f"[pipeline] gpus has no entry for the {stage!r} stage: give one per stage, e.g. "
                         "gpus: {pretrain: 32, ade20k: 8, coco: 8}")


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
    seed: int | None = None  # a linear probe's seed (its own work dir)
    parent: str | None = None  # a checkpoint row's export: the variant whose pretraining it reads

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


def transfer_steps(cfg: PipelineConfig, variant: RunInfo, task: str, backbone: Path | None, spec: dict,
                   work: Path, seed: int | None = None) -> list[Step]:
    """The steps of ``task`` ("ade20k", "coco", "imagenet" or "linear_probe") in ``work``, from ``backbone`` (None:
    random init), as ``spec`` {config, cfg_options, tta} says; ``seed``: the run's ``randomness.seed``.

    Training tests its final model in the same process (``--test`` writes test_results.json): a separate test
    process (or Slurm job, queued again) would cost more than the test itself. ``tta: true`` adds the
    multi-scale + flip test of that checkpoint (tools/dist_test.sh --tta, test_results_tta.json).
    """
    data = cfg.data["imagenet" if task == "linear_probe" else task]
    options = [f"{loader}.dataset.data_root={data}/" for loader in
               ("train_dataloader", "val_dataloader", "test_dataloader")]
    if task == "coco":
        ann = f"{data}/annotations/instances_val2017.json"
        options += [f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}"]
    options += list(spec.get("cfg_options", []))
    if seed is not None:
        options.append(f"randomness.seed={seed}")
    init = [f"model.backbone.init_cfg.checkpoint={backbone}"] if backbone else ["model.backbone.init_cfg=None"]
    amp = ["--amp"] if cfg.amp else []
    steps = [Step(task, variant.name, ["bash", "tools/dist_train.sh", spec["config"], str(cfg.gpus_for(task)),
                                       "--work-dir", str(work), *amp, "--test", "--cfg-options", *init, *options],
                  work, seed)]
    if spec.get("tta"):
        steps.append(Step(f"{task}_tta", variant.name, ["bash", "tools/dist_test.sh", spec["config"],
                                                         LatestCheckpoint(work), str(cfg.gpus_for(f"{task}_tta")),
                                                         "--work-dir", str(work), "--tta", "--cfg-options", *options],
                          work, seed))
    return steps


def variant_transfer_steps(cfg: PipelineConfig, variant: RunInfo, backbone: Path | None) -> list[Step]:
    """Every transfer task of the config for one variant: ADE20K, COCO, ImageNet fine-tuning, then the linear
    probes (one work dir ``linear_probe/seed_N`` per seed). ADE20K, COCO and fine-tuning with ``seeds: [...]`` run
    once per seed too (``ade20k/seed_N``, ...): the report shows mean ± std over seeds and resamples the seeds in
    its intervals."""
    vdir = cfg.work_dir / variant.name
    steps = []
    for task, spec in (("ade20k", cfg.ade20k), ("coco", cfg.coco), ("imagenet", cfg.imagenet.get("finetune"))):
        if not spec:
            continue
        if "seeds" not in spec:  # one run in the stage dir itself, with the config's seed
            steps += transfer_steps(cfg, variant, task, backbone, spec, vdir / task)
        for seed in spec.get("seeds", []):  # one work dir per seed, as the linear probe's
            steps += transfer_steps(cfg, variant, task, backbone, spec, vdir / task / SEED_DIR.format(seed), seed)
    probe = cfg.imagenet.get("linear_probe")
    for seed in probe.get("seeds", [0]) if probe else []:
        steps += transfer_steps(cfg, variant, "linear_probe", backbone, probe,
                                vdir / "linear_probe" / SEED_DIR.format(seed), seed)
    if cfg.knn:
        steps.append(knn_step(cfg, variant, backbone))
    return steps


def knn_step(cfg: PipelineConfig, variant: RunInfo, backbone: Path | None) -> Step:
    """tools/knn_eval.py on ``backbone`` (None: random init) with ``cfg.knn``'s linear-probe config: no training,
    one process, ``<variant dir>/knn/test_results.json``."""
    data = cfg.data["imagenet"]
    init = [f"model.backbone.init_cfg.checkpoint={backbone}"] if backbone else ["model.backbone.init_cfg=None"]
    work = cfg.work_dir / variant.name / "knn"
    return Step("knn", variant.name, [sys.executable, "tools/knn_eval.py", cfg.knn["config"], "--work-dir", str(work),
                                      "--cfg-options", *init, f"train_dataloader.dataset.data_root={data}/",
                                      *cfg.knn.get("cfg_options", [])], work)


def plan(cfg: PipelineConfig) -> list[Step]:
    """Every command of the pipeline, in order."""
    py = sys.executable
    steps: list[Step] = []
    if cfg.data.get("generate"):
        scale = ["--scale", str(cfg.data["scale"])] if cfg.data.get("scale") else []  # default: the demo's
        steps.append(Step("data", None, [py, "tools/make_demo_data.py", "--root", str(cfg.data["generate"]), *scale],
                          cfg.work_dir))
    for variant in cfg.variants:
        vdir = cfg.work_dir / variant.name
        backbone = None
        if variant.pretrain_config:
            pre = vdir / "pretrain"
            amp = ["--amp"] if cfg.amp else []
            steps.append(Step("pretrain", variant.name, [
                "bash", "tools/pretrain.sh", variant.pretrain_config, str(cfg.gpus_for("pretrain")),
                "--work-dir", str(pre), *amp,
                "--cfg-options", f"train_dataloader.dataset.data_root={cfg.data['imagenet']}",
                *cfg.pretrain_options.get(variant.name, [])], pre))
            backbone = vdir / "backbone.pth"
            steps.append(Step("export", variant.name, [py, "tools/convert_checkpoint.py", LatestCheckpoint(pre),
                                                       str(backbone)], vdir))
            steps.append(Step("reconstruction", variant.name, [
                py, "tools/visualize_reconstruction.py", LatestCheckpoint(pre), "--images", cfg.data["imagenet"],
                "--out", str(vdir / "reconstruction.png")], vdir))
        steps += variant_transfer_steps(cfg, variant, backbone)
        for point in cfg.points(variant):  # the checkpoints along the schedule, each exported and transferred
            pdir = cfg.work_dir / point.name
            steps.append(Step("export", point.name, [py, "tools/convert_checkpoint.py",
                                                     str(vdir / "pretrain" / f"epoch_{point.pretrain_epoch}.pth"),
                                                     str(pdir / "backbone.pth")], pdir, parent=variant.name))
            steps += variant_transfer_steps(cfg, point, pdir / "backbone.pth")
    # a config with checkpoints is a study: the report adds the curves against pretraining steps
    study = ["--study"] if cfg.checkpoints else []
    steps.append(Step("report", None, [py, "tools/report.py", str(cfg.work_dir), "--out",
                                       str(cfg.work_dir / "report"), *study], cfg.work_dir))
    return steps


def write_run_files(cfg: PipelineConfig, env: bool = True) -> None:
    """Each variant dir's run.json, and the run's env.json (what the report reads besides the work dirs).

    env=False: no env.json (a Slurm submission runs on a login node, not where the stages run; the report job
    then describes the node it runs on)."""
    for variant in cfg.rows():
        vdir = cfg.work_dir / variant.name
        vdir.mkdir(parents=True, exist_ok=True)
        variant.write(vdir / RUN_FILE)
    if not env:
        return
    (cfg.work_dir / "env.json").write_text(json.dumps(environment.collect_env(), indent=2))


def run_step(step: Step, index: int, total: int, started: float, threads: int | None = None) -> None:
    """Run one command, streaming its progress lines; the full output goes to the stage's log. ``threads``: the
    CPU threads the stage may use (None: all), unless the caller's environment already sets OMP_NUM_THREADS."""
    step.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = step.work_dir / f"{step.stage}.log"
    who = f"{step.variant}: " if step.variant else ""
    print(f"\n[pipeline {index}/{total} {time.time() - started:6.0f}s] {who}{step.stage}\n  $ {step.shell()}",
          flush=True)
    command = step.argv()
    env = dict(os.environ)
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    tag = f"  [{step.variant} {step.stage}] " if step.variant else "  "
    with log_path.open("w") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in PROGRESS_MARKERS):
                print(tag + line.rstrip()[:200], flush=True)
    if proc.returncode:
        tail = log_path.read_text().splitlines()[-30:]
        print("\n".join("  | " + line for line in tail), file=sys.stderr)
        raise SystemExit(f"[pipeline] {who}{step.stage} failed (exit {proc.returncode}); full log: {log_path}\n"
                         "Fix the cause and re-run the same command: finished stages are skipped and this one "
                         "resumes from its newest checkpoint.")
    step.marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def available_cpus() -> int:
    """CPUs this process may run on (a container's or a Slurm job's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_local(steps: list[Step], jobs: int) -> None:
    """Run ``steps`` here, up to ``jobs`` at once, each when the steps it reads from (``predecessors``) have
    finished, skipping those finished before (``.done``). The CPU threads are split evenly among the ``jobs``.
    After a failure no new step starts; the running ones finish, then the first failure is raised."""
    started = time.time()
    index = {id(step): i for i, step in enumerate(steps, 1)}
    done = {id(s) for s in steps if s.stage != "report" and s.marker.exists()}
    for step in steps:
        if id(step) in done:
            print(f"[pipeline {index[id(step)]}/{len(steps)}] {step.variant or ''} {step.stage}: done before, "
                  "skipped")
    waiting = [s for s in steps if id(s) not in done]
    threads = max(1, available_cpus() // jobs) if jobs > 1 else None
    running: dict[int, threading.Thread] = {}
    failures: list[BaseException] = []
    finished = threading.Condition()

    def work(step: Step) -> None:
        try:
            run_step(step, index[id(step)], len(steps), started, threads)
        except BaseException as err:  # SystemExit of a failed stage, or anything unexpected: report it in order
            failures.append(err)
        with finished:
            if not failures or step.marker.exists():
                done.add(id(step))
            running.pop(id(step))
            finished.notify()

    with finished:
        while waiting or running:
            ready = [s for s in waiting if all(id(p) in done for p in predecessors(s, steps))]
            while ready and len(running) < jobs and not failures:
                step = ready.pop(0)
                waiting.remove(step)
                running[id(step)] = thread = threading.Thread(target=work, args=(step,), daemon=True)
                thread.start()
            if not running:
                break
            finished.wait()
    if failures:
        raise failures[0]
    if waiting:  # cannot happen with a well-formed plan: say what is stuck rather than finish quietly
        raise SystemExit("[pipeline] these stages never became ready: "
                         + ", ".join(f"{s.variant or ''} {s.stage}" for s in waiting))
    print(f"\n[pipeline] finished in {time.time() - started:.0f}s.")


# What a stage reads from earlier stages (of its own variant, or the shared data stage): a Slurm job waits for
# these when they are submitted with it. The report waits for every other job.
PREDECESSORS = {"pretrain": ("data",), "export": ("pretrain",), "reconstruction": ("pretrain",),
                "ade20k": ("data", "export"), "ade20k_tta": ("ade20k",), "coco": ("data", "export"),
                "imagenet": ("data", "export"), "linear_probe": ("data", "export"), "knn": ("data", "export")}
# Our torchrun launchers -> their Slurm twins, and how many positional arguments come before GPUS in the
# torchrun launcher's command line (dist_test.sh CONFIG CHECKPOINT GPUS ...; the others CONFIG GPUS ...).
SLURM_LAUNCHERS = {"tools/pretrain.sh": ("tools/slurm_pretrain.sh", 1),
                   "tools/dist_train.sh": ("tools/slurm_train.sh", 1),
                   "tools/dist_test.sh": ("tools/slurm_test.sh", 2)}


def predecessors(step: Step, steps: list[Step]) -> list[Step]:
    """The steps of ``steps`` that ``step`` reads from (``PREDECESSORS``, of its own seed if it has one); for the
    report, all others."""
    if step.stage == "report":
        return [s for s in steps if s is not step]
    wanted = PREDECESSORS.get(step.stage, ())
    return [s for s in steps if s.stage in wanted and s.variant in (step.variant, step.parent, None)
            and s.seed in (step.seed, None)]


@dataclass(frozen=True)
class Slurm:
    """How stages become jobs: ``sbatch`` on ``partition``, nodes of ``gpus_per_node`` GPUs, and any extra
    ``sbatch_args`` (a time limit, an account, ...)."""

    partition: str
    gpus_per_node: int = 8
    sbatch_args: tuple[str, ...] = ()

    def job(self, step: Step, name: str) -> tuple[Step, list[str]]:
        """``step`` as its job runs it, and the job's resources.

        Training and test stages go through tools/slurm_*.sh with GPUS / GPUS_PER_NODE / CPUS_PER_TASK set, and
        the job allocates what their ``srun`` asks for (one task per GPU); other stages are one process.
        """
        cpus = 10 if step.stage == "pretrain" else 5  # the launchers' defaults (pretraining: multi-crop loading)
        if step.command[0] != "bash" or step.command[1] not in SLURM_LAUNCHERS:
            return step, ["--nodes=1", "--ntasks=1", "--gres=gpu:1", f"--cpus-per-task={cpus}"]
        script, before = SLURM_LAUNCHERS[step.command[1]]
        args = step.command[2:]
        gpus = int(args[before])
        per_node = min(gpus, self.gpus_per_node)
        if gpus % per_node:
            raise SystemExit(f"[pipeline] {step.variant} {step.stage}: {gpus} GPUs do not fill nodes of "
                             f"{self.gpus_per_node} (--gpus-per-node); use a multiple of it")
        command = ["env", f"GPUS={gpus}", f"GPUS_PER_NODE={per_node}", f"CPUS_PER_TASK={cpus}", "bash", script,
                   self.partition, name, *args[:before], *args[before + 1:]]
        resources = [f"--nodes={gpus // per_node}", f"--ntasks={gpus}", f"--ntasks-per-node={per_node}",
                     f"--gres=gpu:{per_node}", f"--cpus-per-task={cpus}"]
        return replace(step, command=command), resources

    def sbatch(self, step: Step, name: str, after: list[str]) -> list[str]:
        """The ``sbatch`` command line of ``step``, waiting for the jobs ``after``.

        The job writes the stage's ``.done`` marker when its command succeeds, as a local run does. Jobs whose
        dependency can no longer be met (an earlier stage failed) are cancelled rather than left pending, so the
        report, which waits for all of them to end (``afterany``), still runs and marks what is missing.
        """
        job_step, resources = self.job(step, name)
        kind = "afterany" if step.stage == "report" else "afterok"
        dependency = [f"--dependency={kind}:{':'.join(after)}"] if after else []
        return ["sbatch", "--parsable", f"--partition={self.partition}", f"--job-name={name}", f"--chdir={ROOT}",
                f"--output={step.work_dir / f'{step.stage}-%j.log'}", "--kill-on-invalid-dep=yes", *resources,
                *self.sbatch_args, *dependency,
                f"--wrap={job_step.shell()} && date +%Y-%m-%dT%H:%M:%S > {shlex.quote(str(step.marker))}"]


def sbatch_line(argv: list[str]) -> str:
    """``argv`` as a shell line, leaving the dependency's ``$J1`` placeholders unquoted (they are expanded)."""
    return " ".join(arg if arg.startswith("--dependency=") else shlex.quote(arg) for arg in argv)


def submit(steps: list[Step], slurm: Slurm, work_dir: Path, dry_run: bool) -> None:
    """Submit every unfinished step as a Slurm job after the jobs of the steps it reads from (finished steps are
    skipped and waited for by no one). A dry run prints a shell script instead: ``J1=$(sbatch ...)``, later
    jobs naming ``$J1`` as the dependency."""
    jobs: dict[int, str] = {}  # id(step) -> its job id (a dry run: its placeholder)
    for step in steps:
        who = f"{step.variant} " if step.variant else ""
        if step.stage != "report" and step.marker.exists():
            print(f"# {who}{step.stage}: done before, skipped")
            continue
        after = [jobs[id(s)] for s in predecessors(step, steps) if id(s) in jobs]
        seed = None if step.seed is None else f"seed{step.seed}"
        argv = slurm.sbatch(step, ".".join(filter(None, (work_dir.name, step.variant, step.stage, seed))), after)
        if dry_run:
            jobs[id(step)] = f"$J{len(jobs) + 1}"
            print(f"J{len(jobs)}=$({sbatch_line(argv)})")
            continue
        step.work_dir.mkdir(parents=True, exist_ok=True)  # sbatch writes the job's log there
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"[pipeline] sbatch failed for {who}{step.stage} (exit {done.returncode}): "
                             f"{done.stderr.strip()}\n  $ {sbatch_line(argv)}")
        jobs[id(step)] = done.stdout.strip().split(";")[0]  # --parsable prints JOBID[;CLUSTER]
        print(f"[pipeline] {who}{step.stage}: job {jobs[id(step)]}" + (f" after {', '.join(after)}" if after else ""))
    if not dry_run:
        print(f"[pipeline] submitted {len(jobs)} jobs ({' '.join(jobs.values())}); logs: STAGE-JOBID.log in each "
              f"stage's work dir; report: {work_dir / 'report' / 'report.md'}. Re-submit the same command after a "
              "failure: finished stages are skipped, unfinished ones resume.")


def main(argv=None) -> None:
    """The command line of tools/pipeline.py (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "tools/demo_pipeline.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants (and the report)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help="local: every stage here (--jobs at once); slurm: each stage an sbatch job")
    parser.add_argument("--jobs", type=int, help="local: stages run at once (default: the YAML's jobs, else 1)")
    parser.add_argument("--gpus", type=int, help="GPUs (processes) of every training stage, instead of the YAML's")
    parser.add_argument("--partition", help="Slurm partition (--launcher slurm)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of a Slurm node (default 8)")
    parser.add_argument("--sbatch-args", default="",
                        help='more sbatch options, one string: --sbatch-args="--time=3-00:00:00 --account=A"')
    args = parser.parse_args(argv)
    if args.launcher == "slurm" and not args.partition:
        parser.error("--launcher slurm needs --partition")
    cfg = PipelineConfig.load(args.config)
    if args.gpus is not None:
        cfg.gpus = args.gpus
    steps = [s for s in plan(cfg)
             if (not args.only or s.variant is None or s.variant in args.only)
             and (not args.stages or s.stage in args.stages)]
    if args.launcher == "slurm":
        if not args.dry_run:
            write_run_files(cfg, env=False)
        submit(steps, Slurm(args.partition, args.gpus_per_node, tuple(shlex.split(args.sbatch_args))), cfg.work_dir,
               args.dry_run)
        return
    if args.dry_run:
        for step in steps:
            print(step.shell())
        return
    jobs = args.jobs or cfg.jobs
    if jobs < 1:
        parser.error("--jobs must be at least 1")
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(cfg)
    run_local(steps, jobs)
    print(f"[pipeline] Report: {cfg.work_dir / 'report' / 'report.md'}")
