"""Image-quality metrics of a synthesized volume against its acquired target: SSIM (3D), MSE, PSNR.

numpy + scikit-image only (no torch), so the same numbers can be computed anywhere. Two ways, side by
side, each restricted to the brain and (when a segmentation exists) to its tumour and healthy parts:

**paper** (the published table's way): on the z-scored volumes as stored.
    - ``data_range`` = max - min of the *target* inside the brain (the same value for every region).
    - SSIM: :func:`skimage.metrics.structural_similarity` on the whole cropped volume with
      ``full=True, data_range=data_range, gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False`` (an 11-voxel Gaussian window, Wang et al. 2004), then the SSIM
      *map* is averaged inside the region.
    - MSE: mean squared difference inside the region; PSNR = 10 log10(data_range² / MSE).

**brasyn** (the BraTS 2023 synthesis challenge's way): each volume, prediction and target
    separately, is clipped to its own 0.5-99.5 percentiles inside the brain and scaled to [0, 1];
    then SSIM (same settings, ``data_range=1``), MSE and PSNR with ``data_range=1`` inside the region.

Before either way both volumes are set to 0 outside the brain (what the store holds and what the
evaluation's prediction holds), so voxels outside the mask never change a score, not even through
the SSIM window at the brain's edge.

Regions: ``brain`` = mask; ``tumor`` = mask & seg > 0; ``healthy`` = mask & seg == 0. An empty
region (no tumour in this subject) yields no scores. Identical volumes give SSIM 1, MSE 0 and
PSNR = ``inf``; :mod:`cclray.evaluation.report` writes ``inf`` in the CSV and leaves it out of means.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("paper", "brasyn")
REGIONS: tuple[str, ...] = ("brain", "tumor", "healthy")
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # what skimage uses with gaussian_weights=True
MIN_EDGE = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11: the SSIM window
BRASYN_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Scores:
    """SSIM, MSE and PSNR of one prediction in one region (PSNR may be ``inf``)."""

    ssim: float
    mse: float
    psnr: float

    def to_dict(self) -> dict:
        return asdict(self)


def psnr_from_mse(mse: float, data_range: float) -> float:
    """``10 log10(data_range² / mse)``; ``inf`` when ``mse == 0``."""
    if mse <= 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim_map(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM ``(X, Y, Z)`` float64 of two ``(X, Y, Z)`` volumes (settings: module docstring)."""
    from skimage.metrics import structural_similarity

    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be one (X, Y, Z) shape")
    if min(pred.shape) < MIN_EDGE:
        raise ValueError(
            f"volume {pred.shape} is smaller than the {MIN_EDGE}-voxel SSIM window along an axis; "
            f"evaluate volumes of at least {MIN_EDGE} voxels per axis (raise the crop margin)"
        )
    _, smap = structural_similarity(
        np.asarray(pred, np.float64), np.asarray(target, np.float64), full=True,
        data_range=float(data_range), gaussian_weights=True, sigma=SSIM_SIGMA,
        use_sample_covariance=False,
    )
    return smap


def regions(mask: np.ndarray, seg: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Non-empty evaluation regions as ``(X, Y, Z)`` bool masks: brain, and tumor/healthy given ``seg``."""
    brain = np.asarray(mask).astype(bool)
    if not brain.any():
        raise ValueError("empty brain mask: nothing to evaluate")
    out = {"brain": brain}
    if seg is not None:
        if seg.shape != brain.shape:
            raise ValueError(f"seg {seg.shape} does not match mask {brain.shape}")
        tumor = brain & (np.asarray(seg) > 0)
        for name, region in (("tumor", tumor), ("healthy", brain & ~tumor)):
            if region.any():
                out[name] = region
    return out


def _scores(pred: np.ndarray, target: np.ndarray, smap: np.ndarray, region: np.ndarray,
            data_range: float) -> Scores:
    diff = pred[region] - target[region]
    mse = float(np.mean(diff * diff))
    return Scores(ssim=float(smap[region].mean()), mse=mse, psnr=psnr_from_mse(mse, data_range))


def _masked(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return np.where(brain, np.asarray(volume, np.float64), 0.0)


def paper_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                  seg: np.ndarray | None = None) -> dict[str, Scores]:
    """The paper's way on z-scored ``(X, Y, Z)`` volumes -> ``{region: Scores}``."""
    regs = regions(mask, seg)
    brain = regs["brain"]
    p, t = _masked(pred, brain), _masked(target, brain)
    data_range = float(t[brain].max() - t[brain].min())
    if data_range <= 0.0:
        log.warning("target is constant inside the brain; using data_range 1 for SSIM/PSNR")
        data_range = 1.0
    smap = ssim_map(p, t, data_range)
    return {name: _scores(p, t, smap, r, data_range) for name, r in regs.items()}


def brasyn_scale(volume: np.ndarray, mask: np.ndarray,
                 percentiles: tuple[float, float] = BRASYN_PERCENTILES) -> np.ndarray:
    """Clip ``(X, Y, Z)`` to its own percentiles inside ``mask`` and scale to [0, 1]; 0 outside."""
    brain = np.asarray(mask).astype(bool)
    vals = np.asarray(volume, np.float64)[brain]
    lo, hi = np.percentile(vals, percentiles)
    scale = hi - lo if hi > lo else 1.0
    out = np.zeros(brain.shape, np.float64)
    out[brain] = (np.clip(vals, lo, hi) - lo) / scale
    return out


def brasyn_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                   seg: np.ndarray | None = None) -> dict[str, Scores]:
    """BraSyn's way (each volume scaled to [0, 1] by its own percentiles) -> ``{region: Scores}``."""
    regs = regions(mask, seg)
    brain = regs["brain"]
    p, t = brasyn_scale(pred, brain), brasyn_scale(target, brain)
    smap = ssim_map(p, t, 1.0)
    return {name: _scores(p, t, smap, r, 1.0) for name, r in regs.items()}


def subject_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                    seg: np.ndarray | None = None) -> dict[tuple[str, str], Scores]:
    """Both ways for one contrast of one subject -> ``{(method, region): Scores}``."""
    out: dict[tuple[str, str], Scores] = {}
    for method, fn in (("paper", paper_metrics), ("brasyn", brasyn_metrics)):
        for region, scores in fn(pred, target, mask, seg).items():
            out[(method, region)] = scores
    return out
