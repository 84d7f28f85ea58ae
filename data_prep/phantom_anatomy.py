"""Phantom anatomy: the output grid and one subject's warped ICBM152 brain (tissue fractions, positions).

The ICBM152 2009a GM/WM probability maps and brain mask shipped in the nilearn wheel (CSF = brain
minus GM and WM) are resampled once (``map_coordinates``, order 1) through a composed random affine
(rotation +-8 deg, scale +-8 %, translation +-5 mm) and a smooth elastic displacement (cubic B-spline
on a ~32 mm control grid, a few mm) into a BraTS/SRI24-like grid: 240x240x155 at 1 mm (``spacing`` s
gives ``round(240/s, 240/s, 155/s)``, same field of view), RAS affine. Shared by every phantom version.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .config import ConfigError
from .phantom_lesion import smooth_field

GRID_1MM: tuple[int, int, int] = (240, 240, 155)  # BraTS / SRI24 field of view at 1 mm
GRID_CENTRE_MM = (0.0, -17.0, 10.0)  # MNI point at the grid centre: brain centred, top of head kept


def grid(spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output grid of a spacing: ``(shape (X, Y, Z), affine (4, 4))``, RAS, centred on the brain."""
    if not (isinstance(spacing, (int, float)) and 0.25 <= spacing <= 16):
        raise ConfigError(f"phantom spacing must be a number of mm in [0.25, 16], got {spacing!r}")
    shape = tuple(int(round(n / spacing)) for n in GRID_1MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(GRID_CENTRE_MM) - spacing * (np.asarray(shape) - 1) / 2.0
    return shape, affine


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


# ---------------------------------------------------------------------------------------- brain
@dataclass(frozen=True)
class Brain:
    """One subject's warped brain, as flat arrays over its ``V`` brain voxels.

    ``gm``, ``wm`` ``(V,)`` float32 fractions (CSF is the rest); ``vox`` ``(3, V)`` int output voxel
    indices; ``tpl_mm`` ``(3, V)`` MNI position (where a lesion may sit); ``out_mm`` ``(3, V)`` float32
    output world position; ``shape``/``affine`` the output grid; ``box`` the output box holding the brain.
    """

    gm: np.ndarray
    wm: np.ndarray
    vox: np.ndarray
    tpl_mm: np.ndarray
    out_mm: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    box: tuple

    @property
    def flat(self) -> np.ndarray:
        """``(V,)`` flat indices of the brain voxels in the output grid."""
        return np.ravel_multi_index(tuple(self.vox), self.shape)

    def to_grid(self, values: np.ndarray, dtype=None) -> np.ndarray:
        """``(V,)`` values -> ``shape`` volume, 0 outside the brain."""
        out = np.zeros(self.shape, dtype=dtype or values.dtype)
        out.flat[self.flat] = values
        return out


def warped_brain(rng: np.random.Generator, spacing: float) -> Brain:
    """Draw one subject's warp (the first draws of its generator) and resample the template through it."""
    from scipy.ndimage import map_coordinates

    shape, affine = grid(spacing)
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
    tpl_mm = tpl_affine[:3, :3] @ pts + tpl_affine[:3, 3:]  # (3, V) MNI mm
    out_mm = (affine[:3, :3] @ vox + affine[:3, 3:]).astype(np.float32)  # (3, V) output world mm
    return Brain(gm=gm, wm=wm, vox=vox, tpl_mm=tpl_mm, out_mm=out_mm, shape=shape, affine=affine, box=box)
