"""Inputs the benchmarks share, built once and kept under ``--work``: a BraTS-layout NIfTI cohort
and the cclray store ``cclray prep`` makes of it.

``source="phantom"``: the project's phantom cohort (:mod:`data_prep.phantom`, 240x240x155 at 1 mm).
``source="synthetic"``: smooth random int16 volumes in an ellipsoid brain, any shape, written in
well under a second (the smoke sizes).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def synthetic_cohort(out: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` BraTS 2021-layout subjects of ``shape`` (4 contrasts + seg) under ``out``; kept if there."""
    import nibabel as nib

    from data_prep.schema import CONTRASTS, NAMINGS

    naming = NAMINGS["brats2021"]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))  # (3, X, Y, Z)
    r = np.sqrt(((grid / np.array([0.6, 0.75, 0.7])[:, None, None, None]) ** 2).sum(0))
    for i in range(n):
        sid = f"BraTS2021_{i:05d}"
        folder = out / sid
        if (folder / naming.filename(sid, "seg")).exists():
            continue
        rng = np.random.default_rng(i)
        folder.mkdir(parents=True, exist_ok=True)
        for j, c in enumerate(CONTRASTS):
            v = 400 + 150 * np.cos(6 * r + j + i) + rng.normal(0, 25, shape)
            nib.save(nib.Nifti1Image(np.where(r < 1, v, 0).astype(np.int16), np.eye(4)),
                     str(folder / naming.filename(sid, c)))
        seg = ((r < 0.3) * 2).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / naming.filename(sid, "seg")))
    return out


def cohort(work: Path, n: int, source: str = "phantom", spacing: float = 1.0,
           shape: tuple[int, int, int] = (96, 96, 64), workers: int = 2) -> Path:
    """The NIfTI folder of ``n`` subjects (made once, reused)."""
    if source == "phantom":
        from data_prep.phantom import write_cohort

        out = Path(work) / f"nifti-phantom-{spacing:g}mm"
        write_cohort(out, n, seed=0, spacing=spacing, workers=workers)
        return out
    out = Path(work) / f"nifti-synthetic-{'x'.join(map(str, shape))}"
    return synthetic_cohort(out, n, shape)


def subset(src: Path, n: int, dest: Path) -> Path:
    """A folder of symlinks to the first ``n`` subject folders of ``src`` (prep one subset of a cohort)."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))[:n]
    if len(folders) < n:
        raise RuntimeError(f"{src} holds {len(folders)} subjects, {n} wanted")
    for f in folders:
        (dest / f.name).symlink_to(f.resolve())
    return dest


def prepared_store(work: Path, n: int, source: str = "phantom", spacing: float = 1.0,
                   shape: tuple[int, int, int] = (96, 96, 64), workers: int = 2) -> str:
    """URL of a store prepared (default PrepConfig: layout, constraint map) from ``n`` subjects of
    :func:`cohort`; made once and reused (prep skips complete subjects). Splits: pretrain 1,
    finetune the rest."""
    from data_prep.prep import PrepConfig, run_prep

    src = cohort(work, n, source, spacing, shape, workers)
    tag = f"{spacing:g}mm" if source == "phantom" else "x".join(map(str, shape))
    url = str(Path(work) / f"store-{source}-{tag}-n{n}.zarr")
    cfg = PrepConfig.from_dict({"splits": {"pretrain": 1, "finetune": max(1, n - 1)}})
    report = run_prep(subset(src, n, Path(work) / f"subset-{source}-{tag}-n{n}"), url, cfg, workers=workers)
    if report.failed:
        raise RuntimeError(f"prep of {src} failed for {report.failed}")
    return url
