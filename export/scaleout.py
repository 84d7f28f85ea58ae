"""Cohort synthesis spread over a Ray cluster: ``cclray synthesize --cohort DIR_OR_URL --out DIR_OR_URL --ray``.

A pool of Ray actors, each holding **one onnxruntime session** (:class:`export.runtime.OnnxSynthesizer`,
made once per actor from the model bytes the driver puts in Ray's object store, so nodes need no copy
of the model file), takes one subject at a time; the driver hands the next subject to whichever actor
finishes first and updates a progress bar. A subject that fails (bad input) is reported with its error
and the rest go on; a dead actor (killed, out of memory, node lost) is replaced and its subject given
to another one once more. Each actor reads its subject's input files
itself (a local or shared folder, or object storage through :func:`data_prep.objstore.location`) and
writes the outputs itself: locally with :func:`export.runtime_io.write_outputs` (temporary names, then
rename), on object storage one PUT per output (published whole), after every output was computed.

Why actors rather than one Ray task per subject: a task would build its onnxruntime session (graph
optimisation included) for every subject; ``benchmarks/bench_cohort.py`` measures both
(docs/BENCHMARKS.md). Ray Data's ``map_batches`` with an actor pool does the same as this pool but
needs pyarrow and pandas on every worker and moves rows through its own block format, for one
whole-volume subject per call: nothing to gain here.

Imports only the runtime (numpy, nibabel, onnxruntime), ``data_prep.objstore``/``schema`` and Ray:
workers install ``cclray[runtime-ray]``, never torch. Ray is imported only inside the functions that
use it. This module is the one place besides training and tuning where ``ray`` is imported.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from data_prep.atomic import atomic_write
from data_prep.objstore import check_bucket, is_local, location

log = logging.getLogger(__name__)


@dataclass
class SubjectJob:
    """One subject to synthesize: its id, naming (``brats2021``/``brats2023``) and input locations."""

    sid: str
    naming: str
    files: dict = field(default_factory=dict)  # canonical contrast -> local path or URL


@dataclass
class SubjectResult:
    """What happened to one subject. ``error`` is None when ``written`` holds its outputs."""

    sid: str
    ok: bool
    written: list = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    node: str = ""
    stages: dict = field(default_factory=dict)  # seconds per stage (read, preprocess, ..., write)


# ------------------------------------------------------------------------------------ the cohort
def cohort_jobs(cohort: str, contrasts) -> tuple[list[SubjectJob], list]:
    """``(jobs, unusable)``: every BraTS subject of ``cohort`` (a folder or a URL) with its input files, and
    the unusable subjects as :class:`data_prep.discover.SubjectError` (naming the file and the fix).

    Subjects are found by :mod:`data_prep.discover` (the rules of ``cclray prep``: ids from the file names,
    both namings, the model's input contrasts required): in a local folder at any depth, on object storage
    in the folders directly under the URL (a listing per folder)."""
    from data_prep.discover import SubjectError, subject_from_folder
    from export import runtime_io as rio

    check_bucket(cohort)
    contrasts = tuple(contrasts)
    if is_local(location(cohort)):
        subjects, unusable = rio.cohort_inputs(cohort, contrasts)
        return [SubjectJob(s.sid, s.naming.name, dict(s.files)) for s in subjects], unusable
    root = location(cohort)
    if not root.is_dir():
        raise rio.InputError(f"{cohort}: no such folder (prefix) on object storage; pass the URL of the "
                             f"folder holding the BraTS subject folders")
    jobs, unusable = [], []
    for d in sorted(root.iterdir(), key=lambda p: p.name):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            s = subject_from_folder(d, contrasts)
        except SubjectError as e:
            unusable.append(e)
            continue
        except ValueError as e:  # an unsafe subject id
            unusable.append(SubjectError(str(e), sid=d.name, file=str(d)))
            continue
        jobs.append(SubjectJob(s.sid, s.naming, {c: str(p) for c, p in s.paths.items()}))
    if not jobs and not unusable:
        raise rio.InputError(f"{cohort}: no BraTS subject folders (holding BraTS-named .nii.gz files) inside")
    return jobs, unusable


def _naming(name: str):
    from data_prep.schema import NAMINGS

    return NAMINGS[name]


# ------------------------------------------------------------------------------------ one subject
def synthesize_subject(synth, job: SubjectJob, out: str, overlap: float | None = None,
                       batch_size: int | None = None, resample: bool = True) -> SubjectResult:
    """Read, synthesize and write one subject with a ready :class:`~export.runtime.OnnxSynthesizer`.
    Never raises: a failure comes back as ``SubjectResult(ok=False, error=...)`` and writes nothing.
    ``resample=False`` refuses inputs off the model's training grid (``--no-resample``); the result's
    ``stages`` holds the seconds per stage (``--timings``: read incl. any fetch, the runtime's, write)."""
    from export import runtime_io as rio
    from export.runtime import DEFAULT_BATCH

    t0 = time.perf_counter()
    node = os.uname().nodename
    stages: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=f"cclray-{job.sid}-") as tmp:
            files = {}
            for c, src in job.files.items():  # remote inputs: fetched once into the actor's scratch
                loc = location(src)
                if is_local(loc):
                    files[c] = str(loc)
                else:
                    files[c] = str(Path(tmp) / loc.name)
                    Path(files[c]).write_bytes(loc.read_bytes())
            vols = rio.load_inputs(files)
            stages["read"] = time.perf_counter() - t0
            outputs = synth.synthesize({c: v.data for c, v in vols.items()}, {c: v.affine for c, v in vols.items()},
                                       overlap=overlap, batch_size=batch_size or DEFAULT_BATCH, resample=resample,
                                       timings=stages)
            t_write = time.perf_counter()
            reference = vols[synth.card.inputs[0]]
            dest = location(out)
            if is_local(dest):
                written = rio.write_outputs(outputs, reference, rio.output_paths(dest, job.sid, _naming(job.naming),
                                                                                  synth.card.targets))
            else:  # every output written locally first; then one PUT each (an object is published whole)
                local = rio.write_outputs(outputs, reference, rio.output_paths(Path(tmp) / "out", job.sid,
                                                                                _naming(job.naming), synth.card.targets))
                written = []
                for f in local:
                    target = dest / Path(f).name
                    atomic_write(target, Path(f).read_bytes())
                    written.append(str(target))
            stages["write"] = time.perf_counter() - t_write
    except Exception as e:  # reported against the subject; the cohort goes on
        log.debug("subject %s failed", job.sid, exc_info=True)
        return SubjectResult(job.sid, False, seconds=time.perf_counter() - t0, node=node,
                             error=f"{type(e).__name__}: {e}")
    return SubjectResult(job.sid, True, written, time.perf_counter() - t0, node=node, stages=stages)


class SynthWorker:
    """What each Ray actor holds: one onnxruntime session, made from the model's bytes."""

    def __init__(self, model_bytes: bytes, provider: str = "auto", threads: int | None = None):
        from export.runtime import OnnxSynthesizer

        self._dir = tempfile.mkdtemp(prefix="cclray-model-")
        path = Path(self._dir) / "model.onnx"
        path.write_bytes(model_bytes)
        self.synth = OnnxSynthesizer(path, provider=provider, threads=threads)

    def run(self, job: SubjectJob, out: str, overlap=None, batch_size=None, resample: bool = True) -> dict:
        import ray

        result = synthesize_subject(self.synth, job, out, overlap, batch_size, resample)
        result.node = ray.get_runtime_context().get_node_id()
        return asdict(result)

    def provider(self) -> str:
        return self.synth.provider


def _task(model_bytes: bytes, job: SubjectJob, out: str, provider: str, threads: int | None, overlap,
          batch_size, resample: bool = True) -> dict:
    """One Ray task per subject: builds its own session (the alternative the benchmark compares)."""
    return SynthWorker(model_bytes, provider, threads).run(job, out, overlap, batch_size, resample)


# ------------------------------------------------------------------------------------ the driver
def connect(address: str | None = None) -> str:
    """Connect to the Ray cluster at ``address`` (``auto``, ``ray://head:10001``; None: ``RAY_ADDRESS``
    or a new local Ray) unless this process already is; returns a one-line description of it."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, log_to_driver=False)
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"Ray cluster: {int(ray.cluster_resources().get('CPU', 0))} CPU(s) on {nodes} node(s)"


def run_cohort(model: str, jobs: list[SubjectJob], out: str, *, workers: int | None = None,
               threads: int = 1, provider: str = "auto", overlap: float | None = None,
               batch_size: int | None = None, resample: bool = True, mode: str = "actors", worker_retries: int = 1,
               on_result: Callable[[SubjectResult], object] | None = None) -> list[SubjectResult]:
    """Synthesize ``jobs`` on the connected Ray cluster (``ray.init`` first); returns one result each.

    ``workers``: actors (default: the cluster's CPUs // ``threads``); each reserves ``threads`` CPUs
    and runs onnxruntime with that many threads. ``mode="tasks"``: one task per subject instead
    (``workers`` then bounds the tasks in flight). A subject whose worker died (killed, out of
    memory, node lost) is given to a new worker up to ``worker_retries`` more times, then reported as
    failed; a subject that fails by itself (bad input) is reported at once. ``on_result`` is called as
    each subject finishes. ``resample=False``: refuse subjects off the model's training grid.
    """
    import ray

    if mode not in ("actors", "tasks"):
        raise ValueError(f"mode={mode!r}: use 'actors' or 'tasks'")
    model_bytes = location(model).read_bytes()
    if is_local(location(out)):
        location(out).mkdir(parents=True, exist_ok=True)
    model_ref = ray.put(model_bytes)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = max(1, min(int(workers or cpus // max(1, threads)), len(jobs)))
    args = (out, overlap, batch_size, resample)
    results: list[SubjectResult] = []
    pending = list(jobs)
    inflight: dict = {}  # object ref -> (job, actor or None)
    lost: dict = {}  # sid -> workers lost while running it

    def finish(res: SubjectResult) -> None:
        results.append(res)
        if on_result is not None:
            on_result(res)

    if mode == "tasks":
        remote = ray.remote(num_cpus=threads, max_retries=0)(_task)

        def submit(job, actor=None):
            inflight[remote.remote(model_ref, job, out, provider, threads, overlap, batch_size, resample)] = (job, None)
    else:
        Actor = ray.remote(num_cpus=threads, max_restarts=0)(SynthWorker)

        def new_actor():
            return Actor.remote(model_ref, provider, threads)

        def submit(job, actor):
            inflight[actor.run.remote(job, *args)] = (job, actor)

    idle = [new_actor() for _ in range(workers)] if mode == "actors" else [None] * workers
    while pending or inflight:
        while pending and idle:
            submit(pending.pop(0), idle.pop())
        done, _ = ray.wait(list(inflight), num_returns=1)
        job, actor = inflight.pop(done[0])
        try:
            finish(SubjectResult(**ray.get(done[0])))
        except Exception as e:  # the actor/task died (OOM, node lost): a new actor takes over
            lost[job.sid] = lost.get(job.sid, 0) + 1
            log.warning("worker lost while synthesizing %s (%s)", job.sid, str(e).splitlines()[0])
            if lost[job.sid] <= worker_retries:
                pending.insert(0, job)
            else:
                finish(SubjectResult(job.sid, False, error=f"{type(e).__name__}: worker lost {lost[job.sid]} "
                                                           f"time(s) ({str(e).splitlines()[0]})"))
            if actor is not None:
                ray.kill(actor)
                actor = new_actor()
        idle.append(actor)
    for actor in idle:
        if actor is not None:
            ray.kill(actor)
    return results
