"""Lesion kinds of phantom version 2: compartments that look alike in T1Gd and FLAIR but not in T1w and T2w.

Real gliomas are not three homogeneous shells. Each kind below is present in a random 20-40 % of
subjects (:data:`PREVALENCE`), with a random count and size, placed around the glioma of
:func:`data_prep.phantom_lesion.grow_lesion`; each takes its volume from the compartments already
there (partial volume at its soft, one-voxel boundary), so fractions still sum to one.

* ``nonenhancing``: non-enhancing tumour, a *mass* next to the enhancing core. Like vasogenic edema
  it is FLAIR-bright and dark on T1Gd (no leaking vessels), but denser cells hold less free water:
  T2 shorter than edema's, so T2w tells them apart; edema is finger-like along white matter
  (grow_lesion), the tumour is a lump. Not taken from the necrotic core or the enhancing rim.
* ``haemorrhage``: subacute blood (methaemoglobin shortens T1: bright on T1Gd like enhancement, and
  bright on T1w, which enhancement is not). T2 by age: short while the methaemoglobin is inside
  cells (early), long once the cells lyse (late), one age per subject. A blob with a thin
  ``haemosiderin`` rim (iron: very short T2, dark on T2w and FLAIR), or a layer (blood settling to
  the dependent, posterior, part of the necrotic cavity: a fluid level).
* ``cyst``: proteinaceous cyst, a round smooth fluid sac beside the tumour. Protein shortens T1, so
  unlike CSF and nearly unlike necrosis it is not nulled on FLAIR; bright on T2w, grey on T1w.
* ``calcification``: small specks, little mobile water (low PD, very short T2): dark everywhere.
"""
from __future__ import annotations

import numpy as np

from .phantom_lesion import Lesion, smooth_field
from .phantom_tissue import Tissue

