"""Reading pipeline work dirs into report rows.

A variant dir holds ``run.json`` (adpe.report.records.RunInfo) and any of ``pretrain/``, ``ade20k/``,
``coco/``, ``imagenet/`` and ``linear_probe/seed_N/``: mmengine work dirs with one ``<TIMESTAMP>/vis_data/``
folder per (resumed) run, checkpoints, and for the transfer stages the ``test_results.json`` (and, after a
``--tta`` test, ``test_results_tta.json``) that tools/test.py writes. A run dir holds variant dirs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Iterable
from pathlib import Path

from adpe.config_text import config_model
from adpe.report.records import (
    FINAL_LOSS_WINDOW,
    METRICS,
    PRETRAIN_LOSS,
    RUN_FILE,
    SEED_DIR,
    STAGES,
    TEST_RESULTS,
    PretrainStage,
    ProbeStage,
    Row,
    RunInfo,
    Series,
    TransferStage,
    read_json,
)

logger = logging.getLogger(__name__)

TIMESTAMP_DIR = re.compile(r"^\d{8}_\d{6}$")


def is_variant_dir(path: Path) -> bool:
    """Whether ``path`` holds run.json or a stage work dir."""
    return (path / RUN_FILE).is_file() or any((path / stage).is_dir() for stage in STAGES)


def expand_work_dirs(work_dirs: Iterable[str | Path]) -> list[Path]:
    """Variant dirs of the given work dirs, in the given order (the variants of a run dir sorted by name).

    Raises FileNotFoundError for a path that is missing or neither a variant dir nor a run dir.
    """
    found: list[Path] = []
    for work_dir in work_dirs:
        path = Path(work_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"work dir not found: {path}")
        if is_variant_dir(path):
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if child.is_dir() and is_variant_dir(child))
        if not children:
            raise FileNotFoundError(
                f"{path} is neither a variant dir (run.json or a stage dir: {', '.join(s + '/' for s in STAGES)}) "
                "nor a run dir holding variant dirs")
        found.extend(children)
    return found


def _timestamp_dirs(stage_dir: Path) -> list[Path]:
    """mmengine's <TIMESTAMP>/ folders of a stage, oldest first (a resumed run adds one)."""
    if not stage_dir.is_dir():
        return []
    dirs = [d for d in stage_dir.iterdir() if d.is_dir() and (TIMESTAMP_DIR.match(d.name) or (d / "vis_data").is_dir())]
    return sorted(dirs, key=lambda d: d.name)


def read_scalars(stage_dir: Path) -> dict[str, Series]:
    """Every numeric key of the stage's scalars.json files as a series of (step, value), sorted by step.

    The files of all timestamp folders are read in order; for the same key and step a later row wins
    (a resumed run logs the steps after its checkpoint again). A truncated last line is skipped.
    """
    merged: dict[str, dict[float, float]] = {}
    for ts_dir in _timestamp_dirs(stage_dir):
        path = ts_dir / "vis_data" / "scalars.json"
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                logger.warning(f"{path}:{number}: skipping a line that is not JSON")
                continue
            if not isinstance(row, dict) or "step" not in row:
                continue
            step = row["step"]
            for key, value in row.items():
                if key in ("step", "epoch", "iter") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    merged.setdefault(key, {})[step] = float(value)
    return {key: sorted(values.items()) for key, values in merged.items()}


def _latest_file(stage_dir: Path, relative: str) -> Path | None:
    """The newest timestamp folder's ``relative`` file ("{ts}" stands for the folder's name), or None."""
    for ts_dir in reversed(_timestamp_dirs(stage_dir)):
        path = ts_dir / relative.replace("{ts}", ts_dir.name)
        if path.is_file():
            return path
    return None


def describe_variant(model: dict) -> str:
    """'mae_plus, ape, adversary=coordinate' from a pretraining model dict; '' for an empty one."""
    if not model:
        return ""
    parts = [str(model.get("variant", "?")), str(model.get("position", "?"))]
    if model.get("position") == "rpe" and model.get("rpe_lookup"):
        parts[-1] += f" ({model['rpe_lookup']})"
    parts.append(f"adversary={model.get('adversary') or 'none'}")
    if model.get("size"):
        parts.append(f"size={model['size']}")
    return ", ".join(parts)


def _read_model(config_path: Path) -> tuple[dict, int | None]:
    """The dumped config's model dict and max_epochs; ({}, None) parts for what it does not hold."""
    text = config_path.read_text()
    try:
        model = config_model(text)
    except ValueError as err:  # a truncated or hand-edited dump: the report goes on without model info
        logger.warning(f"{config_path}: {err}")
        model = {}
    match = re.search(r"max_epochs\s*=\s*(\d+)", text)
    return model, int(match.group(1)) if match else None


