"""Run the study (:mod:`cclray.study_plan`): cohort → store(s) → every job → per-n tables and the figure.

``run_study(out, cfg)`` makes (or reuses) the cohort: a phantom (``src=None``) or the user's BraTS folder
(``src``), prepared at ``cfg.spacing``, with an inputs-only constraint map when the CCL-inputs arm is asked
for; ``test_src``: a held-out BraTS folder on which every fold's models are evaluated (all its subjects).
Then each job runs once: a job's folder holds ``DONE.json`` when it finished, so a rerun after an
interruption continues (an unfinished training run resumes from its latest checkpoint). A rerun may also
add seeds, finetune sizes or arms: the finished jobs are kept, and an evaluation whose set of runs grew is
made again (its ``DONE.json`` records the runs it scored).

Backends: ``ray`` trains every job as a Ray Train ``TorchTrainer`` (:func:`cclray.train.fit`), one after the
other; ``local`` trains in this machine's processes without Ray (world size 1, :class:`~cclray.engine.
LocalContext`), ``parallel`` jobs at once, on ``device`` (``cuda`` when a GPU is there) — the small nets of
the CPU presets leave most of a GPU idle, so several jobs share one. Each local job gets the machine's cores
divided by ``parallel`` as torch threads unless ``threads`` pins the count; its ``DONE.json`` records the count
and the host (:func:`cclray.host.signature`: CPU model and torch's kernel level, or the GPU), because on CPU both
change the numbers (a same-seed rerun is bit-identical only with the same count on the same kind of CPU); a rerun
that adds jobs says when the finished ones ran otherwise.

Outputs: ``table.md`` (per finetune size n: every arm with its CI and its paired difference to Baseline,
primary endpoint first), ``results.json`` (its ``wall_seconds`` summed over the invocations that reached the report,
each one in ``wall_seconds_per_invocation``; an interrupted one writes none; ``torch_threads``: how many
training jobs ran with each thread count; ``hosts``: on each host; ``linked``: each job that is a link to another
study's run, as ``--reuse`` makes them: :mod:`cclray.study_reuse`), ``study.png`` (primary endpoint vs n, CI
bands) and, per (fold, seed, n), the evaluation folder with ``metrics.csv`` and the Figure-4-style ``figure.png``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from cclray.host import signature
from cclray.study_plan import INPUTS_CONSTRAINT, PRESETS, Job, StudyConfig, plan, study_splits
from data_prep.errors import UserError

log = logging.getLogger(__name__)
DONE = "DONE.json"


# ------------------------------------------------------------------------------------------------ cohort
def prepare_store(out: Path, cfg: StudyConfig, src: str | None, name: str = "store.zarr",
                  say: Callable[[str], None] = print, workers: int = 2) -> str:
    """The study's store in ``out/name`` (made once): the phantom cohort, or ``src`` prepared at ``cfg.spacing``."""
    from data_prep.prep import PrepConfig, run_prep

    store = out / name
    if (store / DONE).exists():
        return str(store)
    if src is None:
        from data_prep.phantom import write_cohort

        nifti = out / "phantom"
        say(f"phantom v{cfg.phantom_version}: {cfg.n_subjects} subjects at {cfg.spacing:g} mm -> {nifti}")
        write_cohort(nifti, cfg.n_subjects, seed=0, spacing=cfg.spacing, workers=workers,
                     version=cfg.phantom_version)
        src, spacing = str(nifti), None
    else:
        spacing = cfg.spacing
    say(f"prep {src} -> {store} ({'source grid' if spacing is None else f'{spacing:g} mm'})")
    n = sum(1 for p in Path(src).iterdir() if p.is_dir() and not p.name.startswith("."))
    report = run_prep(src, str(store), PrepConfig(splits={"all": max(1, n)}, spacing=spacing), workers=workers)
    say(f"  {report.summary()}")
    if not report.subjects:
        raise UserError(f"{src}: no subject could be prepared ({len(report.failed)} failed); see {store}")
    (store / DONE).write_text(json.dumps({"subjects": len(report.subjects)}))
    return str(store)


def write_study_splits(store: str, cfg: StudyConfig, test_store: str | None) -> dict[str, list[str]]:
    """Write the study's splits into ``store`` (and ``s.test`` = every subject into ``test_store``). A split name
    the store already holds with other subjects is refused: another study's runs were trained on it (a store
    shared through ``--reuse``, or a folder prepared by other code)."""
    from data_prep.store import Store

    s = Store(store, mode="r+")
    splits = study_splits(s.subjects(), cfg)
    old = s.attrs.get("splits") or {}
    clash = sorted(k for k, v in splits.items() if k in old and list(old[k]) != list(v))
    if clash:
        raise UserError(f"{store}: split(s) {', '.join(clash)} already hold other subjects than this study's "
                        f"(the store is shared with a study of other --splits, --sizes or folds): run with the "
                        f"same settings, or without --reuse in a new --out")
    s.update_attrs(splits={**old, **splits})
    if test_store:
        t = Store(test_store, mode="r+")
        t.update_attrs(splits={**(t.attrs.get("splits") or {}), "s.test": t.subjects()})
    return splits


