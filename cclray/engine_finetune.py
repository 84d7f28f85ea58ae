"""Stage 2, the loop alone: T1w/T2w synthesis, from a pretrain checkpoint or from scratch.

``run_finetune(cfg, ctx)`` mirrors :func:`cclray.engine_pretrain.run_pretrain`. With ``cfg.init`` it
loads the pretrain run's backbone (``transfer_pretrained``: loaded / new / dropped keys logged);
without, it is the baseline. Validation: mean masked L1 and SSIM on ``cfg.val_samples`` fixed patches
of ``cfg.val_split`` (the same patches every time), sharded over ranks and gathered.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cclray.checkpoint import load_checkpoint
from cclray.config import FinetuneConfig
from cclray.data import PatchDataset, make_loader
from cclray.data.sources import training_sources
from cclray.engine import Stage, TrainContext, run_stage, seed_everything, to_device
from cclray.losses import SynthesisLoss, ssim_map
from cclray.models import build_synthesizer, transfer_pretrained
from cclray.runs import find_checkpoint

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 7919  # validation patches never coincide with training draws


def finetune_dataset(cfg: FinetuneConfig, ctx: TrainContext) -> PatchDataset:
    """This rank's patches of the finetune split(s) (and of ``cfg.extra``'s stores): input ``(C_in, p, p, p)``,
    target ``(T, p, p, p)``, mask. Every store is checked first (:func:`cclray.data.sources.training_sources`)."""
    main, *extra = training_sources(cfg)  # "pretrain,finetune": the union of the main store's splits
    return PatchDataset(main.url, list(main.subjects), cfg.patch_for(ctx.world_size), cfg.model.inputs,
                        targets=cfg.model.targets, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                        extra=tuple(extra))


def validation_batches(cfg: FinetuneConfig, ctx: TrainContext) -> list[dict]:
    """This rank's share of the fixed validation patches (no augmentation), read once and cached."""
    from data_prep.store import Store

    subjects = Store(cfg.store).subjects(cfg.val_split)
    pcfg = cfg.patch.replace(augment=False, num_workers=0, samples_per_epoch=max(cfg.val_samples, ctx.world_size))
    ds = PatchDataset(cfg.store, subjects, pcfg, cfg.model.inputs, targets=cfg.model.targets,
                      rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed + VAL_SEED_OFFSET, epoch=0)
    return list(make_loader(ds, pcfg))


@torch.no_grad()
def validate(model: nn.Module, batches: list[dict], ctx: TrainContext) -> dict:
    """``{"val_l1", "val_ssim"}`` over all ranks' validation patches, inside the brain mask.

    SSIM: 3D Gaussian-window SSIM with data range = the target's max - min in the mask, per patch and
    contrast (the paper's convention), averaged over mask voxels.
    """
    model.eval()
    l1 = ssim = n = 0.0
    for batch in batches:
        batch = to_device(batch, ctx.device)
        pred = model(batch["input"]).float()  # (B, T, p, p, p)
        target = batch["target"].float()  # (B, T, p, p, p)
        m = batch["mask"][:, None].expand_as(target)  # (B, T, p, p, p) bool
        hi = target.masked_fill(~m, float("-inf")).amax(dim=(2, 3, 4))  # (B, T)
        lo = target.masked_fill(~m, float("inf")).amin(dim=(2, 3, 4))
        rng = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(hi)).clamp(min=1e-3)
        mf = m.float()
        l1 += float(((pred - target).abs() * mf).sum())
        ssim += float((ssim_map(pred, target, rng) * mf).sum())
        n += float(mf.sum())
    model.train()
    tot = [sum(v) for v in zip(*ctx.gather((l1, ssim, n)))]
    return {"val_l1": tot[0] / max(tot[2], 1.0), "val_ssim": tot[1] / max(tot[2], 1.0)}


def init_from_pretrain(model: nn.Module, init: str) -> dict:
    """Load the backbone of pretrain run/checkpoint ``init`` into ``model``; logs and returns
    ``{"checkpoint", "loaded", "new", "dropped"}`` (key lists; ``loaded`` as a count)."""
    path = find_checkpoint(init, "latest")
    ckpt = load_checkpoint(path, stage="pretrain")
    info = transfer_pretrained(model, ckpt["model"])
    log.info("finetune init from %s (pretrain step %d): loaded %d tensors, new %s, dropped %s",
             path, int(ckpt["step"]), len(info["loaded"]), info["new"], info["dropped"])
    return {"checkpoint": str(path), "loaded": len(info["loaded"]), "new": list(info["new"]),
            "dropped": list(info["dropped"])}


def run_finetune(cfg: FinetuneConfig, ctx: TrainContext) -> dict:
    """Finetune ``Synthesizer(cfg.model)`` with ``SynthesisLoss(cfg.loss)`` on ``cfg.split``; returns
    the last epoch's metrics plus ``init`` (what was transferred, None from scratch)."""
    seed_everything(cfg.seed)  # same initial weights on every rank
    model = build_synthesizer(cfg.model, probe=cfg.probe)
    synth = SynthesisLoss(cfg.loss.l1_weight, cfg.loss.ssim_weight)

    def loss(net: nn.Module, batch: dict) -> torch.Tensor:
        return synth(net(batch["input"]).float(), batch["target"], batch["mask"])  # (B, T, D, H, W)

    val_fn = None
    if cfg.val_split is not None:
        batches = validation_batches(cfg, ctx)
        val_fn = lambda net: validate(net, batches, ctx)  # noqa: E731
    init = (lambda net: init_from_pretrain(net, cfg.init)) if cfg.init else None
    if cfg.init is None:
        log.info("finetune from scratch (random init): the baseline")
    stage = Stage("finetune", model, finetune_dataset(cfg, ctx), loss, validate=val_fn, init=init)
    return run_stage(cfg, ctx, stage)