def _last_checkpoint(stage_dir: Path) -> Path | None:
    """The checkpoint that mmengine's ``last_checkpoint`` names (relative names are in the stage dir)."""
    pointer = stage_dir / "last_checkpoint"
    text = pointer.read_text().strip() if pointer.is_file() else ""
    if not text:
        return None
    return Path(text) if Path(text).is_absolute() else stage_dir / Path(text).name


def read_pretrain(stage_dir: Path, has_pretraining: bool) -> PretrainStage:
    """The pretraining stage: finished once the checkpoint of the config's final epoch exists."""
    if not stage_dir.is_dir():
        return PretrainStage(str(stage_dir), status="missing" if has_pretraining else "none")
    info = PretrainStage(str(stage_dir), series=read_scalars(stage_dir))
    log_path = _latest_file(stage_dir, "{ts}.log")
    info.log = str(log_path) if log_path else None
    config_path = _latest_file(stage_dir, "vis_data/config.py")
    if config_path is not None:
        info.dumped_config = str(config_path)
        info.model, info.max_epochs = _read_model(config_path)
    last = _last_checkpoint(stage_dir)
    finished = False
    if info.max_epochs is not None:
        final = stage_dir / f"epoch_{info.max_epochs}.pth"
        if final.is_file():
            finished, info.checkpoint = True, str(final)
        elif last is not None and last.name == final.name and last.is_file():
            finished, info.checkpoint = True, str(last)
    if info.checkpoint is None and last is not None:
        info.checkpoint = str(last)
    info.status = "finished" if finished else "unfinished"
    losses = [value for _, value in info.series.get("loss", [])]
    if losses:
        tail = losses[-FINAL_LOSS_WINDOW:]
        info.loss = sum(tail) / len(tail)
    return info


def _test_results(stage_dir: Path, tta: bool = False) -> dict | None:
    """The stage's test results file (``TEST_RESULTS[tta]``) when it holds a metrics dict, else None."""
    path = stage_dir / TEST_RESULTS[tta]
    results = read_json(path) if path.is_file() else None
    return results if isinstance(results, dict) and isinstance(results.get("metrics"), dict) else None


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def coco_protocol(config_text: str) -> str:
    """'coco_cascade' for a Cascade Mask R-CNN config (its RoI head), else 'coco_mask_rcnn'."""
    return "coco_cascade" if "CascadeRoIHead" in config_text else "coco_mask_rcnn"


def _seed_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    """The stage's ``seed_N/`` work dirs, by seed."""
    pattern = re.compile("^" + SEED_DIR.format(r"(\d+)") + "$")
    return sorted((int(m[1]), d) for d in (stage_dir.iterdir() if stage_dir.is_dir() else [])
                  if d.is_dir() and (m := pattern.match(d.name)))


