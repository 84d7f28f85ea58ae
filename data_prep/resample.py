"""Resampling a subject onto a coarser (or finer) isotropic grid, and back: ``cclray prep --spacing S``.

numpy only, like :mod:`data_prep.preprocess`, so the runtime (no scipy, torch or zarr) can resample an
inference input exactly as prep resampled the training data, and put outputs back on the source grid.

The grid of spacing ``S`` keeps the source's field of view and axes: along an axis of ``n`` voxels of
``z`` mm, the factor is ``f = S / z``, the new grid has ``max(1, round(n / f))`` voxels, and new voxel
``i'`` is centred at source voxel coordinate ``(i' + 0.5) f - 0.5`` (voxel edges of both grids meet at
the field of view's edge). Its affine is the source affine times that diagonal map, so world
coordinates stay exact: nothing is reoriented.

Recipe of :func:`resample_subject` (the one prep and the runtime share):

1. brain mask on the source grid (any contrast non-zero, :func:`data_prep.preprocess.brain_mask`);
2. the mask resampled linearly, kept where >= 0.5;
3. each contrast anti-aliased when downsampling (Gaussian, sigma ``(f - 1) / 2`` source voxels, the
   rule of ``skimage.transform.resize``) and interpolated linearly, both *inside the brain only*
   (normalized convolution: ``smooth(v * m) / smooth(m)``), so the brain's edge is not darkened by the
   zero background; 0 outside the new mask. (Without the Gaussian, linear interpolation at ``f = 2``
   would be the 2x2x2 block mean: new centres fall midway between source centres.)
Labels (seg) go through :func:`resample_labels`: each label's indicator resampled linearly, the
largest wins (as nnU-Net resamples segmentations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .preprocess import brain_mask

SPACING_RANGE = (0.25, 16.0)  # mm; what prep and the phantom accept
SAME_SPACING_ATOL = 1e-3  # mm: a source within this of the requested spacing is not resampled


def zooms(affine) -> np.ndarray:
    """Voxel sizes (mm) of the three array axes of a 4x4 affine (the norms of its columns)."""
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def subject_spacing(attrs: dict) -> list[float]:
    """Voxel size (mm) of a subject's stored grid from its store attrs: ``spacing`` (stores written since
    ``prep --spacing``), else the zooms of the source ``affine`` (older stores kept the source grid)."""
    if attrs.get("spacing") is not None:
        return [float(v) for v in attrs["spacing"]]
    if attrs.get("affine") is None:
        raise KeyError("subject attrs have neither 'spacing' nor 'affine': re-create the store with `cclray prep`")
    return [round(float(z), 6) for z in zooms(attrs["affine"])]


def check_spacing(spacing: float, what: str = "spacing") -> float:
    """``spacing`` as a float in :data:`SPACING_RANGE`, or ``ValueError`` naming ``what``."""
    lo, hi = SPACING_RANGE
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not lo <= spacing <= hi:
        raise ValueError(f"{what}={spacing!r}: give a voxel size in mm between {lo:g} and {hi:g} (e.g. 2)")
    return float(spacing)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z) and its 4x4 ``affine`` (voxel -> world mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> list[float]:
        return [float(z) for z in zooms(self.affine)]


def target_grid(shape, affine, spacing: float) -> Grid:
    """The grid of isotropic ``spacing`` mm over the field of view of ``(shape, affine)`` (module docstring)."""
    spacing = check_spacing(spacing)
    z = zooms(affine)
    f = spacing / z
    new_shape = tuple(max(1, int(round(n / fa))) for n, fa in zip(shape, f))
    t = np.eye(4)
    t[:3, :3] = np.diag(f)
    t[:3, 3] = (f - 1.0) / 2.0
    return Grid(new_shape, np.asarray(affine, dtype=np.float64) @ t)


def needs_resampling(affine, spacing: float | None) -> bool:
    """Whether a source of ``affine`` differs from isotropic ``spacing`` (None: never resample)."""
    if spacing is None:
        return False
    return bool(np.any(np.abs(zooms(affine) - float(spacing)) > SAME_SPACING_ATOL))


def voxel_map(src_affine, dst_affine) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` with ``src_index = scale * dst_index + offset`` per axis; the two grids must
    share their axes (one is the other's :func:`target_grid`), else ``ValueError``."""
    m = np.linalg.solve(np.asarray(src_affine, np.float64), np.asarray(dst_affine, np.float64))
    off_diag = m[:3, :3] - np.diag(np.diag(m[:3, :3]))
    if np.abs(off_diag).max() > 1e-6 or np.any(np.diag(m[:3, :3]) <= 0):
        raise ValueError("the two grids do not share their axes (one must be the other resampled by "
                         "cclray prep --spacing); resample with a registration tool instead")
    return np.diag(m[:3, :3]).copy(), m[:3, 3].copy()


