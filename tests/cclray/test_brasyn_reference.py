"""The ``brasyn`` family equals torchmetrics' SSIM / PSNR run by the BraSyn procedure, to 1e-4.

The reference side is written straight from the procedure with torchmetrics doing SSIM and PSNR; the
checked side is :func:`cclray.evaluation.metrics.brasyn_metrics` (numpy/scipy). CI has no real scans, so
the pair is a phantom-like one: raw positive intensities, background 0, a tumour with its own signal and
a prediction that is wrong in smooth and noisy ways. The same check on a real BraTS pair is quoted in
docs/EVALUATION.md.
"""
import numpy as np
import pytest

from cclray.evaluation.metrics import brasyn_metrics

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmetrics.functional.image")
tm_reg = pytest.importorskip("torchmetrics.functional.regression")


def _reference_clip(v: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(v, [0.5, 99.5])
    lo = max(lo, 0.0)  # strictlyPositive
    return (np.clip(v, lo, hi) - lo) / (hi - lo)


def reference(pred: np.ndarray, target: np.ndarray, seg: np.ndarray) -> dict:
    p, t = _reference_clip(pred), _reference_clip(target)
    out = {}
    for name, region in (("tumor", seg > 0), ("healthy", seg == 0)):
        pi = torch.from_numpy(np.where(region, p, 0.0))[None, None]  # (1, 1, X, Y, Z)
        ti = torch.from_numpy(np.where(region, t, 0.0))[None, None]
        ssim = tm.structural_similarity_index_measure(pi, ti, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                      data_range=1.0)
        pr, tr = torch.from_numpy(p[region]), torch.from_numpy(t[region])
        out[name] = (float(ssim), float(tm_reg.mean_squared_error(pr, tr)),
                     float(tm.peak_signal_noise_ratio(pr, tr, data_range=1.0)))
    return out


def _pair(shape=(40, 44, 32), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = zz ** 2 / 0.8 + yy ** 2 / 0.9 + xx ** 2 / 0.7 < 1
    tissue = 300 + 200 * np.sin(6 * zz) * np.cos(5 * yy) + rng.normal(0, 20, shape)
    seg = ((zz - 0.3) ** 2 + (yy + 0.2) ** 2 + xx ** 2 < 0.08) & brain
    target = np.where(brain, tissue, 0.0)
    target[seg] += 400
    pred = np.where(brain, 0.9 * target + 40 * np.cos(3 * xx) + rng.normal(0, 30, shape), 0.0)
    pred[seg] -= 150
    return np.clip(pred, 0, None), target, seg.astype(np.uint8)


def test_brasyn_equals_torchmetrics_on_a_phantom_pair():
    pred, target, seg = _pair()
    ours = brasyn_metrics(pred, target, seg)
    ref = reference(pred, target, seg)
    for region, (ssim, mse, psnr) in ref.items():
        assert ours[region].ssim == pytest.approx(ssim, abs=1e-4), region
        assert ours[region].mse == pytest.approx(mse, abs=1e-6), region
        assert ours[region].psnr == pytest.approx(psnr, abs=1e-4), region
    # an imperfect pair, so the check bites; the tumour SSIM is near 1 because the zeroed rest of the volume
    # counts in the average (the procedure's, not ours)
    assert ours["healthy"].ssim < 0.95 and ours["tumor"].mse > 1e-3 and ours["tumor"].ssim < 1 - 1e-5
