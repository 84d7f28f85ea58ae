"""The phantom cohort: physics-based BraTS-like subjects, so everything runs with no download.

Per subject (all randomness from one seed):

1. **Anatomy**: the ICBM152 2009a GM/WM probability maps and brain mask shipped in the nilearn wheel
   (CSF = brain minus GM and WM), resampled once (``map_coordinates``, order 1) through a composed
   random affine (rotation +-8 deg, scale +-8 %, translation +-5 mm) and a smooth elastic displacement
   (cubic B-spline on a ~32 mm control grid, a few mm) into a BraTS/SRI24-like grid: 240x240x155 at
   1 mm (``spacing`` s gives ``round(240/s, 240/s, 155/s)``, same field of view), RAS affine.
2. **Lesion** (:mod:`data_prep.phantom_lesion`): a glioma-like lesion in one hemisphere's white
   matter: necrosis (label 1) inside an enhancing rim (4) inside edema (2), irregular shells.
3. **Signal** (:mod:`data_prep.phantom_tissue`): tissue fractions times per-tissue signals of the
   four contrasts, a smooth multiplicative bias field (+-15 %), Rician noise, background exactly 0
   outside the warped brain mask, int16.

:func:`write_cohort` writes the BraTS NIfTI layout (2021 or 2023 naming), atomically per subject,
skipping complete subjects on a rerun. Subject ``i``'s seed derives from ``(seed, i)``.
"""
from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .phantom_lesion import grow_lesion, smooth_field
from .phantom_tissue import TISSUES, jitter_tissues, tissue_signals
from .schema import CONTRASTS, NAMINGS, safe_subject_id

log = logging.getLogger(__name__)

PHANTOM_VERSION = 1
GRID_1MM: tuple[int, int, int] = (240, 240, 155)  # BraTS / SRI24 field of view at 1 mm
GRID_CENTRE_MM = (0.0, -17.0, 10.0)  # MNI point at the grid centre: brain centred, top of head kept
MANIFEST = "phantom.json"
PARTIAL_DIR = ".partial"
GAIN = 4000.0  # signal units -> int16 (pure tissues land in ~0..2500)
_WHAT = (*CONTRASTS, "seg")