#: v2 compartments: v1's six, then the kinds (column order of the fraction matrix).
KINDS: tuple[str, ...] = ("nonenhancing", "haemorrhage", "haemosiderin", "cyst", "calcification")
#: Probability that a subject has each kind (the rim comes with a haemorrhage blob).
PREVALENCE: dict[str, float] = {"nonenhancing": 0.35, "haemorrhage": 0.3, "cyst": 0.25, "calcification": 0.2}
#: 3 T relaxation of the kinds (ms, ms, relative PD, mM gadolinium). Haemorrhage T2 is set by age.
KIND_TISSUES: dict[str, Tissue] = {
    "nonenhancing": Tissue(t1=1500.0, t2=150.0, pd=0.86),
    "haemorrhage": Tissue(t1=450.0, t2=300.0, pd=0.85),  # late subacute; early: T2 ~50 ms
    "haemosiderin": Tissue(t1=900.0, t2=15.0, pd=0.55),
    "cyst": Tissue(t1=2200.0, t2=900.0, pd=0.95),
    "calcification": Tissue(t1=900.0, t2=20.0, pd=0.12),
}
HAEMORRHAGE_T2 = {"early": 50.0, "late": 300.0}
#: compartments of the BraTS tumour core (label 1) besides necrosis
CORE_LIKE: tuple[str, ...] = ("necrosis", *KINDS)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def blob(rng: np.random.Generator, out_mm: np.ndarray, centre, radius: float, spacing: float,
         irregular: float, shell: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Soft occupancy of an irregular ball: ``(voxel indices, occupancy, shell occupancy or None)``.

    The radius is perturbed by a smooth field (``irregular`` relative); ``shell`` mm adds a rim
    around the ball (its occupancy returned separately). Boundaries are linear over one voxel.
    """
    centre = np.asarray(centre, dtype=np.float32)
    reach = radius * (1.0 + irregular) + shell + spacing
    near = np.flatnonzero(np.all(np.abs(out_mm - centre[:, None]) <= reach, axis=0))
    off = out_mm[:, near] - centre[:, None]
    dist = np.sqrt((off * off).sum(axis=0))
    half = int(np.ceil(reach / spacing))
    field = np.clip(smooth_field(rng, (2 * half + 1,) * 3, (6, 6, 6), sd=1.0), -1.5, 1.5)[0]
    idx = tuple(np.clip(np.rint(off / spacing).astype(np.intp) + half, 0, 2 * half))
    rho = dist / (1.0 + irregular * field[idx] / 1.5)

    def soft(r):
        return np.clip((r - rho) / spacing + 0.5, 0.0, 1.0)

    inner = soft(radius)
    rim = soft(radius + shell) - inner if shell > 0 else None
    return near, inner, rim


def insert(frac: dict[str, np.ndarray], name: str, idx: np.ndarray, occ: np.ndarray,
           protect: tuple[str, ...] = ()) -> None:
    """Put compartment ``name`` at occupancy ``occ`` on voxels ``idx``, taken proportionally from the
    compartments there except ``protect`` (at most what those others hold); fractions keep summing to 1."""
    others = [k for k in frac if k != name and k not in protect]
    avail = sum(frac[k][idx] for k in others)
    take = np.minimum(occ, avail)
    scale = np.where(avail > 0, 1.0 - take / np.maximum(avail, 1e-12), 1.0).astype(np.float32)
    for k in others:
        frac[k][idx] *= scale
    frac[name][idx] += take


def add_kinds(rng: np.random.Generator, frac: dict[str, np.ndarray], out_mm: np.ndarray, lesion: Lesion,
              spacing: float, prevalence: dict[str, float]) -> dict:
    """Draw which kinds a subject has and put them into ``frac`` (name -> (V,) float32, modified in place).

    All draws are made whatever the prevalence (a kind switched off does not move the others).
    Returns a description ``{kind: {...}}`` of what was placed.
    """
    centre = np.asarray(lesion.centre_mm, dtype=np.float32)
    r_core, r_enh, _ = lesion.radii_mm
    draws = {k: float(rng.uniform()) for k in PREVALENCE}
    placed: dict[str, dict] = {}

    kind_rng = {k: np.random.default_rng(rng.integers(2**63)) for k in PREVALENCE}
    if draws["nonenhancing"] < prevalence.get("nonenhancing", 0.0):
        g = kind_rng["nonenhancing"]
        n = int(g.integers(1, 3))
        for _ in range(n):
            c = centre + _unit(g) * r_enh * g.uniform(0.9, 1.3)
            idx, occ, _ = blob(g, out_mm, c, max(r_enh * g.uniform(0.5, 0.9), 5.0), spacing, irregular=0.25)
            insert(frac, "nonenhancing", idx, occ, protect=("necrosis", "enhancing"))
        placed["nonenhancing"] = {"count": n}
    if draws["cyst"] < prevalence.get("cyst", 0.0):
        g = kind_rng["cyst"]
        n = int(g.integers(1, 3))
        for _ in range(n):
            radius = g.uniform(4.0, 12.0)
            c = centre + _unit(g) * (r_enh + 0.8 * radius)
            idx, occ, _ = blob(g, out_mm, c, radius, spacing, irregular=0.05)
            insert(frac, "cyst", idx, occ)
        placed["cyst"] = {"count": n}
    if draws["haemorrhage"] < prevalence.get("haemorrhage", 0.0):
        g = kind_rng["haemorrhage"]
        age = "early" if g.uniform() < 0.5 else "late"
        if g.uniform() < 0.4:  # a layer: the dependent part of the necrotic cavity (supine: posterior, -y)
            level = centre[1] - r_core * g.uniform(-0.3, 0.5)
            below = np.flatnonzero((frac["necrosis"] > 0) & (out_mm[1] < level + spacing))
            occ = frac["necrosis"][below] * np.clip((level - out_mm[1, below]) / spacing + 0.5, 0.0, 1.0)
            insert(frac, "haemorrhage", below, occ.astype(np.float32))
            placed["haemorrhage"] = {"age": age, "shape": "layer"}
        else:
            n = int(g.integers(1, 4))
            for _ in range(n):
                c = centre + _unit(g) * r_core * g.uniform(0.0, 1.2)
                idx, occ, rim = blob(g, out_mm, c, g.uniform(3.0, 9.0), spacing, irregular=0.2,
                                     shell=g.uniform(1.0, 2.0) * max(spacing, 1.0))
                insert(frac, "haemorrhage", idx, occ)
                insert(frac, "haemosiderin", idx, rim, protect=("haemorrhage",))
            placed["haemorrhage"] = {"age": age, "shape": "blob", "count": n}
    if draws["calcification"] < prevalence.get("calcification", 0.0):
        g = kind_rng["calcification"]
        n = int(g.integers(1, 5))
        for _ in range(n):
            c = centre + _unit(g) * r_enh * g.uniform(0.0, 1.0)
            idx, occ, _ = blob(g, out_mm, c, g.uniform(1.5, 3.5) * max(spacing / 2, 1.0), spacing, irregular=0.1)
            insert(frac, "calcification", idx, occ)
        placed["calcification"] = {"count": n}
    return placed


def labels(frac: dict[str, np.ndarray]) -> np.ndarray:
    """BraTS labels from fractions: where lesion compartments hold >= half a voxel, the largest group
    of core-like (1), enhancing (4) or edema (2)."""
    core = sum(frac[k] for k in CORE_LIKE)
    lesion = core + frac["enhancing"] + frac["edema"]
    group = np.argmax(np.stack([core, frac["enhancing"], frac["edema"]]), axis=0)
    return np.where(lesion >= 0.5, np.array([1, 4, 2], dtype=np.uint8)[group], 0).astype(np.uint8)


__all__ = ["KINDS", "PREVALENCE", "KIND_TISSUES", "HAEMORRHAGE_T2", "CORE_LIKE", "blob", "insert", "add_kinds",
           "labels"]
