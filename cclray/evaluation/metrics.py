"""Image-quality metrics of a synthesized volume against its acquired target: SSIM (3D), MSE, PSNR.

numpy + scipy + scikit-image only (no torch), so the same numbers can be computed anywhere. Three
families, each written to ``metrics.csv`` under its own ``method`` name (docs/EVALUATION.md):

**masked** (primary): each volume, prediction and target separately, is clipped to its own
    0.5-99.5 percentiles *inside the brain* and scaled to [0, 1], 0 outside. SSIM:
    :func:`skimage.metrics.structural_similarity` with ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1`` (an 11-voxel Gaussian window, Wang et al. 2004), the
    SSIM *map* averaged inside the region; MSE inside the region; PSNR = 10 log10(1 / MSE).
    Regions: ``brain`` = mask; ``tumor`` = mask & seg > 0; ``healthy`` = mask & seg == 0.

**brasyn** (the BraSyn challenge's evaluation procedure, re-implemented): each volume is clipped to
    its 0.5-99.5 percentiles taken over the *whole* volume, background included, with
    ``strictlyPositive`` (a negative lower percentile becomes 0), and scaled to [0, 1]. Per region
    (``tumor`` = seg > 0, ``healthy`` = everything else, i.e. non-tumour; ``brain`` = the whole
    volume, nothing zeroed) the complementary region is set to 0 in both volumes, and SSIM is the
    torchmetrics-style Gaussian SSIM (11-voxel kernel, σ 1.5, C1 = 0.01², C2 = 0.03², reflect padding,
    the map averaged over the whole volume). MSE over the region's voxels,
    PSNR with data range 1. tests/cclray/test_brasyn_reference.py pins it to torchmetrics.

**zscored** (secondary, *a guess at the paper's convention*): on the z-scored volumes as stored;
    ``data_range`` = max - min of the target inside the brain; SSIM (skimage, as above) map averaged
    inside the region, MSE, PSNR = 10 log10(data_range² / MSE). Unstable: SSIM's luminance term
    breaks down where local means cross 0, so adding a constant to both volumes moves it
    (tests/cclray/test_metrics.py shows how much).

Before ``masked`` and ``zscored`` both volumes are set to 0 outside the brain, so voxels outside the
mask never change a score. An empty region yields no scores. Identical volumes give SSIM 1, MSE 0
and PSNR = ``inf``; :mod:`cclray.evaluation.report` writes ``inf`` in the CSV and leaves it out of means.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("masked", "brasyn", "zscored")
PRIMARY_METHOD = "masked"
REGIONS: tuple[str, ...] = ("brain", "tumor", "healthy")
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # what skimage uses with gaussian_weights=True
MIN_EDGE = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11: the SSIM window
PERCENTILES = (0.5, 99.5)
BRASYN_KERNEL = 11  # torchmetrics' default gaussian_kernel_size


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


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be one (X, Y, Z) shape")
    if min(pred.shape) < MIN_EDGE:
        raise ValueError(
            f"volume {pred.shape} is smaller than the {MIN_EDGE}-voxel SSIM window along an axis; "
            f"evaluate volumes of at least {MIN_EDGE} voxels per axis (raise the crop margin)"
        )


def ssim_map(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM ``(X, Y, Z)`` float64 of two ``(X, Y, Z)`` volumes (skimage; settings: module docstring)."""
    from skimage.metrics import structural_similarity

    _check_shapes(pred, target)
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


# ------------------------------------------------------------------------------------------ zscored
def zscored_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                    seg: np.ndarray | None = None) -> dict[str, Scores]:
    """The guess at the paper's way, on z-scored ``(X, Y, Z)`` volumes -> ``{region: Scores}``."""
    regs = regions(mask, seg)
    brain = regs["brain"]
    p, t = _masked(pred, brain), _masked(target, brain)
    data_range = float(t[brain].max() - t[brain].min())
    if data_range <= 0.0:
        log.warning("target is constant inside the brain; using data_range 1 for SSIM/PSNR")
        data_range = 1.0
    smap = ssim_map(p, t, data_range)
    return {name: _scores(p, t, smap, r, data_range) for name, r in regs.items()}


