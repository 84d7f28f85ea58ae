"""The constrained contrastive loss and majority-vote label downsampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cclray.config import LossConfig
from cclray.losses import CCLLoss, downsample_labels
from data_prep.config import ConfigError


def _block(values: list[int]) -> torch.Tensor:
    """Eight labels -> one 2x2x2 block (1, 2, 2, 2)."""
    return torch.tensor(values).reshape(1, 2, 2, 2)


# (2x2x2 block, majority label)
VOTE_CASES = [
    ([3, 3, 3, 3, 3, 1, 1, 1], 3),
    ([7, 7, 7, 7, 2, 2, 2, 2], 2),  # tie -> smallest
    ([0, 0, 0, 5, 5, 6, 6, 6], 0),  # three-way tie -> smallest
    ([0, 0, 0, 0, 0, 0, 0, 0], 0),
    ([9, 1, 2, 3, 4, 5, 6, 9], 9),
]


@pytest.mark.parametrize("values, expected", VOTE_CASES)
def test_downsample_majority_block(values, expected):
    assert downsample_labels(_block(values), 2).item() == expected


def test_downsample_known_pattern_keeps_block_layout():
    coarse = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 0]]])[None]  # (1, 2, 2, 2)
    fine = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)  # (1, 8, 8, 8)
    fine[0, 0, 0, 0] = 9  # a minority voxel changes nothing
    assert torch.equal(downsample_labels(fine, 4), coarse)
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, :2, :2, :2] = True
    mask[0, 2:, 2:, 2:] = True
    mask[0, 2:, :2, :2] = True
    mask[0, 3, :2, :2] = False  # half of a block: tie -> False
    assert downsample_labels(mask, 2).tolist() == [[[[True, False], [False, False]],
                                                    [[False, False], [False, True]]]]
    with pytest.raises(ValueError, match="not divisible"):
        downsample_labels(fine, 3)


def _linear_rf_net(cfg):
    """``CCLNet(cfg)`` with every norm and activation removed and every conv averaging its inputs: the gradient of
    a feature with respect to the input is then its receptive field's geometric weight."""
    from torch import nn

    from cclray.models import build_ccl_net

    net = build_ccl_net(cfg)
    for m in list(net.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, (nn.GroupNorm, nn.LeakyReLU, nn.ReLU)):
                setattr(m, name, nn.Identity())
            elif isinstance(child, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.constant_(child.weight, 1.0 / child.weight[0].numel())
                if child.bias is not None:
                    nn.init.zeros_(child.bias)
    return net.double()


@pytest.mark.parametrize("widths, s", [((8, 8, 8, 8), 2), ((8, 8, 8, 8, 8), 4)])
def test_a_feature_gets_the_label_of_the_block_its_receptive_field_centres_on(widths, s):
    """Strided-conv features (model.down="conv") centre on input voxel s*i, not on the block [s*i, s*i + s)
    (centre s*i + (s-1)/2). Labels placed on blocks centred on s*i: the centred vote recovers each feature's
    own block label; the plain block vote does not."""
    from cclray.config import ModelConfig

    net = _linear_rf_net(ModelConfig(widths=widths, proj_stride=s, groups=8, proj_dim=8, down="conv"))
    p = 64
    for i in (p // s // 2 - 1, p // s // 2):
        x = torch.zeros(1, 2, p, p, p, dtype=torch.double, requires_grad=True)
        net(x)[0, :, i, i, i].sum().backward()
        w = x.grad.abs().sum(dim=(0, 1))
        w = w / w.sum()
        axis = torch.arange(p, dtype=torch.double)
        centre = [float((w.sum(dim=dims) * axis).sum()) for dims in ((1, 2), (0, 2), (0, 1))]
        assert centre == pytest.approx([s * i] * 3, abs=0.25)  # not s*i + (s-1)/2
    n = 6
    coarse = (torch.randperm(n ** 3, generator=torch.Generator().manual_seed(0)) + 1).reshape(1, n, n, n)
    idx = ((torch.arange(n * s) + s // 2) // s).clamp(max=n - 1)  # voxel x belongs to the feature nearest x/s
    fine = coarse[:, idx][:, :, idx][:, :, :, idx]
    assert torch.equal(downsample_labels(fine, s, centred=True), coarse)
    assert (downsample_labels(fine, s) == coarse).float().mean() < 0.2


def _manual_ccl(feats: np.ndarray, labels: np.ndarray, tau: float, top_k: int, self_positive: bool = True) -> float:
    """Reference formula, one image, every foreground voxel an anchor. feats (N, E), labels (N,).
    Kept set: the ``top_k`` most similar others, plus the anchor itself with ``self_positive``."""
    z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = z @ z.T / tau
    losses = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        top = [i] * self_positive + sorted(others, key=lambda j: -sim[i, j])[:top_k]
        pos = [j for j in top if labels[j] == labels[i]]
        neg = [j for j in top if labels[j] != labels[i]]
        if not pos:
            continue
        sum_neg = sum(np.exp(sim[i, j]) for j in neg)
        losses.append(np.mean([-np.log(np.exp(sim[i, p]) / (np.exp(sim[i, p]) + sum_neg)) for p in pos]))
    return float(np.mean(losses))


# (labels of 5 features, top_k, temperature)
MANUAL_CASES = [
    ([1, 1, 1, 2, 3], 10, 0.1),  # top_k >= all; label-2 and -3 anchors have no positive
    ([1, 1, 2, 2, 2], 10, 0.5),
    ([1, 1, 2, 2, 2], 2, 0.1),  # top-k actually selects
    ([4, 1, 4, 1, 4], 3, 0.2),
]


@pytest.mark.parametrize("self_positive", [True, False])
@pytest.mark.parametrize("labels, top_k, tau", MANUAL_CASES)
def test_matches_manual_formula(labels, top_k, tau, self_positive):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 3)).astype(np.float64)
    f = torch.tensor(feats.T, dtype=torch.float32).reshape(1, 3, 1, 1, 5)  # (B, E, d, h, w)
    lab = torch.tensor(labels).reshape(1, 1, 1, 5)
    loss = CCLLoss(n_anchors=5, top_k=top_k, temperature=tau, self_positive=self_positive)(f, lab, lab > 0)
    assert abs(loss.item() - _manual_ccl(feats, np.array(labels), tau, top_k, self_positive)) < 1e-5


def test_self_positive_by_hand():
    """Two features of two clusters, cosine 0.6, τ = 0.5: no anchor has another positive. With itself as a
    positive each anchor's loss is -log(e^(1/τ) / (e^(1/τ) + e^(0.6/τ))) = log(1 + e^-0.8) and pushes the other
    away; without, nothing contributes."""
    f = torch.tensor([[1.0, 0.6], [0.0, 0.8]]).reshape(1, 2, 1, 1, 2).requires_grad_()
    lab = torch.tensor([1, 2]).reshape(1, 1, 1, 2)
    loss = CCLLoss(n_anchors=2, top_k=5, temperature=0.5)(f, lab, lab > 0)
    assert loss.item() == pytest.approx(np.log1p(np.exp(-0.8)), abs=1e-6)
    loss.backward()
    assert f.grad.abs().sum() > 0
    assert CCLLoss(n_anchors=2, top_k=5, temperature=0.5, self_positive=False)(f, lab, lab > 0).item() == 0.0


def _clustered(b=2, k=4, size=(4, 4, 4), f=2, seed=0):
    """Block-constant labels (no vote ties) and one-hot-of-cluster features.
    Returns features (B, K, d, h, w), constraint (B, D, H, W), mask (B, D, H, W)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(1, k + 1, (b, *size), generator=g)
    feats = torch.nn.functional.one_hot(coarse - 1, k).permute(0, 4, 1, 2, 3).float()
    fine = coarse.repeat_interleave(f, 1).repeat_interleave(f, 2).repeat_interleave(f, 3)
    return feats, fine, torch.ones_like(fine, dtype=torch.bool)


def test_clustered_features_beat_random():
    feats, lab, mask = _clustered()
    loss = CCLLoss(n_anchors=20, top_k=30, centred=False)  # features stand for the blocks [f*i, f*i + f)
    good = loss(feats, lab, mask, torch.Generator().manual_seed(0)).item()
    rand = loss(torch.randn(feats.shape, generator=torch.Generator().manual_seed(1)), lab, mask,
                torch.Generator().manual_seed(0)).item()
    assert good < 0.05 and rand > 1.0 and good < rand / 20


def test_gradient_reaches_features():
    feats, lab, mask = _clustered()
    feats = torch.randn(feats.shape).requires_grad_()
    CCLLoss()(feats, lab, mask).backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_permuting_cluster_ids_changes_nothing():
    feats = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    _, lab, mask = _clustered(k=5)
    perm = torch.tensor([0, 4, 1, 5, 3, 2])  # 0 stays background
    loss = CCLLoss(n_anchors=10, top_k=20, centred=False)  # block votes without ties (ties go to the smallest id)
    a = loss(feats, lab, mask, torch.Generator().manual_seed(7))
    b = loss(feats, perm[lab] * 10, mask, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_fewer_foreground_than_anchors_uses_all():
    feats = torch.randn(1, 4, 1, 1, 6, generator=torch.Generator().manual_seed(0))
    lab = torch.tensor([1, 2, 1, 2, 0, 0]).reshape(1, 1, 1, 6)  # 4 foreground features
    many = CCLLoss(n_anchors=20, top_k=10)(feats, lab, lab > 0, torch.Generator().manual_seed(0))
    exact = CCLLoss(n_anchors=4, top_k=10)(feats, lab, lab > 0, torch.Generator().manual_seed(5))
    assert torch.isfinite(many) and many.item() > 0
    torch.testing.assert_close(many, exact)
    ref = _manual_ccl(feats[0, :, 0, 0, :4].double().numpy().T, np.array([1, 2, 1, 2]), 0.1, 10, True)
    assert abs(many.item() - ref) < 1e-5


# (labels of each image (B=2, 1x1x8 grid), description)
NOTHING_CASES = [
    ([[3] * 8, [3] * 8], "single cluster"),
    ([[0] * 8, [0] * 8], "no foreground"),
    ([[1, 0, 0, 0, 0, 0, 0, 2], [5, 5, 0, 0, 0, 0, 0, 0]], "no anchor has a positive / one cluster"),
]


@pytest.mark.parametrize("labels, why", NOTHING_CASES)
def test_nothing_contributes_gives_zero_with_grad(labels, why):
    feats = torch.randn(2, 4, 1, 1, 8).requires_grad_()
    lab = torch.tensor(labels).reshape(2, 1, 1, 8)
    loss = CCLLoss(n_anchors=8, top_k=8, self_positive=False)(feats, lab, lab > 0)
    assert loss.item() == 0.0 and loss.grad_fn is not None, why
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() == 0


def test_non_contributing_image_does_not_dilute_batch():
    feats = torch.randn(2, 4, 1, 1, 8, generator=torch.Generator().manual_seed(0))
    lab = torch.tensor([[1, 2, 1, 2, 1, 2, 1, 2], [3] * 8]).reshape(2, 1, 1, 8)
    loss = CCLLoss(n_anchors=8, top_k=8)
    torch.testing.assert_close(loss(feats, lab, lab > 0), loss(feats[:1], lab[:1], lab[:1] > 0))


def test_mask_removes_voxels():
    feats = torch.randn(1, 4, 1, 1, 8, generator=torch.Generator().manual_seed(0))
    lab = torch.tensor([1, 2, 1, 2, 1, 2, 1, 2]).reshape(1, 1, 1, 8)
    mask = torch.tensor([True] * 4 + [False] * 4).reshape(1, 1, 1, 8)
    loss = CCLLoss(n_anchors=8, top_k=8)
    torch.testing.assert_close(loss(feats, lab, mask), loss(feats[..., :4], lab[..., :4], mask[..., :4]))


@pytest.mark.parametrize("feat_shape, lab_shape", [((1, 4, 2, 2, 2), (1, 4, 4, 6)),
                                                   ((1, 4, 2, 2, 2), (2, 4, 4, 4))])
def test_shape_mismatch_raises(feat_shape, lab_shape):
    with pytest.raises(ValueError, match="CCLLoss"):
        CCLLoss()(torch.randn(feat_shape), torch.ones(lab_shape, dtype=torch.long),
                  torch.ones(lab_shape, dtype=torch.bool))


@pytest.mark.parametrize("over", [{"n_anchors": 0}, {"top_k": 0}, {"temperature": 0.0},
                                  {"l1_weight": 0.0, "ssim_weight": 0.0}])
def test_loss_config_rejects(over):
    with pytest.raises(ConfigError):
        LossConfig(**over)


def test_loss_is_float32_under_autocast():
    """Autocast (float16 on CUDA, bfloat16 here) must not reach the loss: a low-precision similarity
    cannot hold the -1e9 fill in float16 and rounds the logits; the value equals the float32 one."""
    feats, lab, mask = _clustered()
    feats = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
    loss = CCLLoss(n_anchors=20, top_k=30)
    plain = loss(feats, lab, mask, torch.Generator().manual_seed(0))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss(feats, lab, mask, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, plain, rtol=1e-6, atol=1e-6)
