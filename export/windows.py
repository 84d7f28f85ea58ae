"""Sliding-window inference with Gaussian blending: the ONE definition, numpy only.

Shared by the torch evaluation (``predict`` wraps a torch module) and the ONNX runtime (``predict``
wraps an onnxruntime session), so both see exactly the same windows and weights. Imports nothing but
numpy: the runtime host has no torch.

Recipe (nnU-Net's): zero-pad the volume so each spatial dim is at least the patch and a multiple of
the network's stride, tile windows of ``patch_size`` with the requested overlap (starts evenly spread
so the last window touches the far edge), run them in batches, blend overlapping predictions with a
Gaussian importance map (centre voxels count more than edge voxels), crop the padding back off.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]  # (B, C, p, p, p) float32 -> (B, O, p, p, p)


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    vals = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(vals) != 3 or min(vals) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return vals  # type: ignore[return-value]


def gaussian_importance(patch_size: int | Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian ``(p0, p1, p2)`` float32, max 1, sigma = ``sigma_scale * p`` per axis.

    Never exactly 0 (floored at 1e-6 of the max) so a voxel covered by one window only still gets
    that window's prediction after normalization.
    """
    p = _triple(patch_size, "patch_size")
    axes = []
    for n in p:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    return np.maximum(w, 1e-6).astype(np.float32)


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``patch`` along an axis of ``length`` (>= patch), evenly spread."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((length - patch) / step) + 1
    return sorted({int(round(s)) for s in np.linspace(0, length - patch, n)})


def padded_shape(shape: Sequence[int], patch: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each dim raised to at least the patch, then to a multiple of ``multiple``."""
    return tuple(int(math.ceil(max(s, p) / multiple) * multiple) for s, p in zip(shape, patch))


def sliding_window(volume: np.ndarray, predict: Predict, patch_size: int | Sequence[int],
                   overlap: float = 0.5, batch_size: int = 4, stride_multiple: int = 16,
                   progress: Callable[[int], object] | None = None,
                   sigma_scale: float = 0.125) -> np.ndarray:
    """Whole-volume inference ``(C, X, Y, Z)`` -> ``(O, X, Y, Z)`` float32 by blended windows.

    Args:
        volume: ``(C, X, Y, Z)`` normalized input (0 is background, so zero padding matches training).
        predict: maps a batch of windows ``(B, C, p0, p1, p2)`` float32 to ``(B, O, p0, p1, p2)``.
        patch_size: window edge(s); each must be a multiple of ``stride_multiple``.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size: windows per ``predict`` call.
        stride_multiple: the network's total stride (2 ** number of downsamplings).
        progress: called with the number of windows just finished (``tqdm.update`` fits).
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, X, Y, Z), got shape {volume.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    patch = _triple(patch_size, "patch_size")
    if any(p % stride_multiple for p in patch):
        raise ValueError(f"patch_size {patch} must be a multiple of the network stride {stride_multiple}")
    spatial = volume.shape[1:]
    full = padded_shape(spatial, patch, stride_multiple)
    before = [(f - s) // 2 for f, s in zip(full, spatial)]
    pad = [(0, 0)] + [(b, f - s - b) for b, f, s in zip(before, full, spatial)]
    padded = np.pad(volume.astype(np.float32, copy=False), pad)  # (C, *full), zeros = background

    starts = [window_starts(f, p, overlap) for f, p in zip(full, patch)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    weight = gaussian_importance(patch, sigma_scale)  # (p0, p1, p2)
    acc: np.ndarray | None = None  # (O, *full) weighted sum of predictions
    norm = np.zeros(full, dtype=np.float32)  # (*full) sum of weights

    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([padded[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]]
                          for a, b, c in chunk])  # (B, C, p0, p1, p2)
        pred = np.asarray(predict(np.ascontiguousarray(batch)), dtype=np.float32)
        if pred.ndim != 5 or pred.shape[0] != len(chunk) or pred.shape[2:] != tuple(patch):
            raise ValueError(f"predict returned shape {pred.shape}, expected ({len(chunk)}, O, *{patch})")
        if acc is None:
            acc = np.zeros((pred.shape[1], *full), dtype=np.float32)
        for (a, b, c), p in zip(chunk, pred):
            sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            acc[(slice(None), *sl)] += p * weight
            norm[sl] += weight
        if progress is not None:
            progress(len(chunk))

    assert acc is not None  # at least one window always exists
    acc /= norm
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return np.ascontiguousarray(acc[(slice(None), *crop)])


def count_windows(shape: Sequence[int], patch_size: int | Sequence[int], overlap: float = 0.5,
                  stride_multiple: int = 16) -> int:
    """How many windows :func:`sliding_window` runs for a ``(X, Y, Z)`` volume (for progress bars)."""
    patch = _triple(patch_size, "patch_size")
    full = padded_shape(shape, patch, stride_multiple)
    return int(np.prod([len(window_starts(f, p, overlap)) for f, p in zip(full, patch)]))