# ------------------------------------------------------------------------------------------- masked
def unit_scale(volume: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Clip ``(X, Y, Z)`` to its own percentiles inside ``mask`` and scale to [0, 1]; 0 outside."""
    brain = np.asarray(mask).astype(bool)
    vals = np.asarray(volume, np.float64)[brain]
    lo, hi = np.percentile(vals, percentiles)
    scale = hi - lo if hi > lo else 1.0
    out = np.zeros(brain.shape, np.float64)
    out[brain] = (np.clip(vals, lo, hi) - lo) / scale
    return out


def masked_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                   seg: np.ndarray | None = None) -> dict[str, Scores]:
    """The primary family (each volume to [0, 1] by its own brain percentiles) -> ``{region: Scores}``."""
    regs = regions(mask, seg)
    brain = regs["brain"]
    p, t = unit_scale(pred, brain), unit_scale(target, brain)
    smap = ssim_map(p, t, 1.0)
    return {name: _scores(p, t, smap, r, 1.0) for name, r in regs.items()}


# ------------------------------------------------------------------------------------------- brasyn
def percentile_clip(volume: np.ndarray, percentiles: tuple[float, float] = PERCENTILES,
                    strictly_positive: bool = True) -> np.ndarray:
    """BraSyn's normalisation: percentiles over the whole volume (background too), a negative lower
    bound raised to 0 with ``strictly_positive``, clipped and scaled to [0, 1]."""
    v = np.asarray(volume, np.float64)
    lo, hi = (float(x) for x in np.percentile(v, percentiles))
    if strictly_positive and lo < 0:
        lo = 0.0
    scale = hi - lo if hi > lo else 1.0
    return (np.clip(v, lo, hi) - lo) / scale


def gaussian_ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0,
                  kernel: int = BRASYN_KERNEL, sigma: float = SSIM_SIGMA) -> float:
    """torchmetrics-style 3D SSIM: the volume reflect-padded by ``kernel // 2`` (torch's ``reflect`` =
    scipy's ``mirror``), a ``kernel``-wide normalised Gaussian, C1 = (0.01 R)², C2 = (0.03 R)², population
    (co)variances (variances clamped at 0), the map averaged over every voxel of the volume."""
    from scipy.ndimage import gaussian_filter

    _check_shapes(pred, target)
    x, y = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    r = kernel // 2

    def blur(a):
        return gaussian_filter(a, sigma, mode="mirror", truncate=r / sigma)

    mx, my = blur(x), blur(y)
    vx, vy = np.maximum(blur(x * x) - mx * mx, 0.0), np.maximum(blur(y * y) - my * my, 0.0)
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap.mean())


def brasyn_metrics(pred: np.ndarray, target: np.ndarray, seg: np.ndarray | None = None) -> dict[str, Scores]:
    """The BraSyn procedure on two whole ``(X, Y, Z)`` volumes (raw intensities, background included)
    -> ``{region: Scores}`` for ``brain`` (whole volume) and, given ``seg``, ``tumor`` / ``healthy``."""
    _check_shapes(pred, target)
    p, t = percentile_clip(pred), percentile_clip(target)
    whole = np.ones(p.shape, bool)
    regs = {"brain": whole}
    if seg is not None:
        if seg.shape != p.shape:
            raise ValueError(f"seg {seg.shape} does not match the volumes {p.shape}")
        tumor = np.asarray(seg) > 0
        for name, region in (("tumor", tumor), ("healthy", ~tumor)):
            if region.any():
                regs[name] = region
    out = {}
    for name, region in regs.items():
        ssim = gaussian_ssim(np.where(region, p, 0.0), np.where(region, t, 0.0), 1.0)
        diff = p[region] - t[region]
        mse = float(np.mean(diff * diff))
        out[name] = Scores(ssim=ssim, mse=mse, psnr=psnr_from_mse(mse, 1.0))
    return out


def positive(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A z-scored stored volume made raw-like for :func:`brasyn_metrics`: brain shifted so its minimum
    is 0, background 0 (raw MRI has its background at or below every tissue)."""
    brain = np.asarray(mask).astype(bool)
    v = np.asarray(volume, np.float64)
    return np.where(brain, v - v[brain].min(), 0.0)


def subject_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                    seg: np.ndarray | None = None) -> dict[tuple[str, str], Scores]:
    """Every family for one contrast of one stored (z-scored) subject -> ``{(method, region): Scores}``.

    ``brasyn`` gets :func:`positive` copies of the volumes (it needs raw-like intensities)."""
    out: dict[tuple[str, str], Scores] = {}
    for region, scores in masked_metrics(pred, target, mask, seg).items():
        out[("masked", region)] = scores
    brain = np.asarray(mask).astype(bool)
    for region, scores in brasyn_metrics(positive(pred, brain), positive(target, brain),
                                         None if seg is None else np.where(brain, seg, 0)).items():
        out[("brasyn", region)] = scores
    for region, scores in zscored_metrics(pred, target, mask, seg).items():
        out[("zscored", region)] = scores
    return out
