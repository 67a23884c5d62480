"""The intervals of a report: each row's values with their 95% intervals, each delta paired against the baseline.

A metric's records are its stage's ``test_records*.npz`` (adpe.report.samples), one per seed dir when the stage
has seeds (``ade20k/seed_N/``, ...). A row without them (a run made before the records existed) keeps its point
estimate; ``Uncertainty.retest`` then names the command that writes them. Rows whose test images differ from
the baseline's get no paired delta, and ``Uncertainty.notes`` says how many images each has and shares.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adpe.report import samples, stats
from adpe.report.records import METRICS, SEED_DIR, TEST_RESULTS, Metric, Row

# Metric key -> (statistic of one run's records, draws, bootstrap method); in the units of the stage's test
# results (mIoU and top-1 in %, AP a fraction), as Metric.scale expects.
StatisticOf = Callable[[samples.Records], stats.Statistic]
RECORD_STATISTICS: dict[str, tuple[StatisticOf, int, str]] = {
    "ade20k_miou": (lambda r: lambda w: samples.miou(r, w), stats.DRAWS, "percentile"),
    "ade20k_miou_msflip": (lambda r: lambda w: samples.miou(r, w), stats.DRAWS, "percentile"),
    "coco_ap_box": (lambda r: lambda w: samples.coco_ap(r, "bbox", w), stats.COCO_DRAWS, "basic"),
    "coco_ap_mask": (lambda r: lambda w: samples.coco_ap(r, "segm", w), stats.COCO_DRAWS, "basic"),
    "imagenet_top1": (lambda r: lambda w: samples.accuracy(r, w), stats.DRAWS, "percentile"),
    "linear_probe_top1": (lambda r: lambda w: samples.accuracy(r, w), stats.DRAWS, "percentile"),
    "knn_top1": (lambda r: lambda w: samples.accuracy(r, w), stats.DRAWS, "percentile"),  # the study's
}
SEED_PATTERN = re.compile("^" + SEED_DIR.format(r"(\d+)") + "$")


class ImageSetMismatch(ValueError):
    """Two runs tested on different images: a paired comparison needs the same ones."""


def run_dirs(stage_dir: str | Path) -> list[Path]:
    """The test work dirs of a stage: its ``seed_N/`` dirs by seed, else the stage dir itself."""
    stage_dir = Path(stage_dir)
    seeds = sorted((int(m[1]), d) for d in (stage_dir.iterdir() if stage_dir.is_dir() else [])
                   if d.is_dir() and (m := SEED_PATTERN.match(d.name)))
    return [d for _, d in seeds] or [stage_dir]


@dataclass
class RunRecords:
    """The records of one metric of one row: one Records per seed (the same images, aligned)."""

    seeds: list[samples.Records]

    @property
    def image_ids(self) -> list[str]:
        return self.seeds[0].image_ids.tolist()

    def statistics(self, metric: Metric, ids: list[str] | None = None) -> list[stats.Statistic]:
        """Each seed's statistic, on the images ``ids`` in that order (default: the records' own)."""
        make = RECORD_STATISTICS[metric.key][0]
        return [make(r if ids is None or ids == r.image_ids.tolist() else r.take(ids)) for r in self.seeds]


_CACHE: dict[tuple[str, float], samples.Records] = {}


def load(path: Path) -> samples.Records:
    """Records.load, once per file version (a report reads a COCO file for box and for mask)."""
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = samples.Records.load(path)
    return _CACHE[key]


def run_records(stage_dir: str | Path, tta: bool = False) -> RunRecords | None:
    """The records of every seed of a stage, or None when a tested run lacks them."""
    found = []
    for run_dir in run_dirs(stage_dir):
        path = run_dir / samples.RECORDS[tta]
        if not (run_dir / TEST_RESULTS[tta]).is_file():
            continue  # not tested: the stage's status says so
        if not path.is_file():
            return None
        found.append(load(path))
    if not found:
        return None
    ids = set(found[0].image_ids.tolist())
    for other in found[1:]:  # seeds of one stage are tested on one test set
        if set(other.image_ids.tolist()) != ids:
            raise ImageSetMismatch(f"{stage_dir}: its seeds were tested on different images")
    return RunRecords([found[0]] + [r.take(found[0].image_ids.tolist()) for r in found[1:]])


def shared_images(a: RunRecords, b: RunRecords, shared_only: bool = False) -> list[str]:
    """The image ids both were tested on, in a's order. Unless ``shared_only``, different sets are an error that
    says how many images each has and how many they share."""
    ids_b = set(b.image_ids)
    shared = [i for i in a.image_ids if i in ids_b]
    if not shared_only and (len(shared) != len(a.image_ids) or len(shared) != len(ids_b)):
        raise ImageSetMismatch(f"different test images: {len(a.image_ids)} and {len(ids_b)} images, "
                               f"{len(shared)} shared (pair on the shared ones only with --shared-only)")
    if not shared:
        raise ImageSetMismatch(f"no shared test images ({len(a.image_ids)} and {len(ids_b)} images)")
    return shared


def value_interval(metric: Metric, run: RunRecords) -> stats.Interval:
    """The row's value of ``metric`` with its interval (two-level with several seeds), in displayed units."""
    _, draws, method = RECORD_STATISTICS[metric.key]
    return stats.seed_interval(run.statistics(metric), len(run.image_ids), draws, method=method).scaled(metric.scale)


