"""A glioma-like lesion for one phantom subject: nested irregular shells with BraTS labels.

Necrotic core (label 1) inside an enhancing rim (label 4) inside vasogenic edema (label 2, the
largest, reaching further along white matter than into grey matter or CSF). The centre is a random
white-matter voxel of one hemisphere, away from the cerebellum and brain stem; shell radii are
random and every boundary is perturbed by a smooth random field so no two lesions look alike.
Boundaries are soft over one voxel, so the lesion has partial volume like the tissues around it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Lesion compartments, in the row order of :attr:`Lesion.fractions`, and their BraTS labels.
COMPARTMENTS: tuple[str, ...] = ("necrosis", "enhancing", "edema")
LABELS: dict[str, int] = {"necrosis": 1, "enhancing": 4, "edema": 2}


@dataclass(frozen=True)
class Lesion:
    """``fractions (3, V)`` float32 per :data:`COMPARTMENTS`; ``labels (V,)`` uint8 BraTS labels (0 = none)."""

    fractions: np.ndarray
    labels: np.ndarray
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]  # core, enhancing rim outer, edema (unperturbed)


def _choose_centre(rng: np.random.Generator, tpl_mm: np.ndarray, wm: np.ndarray) -> int:
    """Index of a random deep white-matter voxel in one hemisphere (MNI mm window), else any WM voxel."""
    hemi = rng.choice([-1.0, 1.0])
    x, y, z = tpl_mm
    ok = (wm >= 0.9) & (x * hemi >= 15) & (x * hemi <= 42) & (y >= -70) & (y <= 30) & (z >= 0) & (z <= 42)
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:  # an extreme warp: fall back to the most white-matter voxels
        candidates = np.flatnonzero(wm >= np.quantile(wm, 0.9))
    return int(rng.choice(candidates))


def _bspline_weights(n: int, n_ctrl: int) -> np.ndarray:
    """``(n, n_ctrl)`` cubic B-spline weights of ``n`` samples on ``n_ctrl`` evenly spread control points."""
    x = np.linspace(1.0, n_ctrl - 2.0, n)[:, None] - np.arange(n_ctrl)[None, :]
    a = np.abs(x)
    w = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def smooth_field(rng: np.random.Generator, shape, n_ctrl, sd: float, n: int = 1) -> np.ndarray:
    """``(n, *shape)`` float32 smooth random fields: N(0, sd) control points, cubic B-spline tensor product."""
    ws = [_bspline_weights(s, c) for s, c in zip(shape, n_ctrl)]
    ctrl = (sd * rng.standard_normal((n, *n_ctrl))).astype(np.float32)
    return np.einsum("xa,yb,zc,nabc->nxyz", *ws, ctrl, optimize=True)


def grow_lesion(rng: np.random.Generator, out_mm: np.ndarray, tpl_mm: np.ndarray, wm: np.ndarray,
                spacing: float) -> Lesion:
    """Lesion over the brain voxels of one subject.

    ``out_mm (3, V)``: output-world position of each brain voxel; ``tpl_mm (3, V)``: its MNI
    position (chooses the hemisphere and depth); ``wm (V,)``: white-matter fraction; ``spacing``: mm.
    """
    centre = out_mm[:, _choose_centre(rng, tpl_mm, wm)]
    r_edema = rng.uniform(20.0, 35.0)
    r_enh = r_edema * rng.uniform(0.35, 0.6)
    r_core = max(r_enh * rng.uniform(0.4, 0.7), 4.0)
    r_enh = max(r_enh, r_core + 3.0)  # a rim at least ~3 mm thick
    reach = 1.45 * r_edema + spacing  # no boundary below can reach further
    offsets = out_mm - centre[:, None].astype(np.float32)
    near = np.flatnonzero(np.all(np.abs(offsets) <= reach, axis=0))
    off = offsets[:, near]
    dist = np.sqrt((off * off).sum(axis=0))
    half = int(np.ceil(reach / spacing))  # offsets are whole voxels: evaluate the fields on that cube
    cube = (2 * half + 1,) * 3
    fields = np.clip(smooth_field(rng, cube, (8, 8, 8), sd=1.6, n=3), -1.0, 1.0)  # (3, *cube)
    idx = tuple(np.rint(off / spacing).astype(np.intp) + half)
    inner_shape, outer_shape, spread = fields[(slice(None), *idx)]
    rho_core = dist / (1.0 + 0.3 * inner_shape)  # irregular core, rim of uneven thickness
    rho = dist / (1.0 + 0.2 * outer_shape)
    rho_edema = dist / ((1.0 + 0.25 * spread) * (0.6 + 0.55 * wm[near]))  # edema follows white matter

    def soft(r, radius):  # 1 inside, 0 outside, linear over one voxel
        return np.clip((radius - r) / spacing + 0.5, 0.0, 1.0)

    core = np.minimum(soft(rho_core, r_core), soft(rho, r_enh))
    inner = soft(rho, r_enh)  # core + rim
    whole = np.maximum(inner, soft(rho_edema, r_edema))
    fractions = np.zeros((3, out_mm.shape[1]), dtype=np.float32)
    fractions[:, near] = np.stack([core, inner - core, whole - inner])
    labels = np.zeros(out_mm.shape[1], dtype=np.uint8)
    labels[near] = np.where(core >= 0.5, LABELS["necrosis"],
                            np.where(inner >= 0.5, LABELS["enhancing"],
                                     np.where(whole >= 0.5, LABELS["edema"], 0)))
    return Lesion(fractions, labels, tuple(float(v) for v in centre), (r_core, r_enh, r_edema))
