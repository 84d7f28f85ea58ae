"""A Ray Tune sweep over constraint and loss settings: Optuna (TPE) proposes, ASHA stops bad trials early.

    SWEEP/                      Tune's experiment (``Tuner.restore`` resumes it), local path or URL
    RUNS/<trial_id>/            each trial's pretrain/finetune run folders + trial.json (RUNS = SWEEP/runs
                                for a local SWEEP; give ``runs_dir`` on shared storage for a URL SWEEP)
    REPORT/results.csv, summary.md, metric_vs_settings.png, best.json   (REPORT = SWEEP, or RUNS for a URL)

Resources: each trial's driver takes 0.01 CPU (0 is refused by Ray; one more is kept for the pending trial
Tune stages); its Train workers take the rest.
``max_concurrent`` trials run at once (default: what the cluster holds; 1 on a CPU-only machine, where
two trials that each want every core would wait for each other forever).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.config import ConfigError, FrozenConfig, require
from data_prep.errors import UserError
from tune.space import BUDGETS, DEFAULT_POINT, POINT_KEYS, SearchSpace, budget
from tune.trial import METRIC, MODE

log = logging.getLogger(__name__)

DRIVER_CPU = 0.01  # a trial's driver (ray refuses 0)
# Tune stages the driver of one pending trial per concurrent slot beside the running one (max pending trials =
# max_concurrent_trials with a searcher): workers asking for all the rest never start (measured: 1.99 CPU of 2
# for one worker waited forever, 2 x 0.99 ran).
DRIVERS_PER_SLOT = 2


class SweepExistsError(UserError, FileExistsError):
    """The sweep folder holds a sweep; the message says to pass --resume or choose another folder."""


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class SweepConfig(FrozenConfig):
    """Everything a sweep needs; ``space`` is what it searches, ``budget`` the fixed training size."""

    store: str = ""
    out: str = ""  # sweep folder (local path or URL)
    runs_dir: str = ""  # trials' run folders; default OUT/runs (required when OUT is a URL)
    samples: int = 8
    budget: str = "small"
    space: SearchSpace = field(default_factory=SearchSpace)
    max_concurrent: int = 0  # 0 = what the cluster holds (see resources())
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.0  # 0 = the cluster's CPUs shared by the concurrent trials' workers
    seed: int = 0
    grace_period: int = 1  # ASHA: finetune epochs before a trial may be stopped
    reduction_factor: int = 2
    trial_retries: int = 0  # Tune re-runs of a failed trial (each resumes from its checkpoints)
    constraint_seed: int = 0  # the store's own constraint maps use seed 0; another seed needs another name
    points: tuple[dict, ...] = ()  # points Optuna evaluates first (default: the reference point and its control)
    fail_when: dict = field(default_factory=dict)  # tests only: a trial whose point matches these items raises

    def validate(self) -> None:
        require(bool(self.store), "SweepConfig.store is empty: pass --store STORE (a `cclray prep` output)")
        require(bool(self.out), "SweepConfig.out is empty: pass --out SWEEP (a folder or URL for the sweep)")
        require(not (_is_url(self.out) and not self.runs_dir),
                f"SweepConfig.out={self.out!r} is a URL: give runs_dir (--runs-dir) on a path every node sees "
                f"(the trials' checkpoints are read back from there)")
        require(self.samples >= 1, f"SweepConfig.samples={self.samples} must be >= 1")
        require(self.budget in BUDGETS, f"SweepConfig.budget={self.budget!r}: use one of {list(BUDGETS)}")
        require(self.max_concurrent >= 0, f"SweepConfig.max_concurrent={self.max_concurrent} must be >= 0 (0 = auto)")
        require(self.workers_per_trial >= 1, f"SweepConfig.workers_per_trial={self.workers_per_trial} must be >= 1")
        require(self.gpus_per_worker >= 0 and self.cpus_per_worker >= 0,
                "SweepConfig.gpus_per_worker and cpus_per_worker must be >= 0")
        require(self.grace_period >= 1, f"SweepConfig.grace_period={self.grace_period} must be >= 1")
        require(self.reduction_factor >= 2, f"SweepConfig.reduction_factor={self.reduction_factor} must be >= 2")
        require(self.trial_retries >= 0, f"SweepConfig.trial_retries={self.trial_retries} must be >= 0")
        for i, p in enumerate(self.points):
            require(set(p) == set(POINT_KEYS), f"SweepConfig.points[{i}] has keys {sorted(p)}: a point needs "
                                               f"exactly {list(POINT_KEYS)}")

    @property
    def experiment_path(self) -> str:
        """Tune's experiment folder (= ``out``, local paths made absolute)."""
        return self.out.rstrip("/") if _is_url(self.out) else str(Path(self.out.removeprefix("file://"))
                                                                 .expanduser().resolve())

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir).expanduser().resolve() if self.runs_dir else Path(self.experiment_path) / "runs"

    @property
    def report_path(self) -> Path:
        return self.runs_path if _is_url(self.out) else Path(self.experiment_path)


