"""Stage 1, the loop alone: CCL pretraining of the encoder-decoder + projection head.

``run_pretrain(cfg, ctx)`` is framework-free: Ray's worker loop (``cclray.train``) and a test with
:class:`cclray.engine.LocalContext` call the same function.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cclray.config import PretrainConfig
from cclray.data import PatchDataset
from cclray.data.sources import training_sources
from cclray.engine import Stage, TrainContext, run_stage, seed_everything
from cclray.losses import CCLLoss
from cclray.models import build_ccl_net

log = logging.getLogger(__name__)


def pretrain_dataset(cfg: PretrainConfig, ctx: TrainContext) -> PatchDataset:
    """This rank's patches of the pretrain split (and of ``cfg.extra``'s stores): input ``(C_in, p, p, p)``,
    mask, constraint labels. Every store is checked first (:func:`cclray.data.sources.training_sources`)."""
    main, *extra = training_sources(cfg)
    return PatchDataset(main.url, list(main.subjects), cfg.patch_for(ctx.world_size), cfg.model.inputs,
                        constraint=cfg.constraint, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                        extra=tuple(extra))


def run_pretrain(cfg: PretrainConfig, ctx: TrainContext) -> dict:
    """Pretrain ``CCLNet(cfg.model)`` with ``CCLLoss(cfg.loss)`` on ``cfg.split``; returns the last
    epoch's metrics (see :func:`cclray.engine.run_stage`)."""
    seed_everything(cfg.seed)  # same initial weights on every rank
    model = build_ccl_net(cfg.model)
    # strided-conv features centre on input voxel s*i, pooled ones on the block [s*i, s*i + s) (docs/METHOD.md)
    ccl = CCLLoss(cfg.loss.n_anchors, cfg.loss.top_k, cfg.loss.temperature, self_positive=cfg.loss.self_positive,
                  centred=cfg.model.down == "conv")

    def loss(net: nn.Module, batch: dict) -> torch.Tensor:
        feats = net(batch["input"])  # (B, proj_dim, D/s, H/s, W/s)
        return ccl(feats.float(), batch["constraint"], batch["mask"])

    stage = Stage("pretrain", model, pretrain_dataset(cfg, ctx), loss, find_unused_parameters=True)
    return run_stage(cfg, ctx, stage)
