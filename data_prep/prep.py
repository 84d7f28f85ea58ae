"""BraTS NIfTI folder -> cclray Zarr v3 store: validate, mask, crop, normalize, constraint maps, splits.

Per subject (:func:`prepare_subject`, pure numpy): brain mask over the four contrasts, crop to its box
plus ``margin``, percentile+z-score normalization per contrast (statistics kept to invert it), seg
cropped, one constraint map per :class:`~data_prep.constraint.ConstraintSpec` computed from the cropped
raw contrasts the spec names. Subjects run in a process pool (spawn/forkserver; one subject a task, so
memory is about one subject per worker); each worker writes its subject straight into the store, where
it becomes visible only once marked complete. The parent then records, in the root attrs, the
complete subjects, seeded splits, the failures and a fingerprint.

Re-running skips complete subjects and redoes incomplete ones (a killed run), so it is resumable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from . import preprocess
from .config import ConfigError, FrozenConfig, require
from .constraint import DEFAULT_SPEC
from .discover import SubjectError, SubjectFiles, find_subjects
from .nifti import load_subject
from .resample import needs_resampling, resample_subject, subject_spacing, zooms
from .schema import CONTRASTS, channel_index
from .splits import PAPER_SPLITS, check_sizes, make_splits

log = logging.getLogger(__name__)

DEFAULT_CONSTRAINT = DEFAULT_SPEC.to_dict()  # {"contrasts": [all four], "k": 20, "seed": 0}


def _default_layout() -> dict:
    from .store import Layout

    return Layout().to_dict()


@dataclass(frozen=True)
class PrepConfig(FrozenConfig):
    """Everything that decides the store's content; saved as root attr ``prep_config``."""

    margin: int = preprocess.DEFAULT_MARGIN  # voxels kept around the brain's bounding box
    percentiles: tuple[float, float] = preprocess.DEFAULT_PERCENTILES  # clip before z-scoring
    constraints: tuple[dict, ...] = (DEFAULT_CONSTRAINT,)  # ConstraintSpec dicts
    splits: dict = field(default_factory=lambda: dict(PAPER_SPLITS))  # subject counts, see splits.py
    seed: int = 0  # of the splits
    layout: dict = field(default_factory=_default_layout)  # store.Layout: chunk, dtype, codec
    # mm of the stored grid (isotropic); None = each source's own grid (BraTS: 1 mm). See data_prep.resample.
    spacing: float | None = None

    def validate(self) -> None:
        require(self.margin >= 0, f"PrepConfig.margin={self.margin}: use a margin >= 0 voxels")
        if self.spacing is not None:
            from .resample import check_spacing

            try:
                check_spacing(self.spacing, "PrepConfig.spacing")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        lo, hi = self.percentiles
        require(0 <= lo < hi <= 100, f"PrepConfig.percentiles={self.percentiles}: need 0 <= LO < HI <= 100")
        try:
            check_sizes(self.splits)
        except ValueError as e:
            raise ConfigError(f"PrepConfig.splits: {e}") from e
        # normalize the constraint dicts through ConstraintSpec so equal settings compare equal
        object.__setattr__(self, "constraints", tuple(s.to_dict() for s in self.constraint_specs()))
        names = [s.name for s in self.constraint_specs()]
        require(len(set(names)) == len(names), f"PrepConfig.constraints: duplicate settings {names}; give each once")
        from .store import Layout

        unknown = set(self.layout) - set(Layout().to_dict())
        require(not unknown, f"PrepConfig.layout: unknown key(s) {sorted(unknown)}; valid: chunk, dtype, codec")
        try:
            Layout(**self.layout).compressors()  # Layout checks chunk and dtype, compressors() the codec
        except (TypeError, ValueError) as e:
            raise ConfigError(f"PrepConfig.layout: {e}") from e

    def constraint_specs(self) -> list:
        if not self.constraints:
            return []
        from .constraint import ConstraintSpec

        return [c if isinstance(c, ConstraintSpec) else ConstraintSpec.from_dict(c) for c in self.constraints]

    def store_layout(self):
        from .store import Layout

        return Layout(**{**Layout().to_dict(), **self.layout})


# ------------------------------------------------------------------------------------------ one subject
@dataclass(frozen=True)
class PreparedSubject:
    """What :meth:`Store.write_subject` takes. ``image`` ``(4, X, Y, Z)`` float32 normalized."""

    sid: str
    image: np.ndarray
    mask: np.ndarray  # (X, Y, Z) bool
    seg: np.ndarray | None
    constraints: dict  # {name: (X, Y, Z) uint8}
    attrs: dict