# ------------------------------------------------------------------------------------ 1D operations
def _gaussian_1d(v: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """Separable Gaussian along ``axis`` (zero padding, truncated at 4 sigma)."""
    if sigma <= 0:
        return v
    radius = max(1, int(math.ceil(4 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    pad = [(0, 0)] * v.ndim
    pad[axis] = (radius, radius)
    p = np.pad(v, pad)
    n = v.shape[axis]
    out = np.zeros(v.shape, dtype=np.float64)
    for k, wk in enumerate(w):
        out += wk * np.take(p, np.arange(k, k + n), axis=axis)
    return out


def _linear_1d(v: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``v`` along ``axis`` at (fractional) indices ``coords`` (clamped to the edge)."""
    n = v.shape[axis]
    x = np.clip(coords, 0.0, n - 1.0)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * v.ndim
    shape[axis] = len(x)
    w = (x - i0).reshape(shape)
    return np.take(v, i0, axis=axis) * (1.0 - w) + np.take(v, i1, axis=axis) * w


def _coords(n_out: int, scale: float, offset: float) -> np.ndarray:
    return scale * np.arange(n_out, dtype=np.float64) + offset


def _resample(v: np.ndarray, scale, offset, out_shape, antialias: bool) -> np.ndarray:
    out = np.asarray(v, dtype=np.float64)
    for axis in range(3):
        if antialias and scale[axis] > 1:
            out = _gaussian_1d(out, axis, (scale[axis] - 1.0) / 2.0)
        out = _linear_1d(out, axis, _coords(out_shape[axis], scale[axis], offset[axis]))
    return out


# ------------------------------------------------------------------------------------ public
def resample_masked(volume: np.ndarray, mask: np.ndarray, scale, offset, out_shape, out_mask: np.ndarray,
                    antialias: bool = True, _den: np.ndarray | None = None) -> np.ndarray:
    """Resample ``volume`` using only its voxels inside ``mask`` (normalized convolution); float32,
    0 outside ``out_mask``. ``scale``/``offset``: :func:`voxel_map` of the output grid to the input's."""
    m = np.asarray(mask, dtype=np.float64)
    num = _resample(np.asarray(volume, np.float64) * m, scale, offset, out_shape, antialias)
    den = _resample(m, scale, offset, out_shape, antialias) if _den is None else _den
    out = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
    return np.where(out_mask, out, 0.0).astype(np.float32)


def resample_mask(mask: np.ndarray, scale, offset, out_shape) -> np.ndarray:
    """A boolean mask resampled linearly (no anti-aliasing), kept where >= 0.5."""
    return _resample(np.asarray(mask, np.float64), scale, offset, out_shape, antialias=False) >= 0.5


def resample_labels(labels: np.ndarray, scale, offset, out_shape) -> np.ndarray:
    """Integer labels resampled: each label's indicator linearly (anti-aliased), the largest wins."""
    labels = np.asarray(labels)
    values = np.unique(labels)
    best = np.full(tuple(out_shape), -1.0)
    out = np.zeros(tuple(out_shape), dtype=labels.dtype)
    for value in values:
        p = _resample((labels == value).astype(np.float64), scale, offset, out_shape, antialias=True)
        win = p > best
        out[win], best[win] = value, p[win]
    return out


@dataclass(frozen=True)
class Resampled:
    """:func:`resample_subject`'s result: ``volumes`` ``(C, X', Y', Z')`` float32, ``mask``, ``seg``
    (or None) and the new ``grid``."""

    volumes: np.ndarray
    mask: np.ndarray
    seg: np.ndarray | None
    grid: Grid


def resample_subject(volumes: np.ndarray, affine, spacing: float, seg: np.ndarray | None = None) -> Resampled:
    """The contrasts ``(C, X, Y, Z)`` (0 = background) and optional seg of one subject on the grid of
    isotropic ``spacing`` mm (recipe: module docstring)."""
    volumes = np.asarray(volumes)
    grid = target_grid(volumes.shape[1:], affine, spacing)
    scale, offset = voxel_map(affine, grid.affine)
    src_mask = brain_mask(volumes)
    mask = resample_mask(src_mask, scale, offset, grid.shape)
    den = _resample(src_mask.astype(np.float64), scale, offset, grid.shape, antialias=True)  # shared by all
    out = np.stack([resample_masked(v, src_mask, scale, offset, grid.shape, mask, _den=den) for v in volumes])
    new_seg = None if seg is None else resample_labels(seg, scale, offset, grid.shape)
    if new_seg is not None:
        new_seg = np.where(mask, new_seg, 0).astype(seg.dtype)
    return Resampled(out, mask, new_seg, grid)


def to_grid(volume: np.ndarray, src_affine, dst_shape, dst_affine, mask: np.ndarray | None = None) -> np.ndarray:
    """A volume on grid ``src_affine`` put on grid ``(dst_shape, dst_affine)`` (e.g. a 2 mm synthesis back
    onto the 1 mm source grid): linear, anti-aliased when it shrinks; with ``mask`` (of the source grid)
    only voxels inside it are used. float32."""
    scale, offset = voxel_map(src_affine, dst_affine)
    if mask is None:
        return _resample(volume, scale, offset, tuple(dst_shape), antialias=True).astype(np.float32)
    return resample_masked(volume, mask, scale, offset, tuple(dst_shape), np.ones(tuple(dst_shape), bool))
