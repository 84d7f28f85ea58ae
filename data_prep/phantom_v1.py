"""Phantom version 1 (the cohort of cclray <= 0.x, kept bit for bit): one glioma-like lesion, a fixed protocol.

Per subject (all randomness from one seed):

1. **Anatomy** (:mod:`data_prep.phantom_anatomy`): the warped ICBM152 brain.
2. **Lesion** (:mod:`data_prep.phantom_lesion`): a glioma-like lesion in one hemisphere's white
   matter: necrosis (label 1) inside an enhancing rim (4) inside edema (2), irregular shells.
3. **Signal** (:mod:`data_prep.phantom_tissue`): tissue fractions times per-tissue signals of the
   four contrasts, an independent smooth multiplicative bias field per contrast (+-15 %), Rician
   noise, background exactly 0 outside the warped brain mask, int16.

On this cohort T1w and T2w are nearly a voxelwise function of T1Gd and FLAIR (docs/PHANTOM.md);
:mod:`data_prep.phantom_v2` is the default. Do not change this module: ``--phantom-version 1``
promises the same bytes (tests/data_prep/test_phantom.py pins them).
"""
from __future__ import annotations

import numpy as np

from .phantom_anatomy import warped_brain
from .phantom_lesion import grow_lesion
from .phantom_tissue import TISSUES, jitter_tissues, tissue_signals
from .schema import CONTRASTS

GAIN = 4000.0  # signal units -> int16 (pure tissues land in ~0..2500)


def _bias(rng: np.random.Generator, xyz: np.ndarray, n: int) -> np.ndarray:
    """``(n, V)`` multiplicative fields ``1 + b``: random degree-2 polynomials, ``max|b|`` in 5-15 %."""
    x, y, z = xyz
    terms = np.stack([x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, x * z, y * z])
    b = rng.standard_normal((n, len(terms))).astype(np.float32) @ terms
    b *= (rng.uniform(0.05, 0.15, n) / np.maximum(np.abs(b).max(axis=1), 1e-6))[:, None].astype(np.float32)
    return 1.0 + b


def make_subject(sid: str, seed: int, spacing: float = 1.0, return_tissue: bool = False) -> dict:
    """One version-1 subject; the layout of the result is :func:`data_prep.phantom.make_subject`'s."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    brain = warped_brain(rng, spacing)
    shape, vox, wm, gm = brain.shape, brain.vox, brain.wm, brain.gm

    lesion = grow_lesion(rng, brain.out_mm, brain.tpl_mm, wm, spacing)  # fractions (3, V), labels (V,)
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

    images = {contrast: brain.to_grid(values[c]) for c, contrast in enumerate(CONTRASTS)}
    out = {"sid": sid, "images": images, "seg": brain.to_grid(lesion.labels),
           "mask": brain.to_grid(np.ones(vox.shape[1], dtype=bool)), "affine": brain.affine}
    if return_tissue:
        out["tissue"] = {name: brain.to_grid(f) for name, f in zip(TISSUES, frac)}
        out["clean"] = {contrast: brain.to_grid(clean[c] * gain[c]) for c, contrast in enumerate(CONTRASTS)}
    return out
