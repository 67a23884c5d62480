"""Report rows as table cells: values formatted as displayed, deltas against the baseline row.

A cell is always a string. A value that is absent shows its stage's status ("missing", "unfinished",
"none"), never 0; a delta is "baseline" in the baseline row and "n/a" where the baseline has no value. A mean over
seeds shows their standard deviation: "45.2 ± 1.3". A value with per-image records shows its 95% interval,
"27.2 [25.9, 28.4]", and its delta the paired interval and verdict, "−1.3 [−2.9, +0.2] not distinguishable"
(adpe.report.intervals); the bounds are also columns of their own (``<key>_low``, ``<key>_delta_low``, ...).
"""

from __future__ import annotations

from adpe.report.intervals import Uncertainty
from adpe.report.records import METRICS, VALUE_METRICS, Metric, Row
from adpe.report.stats import Delta, Interval

TRANSFER_STAGES = ("ade20k", "coco", "imagenet", "linear_probe")
CSV_COLUMNS = (
    "name", "label", "baseline", "pretrain_variant",
    *(f"{m.key}{suffix}" for m in VALUE_METRICS for suffix in ("", "_delta")),
    "pretrain_status", *(f"{stage}_status" for stage in TRANSFER_STAGES),
    "pretrain_config", *(f"{stage}_config" for stage in TRANSFER_STAGES), "commit",
    *(f"{m.key}{suffix}" for m in METRICS
      for suffix in ("_low", "_high", "_delta_low", "_delta_high", "_delta_sign_flip", "_verdict")),
)
MINUS = "\u2212"  # the interval cells' minus sign


def status_of(row: Row, metric: Metric) -> str:
    """What to show instead of the metric's absent value: its stage's status."""
    status = row.stages[metric.stage].status
    return "missing" if status == "finished" else status  # finished, but this number was not reported


def format_value(value: float, decimals: int, sign: bool = False) -> str:
    """``value`` with ``decimals`` decimals (and a sign for deltas); never "-0.00"."""
    value = round(value, decimals) + 0.0
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def resolve_baseline(rows: list[Row], baseline: str | None = None) -> Row | None:
    """The row named ``baseline``, else the one run.json marks as baseline, else the first; None if no rows.

    Raises ValueError when ``baseline`` names no row.
    """
    if not rows:
        return None
    if baseline is not None:
        for row in rows:
            if row.name == baseline:
                return row
        raise ValueError(f"baseline {baseline!r} is not among the variants: {[r.name for r in rows]}")
    return next((row for row in rows if row.is_baseline), rows[0])


def signed(value: float, decimals: int) -> str:
    """A delta with its sign, the minus as U+2212: "+0.2", "−1.3"."""
    return format_value(value, decimals, sign=True).replace("-", MINUS)


def interval_text(interval: Interval, decimals: int, sign: bool = False) -> str:
    """"[25.9, 28.4]", or for a delta "[−2.9, +0.2]"."""
    bound = (lambda v: signed(v, decimals)) if sign else (lambda v: format_value(v, decimals))
    return f"[{bound(interval.low)}, {bound(interval.high)}]"


def delta_text(delta: Delta, decimals: int) -> str:
    """"−1.3 [−2.9, +0.2] not distinguishable"."""
    return f"{signed(delta.point, decimals)} {interval_text(delta, decimals, sign=True)} {delta.verdict}"


def _metric_cells(row: Row, base: Row, metric: Metric, interval: Interval | None = None,
                  delta: Delta | None = None) -> tuple[str, str]:
    """The (value, delta) cells of one metric; without a paired interval the delta is taken from the values as
    shown (rounded)."""
    value = row.values.get(metric.key)
    if value is None:
        return status_of(row, metric), status_of(row, metric)
    base_value = base.values.get(metric.key)
    if row is base:
        shown_delta = "baseline"
    elif delta is not None:
        shown_delta = delta_text(delta, metric.decimals)
    elif base_value is None:
        shown_delta = "n/a"
    else:
        shown_delta = format_value(value - base_value, metric.decimals, sign=True)
    shown = format_value(value, metric.decimals)
    if metric.key in row.spread:
        shown += f" ± {format_value(row.spread[metric.key], metric.decimals)}"
    if interval is not None:
        shown += " " + interval_text(interval, metric.decimals)
    return shown, shown_delta


def _bound_cells(metric: Metric, interval: Interval | None, delta: Delta | None) -> dict[str, str]:
    """The interval's bounds as plain numbers (empty where there is none), for results.csv."""
    def number(value: float | None) -> str:
        return "" if value is None else format_value(value, metric.decimals + 2)

    key = metric.key
    return {f"{key}_low": number(interval and interval.low), f"{key}_high": number(interval and interval.high),
            f"{key}_delta_low": number(delta and delta.low), f"{key}_delta_high": number(delta and delta.high),
            f"{metric.key}_delta_sign_flip": "" if delta is None else f"{delta.sign_flip:.3f}",
            f"{metric.key}_verdict": "" if delta is None else delta.verdict}


def table_rows(rows: list[Row], baseline: str | None = None,
               uncertainty: Uncertainty | None = None) -> list[dict[str, str]]:
    """The cells of every row, keyed by CSV_COLUMNS in that order; deltas are against the baseline row, with the
    intervals of ``uncertainty`` (adpe.report.intervals.compute) where it has them."""
    base = resolve_baseline(rows, baseline)
    uncertainty = uncertainty or Uncertainty()
    out = []
    for row in rows:
        cells = {"name": row.name, "label": row.label, "baseline": "yes" if row is base else "",
                 "pretrain_variant": row.pretrain_variant}
        values, deltas = uncertainty.values.get(row.name, {}), uncertainty.deltas.get(row.name, {})
        for metric in VALUE_METRICS:
            interval, delta = values.get(metric.key), deltas.get(metric.key)
            cells[metric.key], cells[f"{metric.key}_delta"] = _metric_cells(row, base, metric, interval, delta)
            if metric in METRICS:
                cells.update(_bound_cells(metric, interval, delta))
        cells.update({"pretrain_status": row.pretrain.status, "pretrain_config": row.pretrain_config or "",
                      "commit": row.commit or ""})
        for stage in TRANSFER_STAGES:
            cells[f"{stage}_status"] = row.stages[stage].status
            cells[f"{stage}_config"] = row.stages[stage].config or ""
        out.append({column: str(cells[column]) for column in CSV_COLUMNS})
    return out


def json_row(row: Row, cells: dict[str, str], uncertainty: Uncertainty | None = None) -> dict:
    """A row of results.json: the row's provenance, its raw values, its intervals and paired deltas (point, low,
    high, images, seeds, draws; sign_flip and verdict), its cells and its stages without series."""
    uncertainty = uncertainty or Uncertainty()
    return {"name": row.name, "label": row.label, "baseline": bool(cells["baseline"]), "dir": row.dir,
            "pretrain_variant": row.pretrain_variant, "pretrain_config": row.pretrain_config,
            "commit": row.commit, "values": dict(row.values), "spread": dict(row.spread),
            "intervals": {k: v.summary() for k, v in uncertainty.values.get(row.name, {}).items()},
            "deltas": {k: v.summary() for k, v in uncertainty.deltas.get(row.name, {}).items()}, "cells": cells,
            "stages": {stage: info.summary() for stage, info in row.stages.items()}}
