"""Writing a report: results.csv, results.json, report.md and PNG plots.

Plots use matplotlib's Agg backend, imported only when a plot is drawn. Every plot gives a variant the
same colour (C0, C1, ... by its position in the rows) and shows a status, never a zero, for absent values.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adpe.report.intervals import RECORD_STATISTICS, Uncertainty, compute
from adpe.report.records import (
    FINAL_LOSS_WINDOW,
    METRICS,
    PRETRAIN_LOSS,
    VALUE_METRICS,
    Metric,
    ProbeStage,
    Row,
    load_published,
)
from adpe.report.stats import LEVEL
from adpe.report.tabulate import (
    CSV_COLUMNS,
    format_value,
    json_row,
    resolve_baseline,
    status_of,
    table_rows,
)

# report.md's plot sections: plot name -> title, in order.
PLOT_TITLES = {"pretrain_loss": "Pretraining loss", "pretrain_knn": "kNN top-1 during pretraining",
               "adv_norm": "Adversarial perturbation norm",
               "ade20k_miou": "ADE20K validation mIoU", "coco_ap": "COCO validation AP",
               "imagenet_top1": "ImageNet validation top-1", "final_metrics": "Final metrics",
               "deltas": "Deltas against the baseline (95% paired intervals)"}
Panel = tuple[str, list[tuple[str, list[tuple[float, float]]]]]  # (panel title, [(legend label, series), ...])


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------
def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(path: Path, title: str, ylabel: str, panels: list[Panel], xlabel: str = "iteration") -> Path | None:
    """One figure with a panel per entry of ``panels``, saved to ``path``; None (no file) if nothing to plot."""
    if not any(series for _, lines in panels for _, series in lines if series):
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel_title, lines) in zip(axes[0], panels, strict=True):
        for i, (label, series) in enumerate(lines):
            if series:  # the colour follows the variant's position, the same in every plot
                steps, values = zip(*series, strict=True)
                ax.plot(steps, values, marker="o" if len(series) < 20 else None, markersize=3, label=label,
                        color=f"C{i % 10}")
        ax.set_title(panel_title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _bar_plot(path: Path, rows: list[Row]) -> Path | None:
    """Grouped bars of the final transfer metrics (a group per metric, a bar per row); None without rows."""
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(rows) * len(METRICS)), 4.5))
    width = 0.8 / len(rows)
    top = max([row.values.get(m.key) or 0.0 for row in rows for m in METRICS] + [1.0])
    for i, row in enumerate(rows):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(METRICS))]
        heights = [row.values.get(m.key) for m in METRICS]
        color = f"C{i % 10}"
        ax.bar([x for x, h in zip(xs, heights, strict=True) if h is not None],
               [h for h in heights if h is not None], width, color=color)
        for x, h, metric in zip(xs, heights, METRICS, strict=True):
            if h is None:  # a status, never a zero-height bar
                ax.text(x, 0.02 * top, status_of(row, metric), rotation=90, ha="center", va="bottom", fontsize=8,
                        color="dimgray")
            else:
                ax.text(x, h, format_value(h, metric.decimals), ha="center", va="bottom", fontsize=7, color=color)
    ax.set_xticks(range(len(METRICS)), [m.label for m in METRICS])
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel("mIoU / AP / top-1 (%)")
    ax.set_title("Final transfer metrics (test_results.json)")
    from matplotlib.patches import Patch

    # explicit handles: a variant without any bar still gets its own colour in the legend
    ax.legend(handles=[Patch(color=f"C{i % 10}", label=row.label) for i, row in enumerate(rows)], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _forest_plot(path: Path, rows: list[Row], uncertainty: Uncertainty) -> Path | None:
    """The paired deltas against the baseline with their 95% intervals: a panel per metric, a line per row (a
    forest plot); None when no row has a delta with an interval."""
    metrics = [m for m in METRICS if any(m.key in uncertainty.deltas.get(r.name, {}) for r in rows)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.6 * len(rows) + 1.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, row in enumerate(rows):
            delta = uncertainty.deltas.get(row.name, {}).get(metric.key)
            if delta is None:
                continue
            color = f"C{i % 10}"  # the row's colour in every plot
            ax.errorbar([delta.point], [i], xerr=[[delta.point - delta.low], [delta.high - delta.point]], fmt="o",
                        color=color, capsize=4)
            ax.annotate(delta.verdict, (delta.high, i), textcoords="offset points", xytext=(6, -3), fontsize=7)
        ax.axvline(0.0, color="gray", lw=1, ls="--")
        ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(f"Δ {metric.short}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Row minus baseline, 95% paired bootstrap intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(rows: list[Row], out_dir: Path, uncertainty: Uncertainty | None = None) -> dict[str, Path]:
    """The PNG plots that have data, by name (PLOT_TITLES' keys), written into ``out_dir``."""
    def lines(stage: str, key: str, scale: float = 1.0) -> list[tuple[str, list[tuple[float, float]]]]:
        return [(row.label, [(s, v * scale) for s, v in row.stages[stage].series.get(key, [])]) for row in rows]

    val_x = "step as logged (iteration; epoch for epoch-based validation)"
    plots = {
        "pretrain_loss": _line_plot(out_dir / "pretrain_loss.png", "Pretraining loss", "loss",
                                    [("", lines("pretrain", "loss"))]),
        # KNNMonitorHook's weighted kNN on held-out labelled images (step 0: before training)
        "pretrain_knn": _line_plot(out_dir / "pretrain_knn.png", "kNN top-1 during pretraining", "kNN top-1 (%)",
                                   [("", lines("pretrain", "knn/top1"))]),
        "adv_norm": _line_plot(out_dir / "adv_norm.png", "Adversarial perturbation norm", "adv_norm",
                               [("", lines("pretrain", "adv_norm"))]),
        "ade20k_miou": _line_plot(out_dir / "ade20k_miou.png", "ADE20K validation", "mIoU (%)",
                                  [("", lines("ade20k", "mIoU"))], val_x),
        # mmdet logs mAP as a fraction: x 100, as in the tables
        "coco_ap": _line_plot(out_dir / "coco_ap.png", "COCO validation", "AP (%)",
                              [("box AP", lines("coco", "coco/bbox_mAP", 100)),
                               ("mask AP", lines("coco", "coco/segm_mAP", 100))], val_x),
        "imagenet_top1": _line_plot(out_dir / "imagenet_top1.png", "ImageNet validation", "top-1 (%)",
                                    [("fine-tuning", lines("imagenet", "accuracy/top1")),
                                     ("linear probe (first seed)", lines("linear_probe", "accuracy/top1"))], val_x),
        "final_metrics": _bar_plot(out_dir / "final_metrics.png", rows),
        "deltas": _forest_plot(out_dir / "deltas.png", rows, uncertainty or Uncertainty()),
    }
    return {name: path for name, path in plots.items() if path is not None}


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------
def _md_cell(text: Any) -> str:
    """A table cell: "|" escaped, one line, "-" when empty."""
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "-"


def _md_table(header: list[str], body: list[list[Any]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body]
    return lines


def _rel(path: str | None, out_dir: Path) -> str:
    """``path`` relative to the report folder (links that survive moving the run), "-" for none."""
    if not path:
        return "-"
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # another drive on Windows
        return str(path)


def _results_table(rows: list[Row], cells: list[dict[str, str]]) -> list[str]:
    """The main table: a value and a delta column per VALUE_METRICS metric that some row has (results.csv keeps
    them all); a line names the metrics no row has."""
    shown = [m for m in VALUE_METRICS if any(row.values[m.key] is not None for row in rows)] or list(VALUE_METRICS)
    header = ["Variant", "Label", "Pretraining"] + [h for m in shown for h in (m.label, f"Δ {m.short}")]
    body = []
    for row, cell in zip(rows, cells, strict=True):
        values = {m.key: [cell[m.key], cell[f"{m.key}_delta"]] for m in VALUE_METRICS}
        if row.values[PRETRAIN_LOSS.key] is not None and cell["pretrain_status"] != "finished":
            values[PRETRAIN_LOSS.key][0] += f" ({cell['pretrain_status']})"  # a loss, but of an unfinished run
        name = f"**{cell['name']}** (baseline)" if cell["baseline"] else cell["name"]
        body.append([name, cell["label"], cell["pretrain_variant"], *(c for m in shown for c in values[m.key])])
    hidden = [m.label for m in VALUE_METRICS if m not in shown]
    return _md_table(header, body) + (["", f"No row has: {', '.join(hidden)}."] if hidden else [])


def _method_section(rows: list[Row], uncertainty: Uncertainty) -> list[str]:
    """How the intervals were made: images, seeds and draws per metric; the runs whose intervals need a re-test,
    with the command; why some deltas have none."""
    lines = ["## Intervals and verdicts", ""]
    done = []
    for metric in METRICS:
        found = [iv for r in rows if (iv := uncertainty.values.get(r.name, {}).get(metric.key)) is not None]
        if found:
            images = sorted({iv.n_images for iv in found})
            seeds = sorted({iv.seeds for iv in found})
            method = RECORD_STATISTICS[metric.key][2]
            done.append(f"{metric.label}: {'/'.join(map(str, images))} images, {'/'.join(map(str, seeds))} "
                        f"seed(s), B = {found[0].draws} draws ({method})")
    if done:
        lines += [f"Each value carries its {LEVEL:.0%} bootstrap interval over the test images, from the per-image "
                  "records each test writes (test_records.npz); a delta is the row minus the baseline, its interval "
                  "paired: both rows under the same image draws. With several seeds the draws resample the seeds, "
                  "then the images, and the value shows mean ± std over seeds before the interval. Verdict: "
                  "**better** / **worse** when the delta's interval excludes 0, else **not distinguishable**. "
                  "Draws are seeded (seed 0); docs/statistics.md describes the method. " + "; ".join(done) + ".", ""]
    if uncertainty.retest:
        lines += ["Values without an interval were tested before tests wrote per-image records: "
                  "the interval needs a re-test, with:", ""]
        lines += [f"- {row}, {label}: `{command}`" for row, label, command in uncertainty.retest]
        lines.append("")
    lines += [f"- {note}" for note in uncertainty.notes]
    return lines + ([""] if uncertainty.notes else []) if len(lines) > 2 else []


def _published_section() -> list[str]:
    """The published numbers by protocol, with the note that demo numbers are not comparable and their sources."""
    pub = load_published()
    labels = {m.key: m.label for m in METRICS}
    sources = list(dict.fromkeys(n.source for n in pub.numbers))
    lines = ["## Published reference numbers (ViT-B)", "", f"> {pub.note}", ""]
    for protocol, description in pub.protocols.items():
        lines += [f"**{description}**", ""]
        lines += _md_table(["Method", "Metric", "Value", "Source"],
                           [[n.method, labels.get(n.metric, n.metric), n.value, f"[{sources.index(n.source) + 1}]"]
                            for n in pub.with_protocol(protocol)])
        lines.append("")
    return lines + [f"[{i}] {source}" + "  " for i, source in enumerate(sources, 1)]


def metric_protocols(metric: Metric, rows: list[Row]) -> list[str]:
    """The published protocols that ``metric``'s column was measured by: its own, or for COCO the detectors the
    rows trained (Mask R-CNN, Cascade Mask R-CNN)."""
    if metric.protocol != "coco":
        return [metric.protocol] if metric.protocol else []
    return list(dict.fromkeys(row.coco.protocol for row in rows if row.coco.protocol))


def _comparison_section(rows: list[Row]) -> list[str]:
    """Each results column beside the published numbers measured the same way (and only those)."""
    pub = load_published()
    lines = ["## Published numbers of the same protocols", "",
             "Each column of the results is set beside the published numbers of its protocol only (a single-scale "
             "mIoU never beside a multi-scale one, Mask R-CNN never beside Cascade Mask R-CNN).", ""]
    body = []
    for metric in METRICS:
        protocols = metric_protocols(metric, rows)
        if not protocols:
            body.append([metric.label, "-", "no published ViT-B number of this protocol in this report"])
        for protocol in protocols:
            numbers = [n for n in pub.with_protocol(protocol) if n.metric == metric.key]
            body.append([metric.label, pub.protocols[protocol],
                         "; ".join(f"{n.method} {n.value:g}" for n in numbers) or "none published"])
    return lines + _md_table(["Column", "Protocol", "Published"], body)
def _plots_section(plots: dict[str, Path], out_dir: Path) -> list[str]:
    """A subsection per PLOT_TITLES entry: the image, or why it was not plotted."""
    lines = ["## Plots", ""]
    for key, title in PLOT_TITLES.items():
        if key in plots:
            lines += [f"### {title}", "", f"![{title}]({_rel(str(plots[key]), out_dir)})", ""]
        else:
            reason = {"adv_norm": "no adversarial variant",
                      "deltas": "no delta with per-image records on both sides"}.get(key, "no data")
            lines += [f"### {title}", "", f"_Not plotted: {reason}._", ""]
    return lines


def _run_section(row: Row, out_dir: Path) -> list[str]:
    """Provenance of one row: work dir, commit, configs (links to the dumped ones), checkpoints, metrics."""
    pre = row.pretrain
    lines = [f"### {row.name} ({row.label})", "", f"- work dir: `{row.dir}`",
             f"- commit: `{row.commit or 'unknown'}`",
             f"- pretraining: {row.pretrain_variant} -- **{pre.status}**"]
    if pre.status != "none":
        loss = "-" if pre.loss is None else format_value(pre.loss, PRETRAIN_LOSS.decimals)
        dumped = _rel(pre.dumped_config, out_dir)
        lines += [f"  - config: `{row.pretrain_config or '-'}`; dumped config: [{dumped}]({dumped})",
                  f"  - max_epochs: {pre.max_epochs if pre.max_epochs is not None else '-'}; "
                  f"checkpoint: `{pre.checkpoint or '-'}`",
                  f"  - final loss (mean of the last {FINAL_LOSS_WINDOW} logged): {loss}"]
        if pre.model:
            model = ", ".join(f"{k}={v!r}" for k, v in pre.model.items())
            lines.append(f"  - model: `dict({model})`")
    for info, title in ((row.ade20k, "ADE20K"), (row.coco, "COCO"), (row.imagenet, "ImageNet fine-tuning")):
        lines.append(f"- {title}: **{info.status}**")
        if info.status == "finished":
            metrics = ", ".join(f"{k}={v:g}" for k, v in info.metrics.items())
            lines += [f"  - config: `{info.config or '-'}`; checkpoint: `{info.checkpoint or '-'}`",
                      f"  - commit: `{info.commit or '-'}`; tested: {info.time or '-'}; "
                      f"world size: {info.world_size if info.world_size is not None else '-'}",
                      f"  - metrics: {metrics}"]
            if info.tta_metrics:
                lines.append("  - test-time augmentation: "
                             + ", ".join(f"{k}={v:g}" for k, v in info.tta_metrics.items()))
        if info.dumped_config:
            dumped = _rel(info.dumped_config, out_dir)
            lines.append(f"  - dumped config: [{dumped}]({dumped})")
    lines += _probe_lines(row.linear_probe)
    return lines + [""]


def _probe_lines(probe: ProbeStage) -> list[str]:
    """The linear probe's seeds and their top-1 / top-5."""
    lines = [f"- linear probe: **{probe.status}**"]
    if probe.seeds:
        lines.append(f"  - config: `{probe.config or '-'}`; commit: `{probe.commit or '-'}`")
        lines += [f"  - seed {seed}: " + ", ".join(f"{k}={v:g}" for k, v in metrics.items())
                  for seed, metrics in sorted(probe.seeds.items())]
    return lines


def render_markdown(rows: list[Row], cells: list[dict[str, str]], base: Row | None, plots: dict[str, Path],
                    env: dict, env_source: str, out_dir: Path, uncertainty: Uncertainty | None = None) -> str:
    """report.md: results table, intervals, published numbers, plots, per-run provenance and the environment."""
    uncertainty = uncertainty or Uncertainty()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = ["# AdPE results report", "",
             f"Generated {now} from {len(rows)} variant(s); baseline for the deltas: "
             f"**{base.name if base else '-'}**.", "",
             f"> **Not comparable to published numbers.** {load_published().note}", "",
             "## Results", ""]
    lines += _results_table(rows, cells)
    lines += ["",
              "mIoU in %, two decimals (ms+flip: the --tta test, test_results_tta.json); AP = COCO mAP x 100, one "
              "decimal; top-1 in %, one decimal; all from each stage's test results. A stage with seeds (the linear "
              "probe, and any the pipeline gave seeds): mean ± standard deviation over its seeds. [low, high]: the "
              "95% interval (next section). "
              f"Final pretrain loss: mean of the last {FINAL_LOSS_WINDOW} logged training losses. Deltas: row minus "
              "baseline (with records: the paired interval and the verdict; without: from the values as shown).",
              "*missing*: no work dir for the stage (or the metric was not reported); *unfinished*: a work dir "
              "without test_results.json, or pretraining without the checkpoint of its last epoch; *none*: the "
              "variant has no pretraining (e.g. random init).", ""]
    lines += _method_section(rows, uncertainty)
    lines += _comparison_section(rows) + [""]
    lines += _published_section()
    lines += [""] + _plots_section(plots, out_dir)
    lines += ["## Runs (configs and commits)", ""]
    for row in rows:
        lines += _run_section(row, out_dir)
    lines += ["## Environment", "", f"Source: {env_source}.", ""]
    lines += _md_table(["Key", "Value"], [[k, v] for k, v in env.items()])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def _environment(rows: list[Row], env: dict | None, collect_env: Callable[[], dict] | None) -> tuple[dict, str]:
    """The environment to report and where it comes from: given, the run's env.json, or collected now (by
    ``collect_env``, e.g. ``adpe.tooling.env.collect_env``, which tools/report.py passes)."""
    if env is not None:
        return env, "given"
    for row in rows:
        if row.env:
            return row.env, "env.json of the run"
    if collect_env is None:
        return {}, "not recorded (no env.json in the run)"
    return collect_env(), "collected by tools/report.py at report time (no env.json in the run)"


def write_report(rows: list[Row], out_dir: str | Path, baseline: str | None = None,
                 env: dict | None = None, collect_env: Callable[[], dict] | None = None) -> dict[str, Path]:
    """Write results.csv, results.json, report.md and the plots into ``out_dir``; return their paths by name.

    Keys: "csv", "json", "md" and the written plots' names. ``baseline`` names the row for the deltas
    (default: the one run.json marks, else the first); ``env`` replaces the run's env.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_baseline(rows, baseline)
    uncertainty = compute(rows, base)
    cells = table_rows(rows, baseline, uncertainty)
    paths: dict[str, Path] = {}

    paths["csv"] = out_dir / "results.csv"
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(cells)

    plots = write_plots(rows, out_dir, uncertainty)
    env, env_source = _environment(rows, env, collect_env)

    paths["json"] = out_dir / "results.json"
    document = {
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "baseline": base.name if base else None,
        "columns": list(CSV_COLUMNS),
        "rows": [json_row(row, cell, uncertainty) for row, cell in zip(rows, cells, strict=True)],
        "intervals": {"level": LEVEL, "retest": [list(r) for r in uncertainty.retest], "notes": uncertainty.notes},
        "published": load_published().summary(),
        "environment": env,
        "environment_source": env_source,
        "plots": {name: path.name for name, path in plots.items()},
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")

    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(render_markdown(rows, cells, base, plots, env, env_source, out_dir, uncertainty))
    paths.update(plots)
    return paths
