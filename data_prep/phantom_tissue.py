"""Tissue relaxation properties and MR signal equations of the phantom cohort (numpy only).

Each tissue has T1, T2 (ms), proton density PD (relative to CSF) and a gadolinium concentration
(mM) reached after contrast injection. Values are literature values at 3 T (WM T1 ~830 ms, T2 ~80 ms;
GM T1 ~1330, T2 ~110; CSF T1 ~4000, T2 ~2000; vasogenic edema long T1/T2; necrosis CSF-like).

The four contrasts, in :data:`data_prep.schema.CONTRASTS` order, come from:

* T1w: spin echo, TR 500 / TE 15 ms;
* T1Gd: the same sequence with ``1/T1' = 1/T1 + r1 * C`` (enhancing rim, a little in edema);
* T2w: spin echo, TR 4000 / TE 100 ms;
* FLAIR: inversion recovery, TR 9000 / TE 100 ms, TI chosen to null CSF, magnitude image.

A voxel's signal is the partial-volume sum of its tissue compartments' signals (what a real voxel
measures), so :func:`tissue_signals` returns one ``(n_tissues, 4)`` table per subject and the phantom
multiplies it by the ``(n_voxels, n_tissues)`` fraction matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .schema import CONTRASTS

#: Tissue compartments, in the column order of the fraction matrix.
TISSUES: tuple[str, ...] = ("wm", "gm", "csf", "necrosis", "enhancing", "edema")


@dataclass(frozen=True)
class Tissue:
    """Relaxation properties of one tissue: ``t1``, ``t2`` in ms, ``pd`` relative, ``gd`` in mM."""

    t1: float
    t2: float
    pd: float
    gd: float = 0.0


#: Reference values at 3 T (ms, ms, relative PD, mM gadolinium after injection).
REFERENCE: dict[str, Tissue] = {
    "wm": Tissue(t1=830.0, t2=80.0, pd=0.70),
    "gm": Tissue(t1=1330.0, t2=110.0, pd=0.80),
    "csf": Tissue(t1=4000.0, t2=2000.0, pd=1.00),
    "necrosis": Tissue(t1=3200.0, t2=1200.0, pd=0.95),
    "enhancing": Tissue(t1=1700.0, t2=140.0, pd=0.85, gd=0.50),
    "edema": Tissue(t1=1800.0, t2=260.0, pd=0.88, gd=0.05),
}


@dataclass(frozen=True)
class Protocol:
    """Sequence timings (ms) and the contrast agent's relaxivity ``r1`` (1/(mM*ms))."""

    t1w_tr: float = 500.0
    t1w_te: float = 15.0
    t2w_tr: float = 4000.0
    t2w_te: float = 100.0
    flair_tr: float = 9000.0
    flair_te: float = 100.0
    flair_ti: float | None = None  # None: null the CSF of the (jittered) tissue table
    r1: float = 4.5e-3  # gadoterate-like, 4.5 /mM/s


def spin_echo(pd, t1, t2, tr: float, te: float):
    """Spin-echo magnitude ``PD (1 - 2 e^{-(TR - TE/2)/T1} + e^{-TR/T1}) e^{-TE/T2}``."""
    pd, t1, t2 = (np.asarray(v, dtype=np.float64) for v in (pd, t1, t2))
    return pd * (1.0 - 2.0 * np.exp(-(tr - te / 2.0) / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd, t1, t2, tr: float, te: float, ti: float):
    """Inversion-recovery magnitude ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}``."""
    pd, t1, t2 = (np.asarray(v, dtype=np.float64) for v in (pd, t1, t2))
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def null_ti(t1: float, tr: float) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1`` at repetition ``tr``."""
    return float(t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1))))


def spoiled_gre(pd, t1, t2, tr: float, te: float, flip_deg: float):
    """Spoiled gradient-echo magnitude ``PD sin(a) (1 - E1) / (1 - cos(a) E1) e^{-TE/T2}``, ``E1 = e^{-TR/T1}``.

    (``T2*`` is taken as ``T2``: at the short TE of a T1-weighted gradient echo the difference is small.)
    """
    pd, t1, t2 = (np.asarray(v) for v in (pd, t1, t2))
    a = math.radians(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * np.exp(-te / t2)


def gd_t1(t1, gd, r1: float):
    """T1 after contrast: ``1/T1' = 1/T1 + r1 * C``."""
    return 1.0 / (1.0 / np.asarray(t1, dtype=np.float64) + r1 * np.asarray(gd, dtype=np.float64))


def jitter_tissues(rng: np.random.Generator, rel: float = 0.05,
                   reference: dict[str, Tissue] = REFERENCE, names: tuple[str, ...] = TISSUES) -> dict[str, Tissue]:
    """Subject-level variation of the tissue table (factors ``1 + N(0, sd)``, clipped at 2.5 sd).

    T1 and T2 vary mostly together across tissues (field strength, temperature, age: one factor of
    sd ``rel`` shared by all tissues, times a tissue factor of sd ``rel / 2``); PD by a tissue factor
    of sd ``rel / 2`` (a common PD factor is only gain); gadolinium uptake by sd ``rel`` each.
    Independent 5 % jitters would swap WM and GM in T1w for ~2 % of subjects, real scans never do.
    """
    def factor(sd, size=None):
        return 1.0 + sd * np.clip(rng.standard_normal(size), -2.5, 2.5)

    common_t1, common_t2 = factor(rel), factor(rel)
    out = {}
    for name in names:
        t = reference[name]
        f = factor(rel / 2.0, 3)
        out[name] = Tissue(t1=t.t1 * common_t1 * f[0], t2=t.t2 * common_t2 * f[1], pd=t.pd * f[2],
                           gd=t.gd * factor(rel))
    return out


def tissue_signals(tissues: dict[str, Tissue], protocol: Protocol = Protocol()) -> np.ndarray:
    """``(len(TISSUES), len(CONTRASTS))`` float64 signal of each pure tissue in each contrast."""
    t1 = np.array([tissues[n].t1 for n in TISSUES])
    t2 = np.array([tissues[n].t2 for n in TISSUES])
    pd = np.array([tissues[n].pd for n in TISSUES])
    gd = np.array([tissues[n].gd for n in TISSUES])
    p = protocol
    ti = p.flair_ti if p.flair_ti is not None else null_ti(tissues["csf"].t1, p.flair_tr)
    by_contrast = {
        "t1w": spin_echo(pd, t1, t2, p.t1w_tr, p.t1w_te),
        "t1gd": spin_echo(pd, gd_t1(t1, gd, p.r1), t2, p.t1w_tr, p.t1w_te),
        "t2w": spin_echo(pd, t1, t2, p.t2w_tr, p.t2w_te),
        "flair": inversion_recovery(pd, t1, t2, p.flair_tr, p.flair_te, ti),
    }
    return np.stack([by_contrast[c] for c in CONTRASTS], axis=1)


__all__ = ["TISSUES", "Tissue", "REFERENCE", "Protocol", "spin_echo", "inversion_recovery", "spoiled_gre",
           "null_ti", "gd_t1", "jitter_tissues", "tissue_signals"]
