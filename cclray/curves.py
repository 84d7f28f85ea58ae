"""Training curves of one or more runs as one PNG: train loss per epoch (one panel per stage, since the
CCL and synthesis losses have different scales) and, for finetune runs, validation L1 and SSIM.

Reads each run's ``metrics.csv`` and ``config.json`` (:mod:`cclray.runs`); drawn in the project's figure
style (:mod:`data_prep.figures`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PANELS = (  # (key, metrics.csv column, y label)
    ("pretrain", "loss", "pretrain loss (CCL)"),
    ("finetune", "loss", "finetune train loss"),
    ("val_l1", "val_l1", "val L1 (lower is better)"),
    ("val_ssim", "val_ssim", "val SSIM (higher is better)"),
)


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_curves(run_dir: str | os.PathLike) -> dict:
    """``{"stage": str, "epoch": [...], "loss": [...], "val_l1": [...], "val_ssim": [...]}`` of a run;
    each series is a list of ``(epoch, value)`` with empty cells left out."""
    from cclray.runs import CONFIG_FILE, METRICS_FILE, MetricsLog
    from data_prep.objstore import location

    run = location(run_dir)
    if not (run / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run / METRICS_FILE} not found: {run} is not a cclray run directory "
                                f"or it has not finished an epoch yet")
    try:
        stage = json.loads((run / CONFIG_FILE).read_text())["stage"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        stage = "finetune" if any(r.get("val_l1") for r in MetricsLog(run).rows()) else "pretrain"
    out: dict = {"stage": stage}
    rows = MetricsLog(run).rows()
    for col in ("loss", "val_l1", "val_ssim"):
        pts = [(int(r["epoch"]), _float(r.get(col))) for r in rows]
        out[col] = [(e, v) for e, v in pts if v is not None]
    return out


def plot_curves(run_dirs: list, labels: list | None, out_png: str | os.PathLike) -> Path:
    """Draw the curves of ``run_dirs`` (named by ``labels``; default: folder names) into ``out_png``.

    Panels only for what some run has: pretrain loss, finetune loss, val L1, val SSIM. Returns the path.
    """
    from matplotlib.ticker import MaxNLocator

    from data_prep.figures import new_figure, save_png
    from data_prep.objstore import location

    run_dirs = [location(r) for r in run_dirs]
    labels = list(labels) if labels is not None else [r.name for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs: give one label per run")
    curves = [read_curves(r) for r in run_dirs]
    panels = []
    for key, col, ylabel in PANELS:
        series = [(lab, c[col]) for lab, c in zip(labels, curves)
                  if c[col] and (key not in ("pretrain", "finetune") or c["stage"] == key)]
        if series:
            panels.append((ylabel, series))
    if not panels:
        raise ValueError(f"no metrics to plot in {[str(r) for r in run_dirs]}: the runs have no finished epoch")
    fig = new_figure((4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for lab, pts in series:
            epochs, values = zip(*pts)
            ax.plot(epochs, values, marker="o" if len(pts) < 30 else None, markersize=3, label=lab)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, out_png, dpi=110)