def inputs_constraint_spec():
    """The CCL-inputs arm's ConstraintSpec; its ``name`` is the store array the pretraining reads."""
    from data_prep.constraint import ConstraintSpec

    return ConstraintSpec.from_dict(INPUTS_CONSTRAINT)


def check_mix_store(cfg: StudyConfig) -> int:
    """The CCL-mixed arm's other store opens, holds ``cfg.mix_split`` (not empty) with the store channels and
    the default constraint map of the study's pretraining; returns its subject count. (Spacing and the map's k
    are checked against the study's store when each pretraining starts: :mod:`cclray.data.sources`.)"""
    from cclray.config import DEFAULT_CONSTRAINT
    from cclray.data.sources import open_source
    from data_prep.constraint import check_constraint

    store, subjects = open_source(cfg.mix_store, [s for s in cfg.mix_split.split(",") if s.strip()], "--mix-store")
    check_constraint(store, DEFAULT_CONSTRAINT, subjects, key="--mix-store: the constraint map")
    return len(subjects)


# ------------------------------------------------------------------------------------------------ jobs
def is_done(job: Job, root: Path) -> bool:
    """``DONE.json`` is there and, for an evaluation, records exactly the runs the job scores now (a rerun that
    added arms evaluates again)."""
    path = Path(root) / job.path / DONE
    if not path.exists():
        return False
    if job.kind != "evaluate":
        return True
    try:
        return json.loads(path.read_text()).get("runs") == list(job.spec["runs"])
    except (OSError, ValueError):
        return False


def run_job(job: Job, root: str, backend: str = "local", device: str = "cpu", threads: int = 1) -> str:
    """Run one job into ``root/job.path`` (resuming a started training run); write ``DONE.json``."""
    import torch

    torch.set_num_threads(max(1, threads))
    folder = Path(root) / job.path
    t0 = time.perf_counter()
    spec = dict(job.spec)
    if "init" in spec:
        spec["init"] = str(Path(root) / spec["init"])  # an absolute path (CCL-external) stays as it is
    if job.kind in ("pretrain", "finetune"):
        _train(job.kind, spec, folder, backend, device)
    elif job.kind == "regressor":
        from cclray.evaluation.regressor import RegressorSpec, fit_regressor

        reg, info = fit_regressor(spec["store"], RegressorSpec(split=spec["split"], seed=spec["seed"]))
        reg.save(folder, {"store": spec["store"], **info})
    elif job.kind == "evaluate":
        from cclray.evaluation import evaluate_run_dirs

        evaluate_run_dirs(spec["store"], [str(Path(root) / r) for r in spec["runs"]], labels=spec["labels"],
                          split=spec["split"], out_dir=folder, device=device)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")
    done = {"seconds": round(time.perf_counter() - t0, 1), "kind": job.kind, "threads": torch.get_num_threads(),
            "host": signature(device)}
    if job.kind == "evaluate":
        done["runs"] = list(spec["runs"])
    (folder / DONE).write_text(json.dumps(done))
    return job.path


def _train(stage: str, spec: dict, folder: Path, backend: str, device: str) -> None:
    from cclray.runs import latest_intact_checkpoint

    started = folder.exists() and latest_intact_checkpoint(folder) is not None
    if backend == "ray":
        from cclray.train import fit

        fit(stage, spec, folder, resume=started)
        return
    from cclray.config import stage_config
    from cclray.engine import LocalContext
    from cclray.runs import write_run_config

    cfg = stage_config(stage, {**spec, "num_workers": 1, "use_gpu": device.startswith("cuda")})
    write_run_config(folder, stage, cfg)
    ctx = LocalContext(folder, device=device, resume_from=str(folder) if started else None)
    if stage == "pretrain":
        from cclray.engine_pretrain import run_pretrain as run
    else:
        from cclray.engine_finetune import run_finetune as run
    run(cfg, ctx)


