"""The one definition of brain mask, crop and intensity normalization.

Used by ``data_prep`` when it writes the store and by the ONNX runtime at inference, so the two can
never drift. numpy only (the runtime host has no scipy, torch or zarr).

Recipe, per subject and contrast: brain mask = voxels where any given contrast is non-zero (BraTS
volumes are skull-stripped, background exactly 0); crop to the mask's bounding box plus a margin;
clip to the ``[p_lo, p_hi]`` percentiles inside the mask, then z-score inside the mask; outside the
mask the normalized value is 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_MARGIN = 4


@dataclass(frozen=True)
class NormStats:
    """What it takes to invert the normalization of one contrast of one subject."""

    p_lo: float
    p_hi: float
    mean: float
    std: float

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}


def brain_mask(volumes) -> np.ndarray:
    """``(C, X, Y, Z)`` or a list of ``(X, Y, Z)`` -> ``(X, Y, Z)`` bool mask of non-zero voxels."""
    vols = [np.asarray(v) for v in volumes]
    mask = np.zeros(vols[0].shape, dtype=bool)
    for v in vols:
        mask |= v != 0
    return mask


def crop_box(mask: np.ndarray, margin: int = DEFAULT_MARGIN) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((x0, x1), (y0, y1), (z0, z1))`` of ``mask`` plus ``margin``, inside the volume."""
    if not mask.any():
        raise ValueError("empty brain mask: every voxel is 0 in every contrast")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def crop(volume: np.ndarray, box) -> np.ndarray:
    """Crop the last three axes of ``volume`` to ``box``."""
    sl = tuple(slice(a, b) for a, b in box)
    return volume[(Ellipsis, *sl)]


def uncrop(volume: np.ndarray, box, shape) -> np.ndarray:
    """Place a cropped ``(..., x, y, z)`` volume back onto a zero grid of spatial ``shape``."""
    out = np.zeros(volume.shape[:-3] + tuple(shape), dtype=volume.dtype)
    sl = tuple(slice(a, b) for a, b in box)
    out[(Ellipsis, *sl)] = volume
    return out


def normalize(volume: np.ndarray, mask: np.ndarray,
              percentiles=DEFAULT_PERCENTILES) -> tuple[np.ndarray, NormStats]:
    """Percentile clip then z-score inside ``mask``; float32, 0 outside. Returns the stats to invert."""
    vals = volume[mask].astype(np.float64)
    if vals.size == 0:
        raise ValueError("cannot normalize: the brain mask is empty")
    p_lo, p_hi = np.percentile(vals, percentiles)
    clipped = np.clip(vals, p_lo, p_hi)
    mean, std = float(clipped.mean()), float(clipped.std())
    std = std if std > 1e-8 else 1.0
    out = np.zeros(volume.shape, dtype=np.float32)
    out[mask] = ((clipped - mean) / std).astype(np.float32)
    return out, NormStats(float(p_lo), float(p_hi), mean, std)


def denormalize(volume: np.ndarray, stats: NormStats | dict, mask: np.ndarray | None = None) -> np.ndarray:
    """Invert :func:`normalize` (exact inside ``[p_lo, p_hi]``; clipped values stay clipped)."""
    s = stats if isinstance(stats, NormStats) else NormStats(**stats)
    out = volume.astype(np.float32) * s.std + s.mean
    if mask is not None:
        out = np.where(mask, out, 0).astype(np.float32)
    return out
