"""The study's report (make study, tools/study_pipeline.yaml): each downstream metric against pretraining steps.

A study's rows come in curves: a pretraining variant's own row (the end of its schedule) and the rows of its
intermediate checkpoints (run.json's ``curve`` and ``pretrain_epoch``); rows without pretraining are the flat
random-init reference. :func:`study_points` turns rows into :class:`Point` s; :func:`write_study` writes
``study.md``, ``study.json`` and ``study_curves.png`` (one panel per metric, one line per curve, random init as a
horizontal line with its seed band) beside the report.

Per point: the kNN top-1 of tools/knn_eval.py (``<row>/knn/``), the linear probe (its seeds) and the fine-tuning
top-1, all on the test split, each with its 95% bootstrap interval from the stage's per-image records, and its
paired delta against random init on the same test images with the verdict (adpe.report.intervals,
docs/statistics.md). A stage without records keeps its point value and no interval. The pretraining's own kNN
monitor (val split) is drawn as a denser fourth panel.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adpe.report import intervals
from adpe.report.records import METRICS, RUN_FILE, TEST_RESULTS, Metric, Row, RunInfo, read_json
from adpe.report.stats import BETTER, Delta, Interval

# tools/knn_eval.py's top-1, a study stage of its own (<row>/knn/)
KNN_TOP1 = Metric("knn_top1", "kNN top-1", "knn", "knn/top1", 1.0, 1, "kNN top-1")
# The study's metrics, in panel order, with their panel titles.
STUDY_METRICS = ((KNN_TOP1, "kNN top-1 (test)"),
                 (next(m for m in METRICS if m.key == "linear_probe_top1"), "linear probe top-1 (test)"),
                 (next(m for m in METRICS if m.key == "imagenet_top1"), "fine-tuning top-1 (test)"))


@dataclass
class Point:
    """One row of the study: its curve (None: the random-init reference), its pretraining steps and epoch, and
    per metric key the value, for the linear probe the seeds' values, and where records exist the 95% interval
    and the paired delta against the reference."""

    name: str
    label: str
    curve: str | None
    epoch: int | None
    steps: int | None
    values: dict[str, float | None] = field(default_factory=dict)
    seeds: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)  # from per-image records, where the stage has them
    deltas: dict[str, Delta] = field(default_factory=dict)  # paired against the random-init reference


def _knn_top1(row: Row) -> float | None:
    """tools/knn_eval.py's top-1 of the row (``<row dir>/knn/test_results.json``), or None."""
    results = read_json(Path(row.dir) / "knn" / TEST_RESULTS[False]) if (Path(row.dir) / "knn").is_dir() else None
    value = results.get("metrics", {}).get("knn/top1") if isinstance(results, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _steps_per_epoch(row: Row) -> float | None:
    """Optimiser steps per epoch of a curve's pretraining, from its logged ``epoch`` (the epoch in progress at each
    logged step: step / epoch peaks, at the exact value, at each epoch's last step, which mmengine always logs);
    without it, the last logged step over the config's epochs. Works for an unfinished pretraining too."""
    ratios = []
    for folder in sorted(Path(row.pretrain.dir).glob("*/vis_data")):  # read_scalars leaves "epoch" out
        path = folder / "scalars.json"
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a running job
                continue
            if isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and entry["epoch"] > 0:
                ratios.append(entry.get("step", 0) / entry["epoch"])
    if ratios:
        return max(ratios)
    steps = [step for series in row.pretrain.series.values() for step, _ in series]
    if not steps or not row.pretrain.max_epochs:
        return None
    return max(steps) / row.pretrain.max_epochs


def study_points(rows: list[Row]) -> list[Point]:
    """The rows as study points, in the rows' order. A curve's rows take their steps from the curve's own row
    (its pretraining work dir); rows without pretraining are references (curve None, steps None)."""
    runs = {row.name: RunInfo.read(Path(row.dir) / RUN_FILE) for row in rows}
    by_name = {row.name: row for row in rows}
    points = []
    for row in rows:
        run = runs[row.name]
        curve = run.curve if run else None
        if curve is None and row.pretrain.status != "none":
            continue  # a pretrained row outside any curve: not part of the study's picture
        epoch = steps = None
        if curve is not None:
            parent = by_name.get(curve)
            per_epoch = _steps_per_epoch(parent) if parent else None
            epoch = run.pretrain_epoch if run.pretrain_epoch is not None else (parent.pretrain.max_epochs
                                                                                if parent else None)
            steps = round(epoch * per_epoch) if epoch is not None and per_epoch else None
        seeds = [seed["accuracy/top1"] for seed in row.linear_probe.seeds.values() if "accuracy/top1" in seed]
        points.append(Point(row.name, row.label, curve, epoch, steps,
                            {"knn_top1": _knn_top1(row), "linear_probe_top1": row.values.get("linear_probe_top1"),
                             "imagenet_top1": row.values.get("imagenet_top1")},
                            {"linear_probe_top1": seeds} if seeds else {}))
    _add_intervals(points, by_name)
    return points


def _stage_dir(row: Row, metric: Metric) -> Path:
    return Path(row.dir) / "knn" if metric is KNN_TOP1 else Path(row.stages[metric.stage].dir)


def _add_intervals(points: list[Point], rows: dict[str, Row]) -> None:
    """Each point's 95% intervals, and its paired deltas against the first reference (random init), from the
    stages' per-image records; a stage without records (or tested on other images) gets none."""
    reference = next((p for p in points if p.curve is None), None)
    records: dict[tuple[str, str], intervals.RunRecords | None] = {}
    for point in points:
        for metric, _ in STUDY_METRICS:
            if point.values.get(metric.key) is None:
                continue
            try:
                run = intervals.run_records(_stage_dir(rows[point.name], metric))
            except intervals.ImageSetMismatch:
                run = None
            records[point.name, metric.key] = run
            if run is not None:
                point.intervals[metric.key] = intervals.value_interval(metric, run)
    if reference is not None:
        found = intervals.Uncertainty()
        intervals.add_deltas(found, records, [m for m, _ in STUDY_METRICS], [(p.name, p.label) for p in points],
                             (reference.name, reference.label))
        for point in points:
            point.deltas = found.deltas.get(point.name, {})


def _error(point: Point, key: str) -> tuple[float, float]:
    """The distances from the value down and up to its 95% interval's bounds ((0, 0) without records)."""
    found, value = point.intervals.get(key), point.values.get(key)
    if found is None or value is None:
        return 0.0, 0.0
    return max(value - found.low, 0.0), max(found.high - value, 0.0)


def _cell(point: Point, key: str) -> str:
    value = point.values.get(key)
    if value is None:
        return "missing"
    found = point.intervals.get(key)
    text = f"{value:.1f}" + (f" [{found.low:.1f}, {found.high:.1f}]" if found else "")
    seeds = point.seeds.get(key, [])
    return text + (f" ({' / '.join(f'{s:.1f}' for s in seeds)})" if len(seeds) > 1 else "")


def crossing(curve: list[Point], reference: float, key: str) -> str:
    """Where the curve's ``key`` first exceeds ``reference``: between two measured points (linear in steps), or
    -- when no measured point does -- extrapolated by a least-squares line in log(steps) through the measured
    points (an extrapolation, said so), or "no crossing in sight" when that line does not rise."""
    measured = [(p.steps, p.values[key]) for p in curve if p.steps and p.values.get(key) is not None]
    if not measured:
        return "no measured points"
    if measured[0][1] > reference:  # nothing measured below it: the crossing is somewhere before that point
        return f"measured: above random init already at its first point ({measured[0][0]} steps)"
    previous = measured[0]
    for steps, value in measured[1:]:
        if value > reference:
            (s0, v0), (s1, v1) = previous, (steps, value)
            at = s0 + (reference - v0) / (v1 - v0) * (s1 - s0)
            return f"measured: above random init from about {at:.0f} steps"
        previous = (steps, value)
    if len(measured) < 2:
        return "one point, below random init: no extrapolation"
    xs = [math.log(s) for s, _ in measured]
    ys = [v for _, v in measured]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    if slope <= 0:
        return "below random init and not rising: no crossing in sight"
    at = math.exp(mx + (reference - my) / slope)
    return (f"extrapolated (a line in log steps through {len(measured)} points, {slope:.1f} points per e-fold of "
            f"steps): about {at:.0f} steps")


def _verdict(point: Point, reference: Point, key: str) -> str:
    """The point against random init: the paired delta with its 95% interval and verdict, or only the difference
    of the values when a side has no records."""
    value, ref = point.values.get(key), reference.values.get(key)
    if value is None or ref is None:
        return "missing"
    delta = point.deltas.get(key)
    if delta is None:
        return f"{value - ref:+.1f} points (no per-image records on both sides: no interval)"
    return f"{delta.point:+.1f} points [{delta.low:+.1f}, {delta.high:+.1f}], {delta.verdict}"


def _figure(points: list[Point], rows: list[Row], path: Path) -> Path:
    """study_curves.png: a panel per STUDY_METRICS entry and the pretraining's kNN monitor."""
    from adpe.report.render import _pyplot

    plt = _pyplot()
    curves = list(dict.fromkeys(p.curve for p in points if p.curve))
    references = [p for p in points if p.curve is None]
    fig, axes = plt.subplots(1, len(STUDY_METRICS) + 1, figsize=(5.2 * (len(STUDY_METRICS) + 1), 4.2))
    for ax, (metric, label) in zip(axes, STUDY_METRICS, strict=False):
        key = metric.key
        for i, curve in enumerate(curves):
            line = sorted((p for p in points if p.curve == curve and p.steps is not None
                           and p.values.get(key) is not None), key=lambda p: p.steps)
            if line:
                name = next((p.label for p in points if p.name == curve), curve)
                ax.errorbar([p.steps for p in line], [p.values[key] for p in line],
                            yerr=list(zip(*(_error(p, key) for p in line), strict=True)), marker="o", capsize=3,
                            color=f"C{i}", label=name)
        for j, ref in enumerate(references):
            value = ref.values.get(key)
            if value is None:
                continue
            color = f"C{len(curves) + j}"
            ax.axhline(value, linestyle="--", color=color, label=ref.label)
            if key in ref.intervals:  # its 95% interval as a band
                ax.axhspan(ref.intervals[key].low, ref.intervals[key].high, color=color, alpha=0.15)
        ax.set_title(label)
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel("top-1 (%)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # a status, never an empty frame that reads as zero
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ax = axes[-1]  # the monitor: every evaluation during pretraining, on the val split
    by_name = {row.name: row for row in rows}
    for i, curve in enumerate(curves):
        series = by_name[curve].pretrain.series.get("knn/top1", []) if curve in by_name else []
        if series:
            ax.plot(*zip(*series, strict=True), marker="o", color=f"C{i}", label=by_name[curve].label)
    ax.set_title("kNN monitor during pretraining (val)")
    ax.set_xlabel("pretraining steps")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.suptitle("Downstream accuracy against pretraining length")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_study(rows: list[Row], out_dir: str | Path) -> dict[str, Path]:
    """Write study.md, study.json and study_curves.png into ``out_dir``; return their paths by name ("md",
    "json", "figure"). Raises ValueError when the rows hold no curve (not a study)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = study_points(rows)
    curves = list(dict.fromkeys(p.curve for p in points if p.curve))
    if not curves:
        raise ValueError("no study curves in these rows (run.json without 'curve'): not a study run")
    references = [p for p in points if p.curve is None]
    paths = {"figure": _figure(points, rows, out_dir / "study_curves.png")}
    lines = ["# Study: downstream accuracy against pretraining length", "",
             "Each pretraining variant's backbone at several points of its schedule, and random init (no "
             "pretraining, the flat reference), evaluated on the test split: weighted kNN (k = 20, T = 0.07, "
             "bank: the labelled train images), the linear probe (mean over seeds, then each seed) and "
             "fine-tuning (all train labels). Choices were made on the val split; the test split is evaluated once. "
             "Brackets: 95% bootstrap intervals over the test images (and seeds), from each stage's per-image "
             "records; deltas are paired on the same test images (docs/statistics.md).", "",
             "![study curves](study_curves.png)", "",
             "| row | steps | epoch | " + " | ".join(label for _, label in STUDY_METRICS) + " |",
             "|---|---|---|" + "---|" * len(STUDY_METRICS)]
    for p in sorted(points, key=lambda p: (p.curve is None, curves.index(p.curve) if p.curve else 0, p.steps or 0)):
        lines.append(f"| {p.label} | {p.steps if p.steps is not None else 0 if p.curve is None else '?'} | "
                     f"{p.epoch if p.epoch is not None else '-'} | "
                     + " | ".join(_cell(p, metric.key) for metric, _ in STUDY_METRICS) + " |")
    lines += ["", "## The last measured point of each curve, against random init", ""]
    wins = []
    for reference in references[:1]:
        for curve in curves:
            line = sorted((p for p in points if p.curve == curve and p.steps is not None
                           and any(v is not None for v in p.values.values())), key=lambda p: p.steps)
            if not line:
                continue
            final = line[-1]  # the end of the schedule once a run is complete
            lines.append(f"- **{final.label}** ({final.steps} steps):")
            for metric, label in STUDY_METRICS:
                ref = reference.values.get(metric.key)
                where = crossing(line, ref, metric.key) if ref is not None else "no reference"
                lines.append(f"  - {label}: {_verdict(final, reference, metric.key)}; crossing: {where}.")
                if final.deltas.get(metric.key) and final.deltas[metric.key].verdict == BETTER:
                    wins.append(f"{final.label} on {label}")
    lines += ["", "**Target** (at the end of pretraining, better than random init on at least one metric, the paired "
              "95% interval of the delta excluding 0): " + (f"reached: {'; '.join(wins)}." if wins else
                                                             "not reached.")]
    paths["md"] = out_dir / "study.md"
    paths["md"].write_text("\n".join(lines) + "\n")
    paths["json"] = out_dir / "study.json"
    paths["json"].write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    return paths