def delta_interval(metric: Metric, a: RunRecords, b: RunRecords, shared_only: bool = False) -> stats.Delta:
    """A - B of ``metric``, paired on their test images, in displayed units."""
    ids = shared_images(a, b, shared_only)
    _, draws, method = RECORD_STATISTICS[metric.key]
    return stats.paired_delta(a.statistics(metric, ids), b.statistics(metric, ids), len(ids), draws,
                              method=method).scaled(metric.scale)


def retest_command(row: Row, metric: Metric) -> str:
    """The command that writes the missing records of a row's metric: tools/test.py on each run's checkpoint."""
    lines = []
    for run_dir in run_dirs(row.stages[metric.stage].dir):
        config = _dumped_config(run_dir) or "CONFIG"
        lines.append(f"python tools/test.py {config} $(cat {run_dir}/last_checkpoint) --work-dir {run_dir}"
                     + (" --tta" if metric.tta else ""))
    return "; ".join(lines)


def _dumped_config(run_dir: Path) -> str | None:
    dumped = sorted(run_dir.glob("*/vis_data/config.py"))
    return str(dumped[-1]) if dumped else None


@dataclass
class Uncertainty:
    """Per row name: {metric key: Interval} and {metric key: Delta against the baseline}; ``retest``: (row,
    metric label, command) of values without records; ``notes``: why a delta has no interval."""

    values: dict[str, dict[str, stats.Interval]] = field(default_factory=dict)
    deltas: dict[str, dict[str, stats.Delta]] = field(default_factory=dict)
    retest: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compute(rows: list[Row], base: Row | None) -> Uncertainty:
    """The intervals of every value with records, and the paired deltas of every row against ``base``."""
    out = Uncertainty()
    records: dict[tuple[str, str], RunRecords | None] = {}
    for row in rows:
        out.values[row.name], out.deltas[row.name] = {}, {}
        for metric in METRICS:
            if row.values.get(metric.key) is None:
                continue
            try:
                run = run_records(row.stages[metric.stage].dir, metric.tta)
            except ImageSetMismatch as err:
                out.notes.append(f"{row.label}, {metric.label}: {err}")
                run = None
            records[row.name, metric.key] = run
            if run is None:
                out.retest.append((row.label, metric.label, retest_command(row, metric)))
                continue
            out.values[row.name][metric.key] = value_interval(metric, run)
    if base is not None:
        add_deltas(out, records, METRICS, [(row.name, row.label) for row in rows], (base.name, base.label))
    return out


