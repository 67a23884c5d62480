"""Reading pipeline work dirs into report rows.

A variant dir holds ``run.json`` (adpe.report.records.RunInfo) and any of ``pretrain/``, ``ade20k/``,
``coco/``: mmengine work dirs with one ``<TIMESTAMP>/vis_data/`` folder per (resumed) run, checkpoints, and
for the transfer stages the ``test_results.json`` that tools/test.py writes. A run dir holds variant dirs.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from adpe.config_text import config_model
from adpe.report.records import (
    FINAL_LOSS_WINDOW,
    METRICS,
    PRETRAIN_LOSS,
    RUN_FILE,
    STAGES,
    PretrainStage,
    Row,
    RunInfo,
    Series,
    TransferStage,
    read_json,
)

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
                f"{path} is neither a variant dir (run.json, pretrain/, ade20k/ or coco/) nor a run dir "
                "holding variant dirs")
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
                warnings.warn(f"{path}:{number}: skipping a line that is not JSON", stacklevel=2)
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
        warnings.warn(f"{config_path}: {err}", stacklevel=2)
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


def read_transfer(stage_dir: Path) -> TransferStage:
    """An ADE20K / COCO stage: finished once its test_results.json holds a metrics dict."""
    if not stage_dir.is_dir():
        return TransferStage(str(stage_dir))
    config_path = _latest_file(stage_dir, "vis_data/config.py")
    info = TransferStage(str(stage_dir), status="unfinished", series=read_scalars(stage_dir),
                         dumped_config=str(config_path) if config_path else None)
    results_path = stage_dir / "test_results.json"
    results = read_json(results_path) if results_path.is_file() else None
    if isinstance(results, dict) and isinstance(results.get("metrics"), dict):
        info.status = "finished"
        info.metrics = {k: v for k, v in results["metrics"].items() if isinstance(v, int | float)}
        info.config, info.checkpoint, info.commit, info.time, info.world_size = (
            results.get(key) for key in ("config", "checkpoint", "commit", "time", "world_size"))
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


def _values(pretrain: PretrainStage, ade20k: TransferStage, coco: TransferStage) -> dict[str, float | None]:
    """The row's numbers by VALUE_METRICS key, scaled and rounded as displayed; None where absent."""
    transfer = {"ade20k": ade20k, "coco": coco}
    values: dict[str, float | None] = {}
    for metric in METRICS:
        raw = transfer[metric.stage].metrics.get(metric.result_key)
        values[metric.key] = None if raw is None else round(raw * metric.scale, metric.decimals)
    values[PRETRAIN_LOSS.key] = None if pretrain.loss is None else round(pretrain.loss, PRETRAIN_LOSS.decimals)
    return values


def read_variant(variant_dir: Path, given_dir: Path) -> Row:
    """The row of one variant dir; ``given_dir`` is the work dir it was found under (for env.json)."""
    run = RunInfo.read(variant_dir / RUN_FILE)
    name = run.name if run else variant_dir.name
    # Without run.json nothing says the variant skips pretraining: its absence is "missing", not "none".
    pretrain = read_pretrain(variant_dir / "pretrain", has_pretraining=bool(run.pretrain_config) if run else True)
    ade20k, coco = read_transfer(variant_dir / "ade20k"), read_transfer(variant_dir / "coco")
    commits = [stage.commit for stage in (ade20k, coco) if stage.commit]
    return Row(name=name, label=run.label if run else name, dir=str(variant_dir),
               is_baseline=run.baseline if run else False, pretrain_config=run.pretrain_config if run else None,
               pretrain_variant=_pretrain_variant(pretrain, run), commit="/".join(dict.fromkeys(commits)) or None,
               values=_values(pretrain, ade20k, coco), pretrain=pretrain, ade20k=ade20k, coco=coco,
               env=_find_env(variant_dir, given_dir))


def collect_rows(work_dirs: Iterable[str | Path]) -> list[Row]:
    """One row per variant dir found under ``work_dirs`` (variant dirs or run dirs), in the given order."""
    return [read_variant(variant_dir, Path(given)) for given in work_dirs for variant_dir in expand_work_dirs([given])]
