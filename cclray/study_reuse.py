"""Share finished work with other study folders (``cclray study --reuse OTHER``).

A study asked for with a new recipe (a longer finetuning, an extra arm, another seed next to a finished one) often
needs jobs another folder has already trained: its store, its pretrainings, a scratch network whose job is the same.
``--reuse OTHER`` links them instead of training them again:

* **the store** (and the held-out test store): linked when this folder has none yet, ``OTHER``'s is finished, and the
  cohort is the same (the same ``src`` folder, or the same phantom: version and subject count; the same spacing);
* **a pretraining or finetuning**: linked when a finished run of ``OTHER`` (its ``DONE.json`` is there) recorded the
  very config this study's job resolves to: every setting of the stage config, with the store and the ``init`` run
  compared as the folders they resolve to (so a finetuning is reused only from the same store and the same
  pretraining). Only how a job was spread out (Ray workers, GPU, CPUs per worker) is left out of the comparison.

The study's scratch network at 1200 steps is thus its neighbour's Baseline-matched at 200 + 1000 steps, found by
its config, not its name. Regressors (seconds) and evaluations (they score this study's set of runs) always run
here. A linked job is a symlink to the other folder's run (``results.json``'s ``linked`` lists them); the other
folder is only read, except that the shared store gets this study's split names written into it, which
:func:`cclray.study.write_study_splits` refuses when a name already holds other subjects. Keep the other folder: a
study whose links point into a folder that is gone stops with the link's name (:func:`check_links`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

from cclray.runs import CONFIG_FILE
from cclray.study import DONE  # (cclray.study imports this module only inside run_study)
from cclray.study_plan import StudyConfig
from data_prep.errors import UserError

HOW_IT_RAN = ("num_workers", "use_gpu", "cpus_per_worker")  # spreads a job out; not part of what it computes
COHORT = ("spacing",)  # and, for the phantom (no src), these:
PHANTOM_COHORT = ("phantom_version", "n_subjects")
MAX_DEPTH = 5  # f0/seed0/n2/arm: a study's run folders are at most this deep


def _real(path: str | None) -> str | None:
    return None if not path or "://" in path else os.path.realpath(path)


def identity(stage: str, config: dict) -> dict:
    """What a training run computes: its stage config as a plain dict, paths resolved, :data:`HOW_IT_RAN` left
    out. Two runs with equal identities trained the same job (up to the host's floating-point kernels)."""
    from cclray.config import stage_config

    data = stage_config(stage, config).to_dict()
    for key in HOW_IT_RAN:
        data.pop(key, None)
    data["store"] = _real(data.get("store"))
    if data.get("init"):
        data["init"] = _real(data["init"])
    data["extra"] = [{**e, "store": _real(e.get("store"))} for e in data.get("extra") or ()]
    return {"stage": stage, "config": data}


def job_identity(kind: str, spec: dict, root: Path) -> dict:
    """The identity of a planned job of the study in ``root`` (its ``init`` is relative to ``root``, as in
    :func:`cclray.study.run_job`)."""
    spec = dict(spec)
    if spec.get("init"):
        spec["init"] = str(Path(root) / spec["init"])
    return identity(kind, spec)


def finished_runs(other: Path) -> Iterator[tuple[dict, Path]]:
    """``(identity, folder)`` of every finished training run in the study folder ``other`` (links followed;
    stores and checkpoints not entered). A run whose config this code cannot read is skipped."""
    for folder, dirs, files in os.walk(other, followlinks=True):
        depth = len(Path(folder).relative_to(other).parts)
        dirs[:] = [] if depth >= MAX_DEPTH else [d for d in dirs if not d.endswith(".zarr")
                                                   and not d.startswith("checkpoint_")]
        if DONE in files and CONFIG_FILE in files:
            try:
                recorded = json.loads((Path(folder) / CONFIG_FILE).read_text())
                yield identity(recorded["stage"], recorded["config"]), Path(os.path.realpath(folder))
            except (OSError, ValueError, KeyError, TypeError):
                continue


def _recorded_study(other: Path) -> dict:
    path = other / "study_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise UserError(f"--reuse {other}: no study there ({path} is missing); name a folder written by "
                        f"`cclray study --out`") from e
    except (OSError, ValueError) as e:
        raise UserError(f"--reuse {other}: {path} cannot be read ({e}); name another study folder") from e


