"""The records of a results report: metric specs, ``run.json``, the published numbers and the rows.

A report row is one variant of a run: a variant dir holding ``run.json`` and the work dirs of its stages
(``pretrain/``, ``ade20k/``, ``coco/``). Absent results are ``None`` with a stage status, never 0.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

STAGES = ("pretrain", "ade20k", "coco")
FINAL_LOSS_WINDOW = 5  # the final pretraining loss is the mean of this many last logged losses
RUN_FILE = "run.json"  # a variant dir's RunInfo


@dataclass(frozen=True)
class Metric:
    """One number of a row: ``values[key]`` is ``raw * scale`` rounded to ``decimals``.

    ``result_key`` names the raw number in the stage's ``test_results.json`` metrics; ``short`` names the
    metric in the delta column ("Δ <short>").
    """

    key: str
    label: str
    stage: str
    result_key: str | None
    scale: float
    decimals: int
    short: str


# Transfer metrics, read from each stage's test_results.json (mmdet's mAP is a fraction: shown x 100).
METRICS = (
    Metric("ade20k_miou", "ADE20K mIoU", "ade20k", "mIoU", 1.0, 2, "mIoU"),
    Metric("coco_ap_box", "COCO AP box", "coco", "coco/bbox_mAP", 100.0, 1, "AP box"),
    Metric("coco_ap_mask", "COCO AP mask", "coco", "coco/segm_mAP", 100.0, 1, "AP mask"),
)
# Read from the training log instead (the mean of the last FINAL_LOSS_WINDOW logged losses).
PRETRAIN_LOSS = Metric("pretrain_loss", "Final pretrain loss", "pretrain", None, 1.0, 4, "loss")
VALUE_METRICS = (*METRICS, PRETRAIN_LOSS)  # the order of a row's values and of the table's columns


@dataclass(frozen=True)
class RunInfo:
    """A variant of a pipeline run, as ``<variant dir>/run.json`` holds it.

    ``pretrain_config`` is None for a variant without pretraining (random init); ``baseline`` marks the row
    the report's deltas are taken against.
    """

    name: str
    label: str
    pretrain_config: str | None
    baseline: bool = False

    def write(self, path: str | Path) -> None:
        """Write the record as indented JSON with the keys in field order (the format old work dirs hold)."""
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> RunInfo | None:
        """The record at ``path``; None when the file is absent, unreadable or not a non-empty JSON object.

        Hand-written files may leave out entries: the name defaults to the variant dir's (the file's folder),
        the label to the name, the baseline flag to False.
        """
        path = Path(path)
        if not path.is_file():
            return None
        raw = read_json(path)
        if not raw or not isinstance(raw, dict):
            return None
        name = str(raw.get("name") or path.parent.name)
        pretrain = raw.get("pretrain_config")
        return cls(name=name, label=str(raw.get("label") or name), pretrain_config=str(pretrain) if pretrain else None,
                   baseline=bool(raw.get("baseline", False)))


def read_json(path: Path) -> Any | None:
    """The parsed JSON file, or None with a warning when it cannot be read (a report never stops for one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        warnings.warn(f"could not read {path}: {err}", stacklevel=2)
        return None


Series = list[tuple[float, float]]  # (step, value) pairs, sorted by step


@dataclass
class Stage:
    """What a variant's work dir for one stage holds; ``series``: every numeric key of its scalars.json."""

    dir: str
    status: str = "missing"
    series: dict[str, Series] = field(default_factory=dict)

    def summary(self) -> dict:
        """Every field but the logged series (dir, status, then the subclass's fields), for results.json."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "series"}


@dataclass
class PretrainStage(Stage):
    """The pretraining work dir of a variant.

    status: "finished" (the final epoch's checkpoint exists), "unfinished", "missing" (no work dir) or
    "none" (the variant has no pretraining). ``model`` is the dumped config's ``model = dict(...)``; ``loss``
    the mean of the last FINAL_LOSS_WINDOW logged losses.
    """

    loss: float | None = None
    model: dict = field(default_factory=dict)
    max_epochs: int | None = None
    checkpoint: str | None = None
    dumped_config: str | None = None
    log: str | None = None


@dataclass
class TransferStage(Stage):
    """An ADE20K or COCO work dir of a variant.

    status: "finished" (test_results.json holds metrics), "unfinished" (a work dir without them) or
    "missing". ``metrics`` and the provenance fields come from test_results.json.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    config: str | None = None
    checkpoint: str | None = None
    commit: str | None = None
    time: str | None = None
    world_size: int | None = None
    dumped_config: str | None = None


@dataclass
class Row:
    """One variant of the report: its run.json entries, its stages and its values by metric key.

    ``values`` maps every VALUE_METRICS key to the rounded number, or None when the stage has none.
    ``commit``: the transfer stages' commits joined with "/" (None if unknown); ``env``: the run's env.json.
    """

    name: str
    label: str
    dir: str
    is_baseline: bool
    pretrain_config: str | None
    pretrain_variant: str
    commit: str | None
    values: dict[str, float | None]
    pretrain: PretrainStage
    ade20k: TransferStage
    coco: TransferStage
    env: dict | None = None

    @property
    def stages(self) -> dict[str, Stage]:
        """The stages by name, in STAGES order."""
        return {stage: getattr(self, stage) for stage in STAGES}


@dataclass(frozen=True)
class PublishedTable:
    """Published numbers, {row: value} or {row: {column: value}}, and the references they come from."""

    values: dict
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Published:
    """The published ViT-B reference numbers of adpe/report/published.json.

    ``note`` says why demo numbers are not comparable with them; ``downstream_setup`` describes each
    downstream column (task, head, unit).
    """

    note: str
    downstream_setup: dict[str, str]
    downstream: PublishedTable
    released: PublishedTable  # ImageNet fine-tuning top-1 of the released 400-epoch checkpoints

    def summary(self) -> dict:
        """The numbers for results.json: {source, note, downstream, downstream_setup, released_400ep_imagenet_top1}."""
        return {"source": "; ".join(self.downstream.sources), "note": self.note, "downstream": self.downstream.values,
                "downstream_setup": self.downstream_setup, "released_400ep_imagenet_top1": self.released.values}


def _table(entries: dict, references: dict[str, str]) -> PublishedTable:
    """A table from the data file's {row: {"value", "source"}} or {row: {column: {"value", "source"}}}."""
    def unpack(entry: dict) -> tuple[Any, list[str]]:
        if "value" in entry:
            return entry["value"], [entry["source"]]
        cells = {column: unpack(cell) for column, cell in entry.items()}
        return {c: v for c, (v, _) in cells.items()}, [s for _, keys in cells.values() for s in keys]

    rows = {name: unpack(entry) for name, entry in entries.items()}
    keys = list(dict.fromkeys(s for _, row_keys in rows.values() for s in row_keys))
    unknown = [k for k in keys if k not in references]
    if unknown:  # a typo in the data file would otherwise show up only as a missing citation
        raise ValueError(f"published.json: unknown sources {unknown}; known: {sorted(references)}")
    return PublishedTable({name: value for name, (value, _) in rows.items()}, tuple(references[k] for k in keys))


@cache
def load_published() -> Published:
    """The published numbers, read once from the package's data file."""
    raw = json.loads(resources.files("adpe.report").joinpath("published.json").read_text())
    return Published(note=raw["note"], downstream_setup=raw["downstream_setup"],
                     downstream=_table(raw["downstream"], raw["sources"]),
                     released=_table(raw["released_400ep_imagenet_top1"], raw["sources"]))
