"""Constrained contrastive loss (CCL), docs/METHOD.md, vectorized over anchors and batch.

Per image: anchors are ``n_anchors`` foreground features sampled without replacement; each anchor's
cosine similarity to every foreground feature of the same image is computed, the most similar are
kept, and among them positives share the anchor's constraint cluster, negatives do not::

    loss_anchor = -mean_p log( e^{s_p/τ} / (e^{s_p/τ} + Σ_n e^{s_n/τ}) )

averaged over the anchors of an image that have >= 1 positive, then over the images that
contribute. Padding and masks replace per-anchor and per-image Python loops.

``self_positive=True`` (the default, as the authors' ``tf.nn.top_k(k=topk + 1)`` over a memory bank that holds
the anchor): the kept set is the anchor itself plus its ``top_k`` most similar other features, and the anchor is
one of its own positives, so an anchor with no other positive still pushes its hard negatives away.
``self_positive=False``: the anchor is left out and only the ``top_k`` others are kept; anchors without
another positive then add nothing.

Labels of the feature grid: a feature of a stride-s network stands for the input block it summarises. With
``centred=True`` (strided convolutions, ``model.down="conv"``: the receptive field of feature ``i`` centres on
input voxel ``s*i``) the vote is over the ``(s+1)³`` window centred on ``s*i``; with ``centred=False`` (pooled
features, centred on ``s*i + (s-1)/2``) over the ``s³`` block starting at ``s*i``. docs/METHOD.md has the
measurement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NEG = -1e9  # "minus infinity" that keeps logsumexp and its gradient finite


def downsample_labels(labels: torch.Tensor, factor: int, centred: bool = False) -> torch.Tensor:
    """Majority vote per output voxel; ties go to the smallest label.

    labels (B, D, H, W) int or bool, D/H/W multiples of ``factor`` -> (B, D/f, H/f, W/f), same dtype.
    ``centred=False``: output ``i`` votes over the block ``[f*i, f*i + f)`` of every axis. ``centred=True``: over
    the window ``[f*i - f//2, f*i + f//2]`` (``f + 1`` voxels an axis for even ``f``, edge voxels repeated at
    the borders), centred on ``f*i`` where a strided convolution's feature ``i`` looks.
    """
    if labels.dim() != 4:
        raise ValueError(f"labels must be (B, D, H, W), got shape {tuple(labels.shape)}")
    f = int(factor)
    b, d, h, w = labels.shape
    if f < 1 or d % f or h % f or w % f:
        raise ValueError(f"labels shape {tuple(labels.shape)} is not divisible by factor {factor}")
    if f == 1:
        return labels.clone()
    # values sorted ascending, so argmax's first-maximum rule picks the smallest label on ties
    values, inverse = torch.unique(labels, sorted=True, return_inverse=True)  # inverse (B, D, H, W)
    u = values.numel()
    if centred:
        half, size = f // 2, 2 * (f // 2) + 1
        for axis, n in zip((1, 2, 3), (d, h, w)):  # repeat the edge voxels: index -half..n-1+half, clamped
            idx = (torch.arange(-half, n + half, device=labels.device)).clamp(0, n - 1)
            inverse = inverse.index_select(axis, idx)
        blocks = inverse.unfold(1, size, f).unfold(2, size, f).unfold(3, size, f)  # (B, d/f, h/f, w/f, s, s, s)
        blocks = blocks.reshape(-1, size ** 3)
    else:
        blocks = inverse.reshape(b, d // f, f, h // f, f, w // f, f)
        blocks = blocks.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, f ** 3)  # (n_blocks, f³)
    n_blocks = blocks.shape[0]
    flat = blocks + torch.arange(n_blocks, device=labels.device)[:, None] * u
    counts = torch.bincount(flat.reshape(-1), minlength=n_blocks * u).reshape(n_blocks, u)
    out = values[counts.argmax(dim=1)]
    return out.reshape(b, d // f, h // f, w // f)


class CCLLoss(nn.Module):
    """Constrained contrastive loss. See the module docstring for the formula."""

    def __init__(self, n_anchors: int = 512, top_k: int = 100, temperature: float = 0.1,
                 self_positive: bool = True, centred: bool = True):
        super().__init__()
        if n_anchors < 1 or top_k < 1 or temperature <= 0:
            raise ValueError(
                f"CCLLoss needs n_anchors >= 1, top_k >= 1, temperature > 0; got "
                f"n_anchors={n_anchors}, top_k={top_k}, temperature={temperature}"
            )
        self.n_anchors, self.top_k, self.temperature = int(n_anchors), int(top_k), float(temperature)
        self.self_positive, self.centred = bool(self_positive), bool(centred)

    def forward(
        self,
        features: torch.Tensor,
        constraint: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features (B, E, d, h, w); constraint (B, D, H, W) int labels, 0 = background;
        mask (B, D, H, W) bool; D/d = H/h = W/w = f. Returns a scalar (zero with a grad_fn when
        no image contributes).

        Computed in float32 whatever autocast is on: under CUDA float16 autocast the similarity ``bmm``
        would come out float16, which cannot hold the -1e9 fill (the first GPU run failed on it) and
        would round the logits to 3 digits."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._loss(features.float(), constraint, mask, generator)

    def _loss(self, features, constraint, mask, generator):
        b, e = features.shape[:2]
        grid = tuple(features.shape[2:])
        if constraint.shape != mask.shape or constraint.dim() != 4 or constraint.shape[0] != b:
            raise ValueError(
                f"CCLLoss: constraint {tuple(constraint.shape)} and mask {tuple(mask.shape)} must both "
                f"be (B, D, H, W) with B={b} as in features {tuple(features.shape)}"
            )
        f = constraint.shape[1] // grid[0]
        if f < 1 or tuple(s * f for s in grid) != tuple(constraint.shape[1:]):
            raise ValueError(
                f"CCLLoss: features grid {grid} times one integer factor must equal the constraint "
                f"grid {tuple(constraint.shape[1:])}; use the network's proj_stride as the factor"
            )
        labels = downsample_labels(constraint.long(), f, self.centred).reshape(b, -1)  # (B, N)
        fg = downsample_labels(mask.bool(), f, self.centred).reshape(b, -1) & (labels > 0)  # (B, N)
        n = labels.shape[1]
        z = F.normalize(features.float().reshape(b, e, n), dim=1).transpose(1, 2)  # (B, N, E)

        # anchors: uniform over foreground without replacement (random keys, top-A)
        a = min(self.n_anchors, n)
        keys = torch.rand(b, n, generator=generator, device=z.device).masked_fill(~fg, -1.0)
        anchor = keys.topk(a, dim=1).indices  # (B, A)
        anchor_ok = fg.gather(1, anchor)  # (B, A) False where the image has < A foreground
        anchor_lab = labels.gather(1, anchor)  # (B, A)

        sim = torch.bmm(z.gather(1, anchor[..., None].expand(b, a, e)), z.transpose(1, 2))  # (B,A,N)
        cand = fg[:, None, :].expand(b, a, n)  # (B, A, N)
        if not self.self_positive:
            cand = cand & (torch.arange(n, device=z.device) != anchor[..., None])
        k = min(self.top_k + int(self.self_positive), n)  # with self: itself (similarity 1) + top_k others
        top = sim.masked_fill(~cand, _NEG).topk(k, dim=2).indices  # (B, A, k)
        s = sim.gather(2, top) / self.temperature  # (B, A, k) logits
        valid = cand.gather(2, top)
        same = labels[:, None, :].expand(b, a, n).gather(2, top) == anchor_lab[..., None]
        pos, neg = valid & same, valid & ~same

        neg_lse = s.masked_fill(~neg, _NEG).logsumexp(dim=2, keepdim=True)  # (B, A, 1)
        per_pos = torch.logaddexp(s, neg_lse) - s  # (B, A, k) = -log(e^s_p / (e^s_p + Σ e^s_n))
        n_pos = pos.sum(dim=2)  # (B, A)
        per_anchor = (per_pos * pos).sum(dim=2) / n_pos.clamp(min=1)  # (B, A)

        # an image contributes only when its foreground holds >= 2 clusters (negatives exist)
        lab_fg = labels.masked_fill(~fg, -1)
        multi = lab_fg.amax(dim=1) > labels.masked_fill(~fg, labels.max() + 1).amin(dim=1)  # (B,)
        ok = anchor_ok & (n_pos > 0) & multi[:, None]  # (B, A)
        n_ok = ok.sum(dim=1)  # (B,)
        per_image = (per_anchor * ok).sum(dim=1) / n_ok.clamp(min=1)  # (B,)
        contrib = n_ok > 0
        return (per_image * contrib).sum() / contrib.sum().clamp(min=1)
