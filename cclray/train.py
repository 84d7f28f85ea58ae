"""Ray Train entry point (the only module of ``cclray`` that imports ``ray.train``).

``fit(stage, cfg, out)`` runs :func:`cclray.engine_pretrain.run_pretrain` or
:func:`cclray.engine_finetune.run_finetune` on ``num_workers`` DDP workers with a ``TorchTrainer``
(Ray Train V2). The run directory ``out`` is Ray's ``storage_path/name``: checkpoints land in
``out/checkpoint_e*_s*`` (see :mod:`cclray.runs`). Resuming: Ray restores its checkpoint list from
``out`` and ``ray.train.get_checkpoint()`` returns the latest; the latest intact checkpoint found on
disk is also passed in the loop config, for runs without Ray's snapshot.

``out`` may be an object-storage URL (``s3://bucket/runs/x``): Ray Train then persists to it through
``storage_filesystem`` (a ``pyarrow.fs.S3FileSystem`` with the environment's endpoint,
:func:`data_prep.objstore.pyarrow_filesystem`), and the resume logic reads it through
:func:`data_prep.objstore.location`. No node needs a shared filesystem.
"""
from __future__ import annotations

import logging
import math
import os

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cclray.checkpoint import load_checkpoint, read_meta
from cclray.config import StageConfig, stage_config
from cclray.console import FORMAT, is_verbose
from cclray.engine import TrainContext
from cclray.runs import checkpoint_dirs, find_checkpoint, latest_intact_checkpoint, write_run_config
from data_prep.errors import UserError
from data_prep.objstore import check_bucket, is_local, location, pyarrow_filesystem

log = logging.getLogger(__name__)

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's checkpoint list in the run folder


class RunExistsError(UserError, FileExistsError):
    """``out`` already holds a run; the message says to resume it or pick another folder."""


class RayContext(TrainContext):
    """A Ray Train worker: rank/world size from ``ray.train.get_context()``, DDP via ``prepare_model``,
    checkpoints through ``ray.train.report`` (rank 0 only), resume via ``ray.train.get_checkpoint``."""

    def __init__(self, run_dir: str | None = None, resume_from: str | None = None):
        c = ray.train.get_context()
        self.rank, self.world_size = c.get_world_rank(), c.get_world_size()
        self.device = ray.train.torch.get_device()
        self.resume_from = resume_from
        run = location(run_dir) if run_dir else None  # object storage: every node reaches it
        self.run_dir = run if run is not None and (not is_local(run) or run.is_dir()) else None
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
        loaded = None
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                loaded = load_checkpoint(d, stage=stage)
        elif self.resume_from:
            loaded = load_checkpoint(find_checkpoint(self.resume_from, "latest"), stage=stage)
        # A checkpoint rank 0 persisted but Ray never registered (a worker died before every rank had
        # reported that epoch) is newer than Ray's: use the run dir's latest intact one when all ranks see it.
        if all(self.gather(self.run_dir is not None)):
            latest = latest_intact_checkpoint(self.run_dir)
            if latest is not None and (loaded is None or read_meta(latest).get("step", -1) > int(loaded["step"])):
                log.warning("resuming from %s, newer than Ray's registered checkpoint", latest)
                loaded = load_checkpoint(latest, stage=stage)
        return loaded

    def gather(self, obj):
        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def quiet_ray_report_logs() -> None:
    """Ray Train V2 logs every ``ray.train.report`` call at INFO with the whole metrics dict (two
    lines an epoch and rank, rank_sids included) and every checkpoint; the engine already logs one
    line an epoch. Its loggers go to WARNING (the context module names its logger by file path)."""
    import importlib

    for module in ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage"):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # another Ray version: its logs stay as they are
            continue
        for name in (module, getattr(mod, "__file__", None)):
            if name:
                logging.getLogger(name).setLevel(logging.WARNING)


def setup_ray_worker() -> None:
    """Ray's ``worker_process_setup_hook`` (``cclray.train.init_ray``), run in every process of the job.

    Pins ``RAY_ADDRESS`` to this job's cluster, so Ray Train's State API calls (its placement-group
    cleaner) do not fail with "Found multiple active Ray instances" on a host running several Ray
    instances. Without -v (``CCLRAY_VERBOSE`` unset) Ray's own INFO lines are hidden, warnings kept."""
    try:
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - an older Ray without it: the State API guesses, as before
        pass
    if not os.environ.get("CCLRAY_VERBOSE"):
        logging.getLogger("ray").setLevel(logging.WARNING)


def init_ray(**kwargs) -> None:
    """Start (or join, ``address=...``) Ray unless it runs, as quiet as the console (:mod:`cclray.console`):
    without ``cclray -v`` Ray's INFO lines are hidden, in the driver (its start banner) and in every
    process of the job (via the worker setup hook :func:`setup_ray_worker`, which also pins
    the job's address for Ray's State API); their warnings and errors still reach the terminal."""
    if ray.is_initialized():
        return
    env = dict(kwargs.pop("runtime_env", None) or {})
    env.setdefault("worker_process_setup_hook", "cclray.train.setup_ray_worker")
    if is_verbose():
        env["env_vars"] = {**env.get("env_vars", {}), "CCLRAY_VERBOSE": "1"}
    else:
        kwargs.setdefault("logging_level", logging.WARNING)
    ray.init(runtime_env=env, **kwargs)


