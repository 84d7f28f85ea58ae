"""export.windows: padding, tiling, Gaussian blending (numpy only)."""
import subprocess
import sys

import numpy as np
import pytest

from export.windows import count_windows, gaussian_importance, sliding_window, window_starts


def _identity(x):
    """(B, C, p, p, p) -> itself: blending identical predictions must give the input back."""
    return x.copy()


@pytest.mark.parametrize("shape, patch, overlap, stride", [
    # (C, X, Y, Z) input, window edge, overlap, net stride
    ((2, 40, 36, 44), 16, 0.5, 8),  # several windows per axis, non-multiples of the stride
    ((1, 32, 32, 32), 32, 0.5, 16),  # exactly one window
    ((3, 10, 7, 5), 16, 0.5, 16),  # volume smaller than the patch: padded up
    ((1, 50, 20, 33), 16, 0.25, 4),  # low overlap
    ((2, 24, 24, 24), (16, 8, 16), 0.5, 8),  # anisotropic patch
])
def test_identity_reproduces_volume(shape, patch, overlap, stride):
    rng = np.random.default_rng(0)
    vol = rng.standard_normal(shape).astype(np.float32)
    out = sliding_window(vol, _identity, patch, overlap=overlap, batch_size=3, stride_multiple=stride)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-5)


def test_position_dependent_predict_blends_between_windows():
    """A predict that returns a per-window constant: the output is a convex mix of those constants,
    equal to the single window's value where only one window covers a voxel."""
    calls = []

    def predict(x):
        vals = np.arange(len(calls) * 10, len(calls) * 10 + len(x), dtype=np.float32)
        calls.append(len(x))
        return np.broadcast_to(vals[:, None, None, None, None], (len(x), 1, *x.shape[2:])).copy()

    vol = np.zeros((1, 32, 16, 16), np.float32)
    out = sliding_window(vol, predict, 16, overlap=0.5, batch_size=1, stride_multiple=16)
    # windows along X start at 0, 8, 16 -> values 0, 10, 20
    assert sum(calls) == 3
    np.testing.assert_allclose(out[0, :4], 0.0, atol=1e-6)  # covered by window 0 only
    np.testing.assert_allclose(out[0, -4:], 20.0, atol=1e-5)  # covered by the last window only
    mid = out[0, 16, 8, 8]  # equidistant from the centres of windows 1 and 2... strictly between 0 and 20
    assert 0.0 < mid < 20.0
    assert np.all(np.diff(out[0, :, 8, 8]) >= -1e-4)  # monotone blend along X


def test_gaussian_importance_properties():
    w = gaussian_importance(16)
    assert w.shape == (16, 16, 16) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])  # symmetric
    assert w[8, 8, 8] > w[8, 8, 0] > w[0, 0, 0]


@pytest.mark.parametrize("length, patch, overlap, expected", [
    (16, 16, 0.5, [0]),
    (32, 16, 0.5, [0, 8, 16]),
    (40, 16, 0.0, [0, 12, 24]),  # last window touches the far edge
])
def test_window_starts(length, patch, overlap, expected):
    assert window_starts(length, patch, overlap) == expected


def test_count_windows_matches_calls():
    n = []
    sliding_window(np.zeros((1, 40, 36, 20), np.float32), _identity, 16, 0.5, 2, 8, progress=n.append)
    assert sum(n) == count_windows((40, 36, 20), 16, 0.5, 8)


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": 12, "stride_multiple": 8}, "multiple of the network stride"),
    ({"patch_size": 16, "overlap": 1.0}, "overlap"),
    ({"patch_size": 16, "batch_size": 0}, "batch_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window(np.zeros((1, 16, 16, 16), np.float32), _identity, **kwargs)


def test_imports_only_numpy():
    code = ("import sys, export.windows; bad = {'torch', 'ray', 'scipy', 'zarr'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
