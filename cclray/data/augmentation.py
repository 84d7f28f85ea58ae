"""Geometric augmentation of a training patch: random flips, a random 3D rotation and an isotropic scale,
one affine for input, target, mask and constraint labels.

Intensities are never changed: the network maps input intensities to target intensities, and a change of the
inputs alone would teach it to ignore what it must map (docs/METHOD.md). Images (input and target channels) are
resampled with linear interpolation, the mask and the constraint labels with nearest neighbour, so labels keep
their values and the pair stays voxel-for-voxel consistent.

Rotation: about a uniformly random axis, by an angle uniform in ``[-rotate_deg, rotate_deg]``. One axis-angle
rotation (rather than three per-axis angles) bounds the *total* rotation by ``rotate_deg`` whatever the axis,
prefers no axis, and gives the exact worst-case margin below (three per-axis 15 degree angles compose to up to
about 26 degrees, depending on their order). Scale ``s``: the anatomy appears ``s`` times larger.

No padding artifacts: the caller cuts a *source* box larger than the patch by :func:`affine_margin` voxels on
each side (enough for the worst rotation and the smallest scale, plus one voxel of slack for rounding),
the affine maps every patch voxel into it, and the patch is its transformed centre. Only where the volume itself
is smaller than the source box is the source padded (zeros, mask False, like the patch padding of
:func:`cclray.data.sampling.cut`); a patch voxel whose interpolation touches that padding is left out of the
mask (``valid``).

Flips only (``rotate_deg=0``, ``scale=(1, 1)``) take the exact ``np.flip`` path, with the same random draws.
Pure numpy + scipy.ndimage, no torch.
"""
from __future__ import annotations

import math

import numpy as np


def affine_margin(patch_size, rotate_deg: float, scale: tuple[float, float]) -> tuple[int, int, int]:
    """Voxels to add on each side of a ``patch_size`` patch so that any rotation by at most ``rotate_deg``
    (about any axis) and any scale ``>= scale[0]`` samples only inside the enlarged box. ``(0, 0, 0)`` when
    there is no rotation or scale (flips need none).

    Exact worst case: patch voxel offsets from the centre are at most ``h_j = (p_j - 1) / 2``; a rotation by at
    most ``theta`` keeps the diagonal entry ``R_ii >= cos(theta)``, so the source offset along axis ``i`` is at most
    ``(h_i cos(psi) + |h_{-i}| sin(psi)) / s_min`` with ``psi = min(theta, atan2(|h_{-i}|, h_i))``."""
    if rotate_deg == 0 and tuple(scale) == (1.0, 1.0):
        return (0, 0, 0)
    h = np.array([(int(p) - 1) / 2 for p in patch_size])
    theta = math.radians(rotate_deg)
    out = []
    for i in range(3):
        rest = float(np.linalg.norm(np.delete(h, i)))
        psi = min(theta, math.atan2(rest, h[i]))
        reach = (h[i] * math.cos(psi) + rest * math.sin(psi)) / min(scale)
        out.append(max(0, math.ceil(reach - h[i] - 1e-9)) + 1)
    return tuple(out)


def random_affine(rng: np.random.Generator, rotate_deg: float, scale: tuple[float, float]) -> np.ndarray:
    """The ``(3, 3)`` matrix from patch voxel offsets to source offsets: ``R @ F / s`` for a random flip
    ``F = diag(+-1)``, rotation ``R`` (random axis, angle uniform in ``[-rotate_deg, rotate_deg]``) and
    scale ``s`` uniform in ``scale``. Draws: 3 flips (as :func:`flips`), 3 normals, 1 angle, 1 scale."""
    from scipy.spatial.transform import Rotation

    f = np.array([-1.0 if rng.random() < 0.5 else 1.0 for _ in range(3)])
    axis = rng.normal(size=3)
    axis /= max(float(np.linalg.norm(axis)), 1e-12)
    angle = math.radians(rng.uniform(-rotate_deg, rotate_deg))
    s = rng.uniform(scale[0], scale[1])
    rot = Rotation.from_rotvec(angle * axis).as_matrix()
    return rot @ np.diag(f) / s


def apply_affine(matrix: np.ndarray, x: np.ndarray, y: np.ndarray | None, m: np.ndarray, k: np.ndarray | None,
                 size, valid: np.ndarray | None = None):
    """The ``size`` patch at the centre of the source arrays, resampled by ``matrix`` (patch offset -> source
    offset, both about their centres): ``x`` ``(C, ...)`` and ``y`` ``(T, ...)`` linearly, mask ``m`` and labels
    ``k`` by nearest neighbour. ``valid`` (bool, source shape): False where the source is padding; patch voxels
    whose interpolation reaches it get mask False. Returns ``(x, y, m, k)`` of spatial shape ``size``."""
    from scipy.ndimage import affine_transform

    size = tuple(int(p) for p in size)
    src = np.array(m.shape, dtype=np.float64)
    offset = (src - 1) / 2 - matrix @ ((np.array(size, dtype=np.float64) - 1) / 2)

    def warp(a, order, dtype):
        return affine_transform(a, matrix, offset, output_shape=size, output=dtype, order=order, mode="nearest",
                                prefilter=False)

    x = np.stack([warp(c, 1, np.float32) for c in x])
    y = np.stack([warp(c, 1, np.float32) for c in y]) if y is not None else None
    mo = warp(m.astype(np.uint8), 0, np.uint8).astype(bool)
    k = warp(k, 0, k.dtype) if k is not None else None
    if valid is not None and not valid.all():
        mo &= warp(valid.astype(np.float32), 1, np.float32) >= 1.0 - 1e-6
    return x, y, mo, k


def flips(rng: np.random.Generator, x, y, m, k):
    """Random flips of the 3 spatial axes (each with probability 1/2), the same for all four arrays."""
    for axis in range(3):
        if rng.random() < 0.5:
            x = np.flip(x, axis + 1)
            y = np.flip(y, axis + 1) if y is not None else None
            m = np.flip(m, axis)
            k = np.flip(k, axis) if k is not None else None
    return x, y, m, k


def augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray | None, m: np.ndarray, k: np.ndarray | None,
            rotate_deg: float = 0.0, scale: tuple[float, float] = (1.0, 1.0), size=None,
            valid: np.ndarray | None = None):
    """Random flips, rotation and scale, the same for input ``x`` ``(C, X, Y, Z)``, target ``y`` ``(T, X, Y, Z)``
    (or None), mask ``m`` and constraint labels ``k`` ``(X, Y, Z)`` (or None).

    ``size``: the patch returned, cut from the centre of the (larger) source arrays; default their shape.
    With a rotation or scale the sources must be at least ``size + 2 * affine_margin(size, rotate_deg, scale)``
    (the module docstring); ``valid`` marks their real (not padded) voxels."""
    size = tuple(m.shape) if size is None else tuple(int(p) for p in size)
    if rotate_deg == 0 and tuple(scale) == (1.0, 1.0):
        if tuple(m.shape) != size:
            raise ValueError(f"flips only: the arrays {m.shape} must be the patch {size}")
        return flips(rng, x, y, m, k)
    need = tuple(p + 2 * g for p, g in zip(size, affine_margin(size, rotate_deg, scale)))
    if any(s < n for s, n in zip(m.shape, need)):
        raise ValueError(f"source arrays {m.shape} are smaller than the patch {size} plus its margin: cut {need}")
    return apply_affine(random_affine(rng, rotate_deg, scale), x, y, m, k, size, valid)
