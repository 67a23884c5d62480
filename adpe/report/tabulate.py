"""Report rows as table cells: values formatted as displayed, deltas against the baseline row.

A cell is always a string. A value that is absent shows its stage's status ("missing", "unfinished",
"none"), never 0; a delta is "baseline" in the baseline row and "n/a" where the baseline has no value. A mean over
seeds shows their standard deviation: "45.2 ± 1.3".
"""

from __future__ import annotations

from adpe.report.records import VALUE_METRICS, Metric, Row

TRANSFER_STAGES = ("ade20k", "coco", "imagenet", "linear_probe")
CSV_COLUMNS = (
    "name", "label", "baseline", "pretrain_variant",
    *(f"{m.key}{suffix}" for m in VALUE_METRICS for suffix in ("", "_delta")),
    "pretrain_status", *(f"{stage}_status" for stage in TRANSFER_STAGES),
    "pretrain_config", *(f"{stage}_config" for stage in TRANSFER_STAGES), "commit",
)


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


def _metric_cells(row: Row, base: Row, metric: Metric) -> tuple[str, str]:
    """The (value, delta) cells of one metric; the delta is taken from the values as shown (rounded)."""
    value = row.values.get(metric.key)
    if value is None:
        return status_of(row, metric), status_of(row, metric)
    base_value = base.values.get(metric.key)
    if row is base:
        delta = "baseline"
    elif base_value is None:
        delta = "n/a"
    else:
        delta = format_value(value - base_value, metric.decimals, sign=True)
    shown = format_value(value, metric.decimals)
    if metric.key in row.spread:
        shown += f" ± {format_value(row.spread[metric.key], metric.decimals)}"
    return shown, delta


def table_rows(rows: list[Row], baseline: str | None = None) -> list[dict[str, str]]:
    """The cells of every row, keyed by CSV_COLUMNS in that order; deltas are against the baseline row."""
    base = resolve_baseline(rows, baseline)
    out = []
    for row in rows:
        cells = {"name": row.name, "label": row.label, "baseline": "yes" if row is base else "",
                 "pretrain_variant": row.pretrain_variant}
        for metric in VALUE_METRICS:
            cells[metric.key], cells[f"{metric.key}_delta"] = _metric_cells(row, base, metric)
        cells.update({"pretrain_status": row.pretrain.status, "pretrain_config": row.pretrain_config or "",
                      "commit": row.commit or ""})
        for stage in TRANSFER_STAGES:
            cells[f"{stage}_status"] = row.stages[stage].status
            cells[f"{stage}_config"] = row.stages[stage].config or ""
        out.append({column: str(cells[column]) for column in CSV_COLUMNS})
    return out


def json_row(row: Row, cells: dict[str, str]) -> dict:
    """A row of results.json: the row's provenance, its raw values, its cells and its stages without series."""
    return {"name": row.name, "label": row.label, "baseline": bool(cells["baseline"]), "dir": row.dir,
            "pretrain_variant": row.pretrain_variant, "pretrain_config": row.pretrain_config,
            "commit": row.commit, "values": dict(row.values), "spread": dict(row.spread), "cells": cells,
            "stages": {stage: info.summary() for stage, info in row.stages.items()}}