def _mean_metrics(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """The mean over seeds of each metric every seed has."""
    keys = set.intersection(*(set(m) for m in per_seed.values())) if per_seed else set()
    return {k: statistics.fmean(m[k] for m in per_seed.values()) for k in sorted(keys)}


def read_seeded_transfer(stage_dir: Path, seed_dirs: list[tuple[int, Path]]) -> TransferStage:
    """A transfer stage run once per seed (``seed_N/``): the seeds' metrics, their means, the first's logs."""
    seeds = {seed: read_transfer(folder) for seed, folder in seed_dirs}
    first = seeds[seed_dirs[0][0]]
    finished = {seed: s for seed, s in seeds.items() if s.status == "finished"}
    info = TransferStage(str(stage_dir), status="finished" if len(finished) == len(seeds) else "unfinished",
                         series=first.series, dumped_config=first.dumped_config, protocol=first.protocol,
                         seeds={seed: s.metrics for seed, s in finished.items()},
                         tta_seeds={seed: s.tta_metrics for seed, s in finished.items() if s.tta_metrics})
    info.metrics, info.tta_metrics = _mean_metrics(info.seeds), _mean_metrics(info.tta_seeds)
    if finished:
        last = next(iter(finished.values()))
        info.config, info.checkpoint, info.commit, info.time, info.world_size = (
            last.config, last.checkpoint, last.commit, last.time, last.world_size)
    return info


def read_transfer(stage_dir: Path) -> TransferStage:
    """An ADE20K / COCO / ImageNet stage: finished once its test_results.json holds a metrics dict (with seed
    dirs: once each seed's does)."""
    seed_dirs = _seed_dirs(stage_dir)
    if seed_dirs:
        return read_seeded_transfer(stage_dir, seed_dirs)
    if not stage_dir.is_dir():
        return TransferStage(str(stage_dir))
    config_path = _latest_file(stage_dir, "vis_data/config.py")
    info = TransferStage(str(stage_dir), status="unfinished", series=read_scalars(stage_dir),
                         dumped_config=str(config_path) if config_path else None)
    if "coco" in (stage_dir.name, stage_dir.parent.name) and config_path is not None:
        info.protocol = coco_protocol(config_path.read_text())
    results = _test_results(stage_dir)
    if results is not None:
        info.status = "finished"
        info.metrics = _numbers(results["metrics"])
        info.config, info.checkpoint, info.commit, info.time, info.world_size = (
            results.get(key) for key in ("config", "checkpoint", "commit", "time", "world_size"))
    tta = _test_results(stage_dir, tta=True)
    info.tta_metrics = _numbers(tta["metrics"]) if tta is not None else {}
    return info


def read_probe(stage_dir: Path) -> ProbeStage:
    """The linear probes: one ``seed_N/`` work dir per seed, each finished once it has test results."""
    pattern = re.compile("^" + SEED_DIR.format(r"(\d+)") + "$")
    seed_dirs = sorted((int(m[1]), d) for d in (stage_dir.iterdir() if stage_dir.is_dir() else [])
                       if d.is_dir() and (m := pattern.match(d.name)))
    if not seed_dirs:
        return ProbeStage(str(stage_dir))
    info = ProbeStage(str(stage_dir), series=read_scalars(seed_dirs[0][1]))
    for seed, seed_dir in seed_dirs:
        results = _test_results(seed_dir)
        if results is not None:
            info.seeds[seed] = _numbers(results["metrics"])
            info.config, info.commit = results.get("config"), results.get("commit")
    info.status = "finished" if len(info.seeds) == len(seed_dirs) else "unfinished"
    return info


def _find_env(variant_dir: Path, given_dir: Path) -> dict | None:
    """The first env.json of the given dir, the variant's parent (the run dir) or the variant dir."""
    for folder in dict.fromkeys([given_dir, variant_dir.parent, variant_dir]):
        path = folder / "env.json"
        if path.is_file():
            env = read_json(path)
            if isinstance(env, dict):
                return {str(k): v for k, v in env.items()}
    return None


def _pretrain_variant(pretrain: PretrainStage, run: RunInfo | None) -> str:
    """How the variant was pretrained: from the dumped model, else the config's name, else 'unknown'."""
    described = describe_variant(pretrain.model)
    if described:
        return described
    if pretrain.status == "none":
        return "none (no pretraining)"
    if run is not None and run.pretrain_config:
        return Path(run.pretrain_config).stem
    return "unknown"


def _values(stages: dict) -> tuple[dict[str, float | None], dict[str, float]]:
    """The row's numbers by VALUE_METRICS key, scaled and rounded as displayed (None where absent), and the
    standard deviation over seeds of those averaged over seeds (stages with two or more seeds)."""
    values: dict[str, float | None] = {}
    spread: dict[str, float] = {}
    for metric in METRICS:
        stage = stages[metric.stage]
        seeds = stage.tta_seeds if metric.tta else stage.seeds
        if isinstance(stage, ProbeStage) or len(seeds) >= 2:
            raw = [seed[metric.result_key] for seed in seeds.values() if metric.result_key in seed]
            if len(raw) >= 2:
                spread[metric.key] = round(statistics.stdev(raw) * metric.scale, metric.decimals)
            raw = statistics.fmean(raw) if raw else None
        else:
            raw = (stage.tta_metrics if metric.tta else stage.metrics).get(metric.result_key)
        values[metric.key] = None if raw is None else round(raw * metric.scale, metric.decimals)
    loss = stages["pretrain"].loss
    values[PRETRAIN_LOSS.key] = None if loss is None else round(loss, PRETRAIN_LOSS.decimals)
    return values, spread


def read_variant(variant_dir: Path, given_dir: Path) -> Row:
    """The row of one variant dir; ``given_dir`` is the work dir it was found under (for env.json)."""
    run = RunInfo.read(variant_dir / RUN_FILE)
    name = run.name if run else variant_dir.name
    # Without run.json nothing says the variant skips pretraining: its absence is "missing", not "none".
    pretrain = read_pretrain(variant_dir / "pretrain", has_pretraining=bool(run.pretrain_config) if run else True)
    stages = {"pretrain": pretrain,  # in STAGES order
              **{task: read_transfer(variant_dir / task) for task in ("ade20k", "coco", "imagenet")},
              "linear_probe": read_probe(variant_dir / "linear_probe")}
    commits = [stage.commit for name, stage in stages.items() if name != "pretrain" and stage.commit]
    values, spread = _values(stages)
    return Row(name=name, label=run.label if run else name, dir=str(variant_dir),
               is_baseline=run.baseline if run else False, pretrain_config=run.pretrain_config if run else None,
               pretrain_variant=_pretrain_variant(pretrain, run), commit="/".join(dict.fromkeys(commits)) or None,
               values=values, spread=spread, env=_find_env(variant_dir, given_dir), **stages)


def collect_rows(work_dirs: Iterable[str | Path]) -> list[Row]:
    """One row per variant dir found under ``work_dirs`` (variant dirs or run dirs), in the given order."""
    return [read_variant(variant_dir, Path(given)) for given in work_dirs for variant_dir in expand_work_dirs([given])]