def train_loop_per_worker(config: dict) -> None:
    """Ray's worker function: plain dict -> typed config first, then the framework-free engine."""
    stage = config["stage"]
    cfg = stage_config(stage, config["config"])  # a bad key fails here, before any work
    torch.set_num_threads(int(config.get("threads", 1)))
    verbose = bool(config.get("verbose"))  # the driver's console (cclray -v): else the driver shows the epochs
    logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("cclray").setLevel(logging.INFO if verbose else logging.WARNING)
    quiet_ray_report_logs()
    ctx = RayContext(config.get("run_dir"), config.get("resume_from"))
    if stage == "pretrain":
        from cclray.engine_pretrain import run_pretrain as run
    else:
        from cclray.engine_finetune import run_finetune as run
    run(cfg, ctx)


def run_location(out: str | os.PathLike):
    """The run folder ``out`` as :func:`~data_prep.objstore.location` gives it: an absolute local
    ``Path`` or a URL path (refusing ``s3:/x``, which would make a local folder ``s3:``)."""
    run = location(out)
    return run.resolve() if is_local(run) else run


def _has_run(out) -> bool:
    return (out / RAY_SNAPSHOT).exists() or bool(checkpoint_dirs(out, complete_only=False))


def fit(stage: str, cfg: StageConfig | dict, out: str | os.PathLike, num_workers: int | None = None,
        use_gpu: bool | None = None, resume: bool = False, max_failures: int = 0,
        placement_strategy: str = "PACK") -> dict:
    """Train ``stage`` ("pretrain" | "finetune") with Ray Train into run directory ``out``.

    ``num_workers`` / ``use_gpu`` override the config's. ``resume``: continue the run in ``out`` from
    its latest checkpoint (after the whole job died); without it an existing run is refused.
    ``max_failures``: worker-group restarts Ray may do (each resumes from the latest checkpoint).
    ``placement_strategy``: Ray's for the worker bundles ("STRICT_SPREAD": one worker a node).
    Returns ``{"run_dir", "metrics" (rank 0's last checkpointed report), "latest", "best"}``.
    """
    cfg = stage_config(stage, cfg)
    cfg = cfg.replace(num_workers=int(num_workers or cfg.num_workers),
                      use_gpu=bool(cfg.use_gpu if use_gpu is None else use_gpu))
    out = run_location(out)
    check_bucket(str(out))
    if _has_run(out) and not resume:
        raise RunExistsError(f"{out} already holds a training run: pass --resume (resume=True) to continue "
                             f"it, or choose a new --out")
    resume_from = None
    if resume:
        latest = latest_intact_checkpoint(out)
        resume_from = str(latest) if latest is not None else None
        if resume_from:
            log.info("resuming %s from %s", out, resume_from)
        else:
            log.warning("nothing to resume in %s: starting from scratch", out)
    write_run_config(out, stage, cfg)
    init_ray()
    trainer = build_trainer(stage, cfg, out, resume_from=resume_from, max_failures=max_failures,
                            placement_strategy=placement_strategy)
    result = trainer.fit()
    return {"run_dir": str(out), "metrics": result.metrics,
            "latest": str(find_checkpoint(out, "latest")), "best": str(find_checkpoint(out, "best"))}


def build_trainer(stage: str, cfg: StageConfig, out: str | os.PathLike, resume_from: str | None = None,
                  max_failures: int = 0, callbacks: list | tuple = (),
                  resources_per_worker: dict | None = None, placement_strategy: str = "PACK",
                  controller_failure_limit: int = -1) -> TorchTrainer:
    """The ``TorchTrainer`` of :func:`fit` (also used by ``tune.trial``, with ``TuneReportCallback``).

    ``out``: run directory (Ray's ``storage_path/name``). ``resources_per_worker``: default
    ``{"CPU": cfg.cpus_per_worker or the cluster's CPUs / num_workers}``; its ``CPU`` also sets the
    torch threads of each worker. ``controller_failure_limit``: retries of controller errors such as a
    worker group that cannot be scheduled (-1 = forever, Ray's default; a Tune trial gives a few so that
    an unschedulable trial fails instead of holding the sweep). Needs a running Ray (``ray.init``).
    """
    out = run_location(out)
    filesystem, path = pyarrow_filesystem(str(out))  # (None, local path) or (S3FileSystem, "bucket/key")
    if resources_per_worker is None:
        cpus = cfg.cpus_per_worker or max(1.0, math.floor(ray.cluster_resources().get("CPU", 1) / cfg.num_workers))
        resources_per_worker = {"CPU": cpus}
    threads = max(1, int(float(resources_per_worker.get("CPU", 1)) + 0.05))  # 1.99 CPUs -> 2 threads
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "config": cfg.to_dict(), "run_dir": str(out),
                           "resume_from": resume_from, "threads": threads, "verbose": is_verbose()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=dict(resources_per_worker),
                                     placement_strategy=placement_strategy),
        run_config=RunConfig(
            storage_path=path.rsplit("/", 1)[0], name=path.rsplit("/", 1)[1], storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute="score",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=max_failures,
                                         controller_failure_limit=controller_failure_limit),
            callbacks=list(callbacks) or None,
            # Ray Train's own console lines (controller, process group, device): INFO only with cclray -v
            logging_config=ray.train.LoggingConfig(log_level="INFO" if is_verbose() else "WARNING"),
        ),
    )
