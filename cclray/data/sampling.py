"""Where patches come from: subject sharding, per-worker sample counts, centre and box choice.

Pure numpy, no torch, no I/O: :mod:`cclray.data.patches` reads what these functions decide.
Boxes are ``((x0, x1), (y0, y1), (z0, z1))`` in the subject's cropped voxel grid (the store's
``image`` axes 1..3), half-open.
"""
from __future__ import annotations

import zlib

import numpy as np

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: Foreground voxels kept per subject to choose region centres from (a random subset of the mask:
#: statistically the same choice, a few dozen KB per subject instead of ~5 MB).
FG_SAMPLE = 16384


def shard_subjects(subjects: list, rank: int, world_size: int) -> list:
    """The subjects of ``rank`` among ``world_size``: ``subjects[rank::world_size]`` (ids, or the
    ``(store, id)`` items of several stores: the same rule, so ranks stay disjoint and each gets its share
    of every store that has at least ``world_size`` subjects).

    Subjects, not patches, are split (each rank reads only its own). With fewer subjects than
    ranks, ranks share round-robin: rank ``r`` gets ``[subjects[r % n]]``, one subject each, so
    no rank ever loads every subject.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if not subjects:
        raise ValueError("no subjects to shard: pass a non-empty subject list (check the split name)")
    if len(subjects) < world_size:
        return [subjects[rank % len(subjects)]]
    return list(subjects[rank::world_size])


def pass_visits(rng: np.random.Generator, items: list, weights: list[float]) -> list:
    """One pass over ``items``: item ``j`` ``weights[j]`` times, the whole part always and the fraction by
    chance; never empty (a pass with no visit is drawn again). Whole weights draw nothing from ``rng``, so
    weights of 1 give ``items`` itself and one store samples as it always did."""
    if all(float(w).is_integer() for w in weights):
        return [it for it, w in zip(items, weights) for _ in range(int(w))]
    while True:
        out = [it for it, w in zip(items, weights) for _ in range(int(w) + int(rng.random() < w - int(w)))]
        if out:
            return out


def worker_count(n: int, parts: int, index: int, batch_size: int) -> int:
    """Samples part ``index`` of ``parts`` yields when ``n`` samples are dealt in whole batches.

    DataLoader workers batch their own samples, so dealing whole batches keeps the number of
    batches of the rank at ``ceil(n / batch_size)`` for any worker count (equal DDP step counts).
    """
    n_batches = -(-n // batch_size)
    mine = range(index, n_batches, parts)  # batch b goes to worker b % parts
    return sum(min(batch_size, n - b * batch_size) for b in mine)


def subject_seed(seed: int, sid: str) -> np.random.Generator:
    """An rng that depends only on ``seed`` and the subject id (not on worker or visit order)."""
    return np.random.default_rng([seed, zlib.crc32(sid.encode())])


def foreground_sample(mask: np.ndarray, rng: np.random.Generator, limit: int = FG_SAMPLE) -> np.ndarray:
    """``(X, Y, Z)`` mask -> ``(N,)`` flat indices of up to ``limit`` random foreground voxels."""
    flat = np.flatnonzero(mask)
    if flat.size > limit:
        flat = np.sort(rng.choice(flat, size=limit, replace=False))
    return flat


def choose_centre(rng: np.random.Generator, shape, fg: np.ndarray | None, fg_fraction: float) -> np.ndarray:
    """A voxel ``(3,)`` of ``shape``: with probability ``fg_fraction`` a random one of the flat
    foreground indices ``fg`` ``(N,)`` (when there are any), else uniform."""
    if fg is not None and fg.size and rng.random() < fg_fraction:
        return np.array(np.unravel_index(int(fg[rng.integers(fg.size)]), tuple(shape)), dtype=np.int64)
    return np.array([rng.integers(s) for s in shape], dtype=np.int64)


def box_around(centre, shape, size) -> Box:
    """The box of edge ``min(size, shape)`` per axis holding ``centre`` as near its middle as the
    volume allows (clamped inside ``[0, shape)``)."""
    box = []
    for c, s, p in zip(centre, shape, size):
        p = min(int(p), int(s))
        start = min(max(int(c) - p // 2, 0), int(s) - p)
        box.append((start, start + p))
    return tuple(box)


def region_size(patch_size, shape, patches_per_volume: int, region_factor: float,
                margin=(0, 0, 0)) -> tuple[int, ...]:
    """Edge of the region read once per visit: the patch itself for one patch a visit, else the
    patch times ``region_factor``, plus ``margin`` voxels on each side (the augmentation's); never
    more than the volume."""
    factor = 1.0 if patches_per_volume <= 1 else region_factor
    return tuple(min(int(np.ceil(p * factor)) + 2 * int(g), int(s)) for p, s, g in zip(patch_size, shape, margin))


def cut(arr: np.ndarray, box: Box, size, fill=0) -> np.ndarray:
    """``arr[..., box]`` padded with ``fill`` (centred) to spatial ``size`` where the box is smaller
    (i.e. where the volume is smaller than the patch)."""
    out = arr[(Ellipsis, *(slice(a, b) for a, b in box))]
    pad = [(0, 0)] * (arr.ndim - 3)
    for (a, b), p in zip(box, size):
        extra = max(int(p) - (b - a), 0)
        pad.append((extra // 2, extra - extra // 2))
    if any(sum(pw) for pw in pad):
        out = np.pad(out, pad, constant_values=fill)
    return out
