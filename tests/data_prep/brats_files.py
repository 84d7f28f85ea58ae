"""Tiny BraTS-layout NIfTI subjects for the data_prep tests (not a test module itself)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.schema import CONTRASTS, NAMINGS

SHAPE = (24, 28, 20)
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
SIDS = {"brats2021": "BraTS2021_{:05d}", "brats2023": "BraTS-GLI-{:05d}-000"}


def make_volumes(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(4, X, Y, Z)`` int16 contrasts (an ellipsoid brain, 0 outside) and a ``(X, Y, Z)`` seg."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.8, 0.75, 0.7])[:, None, None, None]) ** 2).sum(0))
    brain = r < 1
    lesion = np.sqrt(((grid - np.array([0.3, 0.2, 0.0])[:, None, None, None]) ** 2).sum(0)) < 0.25
    vols = np.zeros((4, *shape), np.int16)
    for i in range(4):
        base = 300 + 200 * i + 150 * np.cos(3 * r + i) + 400 * lesion * (i % 2 * 2 - 1) * 0.5
        vols[i] = np.where(brain, np.clip(base + rng.normal(0, 20, shape), 1, None), 0).astype(np.int16)
    seg = np.where(lesion & brain, 2, 0).astype(np.uint8)
    seg[lesion & brain & (r < 0.5)] = 4
    return vols, seg


def save(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_subject_dir(root: Path, index: int = 1, naming: str = "brats2021", shape=SHAPE, seed: int | None = None,
                      seg: bool = True) -> Path:
    """Write one subject folder ``root/<sid>/`` in ``naming``; return the folder."""
    n = NAMINGS[naming]
    sid = SIDS[naming].format(index)
    folder = Path(root) / sid
    folder.mkdir(parents=True, exist_ok=True)
    vols, labels = make_volumes(shape, index if seed is None else seed)
    for c, v in zip(CONTRASTS, vols):
        save(folder / n.filename(sid, c), v)
    if seg:
        save(folder / n.filename(sid, "seg"), labels)
    return folder


def contrast_file(folder: Path, contrast: str) -> Path:
    """Path of ``contrast`` (or "seg") in a subject folder written by :func:`write_subject_dir`."""
    for naming in NAMINGS.values():
        p = folder / naming.filename(folder.name, contrast)
        if p.exists():
            return p
    raise FileNotFoundError(f"{folder}: no {contrast}")


# ------------------------------------------------------------------ constraint stand-in
def _stub_map(volumes, mask, k=20, seed=0):
    """Quantile bins of the first channel: labels 1..k inside ``mask``, 0 outside."""
    v = volumes[0][mask]
    edges = np.quantile(v, np.linspace(0, 1, k + 1)[1:-1])
    out = np.zeros(mask.shape, np.uint8)
    out[mask] = np.digitize(v, edges) + 1
    return out


