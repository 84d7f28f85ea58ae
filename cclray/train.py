"""Ray Train entry point (the only module of ``cclray`` that imports ``ray.train``).

``fit(stage, cfg, out)`` runs :func:`cclray.engine_pretrain.run_pretrain` or
:func:`cclray.engine_finetune.run_finetune` on ``num_workers`` DDP workers with a ``TorchTrainer``
(Ray Train V2). The run directory ``out`` is Ray's ``storage_path/name``: checkpoints land in
``out/checkpoint_e*_s*`` (see :mod:`cclray.runs`). Resuming: Ray restores its checkpoint list from
``out`` and ``ray.train.get_checkpoint()`` returns the latest; the latest intact checkpoint found on
disk is also passed in the loop config, for runs without Ray's snapshot.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cclray.checkpoint import CheckpointError, load_checkpoint
from cclray.engine import TrainContext
from cclray.runs import checkpoint_dirs, find_checkpoint, write_run_config
from cclray.stage_config import StageConfig, stage_config

log = logging.getLogger(__name__)

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's checkpoint list in the run folder


class RunExistsError(FileExistsError):
    """``out`` already holds a run; the message says to resume it or pick another folder."""


class RayContext(TrainContext):
    """A Ray Train worker: rank/world size from ``ray.train.get_context()``, DDP via ``prepare_model``,
    checkpoints through ``ray.train.report`` (rank 0 only), resume via ``ray.train.get_checkpoint``."""

    def __init__(self, run_dir: str | None = None, resume_from: str | None = None):
        c = ray.train.get_context()
        self.rank, self.world_size = c.get_world_rank(), c.get_world_size()
        self.device = ray.train.torch.get_device()
        self.resume_from = resume_from
        self.run_dir = Path(run_dir) if run_dir and os.path.isdir(run_dir) else None
        if run_dir and self.run_dir is None and self.rank == 0:
            log.warning("run dir %s is not visible on this node: metrics.csv is not written "
                        "(use shared storage for multi-node runs)", run_dir)

    def wrap_model(self, model, find_unused_parameters=False):
        kwargs = {"find_unused_parameters": True} if find_unused_parameters and self.world_size > 1 else None
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    def report(self, metrics, checkpoint_dir=None, name=None, keep=None):
        ckpt = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt is not None else None)

    def resume_checkpoint(self, stage):
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                return load_checkpoint(d, stage=stage)
        if self.resume_from:
            return load_checkpoint(find_checkpoint(self.resume_from, "latest"), stage=stage)
        return None

    def gather(self, obj):
        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def train_loop_per_worker(config: dict) -> None:
    """Ray's worker function: plain dict -> typed config first, then the framework-free engine."""
    stage = config["stage"]
    cfg = stage_config(stage, config["config"])  # a bad key fails here, before any work
    torch.set_num_threads(int(config.get("threads", 1)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    ctx = RayContext(config.get("run_dir"), config.get("resume_from"))
    if stage == "pretrain":
        from cclray.engine_pretrain import run_pretrain as run
    else:
        from cclray.engine_finetune import run_finetune as run
    run(cfg, ctx)


def _has_run(out: Path) -> bool:
    return (out / RAY_SNAPSHOT).exists() or bool(checkpoint_dirs(out, complete_only=False))


def fit(stage: str, cfg: StageConfig | dict, out: str | os.PathLike, num_workers: int | None = None,
        use_gpu: bool | None = None, resume: bool = False, max_failures: int = 0) -> dict:
    """Train ``stage`` ("pretrain" | "finetune") with Ray Train into run directory ``out``.

    ``num_workers`` / ``use_gpu`` override the config's. ``resume``: continue the run in ``out`` from
    its latest checkpoint (after the whole job died); without it an existing run is refused.
    ``max_failures``: worker-group restarts Ray may do (each resumes from the latest checkpoint).
    Returns ``{"run_dir", "metrics" (rank 0's last checkpointed report), "latest", "best"}``.
    """
    cfg = stage_config(stage, cfg)
    cfg = cfg.replace(num_workers=int(num_workers or cfg.num_workers),
                      use_gpu=bool(cfg.use_gpu if use_gpu is None else use_gpu))
    out = Path(out).expanduser().resolve()
    if _has_run(out) and not resume:
        raise RunExistsError(f"{out} already holds a training run: pass --resume (resume=True) to continue "
                             f"it, or choose a new --out")
    resume_from = None
    if resume:
        try:
            resume_from = str(find_checkpoint(out, "latest"))
            log.info("resuming %s from %s", out, resume_from)
        except CheckpointError:
            log.warning("nothing to resume in %s: starting from scratch", out)
    write_run_config(out, stage, cfg)
    if not ray.is_initialized():
        ray.init()
    cpus = cfg.cpus_per_worker or max(1.0, math.floor(ray.cluster_resources().get("CPU", 1) / cfg.num_workers))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "config": cfg.to_dict(), "run_dir": str(out),
                           "resume_from": resume_from, "threads": max(1, int(cpus))},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            storage_path=str(out.parent), name=out.name,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute="score",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    return {"run_dir": str(out), "metrics": result.metrics,
            "latest": str(find_checkpoint(out, "latest")), "best": str(find_checkpoint(out, "best"))}