def resources(cfg: SweepConfig, cluster: dict) -> tuple[int, dict]:
    """``(max concurrent trials, resources per Train worker)`` for ``cluster`` (``ray.cluster_resources()``).

    CPU-only without ``cpus_per_worker``: 1 trial using every CPU. With GPUs: as many trials as the GPUs hold.
    Raises :class:`ConfigError` when the asked-for trials cannot all run at once.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    w, g = cfg.workers_per_trial, cfg.gpus_per_worker
    if g > 0 and gpus < w * g:
        raise ConfigError(f"a trial needs {w} x {g} GPUs, the cluster has {gpus:g}: lower --workers-per-trial "
                          f"or --gpus-per-worker, or use --gpus-per-worker 0 (CPU)")
    conc = cfg.max_concurrent
    if not conc:
        if g > 0:
            conc = int(gpus // (w * g))
        elif cfg.cpus_per_worker:
            conc = int(cpus // (w * cfg.cpus_per_worker + DRIVERS_PER_SLOT * DRIVER_CPU))
        else:
            conc = 1
        conc = max(1, min(conc, cfg.samples))
    drivers = DRIVERS_PER_SLOT * DRIVER_CPU
    cpw = cfg.cpus_per_worker or math.floor(100 * (cpus - drivers * conc) / (conc * w)) / 100
    if cpw <= 0 or conc * (w * cpw + drivers) > cpus + 1e-9:
        raise ConfigError(f"{conc} concurrent trial(s) x {w} worker(s) x {cpw:g} CPU (+{drivers:g} for drivers) do "
                          f"not fit the cluster's {cpus:g} CPUs (trials would wait on each other forever): lower "
                          f"--max-concurrent or --workers-per-trial")
    per_worker = {"CPU": cpw, **({"GPU": g} if g > 0 else {})}
    return conc, per_worker


def _trial_dirname(trial) -> str:
    return trial.trial_id


def setup_dict(cfg: SweepConfig, per_worker: dict) -> dict:
    """What every trial gets beside its point (see :func:`tune.trial.run_trial`)."""
    stage_base = {"num_workers": cfg.workers_per_trial, "use_gpu": cfg.gpus_per_worker > 0,
                  "seed": cfg.seed, "cpus_per_worker": per_worker["CPU"]}
    return {"store": cfg.store, "budget": cfg.budget, "runs_dir": str(cfg.runs_path), "resources": per_worker,
            "constraint_seed": cfg.constraint_seed, "fail_when": dict(cfg.fail_when),
            "base": {"pretrain": dict(stage_base),
                     "finetune": {**stage_base, "val_every": 1}}}  # ASHA needs the metric every epoch


def _trainable(cfg: SweepConfig, per_worker: dict):
    from ray import tune

    from tune.trial import run_trial

    fn = tune.with_parameters(run_trial, setup=setup_dict(cfg, per_worker))
    return tune.with_resources(fn, {"cpu": DRIVER_CPU})


def build_tuner(cfg: SweepConfig, cluster: dict):
    """A fresh ``Tuner``: Optuna TPE (seeded; the reference point and its no-pretrain twin first) + ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    conc, per_worker = resources(cfg, cluster)
    b = budget(cfg.budget)
    stride = 2 ** (len(_budget_widths(b)) - 1)
    space = cfg.space.param_space(stride)
    first = [dict(p) for p in cfg.points]
    default = cfg.space.default_point(stride)
    if default is not None and not first:
        first.append(default)
        if cfg.space.pretrain_arm and cfg.samples >= 2:
            first.append({**default, "pretrain": False})
    epochs = int(b["finetune"].get("epochs", 10))
    # max_t one past the last epoch: a finished trial ends by returning, not by a STOP from ASHA that would
    # kill its actor while the finetune TorchTrainer shuts down (Ray Train V2 then leaves the worker placement
    # group behind unless the State API -- ray[default]'s dashboard -- lets its cleaner see the controller die).
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1,
                              grace_period=min(cfg.grace_period, epochs), reduction_factor=cfg.reduction_factor)
    search = OptunaSearch(seed=cfg.seed, points_to_evaluate=first[:cfg.samples] or None)
    log.info("sweep: %d samples, %d concurrent, per Train worker %s, finetune epochs %d", cfg.samples, conc,
             per_worker, epochs)
    exp = cfg.experiment_path
    return tune.Tuner(
        _trainable(cfg, per_worker),
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search, scheduler=scheduler,
                                    num_samples=cfg.samples, max_concurrent_trials=conc,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=os.path.basename(exp), storage_path=os.path.dirname(exp),
                                  failure_config=tune.FailureConfig(max_failures=cfg.trial_retries)),
    )


