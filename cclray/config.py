"""Typed, frozen configs of the training stages (saved as plain JSON in every checkpoint).

Each stage turns its plain dict (Ray's ``train_loop_config``, a checkpoint's JSON, a Tune trial) into
one of these at once: a misspelled key is an error naming the close match, not a silent default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data_prep.config import FrozenConfig, require
from data_prep.schema import CONTRAST_ALIASES, CONTRASTS


def _check_contrasts(key: str, names: tuple[str, ...]) -> None:
    require(len(names) >= 1, f"ModelConfig.{key} is empty: name at least one of {list(CONTRASTS)}")
    for n in names:
        require(
            n in CONTRASTS,
            f"ModelConfig.{key} has {n!r}, not a canonical contrast: use one of {list(CONTRASTS)}"
            + (f" ({n!r} is an alias of {CONTRAST_ALIASES[n.lower()]!r})"
               if n.lower() in CONTRAST_ALIASES else ""),
        )
    require(len(set(names)) == len(names), f"ModelConfig.{key}={list(names)} repeats a contrast")


@dataclass(frozen=True)
class ModelConfig(FrozenConfig):
    """The 3D encoder-decoder shared by both stages, and its heads.

    ``widths[i]`` is the channel width at level ``i`` (spatial stride ``2**i``); the network stride is
    ``2 ** (len(widths) - 1)`` and every input spatial size must be a multiple of it.
    """

    inputs: tuple[str, ...] = ("t1gd", "flair")  # canonical contrast names = input channels
    targets: tuple[str, ...] = ("t1w", "t2w")  # synthesized contrasts = output channels
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)
    groups: int = 8  # GroupNorm groups; must divide every width
    proj_dim: int = 64
    proj_stride: int = 4  # decoder level of the projection head: features at 1/proj_stride resolution
    act: Literal["leaky_relu", "relu"] = "leaky_relu"
    down: Literal["conv", "maxpool"] = "conv"  # strided 3x3x3 conv, or 2x2x2 max-pool
    up: Literal["transpose", "trilinear"] = "transpose"  # 2x2x2 transposed conv, or trilinear + 1x1x1

    @property
    def stride(self) -> int:
        """Total downsampling factor of the encoder."""
        return 2 ** (len(self.widths) - 1)

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def out_channels(self) -> int:
        return len(self.targets)

    def width_at(self, stride: int) -> int:
        """Channel width of the decoder features at ``1/stride`` resolution."""
        return self.widths[stride.bit_length() - 1]

    def validate(self) -> None:
        _check_contrasts("inputs", self.inputs)
        _check_contrasts("targets", self.targets)
        both = sorted(set(self.inputs) & set(self.targets))
        require(not both, f"ModelConfig: {both} is both an input and a target; remove it from one")
        require(len(self.widths) >= 2,
                f"ModelConfig.widths={list(self.widths)} needs at least 2 levels (one downsampling)")
        require(self.groups >= 1, f"ModelConfig.groups={self.groups} must be >= 1")
        bad = [w for w in self.widths if w < 1 or w % self.groups]
        require(not bad, f"ModelConfig.widths {bad} not divisible by groups={self.groups}: "
                         f"use multiples of {self.groups} or change groups")
        require(self.proj_dim >= 1, f"ModelConfig.proj_dim={self.proj_dim} must be >= 1")
        s = self.proj_stride
        require(s >= 1 and s & (s - 1) == 0 and s <= self.stride,
                f"ModelConfig.proj_stride={s} must be a power of two between 1 and the network "
                f"stride {self.stride} (= 2 ** (len(widths) - 1))")


@dataclass(frozen=True)
class LossConfig(FrozenConfig):
    """CCL loss (stage 1) and synthesis loss (stage 2) settings."""

    n_anchors: int = 20
    top_k: int = 100
    temperature: float = 0.1
    l1_weight: float = 1.0  # stage 2: masked L1
    ssim_weight: float = 0.0  # stage 2: optional (1 - SSIM) term

    def validate(self) -> None:
        require(self.n_anchors >= 1, f"LossConfig.n_anchors={self.n_anchors} must be >= 1")
        require(self.top_k >= 1, f"LossConfig.top_k={self.top_k} must be >= 1")
        require(self.temperature > 0, f"LossConfig.temperature={self.temperature} must be > 0")
        require(self.l1_weight >= 0 and self.ssim_weight >= 0,
                "LossConfig.l1_weight and ssim_weight must be >= 0")
        require(self.l1_weight + self.ssim_weight > 0,
                "LossConfig: l1_weight + ssim_weight is 0; give one of them a positive weight")
