"""One Tune trial: constraint map -> CCL pretrain (TorchTrainer) -> finetune (TorchTrainer) reporting to Tune.

:func:`run_trial` is the function trainable (``tune.with_parameters(run_trial, setup=...)``). Its stage runs
live in ``RUNS/<trial_id>/{pretrain,finetune}`` (plain cclray run directories) next to ``trial.json``
(the point, the constraint setting and how many subjects this trial computed it for). Only the finetune
reports to Tune (one result an epoch, via ``TuneReportCallback``), so ``training_iteration`` = finetune
epoch and ASHA stops a bad trial between finetune epochs. A restored trial resumes both stages from
their latest checkpoints; a finished pretrain is not redone.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from data_prep.atomic import atomic_write
from data_prep.constraint import ConstraintSpec

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"
METRIC = "val_ssim"  # engine_finetune.validate: mean SSIM of the targets (T1w, T2w) on fixed val patches
MODE = "max"
CONTROLLER_RETRIES = 2  # worker-group start timeouts (60 s each) before the trial fails instead of waiting forever


class InjectedFailure(RuntimeError):
    """Raised by a trial whose point matches ``setup["fail_when"]`` (tests of failure handling only)."""


def ensure_constraint(store: str, spec: ConstraintSpec) -> tuple[str, int]:
    """Make sure ``spec``'s constraint map is in ``store``; returns ``(name, subjects computed here)``.

    A setting the store already records is not looked at again (no lock taken). Otherwise
    :func:`data_prep.constraint.add_constraint` computes it under its file lock: when two trials want the
    same new setting at once, the second waits and finds it done (0 computed).
    """
    from data_prep.constraint import add_constraint
    from data_prep.store import Store

    recorded = (Store(store).attrs.get("constraints") or {}).get(spec.name)
    if recorded == spec.to_dict():  # an older recipe's map is recomputed by add_constraint
        return spec.name, 0
    computed = [0]

    def progress(sid: str, did: bool) -> None:
        computed[0] += int(did)

    name = add_constraint(store, spec, workers=1, progress=progress)
    return name, computed[0]


def _latest(run: Path) -> str | None:
    from cclray.runs import latest_intact_checkpoint

    latest = latest_intact_checkpoint(run)
    return str(latest) if latest is not None else None


def _finished(run: Path, epochs: int) -> bool:
    from cclray.checkpoint import read_meta

    latest = _latest(run)
    return latest is not None and int(read_meta(latest).get("epoch", -1)) >= epochs


def _train(stage: str, cfg, run: Path, resources: dict, callbacks=()) -> None:
    """One stage as a TorchTrainer into ``run`` (resuming from its latest checkpoint when there is one)."""
    from cclray.runs import write_run_config
    from cclray.train import build_trainer

    resume_from = _latest(run)
    if resume_from:
        log.info("%s: resuming %s from %s", stage, run, resume_from)
    write_run_config(run, stage, cfg)
    build_trainer(stage, cfg, run, resume_from=resume_from, callbacks=callbacks, resources_per_worker=resources,
                  controller_failure_limit=CONTROLLER_RETRIES).fit()


def write_record(trial_dir: Path, record: dict) -> None:
    """``trial.json`` (atomic)."""
    atomic_write(trial_dir / TRIAL_FILE, json.dumps(record, indent=1, sort_keys=True, default=str))


def read_record(trial_dir: str | os.PathLike) -> dict:
    """``trial.json`` of a trial's run folder, ``{}`` when missing."""
    path = Path(trial_dir) / TRIAL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_trial(point: dict, setup: dict) -> None:
    """The function trainable. ``point``: a search point (:data:`tune.space.POINT_KEYS`).

    ``setup`` (from :class:`tune.sweep.SweepConfig`): ``store``, ``budget``, ``base`` (stage overrides),
    ``runs_dir``, ``resources`` (per Train worker), ``constraint_seed`` and ``fail_when`` (tests).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cclray.config import stage_config
    from tune.space import constraint_spec, stage_dicts

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(setup["runs_dir"]) / trial_id
    pre_run, fine_run = trial_dir / "pretrain", trial_dir / "finetune"
    pre, fine = stage_dicts(point, setup["store"], setup["budget"], setup.get("base"))
    record = {"trial_id": trial_id, "point": dict(point), "started": time.time(),
              "pretrain_run": str(pre_run) if point["pretrain"] else None, "finetune_run": str(fine_run),
              "constraint": None, "constraint_computed": 0}
    if point["pretrain"]:
        t0 = time.perf_counter()
        name, computed = ensure_constraint(setup["store"], constraint_spec(point, setup.get("constraint_seed", 0)))
        pre["constraint"] = name
        record.update(constraint=name, constraint_computed=computed, constraint_s=time.perf_counter() - t0)
        log.info("trial %s: constraint %s (computed for %d subjects here)", trial_id, name, computed)
    write_record(trial_dir, record)
    fail_when = setup.get("fail_when") or {}
    if fail_when and all(point.get(k) == v for k, v in fail_when.items()):
        raise InjectedFailure(f"trial {trial_id}: injected failure (setup fail_when={fail_when})")

    resources = dict(setup["resources"])
    if point["pretrain"]:
        pre_cfg = stage_config("pretrain", pre)
        if _finished(pre_run, pre_cfg.epochs):
            log.info("trial %s: pretrain %s already finished", trial_id, pre_run)
        else:
            _train("pretrain", pre_cfg, pre_run, resources)
        fine["init"] = str(pre_run)
    fine_cfg = stage_config("finetune", fine)
    _train("finetune", fine_cfg, fine_run, resources, callbacks=[TuneReportCallback()])
    write_record(trial_dir, {**record, "finished": time.time()})
