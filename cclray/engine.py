"""The epoch loop both stages share, and the context that hides where it runs.

``engine_pretrain`` / ``engine_finetune`` build their model, data, loss and validation as a
:class:`Stage` and call :func:`run_stage`, which is cut at its seams: :func:`train_one_epoch` (the
optimizer steps of one pass over the loader, with :class:`Optim`) and :func:`save_and_report` (a
checkpoint handed to the context). Where it runs is a :class:`TrainContext`: rank, world
size, device, model wrapping (DDP under Ray), reporting/checkpointing and resuming.
:class:`LocalContext` is world size 1 without Ray (tests, debugging); ``cclray.train.RayContext`` is
the Ray Train one. Nothing here imports Ray or ``torch.distributed``.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cclray.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cclray.data import PatchDataset, make_loader
from cclray.models import to_channels_last
from cclray.runs import (
    MetricsLog,
    checkpoint_name,
    find_checkpoint,
    install_checkpoint,
    prune_checkpoints,
    write_run_config,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- contexts
class TrainContext:
    """Where a stage runs. Subclasses override what differs; the defaults are world size 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    run_dir: Path | None = None  # local run directory for metrics.csv (rank 0), or None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Move ``model`` to the device and wrap it for data parallelism (DDP under Ray)."""
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: str | None = None, name: str | None = None,
               keep: int | None = None) -> None:
        """Called once an epoch on every rank; rank 0 passes ``checkpoint_dir`` (a written checkpoint,
        to be moved to ``RUN/name``) on checkpoint epochs."""
        raise NotImplementedError

    def resume_checkpoint(self, stage: str) -> dict | None:
        """The loaded checkpoint to resume from (of ``stage``), or None to start fresh."""
        return None

    def gather(self, obj: Any) -> list:
        """``obj`` of every rank, in rank order (a collective: every rank must call it)."""
        return [obj]


class LocalContext(TrainContext):
    """World size 1, no Ray: checkpoints go to ``run_dir`` (pruned to ``keep`` best + latest).

    ``resume_from``: a run directory or checkpoint to resume (None: start fresh). Every reported
    metrics dict is kept in ``self.reports``.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, device: str = "cpu",
                 resume_from: str | os.PathLike | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(device)
        self.resume_from = resume_from
        self.reports: list[dict] = []

    def report(self, metrics, checkpoint_dir=None, name=None, keep=None):
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.run_dir is not None:
            dest = install_checkpoint(checkpoint_dir, self.run_dir, name or checkpoint_name(
                int(metrics.get("epoch", 0)), int(metrics.get("step", 0))))
            log.info("checkpoint %s", dest)
            if keep:
                prune_checkpoints(self.run_dir, keep)

    def resume_checkpoint(self, stage):
        if self.resume_from is None:
            return None
        return load_checkpoint(find_checkpoint(self.resume_from, "latest"), stage=stage)


# ---------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed for the RNG draws after model construction (anchors, dropout)."""
    return (int(seed) * 1_000_003 + 7919 * (int(rank) + 1)) % 2**31


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch to ``device`` (non-blocking); other entries (``sid`` lists) unchanged."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def weight_checksum(model: nn.Module) -> float:
    """A number that differs when any weight differs (ranks must agree after DDP steps)."""
    with torch.no_grad():
        return float(sum((p.double().sum() + (p.double() ** 2).sum()).item() for p in model.parameters()))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (``.module``), else the model itself."""
    return getattr(model, "module", model)


@dataclass
class Stage:
    """What :func:`run_stage` trains.

    ``loss(model, batch) -> scalar``: batch tensors on the device, e.g. ``"input"`` ``(B, C, D, H, W)``.
    ``init(raw_model) -> dict``: applied only when not resuming (e.g. transfer pretrained weights).
    ``validate(raw_model) -> {"val_l1": ..., ...}``: global (gathered) metrics; called on every rank.
    """

    name: str
    model: nn.Module
    dataset: PatchDataset
    loss: Callable[[nn.Module, dict], torch.Tensor]
    validate: Callable[[nn.Module], dict] | None = None
    init: Callable[[nn.Module], dict] | None = None
    find_unused_parameters: bool = False  # CCLNet leaves the full-resolution decoder unused


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------- the loop
def make_scheduler(opt: torch.optim.Optimizer, cfg):
    """The epoch-level lr schedule ``cfg.lr_schedule`` names (see :class:`cclray.config.StageConfig`)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.min_lr)
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)


