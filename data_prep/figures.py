"""The project's one figure style, and pictures of a store's contents (four contrasts beside a constraint map).

Every figure of the project (this module, :mod:`cclray.curves`, :mod:`cclray.evaluation.figure`,
:mod:`tune.report`) is an object-oriented matplotlib ``Figure`` on its own Agg canvas (:func:`new_figure`),
saved atomically as PNG (:func:`save_png`): no pyplot, no process-wide ``matplotlib.use``, no GUI, so a
library call never changes the caller's matplotlib state. Slices are chosen by one rule
(:func:`default_slice`: through the largest tumour, else mid-brain) and contrasts are named by
:data:`data_prep.schema.CONTRAST_DISPLAY`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .config import ConfigError
from .schema import CONTRAST_DISPLAY, CONTRASTS

log = logging.getLogger(__name__)


def new_figure(figsize: tuple[float, float], layout: str | None = "constrained"):
    """A ``matplotlib.figure.Figure`` with its own Agg canvas (no pyplot, no global backend, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path, dpi: int = 110, **kwargs) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (the file is whole or absent); returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **kwargs)
    log.debug("wrote %s", path)
    return path


def default_slice(mask: np.ndarray, seg: np.ndarray | None, axis: int = 2) -> int:
    """The slice along ``axis`` (default 2, axial for BraTS) with the largest tumour area (``seg > 0``) when
    there is any, else the middle of the brain (of the array when the mask is empty)."""
    other = tuple(a for a in range(3) if a != axis)
    if seg is not None and (seg > 0).any():
        return int(np.argmax((seg > 0).sum(axis=other)))
    idx = np.flatnonzero(mask.any(axis=other))
    return int((idx[0] + idx[-1]) // 2) if idx.size else mask.shape[axis] // 2


def label_colormap(k: int):
    """A qualitative ``ListedColormap`` of ``k + 1`` colours: 0 black, 1..k from tab20 / tab20b / tab20c."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    pool = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    colors = [(0.0, 0.0, 0.0)] + [pool[i % len(pool)] for i in range(k)]
    return ListedColormap(colors, name=f"labels{k}")


def _take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``(X, Y, Z)`` -> the 2D slice, transposed so that it displays with ``origin="lower"`` upright."""
    return np.take(volume, index, axis=axis).T


def constraint_figure(store_url: str, sid: str, name: str, out_png: str | Path, axis: int = 2,
                      slice_index: int | None = None) -> Path:
    """Draw one slice of ``sid``: the four contrasts (grey, 1–99 percentile window inside the brain) beside
    constraint map ``name`` (qualitative colours, 0 black); each contrast's title gives the R² of its
    brain voxels explained by the labels (:func:`data_prep.constraint.label_r2`). Writes ``out_png``; returns its
    path."""
    from .constraint import label_r2
    from .store import Store

    if axis not in (0, 1, 2):
        raise ConfigError(f"axis={axis}: use 0, 1 or 2 (2 = axial for BraTS volumes)")
    store = Store(store_url)
    image = store.read(sid, "image").astype(np.float32)  # (4, X, Y, Z)
    mask = store.read(sid, "mask").astype(bool)
    labels = store.read(sid, f"constraint/{name}")
    seg = store.read(sid, "seg") if store.has_array(sid, "seg") else None
    if slice_index is None:
        slice_index = default_slice(mask, seg, axis)
    if not 0 <= slice_index < mask.shape[axis]:
        raise ConfigError(f"slice {slice_index} is outside axis {axis} of {sid} (size {mask.shape[axis]}); "
                         f"pick 0..{mask.shape[axis] - 1} or leave it out")
    spec = (store.attrs.get("constraints") or {}).get(name, {})
    k = int(spec.get("k") or max(int(labels.max()), 1))
    channels = list(store.attrs.get("channels") or CONTRASTS)

    fig = new_figure((3.2 * (len(channels) + 1), 3.8), layout=None)
    axes = fig.subplots(1, len(channels) + 1, squeeze=False)
    axes = axes[0]
    for ax, c, vol in zip(axes, channels, image):
        inside = vol[mask]
        lo, hi = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
        shown = np.where(mask, vol, lo)  # background black
        ax.imshow(_take(shown, axis, slice_index), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  interpolation="nearest")
        ax.set_title(f"{CONTRAST_DISPLAY.get(c, c)} (labels R² {label_r2(labels, vol, mask):.3f})", fontsize=9)
    ax = axes[-1]
    ax.imshow(_take(labels, axis, slice_index), cmap=label_colormap(k), vmin=-0.5, vmax=k + 0.5, origin="lower",
              interpolation="nearest")
    ax.set_title(f"{name} (K={k})")
    for a in axes:
        a.set_axis_off()
    seeded = f", seed {spec['seed']}" if "seed" in spec else ""
    fig.suptitle(f"{sid}: constraint map {name}{seeded}; axis {axis}, slice {slice_index}")
    fig.tight_layout()
    return save_png(fig, out_png, dpi=100)
