"""Losses: constrained contrastive (stage 1) and synthesis (stage 2)."""
from cclray.losses.ccl import CCLLoss, downsample_labels
from cclray.losses.synthesis import SynthesisLoss, ssim_map

__all__ = ["CCLLoss", "SynthesisLoss", "downsample_labels", "ssim_map"]
