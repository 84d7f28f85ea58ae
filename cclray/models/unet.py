"""The shared 3D U-Net-style encoder-decoder (backbone of both stages).

Level ``i`` works at spatial stride ``2**i`` with ``widths[i]`` channels: two 3x3x3 convs, each
conv -> GroupNorm -> activation. Down: a strided 3x3x3 conv (first conv of the level) or a 2x2x2
max-pool. Up: a 2x2x2 transposed conv or trilinear x2 + 1x1x1 conv, then concat with the skip.
No data-dependent Python control flow in ``forward``: it exports to ONNX with dynamic shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from cclray.config import ModelConfig


def _act(name: str) -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True) if name == "leaky_relu" else nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Two (conv 3x3x3 -> GroupNorm -> act); the first conv may stride. (B, C_in, D, H, W) ->
    (B, C_out, D/s, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, groups: int, act: str, stride: int = 1):
        layers: list[nn.Module] = []
        for i, c in enumerate((c_in, c_out)):
            layers += [
                nn.Conv3d(c, c_out, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                nn.GroupNorm(groups, c_out),
                _act(act),
            ]
        super().__init__(*layers)


class Up(nn.Module):
    """x2 upsampling to ``c_out`` channels, concat with the skip, ConvBlock.
    x (B, C_in, d, h, w), skip (B, C_out, 2d, 2h, 2w) -> (B, C_out, 2d, 2h, 2w)."""

    def __init__(self, c_in: int, c_out: int, groups: int, act: str, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose3d(c_in, c_out, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                nn.Conv3d(c_in, c_out, 1),
            )
        self.block = ConvBlock(2 * c_out, c_out, groups, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class EncoderDecoder(nn.Module):
    """3D U-Net backbone. ``forward(x, stop_stride)``: x (B, C_in, D, H, W), D/H/W multiples of
    ``cfg.stride`` -> decoder features (B, widths[log2 s], D/s, H/s, W/s) with s = ``stop_stride``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w, g, a = cfg.widths, cfg.groups, cfg.act
        self.stem = ConvBlock(cfg.in_channels, w[0], g, a)
        self.down = nn.ModuleList()
        for i in range(1, len(w)):
            if cfg.down == "conv":
                self.down.append(ConvBlock(w[i - 1], w[i], g, a, stride=2))
            else:
                self.down.append(nn.Sequential(nn.MaxPool3d(2), ConvBlock(w[i - 1], w[i], g, a)))
        # up[i] produces level i (stride 2**i) from level i + 1
        self.up = nn.ModuleList(Up(w[i + 1], w[i], g, a, cfg.up) for i in range(len(w) - 1))

    @property
    def stride(self) -> int:
        return self.cfg.stride

    def forward(self, x: torch.Tensor, stop_stride: int = 1) -> torch.Tensor:
        """x (B, C_in, D, H, W) -> (B, width_at(stop_stride), D/s, H/s, W/s)."""
        s = int(stop_stride)
        if s < 1 or s & (s - 1) or s > self.stride:
            raise ValueError(f"stop_stride={stop_stride} must be a power of two in [1, {self.stride}]")
        stop = s.bit_length() - 1  # decoder level to stop at
        skips = [self.stem(x)]  # level 0: (B, w0, D, H, W)
        for down in self.down:
            skips.append(down(skips[-1]))  # level i: (B, w_i, D/2^i, H/2^i, W/2^i)
        y = skips.pop()
        for i in range(len(self.up) - 1, stop - 1, -1):  # Python ints only: traced statically
            y = self.up[i](y, skips[i])
        return y
