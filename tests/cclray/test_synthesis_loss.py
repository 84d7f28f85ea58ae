"""Masked L1 + optional (1 - SSIM) synthesis loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from cclray.losses import SynthesisLoss, ssim_map


def _batch(seed=0, b=2, t=2, size=(12, 14, 16)):
    """pred, target (B, T, D, H, W); mask (B, D, H, W) with a box inside."""
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(b, t, *size, generator=g), torch.randn(b, t, *size, generator=g)
    mask = torch.zeros(b, *size, dtype=torch.bool)
    mask[:, 2:-2, 3:-3, 1:-5] = True
    return pred, target, mask


def test_l1_matches_manual_masked_mean():
    pred, target, mask = _batch()
    m = mask[:, None].expand_as(pred)
    expected = (pred - target).abs()[m].mean()
    torch.testing.assert_close(SynthesisLoss()(pred, target, mask), expected)


def test_outside_mask_is_ignored_and_grad_flows():
    pred, target, mask = _batch()
    loss = SynthesisLoss(l1_weight=1.0, ssim_weight=0.5)
    base = loss(pred, target, mask)
    moved = pred.clone()
    moved[~mask[:, None].expand_as(pred)] += 100.0
    p = moved.requires_grad_()
    out = loss(p, target, mask)
    out.backward()
    # SSIM's 7³ window sees a few voxels across the mask edge, so only L1 is exactly unchanged
    assert torch.isfinite(p.grad).all() and p.grad[mask[:, None].expand_as(p)].abs().sum() > 0
    l1 = SynthesisLoss()
    torch.testing.assert_close(l1(moved.detach(), target, mask), l1(pred, target, mask))
    assert base.item() > 0


# (ssim loss of: description, pred from target)
SSIM_CASES = [
    ("identical", lambda t: t, 0.0, 1e-5),
    ("affine copy", lambda t: 2 * t + 3, None, None),
    ("noise", lambda t: torch.randn_like(t), None, None),
]


@pytest.mark.parametrize("name, make, value, tol", SSIM_CASES)
def test_ssim_term(name, make, value, tol):
    _, target, mask = _batch()
    smooth = torch.nn.functional.avg_pool3d(target, 3, stride=1, padding=1)
    loss = SynthesisLoss(l1_weight=0.0, ssim_weight=1.0)(make(smooth), smooth, mask).item()
    if value is not None:
        assert abs(loss - value) < tol
    else:
        assert 0.05 < loss < 2.0, name


def test_ssim_map_matches_skimage_interior():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20, 20)).astype(np.float64)
    b = a + 0.5 * rng.normal(size=a.shape)
    rng_ = float(a.max() - a.min())
    _, ref = structural_similarity(a, b, data_range=rng_, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, full=True)
    ours = ssim_map(torch.tensor(b)[None, None], torch.tensor(a)[None, None],
                    torch.tensor([[rng_]], dtype=torch.float64), window=11, sigma=1.5)[0, 0].numpy()
    np.testing.assert_allclose(ours[5:-5, 5:-5, 5:-5], ref[5:-5, 5:-5, 5:-5], atol=1e-6)


@pytest.mark.parametrize("pred_shape, mask_shape", [((1, 2, 8, 8, 8), (1, 8, 8, 4)),
                                                    ((1, 2, 8, 8), (1, 8, 8))])
def test_bad_shapes_raise(pred_shape, mask_shape):
    with pytest.raises(ValueError, match="SynthesisLoss"):
        SynthesisLoss()(torch.zeros(pred_shape), torch.zeros(pred_shape), torch.ones(mask_shape, dtype=torch.bool))