def prepare_subject(files: SubjectFiles, config: PrepConfig) -> PreparedSubject:
    """Load, validate and preprocess one subject (no store I/O); raise :class:`SubjectError`."""
    t0 = time.perf_counter()
    loaded = load_subject(files)
    volumes, seg_full, grid_affine = loaded.volumes, loaded.seg, loaded.affine
    if needs_resampling(loaded.affine, config.spacing):
        r = resample_subject(loaded.volumes, loaded.affine, config.spacing, loaded.seg)
        volumes, seg_full, grid_affine, full_mask = r.volumes, r.seg, r.grid.affine, r.mask
        if not full_mask.any():
            raise SubjectError(f"{files.paths['t1w']}: no brain voxel left after resampling to "
                               f"{config.spacing:g} mm; use a finer --spacing", sid=files.sid,
                               file=files.paths["t1w"])
    else:
        full_mask = preprocess.brain_mask(volumes)
    box = preprocess.crop_box(full_mask, config.margin)
    raw = np.ascontiguousarray(preprocess.crop(volumes, box))  # (4, X, Y, Z) float32
    mask = np.ascontiguousarray(preprocess.crop(full_mask, box))
    image = np.empty_like(raw)
    norm = {}
    for i, c in enumerate(CONTRASTS):
        image[i], stats = preprocess.normalize(raw[i], mask, config.percentiles)
        norm[c] = stats.to_dict()
    seg = None if seg_full is None else np.ascontiguousarray(preprocess.crop(seg_full, box))
    constraints = {}
    specs = config.constraint_specs()
    if specs:
        from .constraint import constraint_map
    for spec in specs:
        chans = [channel_index(c) for c in spec.contrasts]
        # from the stored representation (normalized, float16-rounded), as add_constraint reads it later,
        # so a map computed at prep time equals one added to the store afterwards
        stored = image[chans].astype(np.float16).astype(np.float32)
        labels = np.asarray(constraint_map(stored, mask, k=spec.k, seed=spec.seed))
        if labels.shape != mask.shape:
            raise RuntimeError(f"constraint_map returned {labels.shape}, expected {mask.shape}")
        constraints[spec.name] = labels.astype(np.uint8, copy=False)
    attrs = {
        "affine": loaded.affine.tolist(),  # of the SOURCE grid: outputs are written back onto it
        "source_shape": list(loaded.volumes.shape[1:]),
        "spacing": [round(float(z), 6) for z in zooms(grid_affine)],  # mm of the stored grid
        "grid_affine": np.asarray(grid_affine).tolist(),  # the stored grid before cropping
        "grid_shape": list(volumes.shape[1:]),
        "crop": [list(b) for b in box],  # on the stored grid
        "norm": norm,
        "header": loaded.header,
        "source_files": files.source_files(),
        "naming": files.naming,
        "has_seg": seg is not None,
        "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prep_seconds": round(time.perf_counter() - t0, 3),
    }
    return PreparedSubject(files.sid, image, mask, seg, constraints, attrs)


def prep_one(url: str, files: SubjectFiles, config: dict | PrepConfig,
             storage_options: dict | None = None) -> dict:
    """Prepare and write one subject (the pool task). Never raises: returns ``{sid, ok, ...}``."""
    from .store import Store

    t0 = time.perf_counter()
    config = config if isinstance(config, PrepConfig) else PrepConfig.from_dict(config)
    try:
        p = prepare_subject(files, config)
        Store(url, mode="a", storage_options=storage_options).write_subject(
            p.sid, p.image, p.mask, p.attrs, seg=p.seg, constraints=p.constraints)
    except SubjectError as e:
        return {"sid": files.sid, "ok": False, "file": e.file, "error": str(e)}
    except Exception as e:  # a bug or an I/O failure: report it against the subject, keep going
        log.debug("subject %s failed", files.sid, exc_info=True)
        return {"sid": files.sid, "ok": False, "file": str(files.paths["t1w"].parent),
                "error": f"{type(e).__name__}: {e} (while preparing {files.sid}; re-run with -v for the traceback)"}
    return {"sid": files.sid, "ok": True, "seconds": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------------------------------ a cohort
@dataclass
class PrepPlan:
    """What a run will do: ``todo`` subjects to (re)write, ``skipped`` complete ones, ``failed`` so far."""

    store: object
    config: PrepConfig
    todo: list
    skipped: list
    failed: list  # [{sid, file, error}]


@dataclass
class PrepReport:
    """Outcome of a run, as recorded in the store's root attrs."""

    url: str
    written: list
    skipped: list
    failed: list
    subjects: list
    splits: dict
    fingerprint: str
    splits_error: str | None = None

    def summary(self) -> str:
        """One line a person reads: counts, splits, fingerprint."""
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items()) or f"none ({self.splits_error})"
        return (f"{len(self.written)} written, {len(self.skipped)} skipped (complete), {len(self.failed)} failed; "
                f"store holds {len(self.subjects)} subject(s); splits {splits}; fingerprint {self.fingerprint}")