def autocast_settings(cfg, device: torch.device) -> tuple[torch.dtype, bool]:
    """``(dtype, enabled)`` of the training autocast: float16 on CUDA when ``cfg.amp`` (with a
    GradScaler), bfloat16 on CPU when ``cfg.cpu_bf16`` (no scaler: bfloat16 has float32's range)."""
    if device.type == "cuda":
        return torch.float16, bool(cfg.amp)
    if device.type == "cpu":
        return torch.bfloat16, bool(cfg.cpu_bf16)
    return torch.float32, False


@dataclass
class Optim:
    """What one optimizer step needs beside the model: optimizer, epoch-level scheduler, GradScaler and
    the autocast settings (:func:`autocast_settings`)."""

    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype
    use_autocast: bool

    @classmethod
    def build(cls, model: nn.Module, cfg, device: torch.device) -> "Optim":
        dtype, enabled = autocast_settings(cfg, device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = make_scheduler(opt, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=enabled and dtype == torch.float16)
        return cls(opt, sched, scaler, dtype, enabled)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dicts(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dicts(self, ckpt: dict) -> None:
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])


def train_one_epoch(model: nn.Module, loader, loss_fn: Callable[[nn.Module, dict], torch.Tensor], optim: Optim,
                    grad_clip: float, device: torch.device) -> tuple[list[float], set[str]]:
    """One pass over ``loader``: a step a batch. Returns the batches' losses and the subjects seen."""
    model.train()
    losses, sids = [], set()
    for batch in loader:
        sids.update(batch["sid"])
        batch = to_device(batch, device)
        with torch.autocast(device_type=device.type, dtype=optim.autocast_dtype, enabled=optim.use_autocast):
            loss = loss_fn(model, batch)
        optim.opt.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        if grad_clip > 0:
            optim.scaler.unscale_(optim.opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optim.scaler.step(optim.opt)
        optim.scaler.update()
        losses.append(float(loss.detach()))
    return losses, sids


def save_and_report(ctx: TrainContext, cfg, stage_name: str, raw: nn.Module, optim: Optim, metrics: dict,
                    rngs: list) -> None:
    """Rank 0: write the epoch's checkpoint (model, optimizer state, every rank's RNG ``rngs``) to a
    temporary folder and hand it to ``ctx.report``, which installs it as ``RUN/checkpoint_e*_s*``."""
    done, step = int(metrics["epoch"]), int(metrics["step"])
    tmp = tempfile.mkdtemp(prefix="cclray-ckpt-")
    try:
        state = {"model": raw.state_dict(), **optim.state_dicts(), "step": step, "epoch": done, "rng": rngs}
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        save_checkpoint(tmp, state, cfg, stage_name, meta={"metrics": scalars, "score": metrics["score"]})
        ctx.report(metrics, checkpoint_dir=tmp, name=checkpoint_name(done, step), keep=cfg.keep_checkpoints)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _start(cfg, ctx: TrainContext, stage: Stage, raw: nn.Module) -> tuple[dict | None, int, int, dict | None]:
    """Resume from ``ctx``'s checkpoint (weights loaded into ``raw``) or initialise: returns
    ``(checkpoint or None, start epoch, start step, what stage.init transferred)``."""
    ckpt = ctx.resume_checkpoint(stage.name)
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        log.info("%s: resuming at epoch %d, step %d", stage.name, start_epoch, step)
        return ckpt, start_epoch, step, None
    return None, 0, 0, stage.init(raw) if stage.init is not None else None


def _restore_rng(ckpt: dict, cfg, ctx: TrainContext, stage_name: str, start_epoch: int) -> None:
    rngs = ckpt.get("rng") or []
    if len(rngs) == ctx.world_size:
        set_rng_state(rngs[ctx.rank])
    else:
        log.warning("%s: checkpoint has RNG states of %d ranks, this run has %d: reseeding",
                    stage_name, len(rngs), ctx.world_size)
        seed_everything(rank_seed(cfg.seed + start_epoch, ctx.rank))


def run_stage(cfg, ctx: TrainContext, stage: Stage) -> dict:
    """Train ``stage`` for ``cfg.epochs`` epochs (resuming when ``ctx`` has a checkpoint).

    Each epoch: :func:`train_one_epoch`, then (every rank) the gathered loss, validation, the lr
    schedule and the metrics, then :func:`save_and_report` on checkpoint epochs (rank 0) or a plain
    report. Returns the last epoch's metrics plus ``{"start_epoch", "start_step", "init"}``.
    """
    raw, device = stage.model, ctx.device
    ckpt, start_epoch, step, init_info = _start(cfg, ctx, stage, raw)
    if cfg.channels_last:
        raw = to_channels_last(raw)  # before DDP: its gradient buckets follow the strides
    model = ctx.wrap_model(raw, find_unused_parameters=stage.find_unused_parameters)
    raw = unwrap(model)
    optim = Optim.build(model, cfg, device)
    seed_everything(rank_seed(cfg.seed, ctx.rank))
    if ckpt is not None:
        optim.load_state_dicts(ckpt)
        _restore_rng(ckpt, cfg, ctx, stage.name, start_epoch)
    metrics_log = MetricsLog(ctx.run_dir) if ctx.is_main and ctx.run_dir is not None else None
    if metrics_log is not None:
        write_run_config(ctx.run_dir, stage.name, cfg)
        metrics_log.truncate(start_epoch)  # rows of epochs after the resumed checkpoint are redone

    dataset = stage.dataset
    loader = make_loader(dataset, dataset.cfg)
    metrics: dict = {}
    val: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        losses, sids = train_one_epoch(model, loader, stage.loss, optim, cfg.grad_clip, device)
        step += len(losses)
        train_s = time.perf_counter() - t0
        done = epoch + 1
        save = done == cfg.epochs or done % cfg.checkpoint_every == 0  # the last epoch is always saved
        mean_loss = _mean(ctx.gather(_mean(losses)))  # every rank takes the same number of steps
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{stage.name}: loss is {mean_loss} at epoch {done}: lower lr "
                                     f"(now {optim.lr:.2e}) or set grad_clip")
        validated = stage.validate is not None and (save or done % getattr(cfg, "val_every", 1) == 0)
        if validated:
            val = stage.validate(raw)
        score = mean_loss if stage.validate is None else val.get("val_l1", float("nan"))
        if not isinstance(optim.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            optim.sched.step()  # cosine / constant: once an epoch
        elif stage.validate is None or validated:
            optim.sched.step(score)
        rank_sids = ctx.gather(sorted(sids))
        rank_checksums = ctx.gather(weight_checksum(raw))
        metrics = {
            "stage": stage.name, "epoch": done, "step": step, "loss": mean_loss, **val, "score": score,
            "lr": optim.lr, "steps_per_s": len(losses) / max(train_s, 1e-9),
            "epoch_s": time.perf_counter() - t0, "time": time.time(),
            "weight_checksum": rank_checksums[ctx.rank], "rank_checksums": rank_checksums,
            "rank_sids": rank_sids,
        }
        log.log(logging.INFO if ctx.is_main else logging.DEBUG,
                "%s epoch %d/%d step %d loss %.4f%s lr %.2e %.2f steps/s", stage.name, done, cfg.epochs, step, mean_loss,
                "".join(f" {k} {v:.4f}" for k, v in val.items()) if validated else "", metrics["lr"],
                metrics["steps_per_s"])
        if metrics_log is not None:
            metrics_log.append(metrics)
        rngs = ctx.gather(rng_state()) if save else None
        if save and ctx.is_main:
            save_and_report(ctx, cfg, stage.name, raw, optim, metrics, rngs)
        else:
            ctx.report(metrics)
    return {**metrics, "start_epoch": start_epoch, "start_step": int(ckpt["step"]) if ckpt else 0,
            "init": init_info}
