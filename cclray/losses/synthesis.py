"""Stage-2 loss: masked L1 plus an optional (1 - SSIM) term (3D SSIM, Gaussian window)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, replicate padding: (B, C, D, H, W) -> same shape."""
    c, r = x.shape[1], g.numel() // 2
    x = F.pad(x, (r, r, r, r, r, r), mode="replicate")
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = g.numel()
        x = F.conv3d(x, g.reshape(shape).expand(c, 1, *shape[2:]), groups=c)
    return x


def ssim_map(
    pred: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor,
    window: int = 7, sigma: float = 1.5,
) -> torch.Tensor:
    """Local 3D SSIM. pred, target (B, C, D, H, W); data_range (B, C) -> (B, C, D, H, W)."""
    g = _gaussian_1d(window, sigma, pred.device, pred.dtype)
    c1 = ((0.01 * data_range) ** 2)[..., None, None, None]
    c2 = ((0.03 * data_range) ** 2)[..., None, None, None]
    mu_p, mu_t = _blur(pred, g), _blur(target, g)
    var_p = _blur(pred * pred, g) - mu_p ** 2
    var_t = _blur(target * target, g) - mu_t ** 2
    cov = _blur(pred * target, g) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))


class SynthesisLoss(nn.Module):
    """``l1_weight * masked L1 + ssim_weight * (1 - masked mean SSIM)``.

    SSIM's data range is the target's max - min inside the mask, per image and channel (the paper's
    convention for z-scored volumes).
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 0.0,
                 window: int = 7, sigma: float = 1.5):
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight <= 0:
            raise ValueError(f"SynthesisLoss weights must be >= 0 with a positive sum; got "
                             f"l1_weight={l1_weight}, ssim_weight={ssim_weight}")
        self.l1_weight, self.ssim_weight = float(l1_weight), float(ssim_weight)
        self.window, self.sigma = int(window), float(sigma)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pred, target (B, T, D, H, W); mask (B, D, H, W) bool -> scalar."""
        if pred.shape != target.shape or pred.dim() != 5 or mask.shape != pred.shape[:1] + pred.shape[2:]:
            raise ValueError(f"SynthesisLoss: pred {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} must be (B, T, D, H, W) and mask "
                             f"{tuple(mask.shape)} (B, D, H, W)")
        pred, target = pred.float(), target.float()
        m = mask.to(pred.dtype)[:, None]  # (B, 1, D, H, W)
        denom = (m.sum() * pred.shape[1]).clamp(min=1)
        loss = self.l1_weight * ((pred - target).abs() * m).sum() / denom
        if self.ssim_weight > 0:
            inside = mask[:, None].expand_as(target)
            hi = target.masked_fill(~inside, float("-inf")).amax(dim=(2, 3, 4))
            lo = target.masked_fill(~inside, float("inf")).amin(dim=(2, 3, 4))
            rng = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(hi)).clamp(min=1e-3)
            s = ssim_map(pred, target, rng.detach(), self.window, self.sigma)
            loss = loss + self.ssim_weight * (1 - (s * m).sum() / denom)
        return loss