def plan_prep(src_dir: str | Path, out: str, config: PrepConfig | None = None,
              storage_options: dict | None = None) -> PrepPlan:
    """Discover subjects, create/reopen the store, and sort subjects into to-do and already-complete."""
    from .store import Store

    config = config or PrepConfig()
    found = find_subjects(src_dir)
    store = Store.create(out, config.to_dict(), config.store_layout(), storage_options=storage_options)
    if "subjects" not in store.root:  # made once here, so parallel workers never race to create it
        store.root.create_group("subjects")
    todo, skipped = [], []
    for s in found.subjects:
        (skipped if store.is_complete(s.sid) else todo).append(s)
    failed = [e.to_dict() for e in found.failed if not (e.sid and store.is_complete(e.sid))]
    if skipped:
        log.info("%d subject(s) already complete in %s: skipped", len(skipped), out)
    return PrepPlan(store, config, todo, [s.sid for s in skipped], failed)


def _limit_threads(threads: int) -> None:
    """Pool initializer: cap BLAS/OpenMP threads (k-means, PCA) of this worker process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def execute(plan: PrepPlan, workers: int = 1) -> Iterator[dict]:
    """Prepare every to-do subject; yield each result ``{sid, ok, ...}`` as it finishes.

    ``workers > 1`` uses a forkserver (spawn where unavailable) process pool; ``memory://`` stores
    live in one process, so they always run in-process.
    """
    url, opts, cfg = plan.store.url, plan.store.storage_options, plan.config.to_dict()
    if workers > 1 and url.startswith("memory://"):
        log.warning("memory:// stores are per-process: preparing in-process (workers=1)")
        workers = 1
    if workers <= 1 or len(plan.todo) <= 1:
        for s in plan.todo:
            yield prep_one(url, s, cfg, opts)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    workers = min(workers, len(plan.todo))
    threads = max(1, (os.cpu_count() or 1) // workers)  # no BLAS/OpenMP oversubscription across workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_limit_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(prep_one, url, s, cfg, opts) for s in plan.todo]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def finalize(plan: PrepPlan, results: list[dict]) -> PrepReport:
    """Record complete subjects, splits, failures, constraint settings and fingerprint in root attrs."""
    store, config = plan.store, plan.config
    failed = plan.failed + [{k: r[k] for k in ("sid", "file", "error")} for r in results if not r["ok"]]
    complete = sorted(sid for sid in store.root["subjects"].group_keys() if store.is_complete(sid))
    attrs = {sid: store.subject_attrs(sid) for sid in complete}
    norms = {sid: a.get("norm") for sid, a in attrs.items()}
    spacings = {tuple(subject_spacing(a)) for a in attrs.values()}
    splits, splits_error = {}, None
    try:
        splits = make_splits(complete, config.splits, config.seed)
    except ValueError as e:
        splits_error = str(e)
        log.warning("no splits recorded: %s", e)
    fingerprint = hashlib.sha256(json.dumps(
        {"subjects": complete, "prep_config": config.to_dict(), "norm": norms}, sort_keys=True
    ).encode()).hexdigest()[:16]
    store.update_attrs(
        subjects=complete, splits=splits, failed=failed, fingerprint=fingerprint,
        spacing=list(spacings.pop()) if len(spacings) == 1 else None,  # None: the subjects' grids differ
        # merge: maps added later with add_constraint (e.g. by Tune trials) stay recorded
        constraints={**(store.attrs.get("constraints") or {}),
                     **{s.name: s.to_dict() for s in config.constraint_specs()}},
    )
    return PrepReport(store.url, [r["sid"] for r in results if r["ok"]], plan.skipped, failed,
                      complete, splits, fingerprint, splits_error)


def run_prep(src_dir: str | Path, out: str, config: PrepConfig | None = None, workers: int = 1,
             storage_options: dict | None = None) -> PrepReport:
    """Ingest ``src_dir`` into the store at ``out`` (path or fsspec URL); see the module docstring."""
    plan = plan_prep(src_dir, out, config, storage_options)
    results = list(execute(plan, workers))
    return finalize(plan, results)
