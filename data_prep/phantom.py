"""The phantom cohort: physics-based BraTS-like subjects, so everything runs with no download.

A subject is made by one phantom *version* (all randomness from one seed):

* version 1 (:mod:`data_prep.phantom_v1`): the first cohort, one glioma-like lesion under a fixed
  protocol; kept bit for bit (``--phantom-version 1``);
* version 2 (:mod:`data_prep.phantom_v2`, the default): lesion kinds that look alike in T1Gd/FLAIR but
  not in T1w/T2w, lesion and tissue texture, a per-subject protocol (1.5 T / 3 T, site presets), one
  receive field per session (docs/PHANTOM.md).

Both start from the same warped ICBM152 anatomy (:mod:`data_prep.phantom_anatomy`) on a BraTS/SRI24
grid (240x240x155 at 1 mm). :func:`write_cohort` writes the BraTS NIfTI layout (2021 or 2023
naming), atomically per subject, skipping complete subjects on a rerun. Subject ``i``'s seed derives
from ``(seed, i)``.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .config import ConfigError
from .phantom_anatomy import GRID_1MM, GRID_CENTRE_MM, grid
from .schema import CONTRASTS, NAMINGS, safe_subject_id

log = logging.getLogger(__name__)

PHANTOM_VERSION = 2  # the default version
VERSIONS: tuple[int, ...] = (1, 2)
MANIFEST = "phantom.json"
PARTIAL_DIR = ".partial"
_WHAT = (*CONTRASTS, "seg")

__all__ = ["GRID_1MM", "GRID_CENTRE_MM", "PHANTOM_VERSION", "VERSIONS", "grid", "subject_id", "subject_seed",
           "make_subject", "write_subject", "write_cohort"]


def subject_id(i: int, naming: str = "brats2021") -> str:
    """Subject id of cohort member ``i``: ``BraTS2021_00000`` or ``BraTS-GLI-00000-000``."""
    return f"BraTS2021_{i:05d}" if naming == "brats2021" else f"BraTS-GLI-{i:05d}-000"


def subject_seed(seed: int, i: int) -> int:
    """Seed of subject ``i`` of a cohort seeded ``seed`` (independent of the cohort size)."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0])


def check_version(version) -> int:
    """``version`` as an int, or ``ValueError`` naming the versions there are."""
    if isinstance(version, bool) or version not in VERSIONS:
        raise ConfigError(f"phantom version {version!r} does not exist: use one of {list(VERSIONS)}")
    return int(version)


def make_subject(sid: str, seed: int, spacing: float = 1.0, return_tissue: bool = False,
                 version: int = PHANTOM_VERSION, parts=None) -> dict:
    """One phantom subject, deterministic in ``(seed, spacing, version)`` (``sid`` is only carried along).

    Returns ``dict(sid, images={contrast: (X, Y, Z) int16}, seg (X, Y, Z) uint8 (0/1/2/4),
    mask (X, Y, Z) bool, affine (4, 4))`` and, with ``return_tissue``, ``tissue={name: (X, Y, Z)
    float32 fraction}`` (the version's compartments) and ``clean={contrast: (X, Y, Z) float32}``, the
    noise-free signal on the int16 scale (what an oracle knowing every fraction and parameter predicts).
    Version 2 adds ``info`` (its protocol and lesion kinds) and takes ``parts``
    (:class:`data_prep.phantom_v2.Parts`: which of its parts are on; tests switch them).
    """
    from . import phantom_v1, phantom_v2

    if check_version(version) == 1:
        if parts is not None:
            raise ConfigError("phantom version 1 has no switchable parts (parts=...): use version 2")
        return phantom_v1.make_subject(sid, seed, spacing, return_tissue)
    return phantom_v2.make_subject(sid, seed, spacing, return_tissue, parts=parts)