def check_others(reuse, out: Path) -> list[Path]:
    """The ``--reuse`` folders, resolved: each must be a study folder other than ``out``."""
    others = []
    for o in reuse:
        other = Path(o).expanduser().resolve()
        if other == Path(out).resolve():
            raise UserError(f"--reuse {o}: that is this study's own --out; name another study folder")
        if not other.is_dir():
            raise UserError(f"--reuse {o}: no such folder; name a folder written by `cclray study --out`")
        _recorded_study(other)
        others.append(other)
    return others


def same_cohort(recorded: dict, cfg: StudyConfig, src: str | None, key: str = "src") -> bool:
    """Whether the study recorded in ``recorded`` (its study_config.json) prepared its store (``key`` = src) or
    test store (``key`` = test_src) from the same cohort this study's ``src`` names."""
    theirs_src = recorded.get(key)
    if theirs_src != src and (theirs_src is None or src is None or _real(theirs_src) != _real(src)):
        return False
    defaults = StudyConfig().to_dict()
    theirs = {**defaults, **recorded.get("config", {})}
    mine = cfg.to_dict()
    keys = COHORT + (PHANTOM_COHORT if src is None else ())
    return all(theirs.get(k) == mine.get(k) for k in keys)


def link_stores(out: Path, others: list[Path], cfg: StudyConfig, src: str | None, test_src: str | None,
                say: Callable[[str], None] = print) -> dict[str, str]:
    """Link ``out``'s store (and test store) to the first of ``others`` with a finished one of the same cohort,
    unless ``out`` has one already. Returns ``{name: target}`` of the links made."""
    made: dict[str, str] = {}
    for name, key, source in (("store.zarr", "src", src), ("test_store.zarr", "test_src", test_src)):
        if name == "test_store.zarr" and not test_src:
            continue
        here = out / name
        if here.exists() or here.is_symlink():
            continue
        for other in others:
            there = other / name
            if (there / DONE).exists() and same_cohort(_recorded_study(other), cfg, source, key):
                here.symlink_to(os.path.realpath(there), target_is_directory=True)
                made[name] = os.path.realpath(there)
                say(f"reuse: {name} -> {made[name]}")
                break
    return made


def link_jobs(jobs, out: Path, others: list[Path], say: Callable[[str], None] = print) -> dict[str, str]:
    """Link each pretraining and finetuning of ``jobs`` that ``out`` has not started to a finished run of
    ``others`` with the same :func:`identity`. Jobs are taken in plan order, so a finetuning can match once its
    pretraining was linked. Returns ``{job path: target}``."""
    index: dict[str, Path] = {}
    for other in others:
        for ident, folder in finished_runs(other):
            index.setdefault(json.dumps(ident, sort_keys=True), folder)
    made: dict[str, str] = {}
    todo = [j for j in jobs if j.kind in ("pretrain", "finetune")
            and not ((out / j.path).exists() or (out / j.path).is_symlink())]
    for job in todo:
        target = index.get(json.dumps(job_identity(job.kind, job.spec, out), sort_keys=True))
        if target is not None:
            here = out / job.path
            here.parent.mkdir(parents=True, exist_ok=True)
            here.symlink_to(target, target_is_directory=True)
            made[job.path] = str(target)
    if not todo:  # a rerun: every training job is here or linked already
        return made
    if made:
        kinds = {k: sum(j.path in made and j.kind == k for j in jobs) for k in ("pretrain", "finetune")}
        say(f"reuse: {len(made)} finished job(s) linked from {', '.join(map(str, others))} "
            f"({kinds['pretrain']} pretraining(s), {kinds['finetune']} finetuning(s)); the rest run here")
    else:
        say(f"reuse: no finished job of {', '.join(map(str, others))} has this study's config")
    return made


def check_links(jobs, out: Path) -> None:
    """Refuse to go on when a linked store or job points into a folder that is gone (a study reused it and it was
    deleted or moved since): training into a dangling link fails half-way, so say which link and the fix first."""
    paths = ["store.zarr", "test_store.zarr", *(j.path for j in jobs)]
    gone = [p for p in paths if (out / p).is_symlink() and not (out / p).exists()]
    if gone:
        raise UserError(f"{out / gone[0]} links to {os.readlink(out / gone[0])}, which is gone"
                        + (f" (and {len(gone) - 1} more link(s))" if len(gone) > 1 else "")
                        + ": put that study folder back, or delete the link(s) to make them here")


def linked(jobs, out: Path) -> dict[str, str]:
    """``{job path: target}`` of the study's jobs that are links to another folder's runs."""
    return {j.path: os.path.realpath(out / j.path) for j in jobs if (out / j.path).is_symlink()}