def job_threads(parallel: int = 1, threads: int | None = None) -> int:
    """The torch threads each local job gets: ``threads`` when pinned, else this machine's cores shared among the
    ``parallel`` jobs. On CPU the count changes a training run's numbers (the order of its float sums), so a
    same-seed rerun matches a recorded one bit for bit only with the same count, on the same machine (docs/RESULTS.md
    section 2)."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def count_recorded(jobs: list[Job], root: Path, key: str) -> dict:
    """How many finished training jobs recorded each value of ``key`` in ``DONE.json`` (``threads``: the torch
    thread count, ``host``: :func:`cclray.host.signature`; older jobs did not say)."""
    counts: dict = {}
    for j in jobs:
        if j.kind in ("pretrain", "finetune"):
            try:
                v = json.loads((Path(root) / j.path / DONE).read_text()).get(key)
            except (OSError, ValueError):
                continue
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))


def run_jobs(jobs: list[Job], root: Path, backend: str = "local", device: str = "cpu", parallel: int = 1,
             say: Callable[[str], None] = print, threads: int | None = None) -> None:
    """Run every unfinished job, each once its dependencies are done; ``parallel`` at a time (local backend), each
    with :func:`job_threads` torch threads."""
    done = {j.path for j in jobs if is_done(j, root)}

    def ready(j: Job) -> bool:  # a dependency outside the study (CCL-external) is ready once it has DONE.json
        return all(d in done or (Path(d).is_absolute() and (Path(d) / DONE).exists()) for d in j.deps)

    todo = [j for j in jobs if j.path not in done]
    threads = job_threads(parallel, threads)
    say(f"{len(jobs)} jobs, {len(done)} already done, {len(todo)} to run ({backend} backend, {device}, "
        f"{parallel} at a time" + (f", {threads} torch thread(s) each)" if backend == "local" else ")"))
    other = {n: c for n, c in count_recorded(jobs, root, "threads").items() if n != threads}
    if other and todo and backend == "local" and device == "cpu":
        say(f"note: {sum(other.values())} finished training job(s) ran with {', '.join(map(str, other))} torch "
            f"thread(s), these with {threads}: on CPU a job rerun with another count does not match bit for bit "
            f"(pin the count with --threads)")
    here = signature(device)
    elsewhere = {h: c for h, c in count_recorded(jobs, root, "host").items() if h != here}
    if elsewhere and todo:
        say(f"note: {sum(elsewhere.values())} finished training job(s) ran on {'; '.join(elsewhere)}, these on "
            f"{here}: a same-seed job run on other kernels does not match bit for bit, and after 2000 steps may "
            f"differ by as much as the effects compared")
    if backend == "ray" or parallel <= 1:
        for i, j in enumerate(todo, 1):
            if not ready(j):
                raise UserError(f"{j.path} needs {list(j.deps)}, which is not finished (no {DONE})")
            t0 = time.perf_counter()
            run_job(j, str(root), backend, device, threads if backend == "local" else 1)
            done.add(j.path)
            say(f"[{i}/{len(todo)}] {j.kind} {j.path}: {time.perf_counter() - t0:.0f} s")
        return
    running: dict = {}
    finished = 0
    with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        while todo or running:
            for j in [j for j in todo if ready(j)][:max(0, parallel - len(running))]:
                todo.remove(j)
                running[pool.submit(run_job, j, str(root), backend, device, threads)] = (j, time.perf_counter())
            if not running:  # only jobs waiting for an outside run (another study still pretraining)
                log.warning("waiting for %s", sorted({d for j in todo for d in j.deps if d not in done})[:3])
                time.sleep(10)
                continue
            fin, _ = wait(list(running), timeout=10, return_when=FIRST_COMPLETED)
            for fut in fin:
                j, t0 = running.pop(fut)
                fut.result()  # a failed job stops the study (its folder is kept; a rerun resumes)
                done.add(j.path)
                finished += 1
                say(f"[{finished}/{finished + len(todo) + len(running)}] {j.kind} {j.path}: "
                    f"{time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------ study
GROWS = ("seeds", "finetune_sizes", "arms")  # what a rerun in the same folder may add to


def comparable(recorded: dict) -> dict:
    """A recorded ``study_config.json`` without what a rerun may grow (:data:`GROWS`), and with the settings it
    predates at their defaults: two studies whose ``comparable`` forms are equal share a cohort, splits and recipe."""
    defaults = json.loads(json.dumps(StudyConfig().to_dict()))
    cfg = {**defaults, **recorded["config"]}
    for key in GROWS:
        cfg.pop(key, None)
    return {**recorded, "config": cfg}


def check_same_study(old: dict, new: dict, path: Path) -> None:
    """A rerun continues the study in its folder: same settings, except that it may add seeds, finetune sizes
    or arms (the finished jobs are kept and the tables pool them). Anything else is refused (a setting the
    recorded study predates counts as the same when it is at its default)."""
    shrunk = [k for k in GROWS if not set(old["config"].get(k, ())) <= set(new["config"].get(k, ()))]
    if comparable(old) != comparable(new) or shrunk:
        recorded = {k: old["config"].get(k) for k in GROWS}
        raise UserError(f"{path.parent} holds a study with other settings ({path}): use another --out, or delete "
                        f"the folder to start again (a rerun may only add seeds, finetune sizes or arms to {recorded})")


def recorded_wall_seconds(results: Path) -> list[float]:
    """The wall times of the earlier invocations that wrote ``results`` (none when it is absent or unreadable)."""
    try:
        recorded = json.loads(results.read_text())
    except (OSError, ValueError):
        return []
    runs = recorded.get("wall_seconds_per_invocation")
    if runs is None:  # written before the per-invocation list existed: one total
        runs = [recorded["wall_seconds"]] if "wall_seconds" in recorded else []
    return [float(r) for r in runs]


def run_study(out: str | os.PathLike, cfg: StudyConfig | str = "pilot", src: str | None = None,
              test_src: str | None = None, backend: str = "ray", device: str = "cpu", parallel: int = 1,
              dry_run: bool = False, say: Callable[[str], None] = print, threads: int | None = None,
              reuse: tuple[str | os.PathLike, ...] = ()) -> dict:
    """Run (or continue) the study into ``out``; returns the aggregated results (see the module docstring).
    ``reuse``: other study folders whose store and finished jobs this one links (:mod:`cclray.study_reuse`)."""
    from cclray.study_report import write_report
    from cclray.study_reuse import check_links, check_others, link_jobs, link_stores, linked

    cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
    threads = job_threads(parallel, threads)  # a bad --threads is refused before the store is made
    out = Path(out).expanduser().resolve()
    others = check_others(reuse, out)  # a bad --reuse is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "study_config.json"
    wanted = {"config": cfg.to_dict(), "src": src, "test_src": test_src}
    if recorded.exists():
        check_same_study(json.loads(recorded.read_text()), json.loads(json.dumps(wanted)), recorded)
    store = str(out / "store.zarr")
    inputs_spec = inputs_constraint_spec() if "CCL-inputs" in cfg.arms else None
    test_store = str(out / "test_store.zarr") if test_src else None
    jobs = plan(cfg, store, test_store, inputs_spec.name if inputs_spec else "")
    counts = {k: sum(j.kind == k for j in jobs) for k in ("pretrain", "finetune", "regressor", "evaluate")}
    say(f"study: {cfg.folds} fold(s) x seeds {list(cfg.seeds)} x n {list(cfg.finetune_sizes)}; arms "
        f"{list(cfg.arms)}; {cfg.spacing:g} mm, widths {list(cfg.widths)}, {cfg.patch}³ patches, batch {cfg.batch}, "
        f"pretrain {cfg.pretrain_steps} / finetune {cfg.finetune_steps} steps ({cfg.finetune_schedule}"
        f"{', augmented' if cfg.augment else ''}); jobs {counts}")
    if "CCL-mixed" in cfg.arms:
        n_mix = check_mix_store(cfg)
        say(f"CCL-mixed pretrains on each fold's pretrain split plus {n_mix} subjects of {cfg.mix_store} "
            f"(split {cfg.mix_split}), sampled per subject")
    if dry_run:
        for j in jobs:
            say(f"  {j.kind:9s} {j.path}" + (f"  <- {', '.join(j.deps)}" if j.deps else ""))
        if others:
            say("(--reuse links the store and matching finished jobs when the study runs)")
        return {"jobs": [j.path for j in jobs]}
    check_links(jobs, out)
    recorded.write_text(json.dumps(wanted, indent=2))
    t0 = time.perf_counter()
    cpus = max(1, min(16, os.cpu_count() or 1))
    if others:
        link_stores(out, others, cfg, src, test_src, say)
    prepare_store(out, cfg, src, say=say, workers=cpus)
    if test_src:
        prepare_store(out, cfg, test_src, "test_store.zarr", say=say, workers=cpus)
    write_study_splits(store, cfg, test_store)
    if inputs_spec:
        from data_prep.constraint import add_constraint

        say("constraint map of the inputs only (T1Gd + FLAIR) for the CCL-inputs arm ...")
        add_constraint(store, inputs_spec, workers=cpus)
    if others:
        link_jobs(jobs, out, others, say)
    run_jobs(jobs, out, backend, device, parallel, say, threads)
    result = write_report(out, cfg, jobs)
    result["linked"] = linked(jobs, out)  # job path -> the other folder's run it is a link to
    # {thread count: training jobs} and {host: training jobs}: what a bit-exact rerun needs
    result["torch_threads"] = count_recorded(jobs, out, "threads")
    result["hosts"] = count_recorded(jobs, out, "host")
    # every invocation's wall time, so a rerun that only finishes or re-reports keeps what the first runs took
    runs = [*recorded_wall_seconds(out / "results.json"), round(time.perf_counter() - t0, 1)]
    result.update(wall_seconds=round(sum(runs), 1), wall_seconds_per_invocation=runs)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    say("\n" + (out / "table.md").read_text())
    return result
