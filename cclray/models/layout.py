"""Memory layout of the networks (channels_last_3d: oneDNN's and cuDNN's fast 3-D layout)."""
from __future__ import annotations

import torch
from torch import nn


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` in channels_last_3d memory format, in place. 1×1×1 kernels stay contiguous: for them
    both layouts are the same bytes, but autograd creates their gradients with contiguous strides and
    DDP would warn that grad and bucket strides differ (and copy every step)."""
    model.to(memory_format=torch.channels_last_3d)
    for p in model.parameters():
        if p.dim() == 5 and tuple(p.shape[2:]) == (1, 1, 1):
            p.data = p.data.clone(memory_format=torch.contiguous_format)  # .contiguous() is a no-op here
    return model
