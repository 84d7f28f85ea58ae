"""Stage wrappers around the shared backbone, and the checked weight hand-off between them.

``CCLNet`` (stage 1) = ``backbone`` + ``proj_head`` on the partial decoder; ``Synthesizer`` (stage 2)
= ``backbone`` + ``synth_head`` on the full decoder. Both name the backbone ``backbone`` so its keys
match across stages.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from cclray.config import ModelConfig
from cclray.models.unet import EncoderDecoder

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


class ProjectionHead(nn.Sequential):
    """1x1x1 conv -> GroupNorm -> ReLU -> 1x1x1 conv: (B, C, d, h, w) -> (B, proj_dim, d, h, w)."""

    def __init__(self, c_in: int, proj_dim: int, groups: int):
        super().__init__(
            nn.Conv3d(c_in, c_in, 1, bias=False),
            nn.GroupNorm(groups, c_in),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_in, proj_dim, 1),
        )


class CCLNet(nn.Module):
    """Stage 1. x (B, C_in, D, H, W) -> (B, proj_dim, D/s, H/s, W/s), s = cfg.proj_stride,
    L2-normalized over channels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = EncoderDecoder(cfg)
        self.proj_head = ProjectionHead(cfg.width_at(cfg.proj_stride), cfg.proj_dim, cfg.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj_head(self.backbone(x, stop_stride=self.cfg.proj_stride))
        return F.normalize(z, dim=1)


class Synthesizer(nn.Module):
    """Stage 2. x (B, C_in, D, H, W) -> (B, T, D, H, W), T = len(cfg.targets).

    ``probe=True``: a linear probe of the backbone — the backbone is frozen, and a 1x1x1 head reads its
    features at ``cfg.proj_stride`` (the level CCL pretraining shapes) and is upsampled trilinearly to the
    input grid; only the head trains. It measures how much of the targets the (pre)trained features hold.
    """

    def __init__(self, cfg: ModelConfig, probe: bool = False):
        super().__init__()
        self.cfg, self.probe = cfg, probe
        self.backbone = EncoderDecoder(cfg)
        self.synth_head = nn.Conv3d(cfg.width_at(cfg.proj_stride if probe else 1), cfg.out_channels, 1)
        if probe:
            self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.probe:
            return self.synth_head(self.backbone(x, stop_stride=1))
        y = self.synth_head(self.backbone(x, stop_stride=self.cfg.proj_stride))
        return F.interpolate(y, size=x.shape[2:], mode="trilinear", align_corners=False)


def build_ccl_net(cfg: ModelConfig) -> CCLNet:
    return CCLNet(cfg)


def build_synthesizer(cfg: ModelConfig, probe: bool = False) -> Synthesizer:
    return Synthesizer(cfg, probe=probe)


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def transfer_pretrained(synth: Synthesizer, ccl_state_dict: dict) -> dict:
    """Load ``backbone.*`` of a CCLNet state dict into ``synth``; everything else is checked.

    Accepts keys prefixed by ``module.`` (DDP) or ``_orig_mod.`` (torch.compile). Returns
    ``{"loaded": [...], "new": [...], "dropped": [...]}``. Raises ValueError unless ``new`` is exactly
    the ``synth_head.*`` keys and ``dropped`` exactly the checkpoint's ``proj_head.*`` keys, and unless
    every loaded tensor has the synthesizer's shape (a checkpoint of other widths fails here).
    """
    ckpt = {_strip_prefix(k): v for k, v in ccl_state_dict.items()}
    own = synth.state_dict()
    new = sorted(set(own) - set(ckpt))
    dropped = sorted(set(ckpt) - set(own))
    loaded = sorted(set(own) & set(ckpt))
    want_new = sorted(k for k in own if k.startswith("synth_head."))
    problems = []
    if new != want_new:
        missing = [k for k in new if k not in want_new]
        if missing:
            problems.append(f"backbone keys missing from the checkpoint: {missing}")
        clash = [k for k in want_new if k not in new]
        if clash:
            problems.append(f"checkpoint unexpectedly holds synthesizer keys {clash}")
    extra = [k for k in dropped if not k.startswith("proj_head.")]
    if extra:
        problems.append(f"unexpected keys in the checkpoint (not backbone.*/proj_head.*): {extra}")
    shape = [f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(own[k].shape)}"
             for k in loaded if tuple(ckpt[k].shape) != tuple(own[k].shape)]
    if shape:
        problems.append("shape mismatch (was it trained with other ModelConfig widths/inputs?): "
                        + "; ".join(shape))
    if problems:
        raise ValueError(
            "transfer_pretrained: the checkpoint is not a CCLNet state dict for this Synthesizer's "
            "ModelConfig: " + " | ".join(problems)
            + ". Fix: pass the 'model' state dict of a stage-1 checkpoint trained with the same "
              "ModelConfig (inputs, widths, groups)."
        )
    synth.load_state_dict({**{k: own[k] for k in new}, **{k: ckpt[k] for k in loaded}}, strict=True)
    log.info("transfer_pretrained: loaded %d tensors, new %s, dropped %s", len(loaded), new, dropped)
    return {"loaded": loaded, "new": new, "dropped": dropped}