# --------------------------------------------------------------------------------------- writing
def _nifti_bytes(data: np.ndarray, affine: np.ndarray, descrip: str) -> bytes:
    """A ``.nii.gz`` as bytes, byte-identical for identical input (gzip mtime 0, no file name)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = descrip[:79].encode()
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _is_complete(folder: Path, sid: str, naming: str) -> bool:
    files = [folder / NAMINGS[naming].filename(sid, w) for w in _WHAT]
    return all(f.is_file() and f.stat().st_size > 0 for f in files)


def write_subject(out_dir: str | Path, sid: str, seed: int, naming: str = "brats2021",
                  spacing: float = 1.0, version: int = PHANTOM_VERSION) -> Path:
    """Generate one subject and write its five files atomically to ``out_dir/sid``; return that folder."""
    out_dir = Path(out_dir)
    final = out_dir / safe_subject_id(sid)
    tmp = out_dir / PARTIAL_DIR / f"{sid}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    subject = make_subject(sid, seed, spacing, version=version)
    descrip = f"cclray phantom v{version} seed={seed}"
    volumes = {**subject["images"], "seg": subject["seg"]}
    for what in _WHAT:
        (tmp / NAMINGS[naming].filename(sid, what)).write_bytes(
            _nifti_bytes(volumes[what], subject["affine"], descrip))
    if final.exists():  # an incomplete leftover (complete ones are skipped before generating)
        log.warning("replacing incomplete subject folder %s", final)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _write_task(args: tuple) -> str:
    return str(write_subject(*args))


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    path = out_dir / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        if diff:
            raise ConfigError(
                f"{path}: this folder holds a phantom cohort made with other settings "
                f"{ {k: old_v for k, (old_v, _) in diff.items()} } than asked {manifest}; "
                f"use another --out folder or delete {out_dir}")
    else:
        path.write_text(json.dumps(manifest, indent=1) + "\n")


def write_cohort(out_dir: str | Path, n: int, seed: int = 0, naming: str = "brats2021",
                 spacing: float = 1.0, workers: int = 1, progress=None,
                 version: int = PHANTOM_VERSION) -> list[Path]:
    """Write subjects ``0 .. n-1`` as a BraTS NIfTI folder; return their folders in order.

    Complete subjects already there are skipped; each new one is written to ``out_dir/.partial`` and
    moved into place with ``os.replace``. ``workers > 1`` uses a spawn process pool. ``progress``,
    if given, is called with each subject's folder as it completes (skipped ones first). ``version``
    is the phantom version (recorded in ``phantom.json``; a folder holds one version).
    """
    if naming not in NAMINGS:
        raise ConfigError(f"unknown naming {naming!r}: use one of {sorted(NAMINGS)}")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (number of phantom subjects) must be an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    grid(spacing)  # validates spacing
    version = check_version(version)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, {"generator": "cclray phantom", "version": version, "seed": seed,
                              "spacing": float(spacing), "naming": naming})
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)  # leftovers of an interrupted run

    sids = [subject_id(i, naming) for i in range(n)]
    todo = [(out_dir, sid, subject_seed(seed, i), naming, float(spacing), version)
            for i, sid in enumerate(sids) if not _is_complete(out_dir / sid, sid, naming)]
    skipped = n - len(todo)
    if skipped:
        log.info("%d of %d phantom subject(s) already complete in %s: skipped", skipped, n, out_dir)
    if progress is not None:
        for sid in sids:
            if _is_complete(out_dir / sid, sid, naming):
                progress(out_dir / sid)
    if workers == 1 or len(todo) <= 1:
        for task in todo:
            done = write_subject(*task)
            if progress is not None:
                progress(done)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_write_task, task) for task in todo]
            for fut in as_completed(futures):
                done = Path(fut.result())
                if progress is not None:
                    progress(done)
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
    log.info("phantom cohort: %d subject(s) in %s (%d written)", n, out_dir, len(todo))
    return [out_dir / sid for sid in sids]