# ----------------------------------------------------------------------------------------- grid
def grid(spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output grid of a spacing: ``(shape (X, Y, Z), affine (4, 4))``, RAS, centred on the brain."""
    if not (isinstance(spacing, (int, float)) and 0.25 <= spacing <= 16):
        raise ValueError(f"phantom spacing must be a number of mm in [0.25, 16], got {spacing!r}")
    shape = tuple(int(round(n / spacing)) for n in GRID_1MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(GRID_CENTRE_MM) - spacing * (np.asarray(shape) - 1) / 2.0
    return shape, affine


def subject_id(i: int, naming: str = "brats2021") -> str:
    """Subject id of cohort member ``i``: ``BraTS2021_00000`` or ``BraTS-GLI-00000-000``."""
    return f"BraTS2021_{i:05d}" if naming == "brats2021" else f"BraTS-GLI-{i:05d}-000"


def subject_seed(seed: int, i: int) -> int:
    """Seed of subject ``i`` of a cohort seeded ``seed`` (independent of the cohort size)."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0])


# ------------------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=1)
def _mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ICBM152 2009a ``(gm, wm, brain)`` float32 (197, 233, 189) and their affine, loaded once per process."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    arrays = [np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32) for img in (gm, wm, brain)]
    return (*arrays, np.asarray(brain.affine, dtype=np.float64))


@functools.lru_cache(maxsize=2)
def _template(spacing: float):
    """Templates pre-blurred for a coarser output grid (partial volume instead of aliasing)."""
    gm, wm, brain, affine = _mni()
    sigma = 0.42 * math.sqrt(max(spacing**2 - 1.0, 0.0))  # FWHM of the coarser voxel, less the 1 mm one
    if sigma > 0.1:
        from scipy.ndimage import gaussian_filter

        gm, wm, brain = (gaussian_filter(a, sigma, mode="constant") for a in (gm, wm, brain))
    cloud = np.argwhere(brain > 0.01)[::37].T.astype(np.float64)  # (3, ~50k) voxels of the brain
    return gm, wm, brain, affine, cloud


# ----------------------------------------------------------------------------------------- warp
def _rotation(deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sampling(rng: np.random.Generator, shape, affine, tpl_affine, tpl_cloud, spacing: float):
    """Output box and template voxel coordinates of every output voxel in it.

    Returns ``(box ((x0, x1), (y0, y1), (z0, z1)), coords (3, bx, by, bz) float32)``: the composed
    transform (random affine about the grid centre, then elastic displacement) maps output voxel
    ``(i, j, k)`` to template voxel ``coords[:, i, j, k]``; voxels outside ``box`` see no brain.
    """
    centre = np.asarray(GRID_CENTRE_MM)
    m = _rotation(rng.uniform(-8, 8, 3)) @ np.diag(rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3))
    shift = rng.uniform(-5, 5, 3)
    world = np.eye(4)  # output world -> template world
    world[:3, :3], world[:3, 3] = m, centre + shift - m @ centre
    to_tpl = np.linalg.inv(tpl_affine) @ world @ affine  # output voxel -> template voxel
    max_disp = 6.0  # mm, elastic displacement clip
    pad = max_disp / spacing + 2
    # where the brain lands in the output grid: template brain voxels mapped back, grown by `pad`
    out_vox = np.linalg.inv(to_tpl)[:3, :3] @ tpl_cloud + np.linalg.inv(to_tpl)[:3, 3:]
    lower = max(out_vox[2].max() + max_disp / spacing + 1 - (shape[2] - 1), 0.0)  # keep the vertex
    if lower:
        to_tpl = to_tpl @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, lower], [0, 0, 0, 1.0]])
        out_vox[2] -= lower
    box = tuple((max(int(math.floor(out_vox[a].min() - pad)), 0),
                 min(int(math.ceil(out_vox[a].max() + pad)) + 1, shape[a])) for a in range(3))
    bshape = tuple(b - a for a, b in box)
    n_ctrl = tuple(max(int(round(n * spacing / 32.0)) + 3, 4) for n in bshape)
    disp = np.clip(smooth_field(rng, bshape, n_ctrl, sd=3.0, n=3), -max_disp, max_disp)  # (3, bx, by, bz) mm
    lin = np.linalg.inv(tpl_affine)[:3, :3]  # mm -> template voxels
    ijk = [np.arange(a, b, dtype=np.float32) for a, b in box]
    coords = np.empty((3, *bshape), dtype=np.float32)
    for r in range(3):
        c = coords[r]
        c[...] = np.float32(to_tpl[r, 3])
        c += np.float32(to_tpl[r, 0]) * ijk[0][:, None, None]
        c += np.float32(to_tpl[r, 1]) * ijk[1][None, :, None]
        c += np.float32(to_tpl[r, 2]) * ijk[2][None, None, :]
        for q in range(3):
            if lin[r, q] != 0:
                c += np.float32(lin[r, q]) * disp[q]
    return box, coords


# -------------------------------------------------------------------------------------- subject
def _bias(rng: np.random.Generator, xyz: np.ndarray, n: int) -> np.ndarray:
    """``(n, V)`` multiplicative fields ``1 + b``: random degree-2 polynomials, ``max|b|`` in 5-15 %."""
    x, y, z = xyz
    terms = np.stack([x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, x * z, y * z])
    b = rng.standard_normal((n, len(terms))).astype(np.float32) @ terms
    b *= (rng.uniform(0.05, 0.15, n) / np.maximum(np.abs(b).max(axis=1), 1e-6))[:, None].astype(np.float32)
    return 1.0 + b


