"""Per-subject scanner and protocol of phantom version 2: site-like presets, 1.5 T / 3 T, jittered timings.

Why: BraTS subjects come from many sites. Field strength changes the relaxation times themselves
(T1 of brain tissue grows with field, by ~25-35 % from 1.5 T to 3 T, fluid T1 barely; T2 shortens a
little), and each site runs its own sequences (spin echo or spoiled gradient echo T1w, its own
TR/TE, a FLAIR inversion time set once for the site and not tuned to the subject's CSF). So the
intensity *relations* between contrasts shift from subject to subject; a model fitted on a few
subjects must not be able to assume one fixed relation.

Post-contrast sequence: BraTS describes native T1 as mostly 2D (sagittal or axial, 1-6 mm slices) but
T1Gd as mostly a 3D acquisition; in practice many sites run a 2D spin-echo (or FLASH) T1w before
contrast and a 3D inversion-prepared gradient echo (MPRAGE) after it. MPRAGE has a different contrast
(inversion prepared: CSF and other long-T1 water nearly nulled, grey/white contrast stronger than spin
echo), so in such a subject T1w and T1Gd differ in more than gadolinium, and how they differ depends on
the site. With probability :data:`MPRAGE_POST` a subject's T1Gd is an MPRAGE (its ``gd_*`` timings);
otherwise T1Gd repeats the T1w sequence.

:func:`draw_protocol` draws one subject's :class:`ScanProtocol`; :func:`signals` evaluates the four
contrasts for arrays of per-voxel T1, T2, PD and gadolinium with it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .phantom_tissue import gd_t1, inversion_recovery, null_ti, spin_echo, spoiled_gre
from .schema import CONTRASTS


@dataclass(frozen=True)
class ScanProtocol:
    """One subject's scan: field (T), T1w kind (``"se"`` or ``"gre"``) and timings (ms, degrees)."""

    field: float
    t1_kind: str
    t1_tr: float
    t1_te: float
    t1_flip: float
    t2_tr: float
    t2_te: float
    flair_tr: float
    flair_te: float
    flair_ti: float
    r1: float  # gadolinium relaxivity, 1/(mM ms)
    gd_kind: str = "same"  # T1Gd sequence: "same" as T1w, or "mprage" with the timings below
    gd_tr: float = 0.0  # MPRAGE: time between inversions (ms)
    gd_te: float = 0.0
    gd_ti: float = 0.0


#: Site-like presets: (field, T1w kind, ranges of T1w TR, TE, flip, T2w TR, TE, FLAIR TR, TE).
#: FLAIR TI is the CSF null at the site's TR (CSF T1 ~4 s at either field), set once per site (+-4 %).
PRESETS: dict[str, tuple] = {
    "1.5T-se": (1.5, "se", (450, 600), (10, 15), (90, 90), (3500, 5000), (85, 105), (8000, 10000), (100, 130)),
    "3T-se": (3.0, "se", (500, 700), (8, 12), (90, 90), (4000, 6000), (80, 110), (9000, 11000), (80, 125)),
    "3T-gre": (3.0, "gre", (6, 10), (2.5, 4), (10, 15), (3000, 5000), (90, 120), (6000, 8000), (90, 130)),
    "1.5T-gre": (1.5, "gre", (15, 25), (3, 5), (20, 30), (3000, 4500), (90, 110), (8000, 9500), (100, 120)),
}
REFERENCE_PROTOCOL = ScanProtocol(field=3.0, t1_kind="se", t1_tr=500.0, t1_te=15.0, t1_flip=90.0, t2_tr=4000.0,
                                  t2_te=100.0, flair_tr=9000.0, flair_te=100.0,
                                  flair_ti=null_ti(4000.0, 9000.0), r1=4.5e-3)

#: probability that T1Gd is a 3D MPRAGE (whatever the T1w sequence); MPRAGE timing ranges (ms)
MPRAGE_POST = 0.5
MPRAGE = {"tr": (1800.0, 2300.0), "te": (2.5, 4.0), "ti": (850.0, 1100.0)}

#: T1 and T2 at 1.5 T relative to 3 T: tissue T1 is field dependent (~0.72-0.82), fluid T1 hardly;
#: T2 is ~5-8 % longer at the lower field.
FIELD_15_T1 = {"wm": 0.75, "gm": 0.80, "csf": 1.0}
FIELD_15_T1_LESION = 0.85  # water-rich lesion compartments: between tissue and fluid
FIELD_15_T2 = 1.06


def draw_protocol(rng: np.random.Generator, mprage_post: float = MPRAGE_POST) -> ScanProtocol:
    """One subject's protocol: a random preset, each timing uniform in its range; T1Gd an MPRAGE with
    probability ``mprage_post`` (drawn after the rest, so 0 leaves every other timing as it was)."""
    name = list(PRESETS)[int(rng.integers(len(PRESETS)))]
    field, kind, *ranges = PRESETS[name]
    t1_tr, t1_te, flip, t2_tr, t2_te, fl_tr, fl_te = (float(rng.uniform(*r)) for r in ranges)
    ti = null_ti(4000.0, fl_tr) * float(rng.uniform(0.96, 1.04))
    r1 = float(rng.uniform(3.5e-3, 5.5e-3)) * (1.05 if field == 1.5 else 1.0)
    p = ScanProtocol(field, kind, t1_tr, t1_te, flip, t2_tr, t2_te, fl_tr, fl_te, ti, r1)
    if rng.uniform() < mprage_post:
        tr, te, ti_gd = (float(rng.uniform(*MPRAGE[k])) for k in ("tr", "te", "ti"))
        p = replace(p, gd_kind="mprage", gd_tr=tr, gd_te=te, gd_ti=ti_gd)
    return p


def field_factors(name: str, field: float) -> tuple[float, float]:
    """``(T1, T2)`` factors taking a compartment's 3 T values to ``field``."""
    if field == 3.0:
        return 1.0, 1.0
    t1 = FIELD_15_T1.get(name, FIELD_15_T1_LESION)
    return t1, (1.0 if name == "csf" else FIELD_15_T2)


def signals(pd, t1, t2, gd, p: ScanProtocol) -> np.ndarray:
    """``(4, N)`` signal of N voxels (CONTRASTS order) from per-voxel PD, T1, T2 (ms) and gadolinium (mM)."""
    t1_post = gd_t1(t1, gd, p.r1)

    def t1_weighted(t1_):
        if p.t1_kind == "gre":
            return spoiled_gre(pd, t1_, t2, p.t1_tr, p.t1_te, p.t1_flip) * 8.0  # ~ spin-echo scale
        return spin_echo(pd, t1_, t2, p.t1_tr, p.t1_te)

    if p.gd_kind == "mprage":  # magnitude inversion recovery read out at a short TE, ~ spin-echo scale
        post = inversion_recovery(pd, t1_post, t2, p.gd_tr, p.gd_te, p.gd_ti)
    else:
        post = t1_weighted(t1_post)
    by_contrast = {
        "t1w": t1_weighted(t1),
        "t1gd": post,
        "t2w": spin_echo(pd, t1, t2, p.t2_tr, p.t2_te),
        "flair": inversion_recovery(pd, t1, t2, p.flair_tr, p.flair_te, p.flair_ti),
    }
    return np.stack([np.asarray(by_contrast[c], dtype=np.float32) for c in CONTRASTS])


__all__ = ["ScanProtocol", "PRESETS", "MPRAGE_POST", "MPRAGE", "REFERENCE_PROTOCOL", "draw_protocol", "field_factors", "signals"]
