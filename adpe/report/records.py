"""The records of a results report: metric specs, ``run.json``, the published numbers and the rows.

A report row is one variant of a run: a variant dir holding ``run.json`` and the work dirs of its stages
(``pretrain/``, ``ade20k/``, ``coco/``, ``imagenet/`` and ``linear_probe/seed_N/``). Absent results are ``None``
with a stage status, never 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGES = ("pretrain", "ade20k", "coco", "imagenet", "linear_probe")
FINAL_LOSS_WINDOW = 5  # the final pretraining loss is the mean of this many last logged losses
RUN_FILE = "run.json"  # a variant dir's RunInfo
# What tools/test.py writes into the work dir: {tta: file name}; a --tta test sits beside the plain one.
TEST_RESULTS = {False: "test_results.json", True: "test_results_tta.json"}
SEED_DIR = "seed_{}"  # linear_probe/seed_N/: one probe per seed


@dataclass(frozen=True)
class Metric:
    """One number of a row: ``values[key]`` is ``raw * scale`` rounded to ``decimals``.

    ``result_key`` names the raw number in the stage's test results (``TEST_RESULTS[tta]``); ``short`` names the
    metric in the delta column ("Δ <short>"); ``protocol`` is the key of the published numbers measured the same
    way (published.json's ``protocols``; "coco" stands for the detector the row trained, see
    ``TransferStage.protocol``), None when nothing published compares.
    """

    key: str
    label: str
    stage: str
    result_key: str | None
    scale: float
    decimals: int
    short: str
    protocol: str | None = None
    tta: bool = False


# Transfer metrics, read from each stage's test results (mmdet's mAP is a fraction: shown x 100). A stage with
# seeds (the linear probe; ADE20K, COCO, fine-tuning when the pipeline gives them seeds) shows the mean over its
# seeds (Row.spread holds their standard deviation).
METRICS = (
    Metric("ade20k_miou", "ADE20K mIoU", "ade20k", "mIoU", 1.0, 2, "mIoU", "ade20k_ss"),
    Metric("ade20k_miou_msflip", "ADE20K mIoU ms+flip", "ade20k", "mIoU", 1.0, 2, "mIoU ms+flip", "ade20k_msflip",
           tta=True),
    Metric("coco_ap_box", "COCO AP box", "coco", "coco/bbox_mAP", 100.0, 1, "AP box", "coco"),
    Metric("coco_ap_mask", "COCO AP mask", "coco", "coco/segm_mAP", 100.0, 1, "AP mask", "coco"),
    Metric("imagenet_top1", "ImageNet fine-tune top-1", "imagenet", "accuracy/top1", 1.0, 1, "FT top-1",
           "imagenet_ft"),
    Metric("linear_probe_top1", "Linear probe top-1", "linear_probe", "accuracy/top1", 1.0, 1, "LP top-1"),
)

# Read from the training log instead (the mean of the last FINAL_LOSS_WINDOW logged losses).
PRETRAIN_LOSS = Metric("pretrain_loss", "Final pretrain loss", "pretrain", None, 1.0, 4, "loss")
VALUE_METRICS = (*METRICS, PRETRAIN_LOSS)  # the order of a row's values and of the table's columns


@dataclass(frozen=True)
class RunInfo:
    """A variant of a pipeline run, as ``<variant dir>/run.json`` holds it.

    ``pretrain_config`` is None for a variant without pretraining (random init); ``baseline`` marks the row
    the report's deltas are taken against. A study's rows (tools/study_pipeline.yaml) also name their ``curve``
    (the pretraining variant whose backbone they transfer) and ``pretrain_epoch``, the epoch of the checkpoint they
    transfer (None: the end of the schedule); the curve's own variant dir holds the pretraining.
    """

    name: str
    label: str
    pretrain_config: str | None
    baseline: bool = False
    curve: str | None = None
    pretrain_epoch: int | None = None

    def write(self, path: str | Path) -> None:
        """Write the record as indented JSON with the keys in field order (the format old work dirs hold)."""
        record = asdict(self)
        for key in ("curve", "pretrain_epoch"):  # only where set: run.json of other runs stays as it was
            if record[key] is None:
                del record[key]
        Path(path).write_text(json.dumps(record, indent=2))

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
        epoch = raw.get("pretrain_epoch")
        return cls(name=name, label=str(raw.get("label") or name), pretrain_config=str(pretrain) if pretrain else None,
                   baseline=bool(raw.get("baseline", False)), curve=str(raw["curve"]) if raw.get("curve") else None,
                   pretrain_epoch=int(epoch) if isinstance(epoch, int | float) else None)


def read_json(path: Path) -> Any | None:
    """The parsed JSON file, or None with a warning when it cannot be read (a report never stops for one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning(f"could not read {path}: {err}")
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
    """An ADE20K, COCO or ImageNet work dir of a variant.

    status: "finished" (test_results.json holds metrics), "unfinished" (a work dir without them) or
    "missing". ``metrics`` and the provenance fields come from test_results.json, ``tta_metrics`` from
    test_results_tta.json (a --tta test; empty without one). With seeds (``seed_N/`` work dirs, as the linear
    probe's) ``seeds`` / ``tta_seeds`` hold each seed's metrics, ``metrics`` / ``tta_metrics`` their means, and the
    stage is finished when every seed is. ``protocol``: a COCO stage's detector,
    'coco_cascade' or 'coco_mask_rcnn' (from its dumped config), else None.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    tta_metrics: dict[str, float] = field(default_factory=dict)
    config: str | None = None
    checkpoint: str | None = None
    commit: str | None = None
    time: str | None = None
    world_size: int | None = None
    dumped_config: str | None = None
    protocol: str | None = None
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)  # seed_N/ dirs: {seed: metrics}
    tta_seeds: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class ProbeStage(Stage):
    """The linear probes of a variant, one work dir per seed (``linear_probe/seed_N/``).

    status: "finished" when every seed dir has test results, "unfinished" when some have none, "missing" without
    seed dirs. ``seeds``: {seed: metrics} of the finished probes; ``series`` are the first seed's logs.
    """

    seeds: dict[int, dict[str, float]] = field(default_factory=dict)
    config: str | None = None
    commit: str | None = None


@dataclass
class Row:
    """One variant of the report: its run.json entries, its stages and its values by metric key.

    ``values`` maps every VALUE_METRICS key to the rounded number, or None when the stage has none; ``spread``
    the standard deviation over seeds of the metrics averaged over seeds (the linear probe), when there are two
    or more. ``commit``: the transfer stages' commits joined with "/" (None if unknown); ``env``: the run's
    env.json.
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
    imagenet: TransferStage
    linear_probe: ProbeStage
    spread: dict[str, float] = field(default_factory=dict)
    env: dict | None = None

    @property
    def stages(self) -> dict[str, Stage]:
        """The stages by name, in STAGES order."""
        return {stage: getattr(self, stage) for stage in STAGES}


@dataclass(frozen=True)
class PublishedNumber:
    """One published number: ``method``'s ``metric`` (a Metric key) measured by ``protocol`` (a published.json
    protocol key), from ``source`` (the reference's full citation)."""

    method: str
    metric: str
    protocol: str
    value: float
    source: str


@dataclass(frozen=True)
class Published:
    """The published ViT-B reference numbers of adpe/report/published.json.

    ``note`` says why demo numbers are not comparable with them; ``protocols`` describes each protocol (task,
    head, schedule, test); ``numbers`` are labelled with one of them.
    """

    note: str
    protocols: dict[str, str]
    numbers: tuple[PublishedNumber, ...]

    def with_protocol(self, protocol: str) -> list[PublishedNumber]:
        """The numbers measured by ``protocol``."""
        return [n for n in self.numbers if n.protocol == protocol]

    def summary(self) -> dict:
        """The numbers for results.json: {note, protocols, numbers: [{method, metric, protocol, value, source}]}."""
        return {"note": self.note, "protocols": dict(self.protocols), "numbers": [asdict(n) for n in self.numbers]}


@cache
def load_published() -> Published:
    """The published numbers, read once from the package's data file (every protocol and source checked)."""
    raw = json.loads(resources.files("adpe.report").joinpath("published.json").read_text())
    numbers = []
    for entry in raw["numbers"]:
        # a typo in the data file would otherwise show up only as a missing citation or comparison
        if entry["source"] not in raw["sources"] or entry["protocol"] not in raw["protocols"]:
            raise ValueError(f"published.json: {entry} names an unknown source or protocol; known sources "
                             f"{sorted(raw['sources'])}, protocols {sorted(raw['protocols'])}")
        numbers.append(PublishedNumber(entry["method"], entry["metric"], entry["protocol"], float(entry["value"]),
                                       raw["sources"][entry["source"]]))
    return Published(note=raw["note"], protocols=dict(raw["protocols"]), numbers=tuple(numbers))