def make_subject(sid: str, seed: int, spacing: float = 1.0, return_tissue: bool = False) -> dict:
    """One phantom subject, deterministic in ``seed`` (``sid`` is only carried along).

    Returns ``dict(sid, images={contrast: (X, Y, Z) int16}, seg (X, Y, Z) uint8 (0/1/2/4),
    mask (X, Y, Z) bool, affine (4, 4))`` and, with ``return_tissue``, ``tissue={name: (X, Y, Z)
    float32 fraction}`` for the names of :data:`data_prep.phantom_tissue.TISSUES`.
    """
    from scipy.ndimage import map_coordinates

    shape, affine = grid(spacing)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    gm_t, wm_t, brain_t, tpl_affine, tpl_cloud = _template(float(spacing))
    box, coords = _sampling(rng, shape, affine, tpl_affine, tpl_cloud, spacing)

    inside = map_coordinates(brain_t, coords, order=1, mode="constant", cval=0.0, output=np.float32) >= 0.5
    pts = coords[:, inside]  # (3, V) template voxel coordinates of brain voxels
    del coords
    gm = map_coordinates(gm_t, pts, order=1, mode="constant", output=np.float32)
    wm = map_coordinates(wm_t, pts, order=1, mode="constant", output=np.float32)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    vox = np.stack(np.nonzero(inside)) + np.asarray([a for a, _ in box])[:, None]  # (3, V) output voxels
    tpl_mm = tpl_affine[:3, :3] @ pts + tpl_affine[:3, 3:]  # (3, V) MNI mm: where the lesion may sit
    out_mm = (affine[:3, :3] @ vox + affine[:3, 3:]).astype(np.float32)  # (3, V) output world mm

    lesion = grow_lesion(rng, out_mm, tpl_mm, wm, spacing)  # fractions (3, V) core/enh/edema, labels (V,)
    normal = 1.0 - lesion.fractions.sum(axis=0)
    frac = np.stack([wm * normal, gm * normal, (1.0 - gm - wm) * normal, *lesion.fractions])  # (6, V)

    signals = tissue_signals(jitter_tissues(rng)).astype(np.float32)  # (6 tissues, 4 contrasts)
    clean = signals.T @ frac  # (4, V)
    centre, half = (np.asarray(shape)[:, None] - 1) / 2.0, np.asarray(shape)[:, None] / 2.0
    clean *= _bias(rng, ((vox - centre) / half).astype(np.float32), len(CONTRASTS))
    gain = (GAIN * rng.uniform(0.9, 1.1, len(CONTRASTS))).astype(np.float32)[:, None]
    sigma = (rng.uniform(0.01, 0.025, len(CONTRASTS)) * clean.mean(axis=1)).astype(np.float32)[:, None]
    re = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    magnitude = np.sqrt(re * re + im * im) * gain  # Rician
    values = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)  # > 0 in the brain

    flat = np.ravel_multi_index(tuple(vox), shape)
    images = {}
    for c, contrast in enumerate(CONTRASTS):
        img = np.zeros(shape, dtype=np.int16)  # background exactly 0 (skull-stripped)
        img.flat[flat] = values[c]
        images[contrast] = img
    seg = np.zeros(shape, dtype=np.uint8)
    seg.flat[flat] = lesion.labels
    mask = np.zeros(shape, dtype=bool)
    mask.flat[flat] = True
    out = {"sid": sid, "images": images, "seg": seg, "mask": mask, "affine": affine}
    if return_tissue:
        out["tissue"] = {}
        for name, f in zip(TISSUES, frac):
            vol = np.zeros(shape, dtype=np.float32)
            vol.flat[flat] = f
            out["tissue"][name] = vol
    return out


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
                  spacing: float = 1.0) -> Path:
    """Generate one subject and write its five files atomically to ``out_dir/sid``; return that folder."""
    out_dir = Path(out_dir)
    final = out_dir / safe_subject_id(sid)
    tmp = out_dir / PARTIAL_DIR / f"{sid}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    subject = make_subject(sid, seed, spacing)
    descrip = f"cclray phantom v{PHANTOM_VERSION} seed={seed}"
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
            raise ValueError(
                f"{path}: this folder holds a phantom cohort made with other settings "
                f"{ {k: old_v for k, (old_v, _) in diff.items()} } than asked {manifest}; "
                f"use another --out folder or delete {out_dir}")
    else:
        path.write_text(json.dumps(manifest, indent=1) + "\n")


def write_cohort(out_dir: str | Path, n: int, seed: int = 0, naming: str = "brats2021",
                 spacing: float = 1.0, workers: int = 1, progress=None) -> list[Path]:
    """Write subjects ``0 .. n-1`` as a BraTS NIfTI folder; return their folders in order.

    Complete subjects already there are skipped; each new one is written to ``out_dir/.partial`` and
    moved into place with ``os.replace``. ``workers > 1`` uses a spawn process pool. ``progress``,
    if given, is called with each subject's folder as it completes (skipped ones first).
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}: use one of {sorted(NAMINGS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of phantom subjects) must be an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    grid(spacing)  # validates spacing
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, {"generator": "cclray phantom", "version": PHANTOM_VERSION, "seed": seed,
                              "spacing": float(spacing), "naming": naming})
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)  # leftovers of an interrupted run

    sids = [subject_id(i, naming) for i in range(n)]
    todo = [(out_dir, sid, subject_seed(seed, i), naming, float(spacing))
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
