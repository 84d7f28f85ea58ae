"""A figure like the paper's Figure 4: inputs, target, each run's synthesis and its absolute error.

One row per target contrast; columns: the input contrasts (T1Gd, FLAIR), the target, each run's
synthesis, then each run's ``|synthesis - target|``. All panels show the same axial slice (third
array axis) chosen by :func:`data_prep.figures.default_slice`: the largest tumour area in ``seg``, else
the middle of the brain. Colour
scales are shared: within a row the target and every synthesis use the target's 0.5-99.5 brain
percentiles; every error map of the figure uses one scale (0 to the 99th percentile of all errors
in the brain slice). The tumour outline is drawn on the first input when ``seg`` exists.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from data_prep.figures import default_slice, new_figure, save_png
from data_prep.schema import CONTRAST_DISPLAY as DISPLAY

log = logging.getLogger(__name__)


def _show(ax, img2d: np.ndarray, vmin: float, vmax: float, brain2d: np.ndarray, cmap: str = "gray"):
    import matplotlib

    ax.set_xticks([])
    ax.set_yticks([])
    colours = matplotlib.colormaps[cmap].with_extremes(bad="black")
    shown = np.where(brain2d, img2d, np.nan)  # outside the brain: black, whatever the scale
    # array axes (i, j) -> transpose so i runs left-right and j bottom-top (origin lower)
    return ax.imshow(shown.T, cmap=colours, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")


def _range(values: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(values, (lo, hi))
    return float(a), float(b if b > a else a + 1.0)


def draw_figure(path: str | Path, inputs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                predictions: Mapping[str, Mapping[str, np.ndarray]], mask: np.ndarray,
                seg: np.ndarray | None = None,
                ssim: Mapping[str, Mapping[str, float]] | None = None,
                title: str | None = None, dpi: int = 110) -> Path:
    """Draw the figure to ``path`` (PNG).

    Args:
        inputs: ``{contrast: (X, Y, Z)}`` input volumes, in column order.
        targets: ``{contrast: (X, Y, Z)}`` acquired targets, one row each.
        predictions: ``{run label: {contrast: (X, Y, Z)}}`` syntheses.
        mask, seg: ``(X, Y, Z)`` brain mask and optional BraTS labels.
        ssim: ``{run label: {contrast: SSIM}}`` shown in the synthesis titles.
    """
    mask = np.asarray(mask, dtype=bool)
    z = default_slice(mask, seg, axis=2)
    m2 = mask[:, :, z]
    runs = list(predictions)
    rows = list(targets)
    ncols = len(inputs) + 1 + 2 * len(runs)
    sx, sy = mask.shape[0], mask.shape[1]
    panel = 2.3
    fig = new_figure((panel * ncols * max(sx / sy, 0.6) + 0.9, panel * len(rows) + 0.8))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    errors = {(r, c): np.abs(predictions[r][c][:, :, z] - targets[c][:, :, z]) * m2
              for r in runs for c in rows if c in predictions[r]}
    err_vals = np.concatenate([e[m2] for e in errors.values()]) if errors else np.zeros(0)
    emax = float(np.percentile(err_vals, 99)) if err_vals.size else 1.0
    emax = emax if emax > 0 else 1.0

    for i, contrast in enumerate(rows):
        row = axes[i]
        tgt = targets[contrast][:, :, z]
        vmin, vmax = _range(targets[contrast][mask])
        col = 0
        for name, vol in inputs.items():
            lo, hi = _range(vol[mask])
            _show(row[col], vol[:, :, z], lo, hi, m2)
            if col == 0 and seg is not None and (seg[:, :, z] > 0).any():
                row[col].contour((seg[:, :, z] > 0).T.astype(float), levels=[0.5], colors="tab:red",
                                 linewidths=0.8, origin="lower")
            row[col].set_title(f"input {DISPLAY.get(name, name)}", fontsize=9)
            col += 1
        im = _show(row[col], tgt, vmin, vmax, m2)
        row[col].set_title(f"target {DISPLAY.get(contrast, contrast)}", fontsize=9)
        col += 1
        for run in runs:
            pred = predictions[run].get(contrast)
            if pred is not None:
                _show(row[col], pred[:, :, z], vmin, vmax, m2)
            s = (ssim or {}).get(run, {}).get(contrast)
            row[col].set_title(f"{run}" + (f"\nSSIM {s:.3f}" if s is not None else ""), fontsize=9)
            col += 1
        fig.colorbar(im, ax=row[col - 1], fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
        err_im = None
        for run in runs:
            if (run, contrast) in errors:
                err_im = _show(row[col], errors[(run, contrast)], 0.0, emax, m2, cmap="magma")
            row[col].set_title(f"|error| {run}", fontsize=9)
            col += 1
        if err_im is not None:
            fig.colorbar(err_im, ax=row[col - 1], fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
        row[0].set_ylabel(DISPLAY.get(contrast, contrast), fontsize=11)
    fig.suptitle((title + " — " if title else "") + f"axial slice z={z}", fontsize=10)
    return save_png(fig, path, dpi=dpi, bbox_inches="tight")


def draw_arms(path: str | Path, per_subject: Mapping[str, Mapping[str, float]], title: str,
              ylabel: str = "SSIM", paired: tuple[str, str] | None = ("Baseline", "CCL"), dpi: int = 110) -> Path:
    """Per-subject points for each arm (``{arm: {subject: value}}``, arms in column order) with each arm's
    mean as a bar outline; the subjects of the ``paired`` arms joined by grey lines."""
    arms = list(per_subject)
    fig = new_figure((1.6 * len(arms) + 1.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    xs: dict[str, dict[str, float]] = {}
    for i, arm in enumerate(arms):
        sids = sorted(per_subject[arm])
        vals = np.array([per_subject[arm][s] for s in sids], np.float64)
        jitter = rng.uniform(-0.12, 0.12, len(sids))
        xs[arm] = {s: i + j for s, j in zip(sids, jitter)}
        ax.bar(i, vals.mean() if vals.size else 0.0, width=0.6, fill=False, edgecolor="0.4")
        ax.scatter(i + jitter, vals, s=16, color="C0", zorder=3)
    if paired and all(a in per_subject for a in paired):
        a, b = paired
        for sid in set(per_subject[a]) & set(per_subject[b]):
            ax.plot([xs[a][sid], xs[b][sid]], [per_subject[a][sid], per_subject[b][sid]], color="0.7", lw=0.8,
                    zorder=2)
    vals_all = [v for d in per_subject.values() for v in d.values()]
    if vals_all:
        lo, hi = min(vals_all), max(vals_all)
        pad = 0.1 * (hi - lo) or 0.01
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return save_png(fig, path, dpi=dpi)