def _budget_widths(b: dict) -> tuple:
    from cclray.config import ModelConfig

    return tuple(b["finetune"].get("model", {}).get("widths", ModelConfig().widths))


def run_sweep(cfg: SweepConfig, resume: bool = False) -> dict:
    """Run (or with ``resume``, continue) the sweep; write the report; return :func:`tune.report.write_report`'s
    dict (paths, best trial, counts). A failing trial is recorded and the sweep goes on."""
    import ray
    from ray import tune

    from cclray.train import init_ray
    from tune.report import write_report

    cfg = SweepConfig.from_dict(cfg.to_dict()) if isinstance(cfg, SweepConfig) else SweepConfig.from_dict(cfg)
    init_ray()
    exp = cfg.experiment_path
    exists = tune.Tuner.can_restore(exp)
    if exists and not resume:
        raise SweepExistsError(f"{exp} already holds a sweep: pass --resume to continue it, or choose a new --out")
    if not _is_url(exp):
        Path(exp).mkdir(parents=True, exist_ok=True)
    (Path(cfg.runs_path)).mkdir(parents=True, exist_ok=True)
    (Path(exp) if not _is_url(exp) else cfg.report_path).joinpath("sweep_config.json").write_text(cfg.to_json())
    if exists:
        log.info("resuming sweep %s", exp)
        _, per_worker = resources(cfg, ray.cluster_resources())
        tuner = tune.Tuner.restore(exp, trainable=_trainable(cfg, per_worker), resume_errored=False,
                                   restart_errored=False)
    else:
        if resume:
            log.warning("nothing to resume in %s: starting the sweep", exp)
        tuner = build_tuner(cfg, ray.cluster_resources())
    grid = tuner.fit()
    return write_report(grid, cfg)


__all__ = ["SweepConfig", "SweepExistsError", "resources", "build_tuner", "run_sweep", "DEFAULT_POINT"]
