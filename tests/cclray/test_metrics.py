import math

import numpy as np
import pytest

from cclray.evaluation.metrics import (
    MIN_EDGE,
    brasyn_metrics,
    masked_metrics,
    percentile_clip,
    psnr_from_mse,
    regions,
    ssim_map,
    subject_metrics,
    unit_scale,
    zscored_metrics,
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


@pytest.mark.parametrize("fn", [zscored_metrics, masked_metrics])
def test_identical_volumes_are_perfect(fn):
    target, mask, seg = _volumes()
    for region, s in fn(target.copy(), target, mask, seg).items():
        assert s.ssim == pytest.approx(1.0, abs=1e-9), region
        assert s.mse == 0.0 and math.isinf(s.psnr) and s.psnr > 0, region


@pytest.mark.parametrize("offset", [0.1, 0.5, 2.0])
def test_constant_offset_gives_known_mse_and_psnr(offset):
    target, mask, _ = _volumes()
    pred = np.where(mask, target + offset, 0.0)
    s = zscored_metrics(pred, target, mask)["brain"]
    data_range = float(target[mask].max() - target[mask].min())
    assert s.mse == pytest.approx(offset ** 2, rel=1e-6)
    assert s.psnr == pytest.approx(10 * np.log10(data_range ** 2 / offset ** 2), rel=1e-6)
    assert s.ssim < 1.0


def test_masked_is_offset_invariant_but_zscored_is_not():
    """masked rescales each volume by its own percentiles: a global offset inside the brain vanishes."""
    target, mask, _ = _volumes()
    pred = np.where(mask, target + 3.0, 0.0)
    b = masked_metrics(pred, target, mask)["brain"]
    assert b.mse == pytest.approx(0.0, abs=1e-12) and b.ssim == pytest.approx(1.0, abs=1e-9)
    assert zscored_metrics(pred, target, mask)["brain"].mse == pytest.approx(9.0)


@pytest.mark.parametrize("fn", [zscored_metrics, masked_metrics])
def test_voxels_outside_the_mask_change_nothing(fn):
    target, mask, seg = _volumes()
    rng = np.random.default_rng(1)
    pred = np.where(mask, target + rng.normal(scale=0.3, size=SHAPE), 0.0)
    junk = rng.normal(scale=50.0, size=SHAPE)
    a = fn(pred, target, mask, seg)
    b = fn(np.where(mask, pred, junk), np.where(mask, target, -junk), mask, seg)
    assert a == b


def test_unit_scale_in_unit_range_and_zero_outside():
    target, mask, _ = _volumes()
    scaled = unit_scale(target * 7 + 100, mask)
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
    s = zscored_metrics(pred, target, mask, seg)
    assert s["tumor"].mse == pytest.approx(1.0)
    assert s["healthy"].mse == 0.0 and math.isinf(s["healthy"].psnr)
    assert s["brain"].mse == pytest.approx((seg > 0).sum() / mask.sum())
    assert s["tumor"].ssim < s["healthy"].ssim


def test_subject_metrics_keys_and_psnr_helper():
    target, mask, seg = _volumes()
    keys = set(subject_metrics(target * 0.9, target, mask, seg))
    assert keys == {(m, r) for m in ("masked", "brasyn", "zscored") for r in ("brain", "tumor", "healthy")}
    assert psnr_from_mse(0.0, 1.0) == math.inf
    assert psnr_from_mse(0.01, 1.0) == pytest.approx(20.0)


def test_too_small_volume_names_the_window():
    small = np.zeros((MIN_EDGE - 1, 20, 20))
    with pytest.raises(ValueError, match="SSIM window"):
        ssim_map(small, small, 1.0)


def test_zscored_is_shift_sensitive_and_masked_is_not():
    """The same errors, +3 added to both volumes inside the brain: zscored SSIM moves a lot (its luminance
    term breaks down where local means cross 0), masked does not move at all."""
    target, mask, _ = _volumes()
    rng = np.random.default_rng(2)
    pred = np.where(mask, 0.8 * target + rng.normal(scale=0.3, size=SHAPE), 0.0)
    z0 = zscored_metrics(pred, target, mask)["brain"]
    z3 = zscored_metrics(np.where(mask, pred + 3, 0.0), np.where(mask, target + 3, 0.0), mask)["brain"]
    m0 = masked_metrics(pred, target, mask)["brain"]
    m3 = masked_metrics(np.where(mask, pred + 3, 0.0), np.where(mask, target + 3, 0.0), mask)["brain"]
    assert z3.ssim - z0.ssim > 0.08, (z0.ssim, z3.ssim)  # measured 0.864 -> 0.974
    assert z3.mse == pytest.approx(z0.mse)  # identical errors: only SSIM is fooled
    assert m3.ssim == pytest.approx(m0.ssim, abs=1e-6) and m3.mse == pytest.approx(m0.mse, abs=1e-6)  # float32 rounding


def test_percentile_clip_is_strictly_positive_over_the_whole_volume():
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(20, 20, 20))  # half negative: the lower percentile is raised to 0
    out = percentile_clip(vol)
    hi = np.percentile(vol, 99.5)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(out, np.clip(vol, 0, hi) / hi)
    raw = vol + 10  # all positive: the 0.5 percentile is the lower bound
    lo, hi = np.percentile(raw, (0.5, 99.5))
    assert np.allclose(percentile_clip(raw), (np.clip(raw, lo, hi) - lo) / (hi - lo))


def test_brasyn_regions_zero_the_complement():
    """An error only inside the tumour (its values reversed, so the percentiles stay put): the non-tumour
    score is perfect, the tumour one is not."""
    target, mask, seg = _volumes()
    raw = np.where(mask, target + 5, 0.0)
    pred = raw.copy()
    pred[seg > 0] = raw[seg > 0][::-1]
    b = brasyn_metrics(pred, raw, seg)
    assert set(b) == {"brain", "tumor", "healthy"}
    assert b["tumor"].ssim < 1.0 and b["tumor"].mse > 0
    assert b["healthy"].mse == pytest.approx(0.0, abs=1e-12) and b["healthy"].ssim > b["tumor"].ssim