def add_deltas(out: Uncertainty, records: dict[tuple[str, str], RunRecords | None], metrics,
               rows: list[tuple[str, str]], base: tuple[str, str]) -> None:
    """Into ``out``: the paired delta against ``base`` of every other row (name, label) and metric whose records
    both sides have (``records[name, metric key]``); a note for each pair tested on different images."""
    for name, label in rows:
        if name == base[0]:
            continue
        out.deltas.setdefault(name, {})
        for metric in metrics:
            a, b = records.get((name, metric.key)), records.get((base[0], metric.key))
            if a is None or b is None:
                continue
            try:
                out.deltas[name][metric.key] = delta_interval(metric, a, b)
            except ImageSetMismatch as err:
                out.notes.append(f"{label} against {base[1]}, {metric.label}: {err}")


# ---------------------------------------------------------------------------------------------------------
# Any two test work dirs (tools/compare.py)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compared:
    """One shared metric of two runs: each run's value and interval, and the paired delta A - B."""

    name: str
    decimals: int
    a: stats.Interval
    b: stats.Interval
    delta: stats.Delta


def _task_statistics(records: samples.Records) -> list[tuple[str, float, int, StatisticOf, int, str]]:
    """(name, scale, decimals, statistic of the records, draws, method) of every metric a task's records give."""
    if records.task == "seg":
        return [("mIoU", 1.0, 2, lambda r: lambda w: samples.miou(r, w), stats.DRAWS, "percentile")]
    if records.task == "cls":
        return [(f"top-{k}", 1.0, 2, lambda r, k=k: lambda w: samples.accuracy(r, w, k), stats.DRAWS, "percentile")
                for k in (1, 5) if k <= records.arrays["topk_classes"].shape[1]]
    out = []
    for prefix in samples.det_prefixes(records):
        kind = {"bbox.": "box", "segm.": "mask"}.get(prefix, prefix[:-1])
        for label, thr in (("AP", None), ("AP50", 0.5), ("AP75", 0.75)):
            out.append((f"{kind} {label}", 100.0, 1, lambda r, p=prefix[:-1], t=thr: lambda w: samples.coco_ap(
                r, p, w, iou_thr=t), stats.COCO_DRAWS, "basic"))
    return out


def compare_dirs(dir_a: str | Path, dir_b: str | Path, tta: bool = False, shared_only: bool = False,
                 draws: int | None = None) -> list[Compared]:
    """Every metric both work dirs' records give (a test work dir, or a stage dir of seed_N/ dirs), paired on
    their test images. FileNotFoundError without records; ImageSetMismatch for different images (unless
    ``shared_only``: then on the shared ones)."""
    runs = []
    for folder in (Path(dir_a), Path(dir_b)):
        run = run_records(folder, tta)
        if run is None:
            raise FileNotFoundError(f"{folder} has no test records ({samples.RECORDS[tta]} beside "
                                    f"{TEST_RESULTS[tta]}): test it with tools/test.py CONFIG CHECKPOINT "
                                    f"--work-dir {folder}{' --tta' if tta else ''}")
        runs.append(run)
    a, b = runs
    ids = shared_images(a, b, shared_only)
    names_b = {name for name, *_ in _task_statistics(b.seeds[0])}
    out = []
    for name, scale, decimals, make, n_draws, method in _task_statistics(a.seeds[0]):
        if name not in names_b:
            continue
        n_draws = draws or n_draws
        fa = [make(r if ids == r.image_ids.tolist() else r.take(ids)) for r in a.seeds]
        fb = [make(r if ids == r.image_ids.tolist() else r.take(ids)) for r in b.seeds]
        out.append(Compared(name, decimals,
                            stats.seed_interval(fa, len(ids), n_draws, method=method).scaled(scale),
                            stats.seed_interval(fb, len(ids), n_draws, method=method).scaled(scale),
                            stats.paired_delta(fa, fb, len(ids), n_draws, method=method).scaled(scale)))
    return out
