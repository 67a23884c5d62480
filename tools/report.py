"""Collect the results of pipeline runs into one report: tables, plots, environment and provenance.

    python tools/report.py WORK_DIR... --out DIR [--baseline NAME]

Each WORK_DIR is a variant dir (holding run.json or any of pretrain/, ade20k/, coco/) or a run dir holding
variant dirs. DIR receives results.csv, results.json, report.md and PNG plots (pretrain_loss, adv_norm,
ade20k_miou, coco_ap, final_metrics). Stages without results are shown as "missing" (no work dir),
"unfinished" (a work dir without test_results.json, or pretraining without its final-epoch checkpoint) or
"none" (a variant without pretraining, e.g. random init) -- never as 0.

From Python: ``rows = collect_rows([run_dir]); paths = write_report(rows, out_dir, baseline=None)``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

STAGES = ("pretrain", "ade20k", "coco")
TIMESTAMP_DIR = re.compile(r"^\d{8}_\d{6}$")
FINAL_LOSS_WINDOW = 5

# (key, column label, stage, key in test_results.json metrics, scale, decimals)
METRICS = (
    ("ade20k_miou", "ADE20K mIoU", "ade20k", "mIoU", 1.0, 2),
    ("coco_ap_box", "COCO AP box", "coco", "coco/bbox_mAP", 100.0, 1),
    ("coco_ap_mask", "COCO AP mask", "coco", "coco/segm_mAP", 100.0, 1),
)
LOSS_DECIMALS = 4

CSV_COLUMNS = (
    "name", "label", "baseline", "pretrain_variant",
    "ade20k_miou", "ade20k_miou_delta", "coco_ap_box", "coco_ap_box_delta", "coco_ap_mask", "coco_ap_mask_delta",
    "pretrain_loss", "pretrain_loss_delta",
    "pretrain_status", "ade20k_status", "coco_status",
    "pretrain_config", "ade20k_config", "coco_config", "commit",
)

NOT_COMPARABLE = (
    "The demo numbers in this report come from tiny models, a few epochs and small demo data sets; they are "
    "NOT comparable to the published numbers below (ViT-B, 400-1600 pretraining epochs on ImageNet-1k, "
    "full ADE20K / COCO schedules). Only differences between variants of the same run are meaningful, and "
    "even those are noisy at demo scale."
)

PUBLISHED = {
    "source": "AdPE paper (Adversarial Positional Embeddings, arXiv 2303.07598), ViT-B",
    "note": NOT_COMPARABLE,
    "downstream": {
        "MAE": {"ade20k_miou": 48.1, "coco_ap_box": 50.3, "coco_ap_mask": 44.9, "imagenet_top1_1600ep": 83.6},
        "AdPE": {"ade20k_miou": 50.7, "coco_ap_box": 53.5, "coco_ap_mask": 46.5, "imagenet_top1_1600ep": 84.4},
    },
    "downstream_setup": {
        "ade20k_miou": "ADE20K semantic segmentation, UperNet, mIoU (%)",
        "coco_ap_box": "COCO detection, Mask R-CNN, AP box",
        "coco_ap_mask": "COCO instance segmentation, Mask R-CNN, AP mask",
        "imagenet_top1_1600ep": "ImageNet-1k fine-tuning top-1 (%) after 1600 pretraining epochs",
    },
    "released_400ep_imagenet_top1": {
        "MAE+ APE": 83.9,
        "AdPE APE embedding": 84.1,
        "AdPE APE coordinate": 84.2,
        "MAE+ RPE": 84.2,
        "AdPE RPE embedding": 84.3,
        "AdPE RPE coordinate": 84.4,
    },
}


# ---------------------------------------------------------------------------------------------------------
# Reading work dirs
# ---------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        warnings.warn(f"could not read {path}: {err}", stacklevel=2)
        return None


def is_variant_dir(path: Path) -> bool:
    return (path / "run.json").is_file() or any((path / stage).is_dir() for stage in STAGES)


def expand_work_dirs(work_dirs) -> list[Path]:
    """Variant dirs of the given work dirs, in the given order (the variants of a run dir sorted by name)."""
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


def read_scalars(stage_dir: Path) -> dict[str, list[tuple[float, float]]]:
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
    for ts_dir in reversed(_timestamp_dirs(stage_dir)):
        path = ts_dir / relative.replace("{ts}", ts_dir.name)
        if path.is_file():
            return path
    return None


def parse_model_dict(config_text: str) -> dict:
    """The literal entries of the top-level ``model = dict(...)`` of a (dumped) mmengine config."""
    try:
        tree = ast.parse(config_text)
    except SyntaxError:
        return {}
    model: dict = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if not any(isinstance(t, ast.Name) and t.id == "model" for t in targets):
            continue
        value = node.value
        items: list[tuple[str, ast.AST]] = []
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
            items = [(kw.arg, kw.value) for kw in value.keywords if kw.arg is not None]
        elif isinstance(value, ast.Dict):
            items = [(k.value, v) for k, v in zip(value.keys, value.values, strict=True)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        model = {}
        for key, expr in items:
            try:
                model[key] = ast.literal_eval(expr)
            except (ValueError, SyntaxError, TypeError):
                continue  # nested dict(...) calls and names: not needed here
    return model


def describe_variant(model: dict) -> str:
    """'mae_plus, ape, adversary=coordinate' from a pretraining model dict."""
    if not model:
        return ""
    parts = [str(model.get("variant", "?")), str(model.get("position", "?"))]
    if model.get("position") == "rpe" and model.get("rpe_lookup"):
        parts[-1] += f" ({model['rpe_lookup']})"
    parts.append(f"adversary={model.get('adversary') or 'none'}")
    if model.get("size"):
        parts.append(f"size={model['size']}")
    return ", ".join(parts)


def read_pretrain(stage_dir: Path, has_pretraining: bool) -> dict:
    info: dict[str, Any] = {"dir": str(stage_dir), "status": "missing", "loss": None, "model": {},
                            "max_epochs": None, "checkpoint": None, "dumped_config": None, "log": None}
    if not stage_dir.is_dir():
        info["status"] = "missing" if has_pretraining else "none"
        info["series"] = {}
        return info
    info["series"] = read_scalars(stage_dir)
    config_path = _latest_file(stage_dir, "vis_data/config.py")
    log_path = _latest_file(stage_dir, "{ts}.log")
    info["log"] = str(log_path) if log_path else None
    config_text = ""
    if config_path is not None:
        info["dumped_config"] = str(config_path)
        config_text = config_path.read_text()
        info["model"] = parse_model_dict(config_text)
        match = re.search(r"max_epochs\s*=\s*(\d+)", config_text)
        info["max_epochs"] = int(match.group(1)) if match else None
    last = None
    if (stage_dir / "last_checkpoint").is_file():
        text = (stage_dir / "last_checkpoint").read_text().strip()
        if text:
            last = Path(text) if Path(text).is_absolute() else stage_dir / Path(text).name
    finished = False
    if info["max_epochs"] is not None:
        final = stage_dir / f"epoch_{info['max_epochs']}.pth"
        if final.is_file():
            finished, info["checkpoint"] = True, str(final)
        elif last is not None and last.name == final.name and last.is_file():
            finished, info["checkpoint"] = True, str(last)
    if info["checkpoint"] is None and last is not None:
        info["checkpoint"] = str(last)
    info["status"] = "finished" if finished else "unfinished"
    losses = [value for _, value in info["series"].get("loss", [])]
    if losses:
        tail = losses[-FINAL_LOSS_WINDOW:]
        info["loss"] = sum(tail) / len(tail)
    return info


def read_transfer(stage_dir: Path) -> dict:
    info: dict[str, Any] = {"dir": str(stage_dir), "status": "missing", "metrics": {}, "config": None,
                            "checkpoint": None, "commit": None, "time": None, "world_size": None,
                            "dumped_config": None}
    if not stage_dir.is_dir():
        info["series"] = {}
        return info
    info["series"] = read_scalars(stage_dir)
    config_path = _latest_file(stage_dir, "vis_data/config.py")
    info["dumped_config"] = str(config_path) if config_path else None
    info["status"] = "unfinished"
    results_path = stage_dir / "test_results.json"
    if results_path.is_file():
        results = _read_json(results_path)
        if isinstance(results, dict) and isinstance(results.get("metrics"), dict):
            info["status"] = "finished"
            info["metrics"] = {k: v for k, v in results["metrics"].items() if isinstance(v, int | float)}
            for key in ("config", "checkpoint", "commit", "time", "world_size"):
                info[key] = results.get(key)
    return info


def _find_env(variant_dir: Path, given_dir: Path) -> dict | None:
    for folder in dict.fromkeys([given_dir, variant_dir.parent, variant_dir]):
        path = folder / "env.json"
        if path.is_file():
            env = _read_json(path)
            if isinstance(env, dict):
                return {str(k): v for k, v in env.items()}
    return None


def collect_rows(work_dirs) -> list[dict]:
    """One dict per variant dir found under ``work_dirs`` (see the module docstring)."""
    rows = []
    for given in work_dirs:
        for variant_dir in expand_work_dirs([given]):
            run = _read_json(variant_dir / "run.json") if (variant_dir / "run.json").is_file() else None
            run = run if isinstance(run, dict) else {}
            name = str(run.get("name") or variant_dir.name)
            has_pretraining = bool(run.get("pretrain_config")) if run else True
            pretrain = read_pretrain(variant_dir / "pretrain", has_pretraining)
            stages = {"pretrain": pretrain, "ade20k": read_transfer(variant_dir / "ade20k"),
                      "coco": read_transfer(variant_dir / "coco")}
            commits = [stages[s]["commit"] for s in ("ade20k", "coco") if stages[s].get("commit")]
            variant = describe_variant(pretrain["model"])
            if not variant:
                if pretrain["status"] == "none":
                    variant = "none (no pretraining)"
                elif run.get("pretrain_config"):
                    variant = Path(str(run["pretrain_config"])).stem
                else:
                    variant = "unknown"
            values: dict[str, float | None] = {}
            for key, _, stage, metric, scale, decimals in METRICS:
                raw = stages[stage]["metrics"].get(metric)
                values[key] = None if raw is None else round(raw * scale, decimals)
            values["pretrain_loss"] = None if pretrain["loss"] is None else round(pretrain["loss"], LOSS_DECIMALS)
            rows.append({
                "name": name,
                "label": str(run.get("label") or name),
                "dir": str(variant_dir),
                "is_baseline": bool(run.get("baseline", False)),
                "pretrain_config": run.get("pretrain_config"),
                "pretrain_variant": variant,
                "commit": "/".join(dict.fromkeys(commits)) or None,
                "values": values,
                "stages": stages,
                "env": _find_env(variant_dir, Path(given)),
            })
    return rows


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
def _status_of(row: dict, key: str) -> str:
    if key == "pretrain_loss":
        status = row["stages"]["pretrain"]["status"]
        return "missing" if status == "finished" else status  # finished, but no loss was logged
    stage = next(m[2] for m in METRICS if m[0] == key)
    status = row["stages"][stage]["status"]
    return "missing" if status == "finished" else status  # finished, but this metric was not reported


def _decimals(key: str) -> int:
    return LOSS_DECIMALS if key == "pretrain_loss" else next(m[5] for m in METRICS if m[0] == key)


def _fmt(value: float, decimals: int, sign: bool = False) -> str:
    value = round(value, decimals) + 0.0  # no "-0.00"
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def resolve_baseline(rows: list[dict], baseline: str | None) -> dict | None:
    if not rows:
        return None
    if baseline is not None:
        for row in rows:
            if row["name"] == baseline:
                return row
        raise ValueError(f"baseline {baseline!r} is not among the variants: {[r['name'] for r in rows]}")
    return next((row for row in rows if row.get("is_baseline")), rows[0])


def table_rows(rows: list[dict], baseline: str | None = None) -> list[dict[str, str]]:
    """The formatted cells (CSV_COLUMNS) of every row; deltas are against the baseline row."""
    base = resolve_baseline(rows, baseline)
    out = []
    for row in rows:
        cells = {"name": row["name"], "label": row["label"], "baseline": "yes" if row is base else "",
                 "pretrain_variant": row["pretrain_variant"]}
        for key in [m[0] for m in METRICS] + ["pretrain_loss"]:
            value, decimals = row["values"].get(key), _decimals(key)
            if value is None:
                cells[key] = cells[f"{key}_delta"] = _status_of(row, key)
                continue
            cells[key] = _fmt(value, decimals)
            base_value = base["values"].get(key)
            if row is base:
                cells[f"{key}_delta"] = "baseline"
            elif base_value is None:
                cells[f"{key}_delta"] = "n/a"
            else:
                cells[f"{key}_delta"] = _fmt(value - base_value, decimals, sign=True)
        stages = row["stages"]
        cells.update({
            "pretrain_status": stages["pretrain"]["status"],
            "ade20k_status": stages["ade20k"]["status"],
            "coco_status": stages["coco"]["status"],
            "pretrain_config": row.get("pretrain_config") or "",
            "ade20k_config": stages["ade20k"].get("config") or "",
            "coco_config": stages["coco"].get("config") or "",
            "commit": row.get("commit") or "",
        })
        out.append({column: str(cells[column]) for column in CSV_COLUMNS})
    return out


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "-"


def _md_table(header: list[str], body: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body]
    return lines


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(path: Path, title: str, ylabel: str, panels: list[tuple[str, list[tuple[str, list]]]],
               xlabel: str = "iteration") -> Path | None:
    """panels: [(panel title, [(legend label, [(step, value), ...]), ...]), ...]; None if nothing to plot."""
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


def _bar_plot(path: Path, rows: list[dict]) -> Path | None:
    if not rows:
        return None
    plt = _pyplot()
    metrics = [(key, label) for key, label, *_ in METRICS]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(rows) * len(metrics)), 4.5))
    width = 0.8 / len(rows)
    top = max([row["values"].get(k) or 0.0 for row in rows for k, _ in metrics] + [1.0])
    for i, row in enumerate(rows):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        heights = [row["values"].get(key) for key, _ in metrics]
        color = f"C{i % 10}"
        ax.bar([x for x, h in zip(xs, heights, strict=True) if h is not None],
               [h for h in heights if h is not None], width, color=color)
        for x, h, (key, _) in zip(xs, heights, metrics, strict=True):
            if h is None:  # a status, never a zero-height bar
                ax.text(x, 0.02 * top, _status_of(row, key), rotation=90, ha="center", va="bottom", fontsize=8,
                        color="dimgray")
            else:
                ax.text(x, h, _fmt(h, _decimals(key)), ha="center", va="bottom", fontsize=7, color=color)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel("mIoU / AP (%)")
    ax.set_title("Final transfer metrics (test_results.json)")
    from matplotlib.patches import Patch

    # explicit handles: a variant without any bar still gets its own colour in the legend
    ax.legend(handles=[Patch(color=f"C{i % 10}", label=row["label"]) for i, row in enumerate(rows)], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    def series(row, stage, key, scale=1.0):
        return [(s, v * scale) for s, v in row["stages"][stage]["series"].get(key, [])]

    val_x = "step as logged (iteration; epoch for epoch-based validation)"
    plots = {
        "pretrain_loss": _line_plot(out_dir / "pretrain_loss.png", "Pretraining loss", "loss",
                                    [("", [(r["label"], series(r, "pretrain", "loss")) for r in rows])]),
        "adv_norm": _line_plot(out_dir / "adv_norm.png", "Adversarial perturbation norm", "adv_norm",
                               [("", [(r["label"], series(r, "pretrain", "adv_norm")) for r in rows])]),
        "ade20k_miou": _line_plot(out_dir / "ade20k_miou.png", "ADE20K validation", "mIoU (%)",
                                  [("", [(r["label"], series(r, "ade20k", "mIoU")) for r in rows])], val_x),
        "coco_ap": _line_plot(out_dir / "coco_ap.png", "COCO validation", "AP (%)",
                              [("box AP", [(r["label"], series(r, "coco", "coco/bbox_mAP", 100)) for r in rows]),
                               ("mask AP", [(r["label"], series(r, "coco", "coco/segm_mAP", 100)) for r in rows])],
                              val_x),
        "final_metrics": _bar_plot(out_dir / "final_metrics.png", rows),
    }
    return {name: path for name, path in plots.items() if path is not None}


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def _environment(rows: list[dict], env: dict | None) -> tuple[dict, str]:
    if env is not None:
        return env, "given"
    for row in rows:
        if row.get("env"):
            return row["env"], "env.json of the run"
    from adpe.env import collect_env

    return collect_env(), "collected by tools/report.py at report time (no env.json in the run)"


def _rel(path: str | None, out_dir: Path) -> str:
    if not path:
        return "-"
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # another drive on Windows
        return str(path)


def _run_section(row: dict, out_dir: Path) -> list[str]:
    stages = row["stages"]
    pre = stages["pretrain"]
    lines = [f"### {row['name']} ({row['label']})", "", f"- work dir: `{row['dir']}`",
             f"- commit: `{row.get('commit') or 'unknown'}`",
             f"- pretraining: {row['pretrain_variant']} -- **{pre['status']}**"]
    if pre["status"] != "none":
        loss = "-" if pre["loss"] is None else _fmt(pre["loss"], LOSS_DECIMALS)
        dumped = _rel(pre["dumped_config"], out_dir)
        lines += [f"  - config: `{row.get('pretrain_config') or '-'}`; dumped config: [{dumped}]({dumped})",
                  f"  - max_epochs: {pre['max_epochs'] if pre['max_epochs'] is not None else '-'}; "
                  f"checkpoint: `{pre['checkpoint'] or '-'}`",
                  f"  - final loss (mean of the last {FINAL_LOSS_WINDOW} logged): {loss}"]
        if pre["model"]:
            model = ", ".join(f"{k}={v!r}" for k, v in pre["model"].items())
            lines.append(f"  - model: `dict({model})`")
    for stage, title in (("ade20k", "ADE20K"), ("coco", "COCO")):
        info = stages[stage]
        lines.append(f"- {title}: **{info['status']}**")
        if info["status"] == "finished":
            metrics = ", ".join(f"{k}={v:g}" for k, v in info["metrics"].items())
            lines += [f"  - config: `{info['config'] or '-'}`; checkpoint: `{info['checkpoint'] or '-'}`",
                      f"  - commit: `{info['commit'] or '-'}`; tested: {info['time'] or '-'}; "
                      f"world size: {info['world_size'] if info['world_size'] is not None else '-'}",
                      f"  - metrics: {metrics}"]
        if info["dumped_config"]:
            dumped = _rel(info["dumped_config"], out_dir)
            lines.append(f"  - dumped config: [{dumped}]({dumped})")
    return lines + [""]


def render_markdown(rows: list[dict], cells: list[dict[str, str]], base: dict | None, plots: dict[str, Path],
                    env: dict, env_source: str, out_dir: Path) -> str:
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = ["# AdPE results report", "",
             f"Generated {now} from {len(rows)} variant(s); baseline for the deltas: "
             f"**{base['name'] if base else '-'}**.", "",
             f"> **Not comparable to published numbers.** {NOT_COMPARABLE}", "",
             "## Results", ""]
    header = ["Variant", "Label", "Pretraining", "ADE20K mIoU", "Δ mIoU", "COCO AP box", "Δ AP box",
              "COCO AP mask", "Δ AP mask", "Final pretrain loss", "Δ loss"]
    body = []
    for row, cell in zip(rows, cells, strict=True):
        loss = cell["pretrain_loss"]
        if row["values"]["pretrain_loss"] is not None and cell["pretrain_status"] != "finished":
            loss += f" ({cell['pretrain_status']})"
        name = f"**{cell['name']}** (baseline)" if cell["baseline"] else cell["name"]
        body.append([name, cell["label"], cell["pretrain_variant"], cell["ade20k_miou"], cell["ade20k_miou_delta"],
                     cell["coco_ap_box"], cell["coco_ap_box_delta"], cell["coco_ap_mask"],
                     cell["coco_ap_mask_delta"], loss, cell["pretrain_loss_delta"]])
    lines += _md_table(header, body)
    lines += ["",
              "mIoU in %, two decimals; AP = COCO mAP x 100, one decimal; all from each stage's test_results.json. "
              f"Final pretrain loss: mean of the last {FINAL_LOSS_WINDOW} logged training losses. Deltas: row minus "
              "baseline, from the values as shown.",
              "*missing*: no work dir for the stage (or the metric was not reported); *unfinished*: a work dir "
              "without test_results.json, or pretraining without the checkpoint of its last epoch; *none*: the "
              "variant has no pretraining (e.g. random init).", ""]
    pub = PUBLISHED
    lines += ["## Published reference numbers (AdPE paper, ViT-B)", "",
              f"> {NOT_COMPARABLE}", "",
              f"Source: {pub['source']}.", ""]
    lines += _md_table(["Method", "ADE20K UperNet mIoU", "COCO Mask R-CNN AP box", "COCO Mask R-CNN AP mask",
                        "ImageNet fine-tune top-1 (1600 ep)"],
                       [[m, v["ade20k_miou"], v["coco_ap_box"], v["coco_ap_mask"], v["imagenet_top1_1600ep"]]
                        for m, v in pub["downstream"].items()])
    lines += ["", "Released 400-epoch ViT-B checkpoints, ImageNet fine-tune top-1:", ""]
    lines += _md_table(["Checkpoint", "Top-1 (%)"], [[k, v] for k, v in pub["released_400ep_imagenet_top1"].items()])
    lines += ["", "## Plots", ""]
    titles = {"pretrain_loss": "Pretraining loss", "adv_norm": "Adversarial perturbation norm",
              "ade20k_miou": "ADE20K validation mIoU", "coco_ap": "COCO validation AP",
              "final_metrics": "Final metrics"}
    for key, title in titles.items():
        if key in plots:
            rel = _rel(str(plots[key]), out_dir)
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
        else:
            reason = "no adversarial variant" if key == "adv_norm" else "no data"
            lines += [f"### {title}", "", f"_Not plotted: {reason}._", ""]
    lines += ["## Runs (configs and commits)", ""]
    for row in rows:
        lines += _run_section(row, out_dir)
    lines += ["## Environment", "", f"Source: {env_source}.", ""]
    lines += _md_table(["Key", "Value"], [[k, v] for k, v in env.items()])
    return "\n".join(lines) + "\n"


def _json_row(row: dict, cell: dict[str, str]) -> dict:
    stages = {}
    for stage, info in row["stages"].items():
        stages[stage] = {k: v for k, v in info.items() if k != "series"}
    return {"name": row["name"], "label": row["label"], "baseline": bool(cell["baseline"]), "dir": row["dir"],
            "pretrain_variant": row["pretrain_variant"], "pretrain_config": row.get("pretrain_config"),
            "commit": row.get("commit"), "values": dict(row["values"]), "cells": cell, "stages": stages}


def write_report(rows: list[dict], out_dir, baseline: str | None = None, env: dict | None = None) -> dict[str, Path]:
    """Write results.csv, results.json, report.md and the plots into ``out_dir``; return their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_baseline(rows, baseline)
    cells = table_rows(rows, baseline)
    paths: dict[str, Path] = {}

    paths["csv"] = out_dir / "results.csv"
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(cells)

    plots = write_plots(rows, out_dir)
    env, env_source = _environment(rows, env)

    paths["json"] = out_dir / "results.json"
    document = {
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "baseline": base["name"] if base else None,
        "columns": list(CSV_COLUMNS),
        "rows": [_json_row(row, cell) for row, cell in zip(rows, cells, strict=True)],
        "published": PUBLISHED,
        "environment": env,
        "environment_source": env_source,
        "plots": {name: path.name for name, path in plots.items()},
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")

    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(render_markdown(rows, cells, base, plots, env, env_source, out_dir))
    paths.update(plots)
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="variant dirs or run dirs")
    parser.add_argument("--out", required=True, help="output folder for the report")
    parser.add_argument("--baseline", help="variant name for the deltas (default: run.json baseline, else first)")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        rows = collect_rows(args.work_dirs)
        paths = write_report(rows, args.out, baseline=args.baseline)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    print(paths["md"])
    return paths["md"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # adpe, when not installed
    main()
