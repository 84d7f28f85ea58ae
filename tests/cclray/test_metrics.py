import math

import numpy as np
import pytest

from cclray.evaluation.metrics import (
    MIN_EDGE,
    brasyn_metrics,
    brasyn_scale,
    paper_metrics,
    psnr_from_mse,
    regions,
    ssim_map,
    subject_metrics,
)

SHAPE = (16, 18, 14)  # (X, Y, Z): every axis >= the 11-voxel SSIM window


def _volumes(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 3:-3, 2:-2] = True
    target = np.where(mask, rng.normal(size=SHAPE), 0.0).astype(np.float32)  # z-scored-like, 0 outside
    seg = np.zeros(SHAPE, np.uint8)
    seg[5:9, 6:10, 5:8] = 2
    seg[6:8, 7:9, 6:7] = 4
    return target, mask, seg


@pytest.mark.parametrize("fn", [paper_metrics, brasyn_metrics])
def test_identical_volumes_are_perfect(fn):
    target, mask, seg = _volumes()
    for region, s in fn(target.copy(), target, mask, seg).items():
        assert s.ssim == pytest.approx(1.0, abs=1e-9), region
        assert s.mse == 0.0 and math.isinf(s.psnr) and s.psnr > 0, region


@pytest.mark.parametrize("offset", [0.1, 0.5, 2.0])
def test_constant_offset_gives_known_mse_and_psnr(offset):
    target, mask, _ = _volumes()
    pred = np.where(mask, target + offset, 0.0)
    s = paper_metrics(pred, target, mask)["brain"]
    data_range = float(target[mask].max() - target[mask].min())
    assert s.mse == pytest.approx(offset ** 2, rel=1e-6)
    assert s.psnr == pytest.approx(10 * np.log10(data_range ** 2 / offset ** 2), rel=1e-6)
    assert s.ssim < 1.0


def test_brasyn_is_offset_invariant_but_paper_is_not():
    """BraSyn rescales each volume by its own percentiles: a global offset inside the brain vanishes."""
    target, mask, _ = _volumes()
    pred = np.where(mask, target + 3.0, 0.0)
    b = brasyn_metrics(pred, target, mask)["brain"]
    assert b.mse == pytest.approx(0.0, abs=1e-12) and b.ssim == pytest.approx(1.0, abs=1e-9)
    assert paper_metrics(pred, target, mask)["brain"].mse == pytest.approx(9.0)


@pytest.mark.parametrize("fn", [paper_metrics, brasyn_metrics])
def test_voxels_outside_the_mask_change_nothing(fn):
    target, mask, seg = _volumes()
    rng = np.random.default_rng(1)
    pred = np.where(mask, target + rng.normal(scale=0.3, size=SHAPE), 0.0)
    junk = rng.normal(scale=50.0, size=SHAPE)
    a = fn(pred, target, mask, seg)
    b = fn(np.where(mask, pred, junk), np.where(mask, target, -junk), mask, seg)
    assert a == b


def test_brasyn_scale_in_unit_range_and_zero_outside():
    target, mask, _ = _volumes()
    scaled = brasyn_scale(target * 7 + 100, mask)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.all(scaled[~mask] == 0.0)
    lo, hi = np.percentile((target * 7 + 100)[mask], (0.5, 99.5))
    inside = (target * 7 + 100)[mask]
    assert np.allclose(scaled[mask], (np.clip(inside, lo, hi) - lo) / (hi - lo))


def test_tumor_and_healthy_regions_split_the_brain():
    target, mask, seg = _volumes()
    regs = regions(mask, seg)
    assert set(regs) == {"brain", "tumor", "healthy"}
    assert not (regs["tumor"] & regs["healthy"]).any()
    assert np.array_equal(regs["tumor"] | regs["healthy"], mask)
    assert regs["tumor"].sum() == (seg > 0).sum()
    assert set(regions(mask, np.zeros_like(seg))) == {"brain", "healthy"}  # no tumour: no tumour row
    assert set(regions(mask)) == {"brain"}


def test_error_only_in_tumour_shows_in_tumour_mse_only():
    target, mask, seg = _volumes()
    pred = target.copy()
    pred[seg > 0] += 1.0
    s = paper_metrics(pred, target, mask, seg)
    assert s["tumor"].mse == pytest.approx(1.0)
    assert s["healthy"].mse == 0.0 and math.isinf(s["healthy"].psnr)
    assert s["brain"].mse == pytest.approx((seg > 0).sum() / mask.sum())
    assert s["tumor"].ssim < s["healthy"].ssim


def test_subject_metrics_keys_and_psnr_helper():
    target, mask, seg = _volumes()
    keys = set(subject_metrics(target * 0.9, target, mask, seg))
    assert keys == {(m, r) for m in ("paper", "brasyn") for r in ("brain", "tumor", "healthy")}
    assert psnr_from_mse(0.0, 1.0) == math.inf
    assert psnr_from_mse(0.01, 1.0) == pytest.approx(20.0)


def test_too_small_volume_names_the_window():
    small = np.zeros((MIN_EDGE - 1, 20, 20))
    with pytest.raises(ValueError, match="SSIM window"):
        ssim_map(small, small, 1.0)
