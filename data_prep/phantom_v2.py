"""Phantom version 2 (the default): target information the inputs do not give away voxel by voxel.

On version 1, T1w and T2w are nearly a voxelwise function of T1Gd and FLAIR. Version 2 adds what
real scans have, each part a physical effect, each switchable (:class:`Parts`) for tests:

1. **Anatomy and glioma**: as version 1 (:mod:`data_prep.phantom_anatomy`, :mod:`data_prep.phantom_lesion`).
2. **Lesion kinds** (:mod:`data_prep.phantom_kinds`): non-enhancing tumour, subacute haemorrhage with a
   haemosiderin rim or a fluid level, proteinaceous cyst, calcification, each in 20-40 % of
   subjects: alike in T1Gd/FLAIR, different in T1w/T2w.
3. **Per-subject protocol** (:mod:`data_prep.phantom_protocol`): 1.5 T or 3 T (relaxation times move
   with the field), spin-echo or gradient-echo T1w, jittered TR/TE, a site FLAIR TI not tuned to
   the subject: the relation between contrasts shifts between subjects as between sites. In half of
   the subjects T1Gd is a 3D MPRAGE while T1w is the site's 2D sequence (``Parts.mprage_post``).
4. **Texture**: tissue is not homogeneous (cell density, water content, myelin vary over millimetres),
   so T1 and T2 are multiplied by smooth random fields (correlation 5-10 mm): +-10-15 % inside
   lesion compartments, +-2-4 % in normal tissue. Signals are computed from the textured T1/T2 of
   each compartment and summed over its fractions (partial volume at every boundary).
5. **Receive field**: one coil sensitivity per session, shared by the four contrasts (a smooth field,
   +-10-20 %), times a small per-contrast part (+-1-3 %: different coil loading and calibration per
   sequence). A shared field is what a real array coil gives; v1's independent fields were a
   nuisance no model could learn. T2w has its own larger non-uniformity on top (``Parts.t2w_bias``,
   :func:`t2w_bias`).
6. **Acquisition resolution**: many clinical T2w, FLAIR and pre-contrast T1w are 2D multi-slice scans
   with 3-6 mm slices (T1Gd mostly 3D, 1 mm), resampled to the 1 mm atlas grid: each contrast of a
   subject is, with a per-contrast probability, blurred across its slices (Gaussian, FWHM the slice
   thickness; axial mostly, else sagittal or coronal), so fine detail differs between contrasts. A 2D
   scan is moreover known only at its slice centres (a slice thickness plus a 0-20 % gap apart, at an
   offset of its own), and resampling it to the 1 mm grid interpolates between them: what lies between
   two slices is a guess, different in each contrast (``Parts.slice_sampling``).
7. **Residual misregistration**: the four scans are minutes apart (the head moves between them) and
   are registered to each other afterwards with errors of one to two millimetres and about a degree
   (each clinical series is rigidly registered to the atlas through its own contrast, thick 2D slices
   included); each contrast is moved by its own small rigid transform (up to :data:`MISREG_MM` = 1.5 mm
   per axis, ``Parts.misreg_mm`` to change it; up to :data:`MISREG_DEG` degrees about each axis, linear
   interpolation as a registration's resampling).
   A 2D contrast registers worse across its slices (a registration cannot place a 3-6 mm slice better
   than a fraction of its thickness): along its slice axis the error reaches half the slice thickness
   (``Parts.thick_misregistration``).
   The lesion labels stay on the true anatomy, as a segmentation drawn on the average would.
8. **Noise**: Rician, per contrast a fraction of its mean signal drawn from :data:`NOISE` (int16, 0
   outside the brain): 0.8-2 % for T1w and T1Gd, 1.5-3.5 % for T2w and FLAIR. T1-weighted scans have
   the least tissue contrast (grey/white differ by ~10-20 %), so sites acquire them with more signal
   per voxel (3D, or 2D with several averages: SNR grows with the square root of the samples), while
   T2w and FLAIR contrasts are several times larger and are run faster at lower SNR. At 1.5-3.5 %
   on T1w the noise alone cost a noise-free oracle 0.15 of brain SSIM (docs/PHANTOM.md).

Each part draws from its own child of the subject's seed, so switching one off leaves the others'
draws (and the anatomy) unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .phantom_anatomy import warped_brain
from .phantom_kinds import HAEMORRHAGE_T2, KIND_TISSUES, KINDS, PREVALENCE, add_kinds, labels
from .phantom_lesion import grow_lesion, smooth_field
from .phantom_protocol import MPRAGE_POST, REFERENCE_PROTOCOL, draw_protocol, field_factors, signals
from .phantom_tissue import REFERENCE, TISSUES, jitter_tissues
from .schema import CONTRASTS

#: v2 compartments, in the order of ``tissue`` maps.
TISSUES_V2: tuple[str, ...] = (*TISSUES, *KINDS)
NORMAL: tuple[str, ...] = ("wm", "gm", "csf")
GAIN = 4000.0  # signal units -> int16
#: Rician noise sd as a fraction of the contrast's mean signal: ``{contrast: (low, high)}``, uniform per subject.
NOISE: dict[str, tuple[float, float]] = {"t1w": (0.008, 0.02), "t1gd": (0.008, 0.02),
                                         "t2w": (0.015, 0.035), "flair": (0.015, 0.035)}


@dataclass(frozen=True)
class Parts:
    """Which parts of version 2 are on. ``prevalence``: probability of each lesion kind (0 switches it off)."""

    receive: bool = True
    texture: bool = True
    slices: bool = True
    protocol: bool = True
    noise: bool = True
    misregistration: bool = True
    thick_misregistration: bool = True  # 2D contrasts: up to half a slice across their slices
    mprage_post: float = MPRAGE_POST  # probability that T1Gd is an MPRAGE (0: T1Gd repeats the T1w sequence)
    t2w_bias: bool = True  # a T2w-only smooth non-uniformity (t2w_bias)
    slice_sampling: bool = True  # 2D contrasts known only at their slice centres, interpolated between
    misreg_mm: float | None = None  # largest misregistration per axis, mm (None: MISREG_MM; 1983e6e had 1.0)
    prevalence: dict = field(default_factory=lambda: dict(PREVALENCE))

    @classmethod
    def only(cls, *kinds: str, **flags) -> "Parts":
        """Parts with exactly ``kinds`` present (probability 1) and the others absent."""
        unknown = set(kinds) - set(PREVALENCE)
        if unknown:
            raise ValueError(f"unknown lesion kind(s) {sorted(unknown)}: use {sorted(PREVALENCE)}")
        return cls(prevalence={k: float(k in kinds) for k in PREVALENCE}, **flags)


def _fields_on_brain(rng, brain, n: int, ctrl_mm: float) -> np.ndarray:
    """``(n, V)`` smooth fields with unit max-abs over the brain, B-spline control points every ``ctrl_mm``."""
    (x0, x1), (y0, y1), (z0, z1) = brain.box
    spacing = float(brain.affine[0, 0])
    bshape = (x1 - x0, y1 - y0, z1 - z0)
    n_ctrl = tuple(max(int(round(s * spacing / ctrl_mm)) + 3, 4) for s in bshape)
    f = smooth_field(rng, bshape, n_ctrl, sd=1.0, n=n)
    local = tuple(brain.vox - np.array([x0, y0, z0])[:, None])
    return f[(slice(None), *local)]


def receive_field(rng: np.random.Generator, brain) -> np.ndarray:
    """``(4, V)`` multiplicative receive field: shared smooth part (max +-10-20 %) times per-contrast (+-1-3 %)."""
    f = _fields_on_brain(rng, brain, 1 + len(CONTRASTS), ctrl_mm=60.0)
    f /= np.maximum(np.abs(f).max(axis=1, keepdims=True), 1e-6)
    shared = 1.0 + float(rng.uniform(0.10, 0.20)) * f[0]
    own = 1.0 + rng.uniform(0.01, 0.03, len(CONTRASTS)).astype(np.float32)[:, None] * f[1:]
    return (shared[None, :] * own).astype(np.float32)


#: T2w-only non-uniformity: max |deviation| over the brain, uniform per subject, and its control spacing (mm)
T2W_BIAS: tuple[float, float] = (0.20, 0.40)
T2W_BIAS_CTRL_MM: tuple[float, float] = (50.0, 80.0)


def t2w_bias(rng: np.random.Generator, brain) -> np.ndarray:
    """``(V,)`` multiplicative non-uniformity of the T2w alone: a smooth field, max +-20-40 % over the brain.

    Why: the shared receive field is what the coil gives every series alike, but the T2w is the series
    whose intensity non-uniformity real cohorts show strongest and least like the others'. Sites set the
    scanner's coil-intensity normalisation (prescan normalise) per series, so a T2w may keep an array
    coil's receive profile (cortex up to twice as bright as the centre) that the others had removed, or
    the reverse; and it is a long echo train of refocusing pulses whose echo amplitudes follow the local
    transmit field B1+ (at 3 T the head's dielectric pattern brightens its centre by 10-30 %), which the
    gradient-echo T1 sequences feel far less (FLAIR's own share is in the per-contrast part of
    :func:`receive_field`). BraTS ships its volumes without bias correction, so a model meets a T2w-only
    field it cannot see on T1Gd or FLAIR."""
    f = _fields_on_brain(rng, brain, 1, ctrl_mm=float(rng.uniform(*T2W_BIAS_CTRL_MM)))[0]
    f /= max(float(np.abs(f).max()), 1e-6)
    return (1.0 + float(rng.uniform(*T2W_BIAS)) * f).astype(np.float32)


def texture(rng: np.random.Generator, brain) -> tuple[np.ndarray, float, float]:
    """``((2, V) unit fields for T1 and T2, normal amplitude, lesion amplitude)``; correlation 5-10 mm."""
    f = _fields_on_brain(rng, brain, 2, ctrl_mm=float(rng.uniform(5.0, 10.0)))
    f /= np.maximum(f.std(axis=1, keepdims=True), 1e-6)
    f = np.clip(f / 2.0, -1.0, 1.0)  # +-2 sd -> +-1
    return f.astype(np.float32), float(rng.uniform(0.02, 0.04)), float(rng.uniform(0.10, 0.15))


#: probability that a contrast is a 3D (thin, isotropic) acquisition; else 2D with 3-6 mm slices
THIN_3D: dict[str, float] = {"t1w": 0.4, "t1gd": 0.8, "t2w": 0.1, "flair": 0.3}


#: 2D slices: the gap between slices as a fraction of their thickness, uniform per contrast
SLICE_GAP: tuple[float, float] = (0.0, 0.2)


def _sample_slices(vol: np.ndarray, axis: int, step: float, offset: float) -> np.ndarray:
    """``vol`` kept at slices every ``step`` voxels along ``axis`` (the first at ``offset``; each at its nearest
    voxel) and linearly interpolated between them, the first slice's value before it and the last's after.

    Why: a 2D scan measures one value per slice (its profile, the blur of :func:`slice_blur`) at slice
    centres a thickness plus a gap apart; BraTS resamples every scan to 1 mm, so between two centres the
    image is an interpolation, not a measurement, and the centres of two contrasts do not coincide."""
    n = vol.shape[axis]
    centres = np.unique(np.rint(offset + step * np.arange(int(np.ceil((n - offset) / step)) + 1)).astype(np.intp))
    centres = centres[(centres >= 0) & (centres < n)]
    if centres.size < 2:
        return vol
    i = np.arange(n)
    k1 = np.clip(np.searchsorted(centres, i, side="right"), 1, centres.size - 1)  # the first centre after i
    c0, c1 = centres[k1 - 1], centres[k1]
    w1 = np.clip((i - c0) / (c1 - c0), 0.0, 1.0).astype(np.float32)  # 0 before the first centre, 1 after the last
    shape = [1, 1, 1]
    shape[axis] = n
    a, b = np.take(vol, c0, axis=axis), np.take(vol, c1, axis=axis)
    return a + w1.reshape(shape) * (b - a)


def slice_blur(rng: np.random.Generator, brain, clean: np.ndarray, always_3d: tuple[str, ...] = (),
               sampling: np.random.Generator | None = None) -> dict:
    """Blur ``clean (4, V)`` in place across the slices of the 2D contrasts (``always_3d``: contrasts whose
    sequence is 3D whatever the draw, e.g. an MPRAGE T1Gd); return ``{contrast: (axis, mm)}``. With
    ``sampling`` (a generator), each 2D contrast is then kept only at its slice centres (thickness plus a
    0-20 % gap apart, at a random offset) and linearly interpolated between them."""
    from scipy.ndimage import gaussian_filter1d

    spacing = float(brain.affine[0, 0])
    (x0, x1), (y0, y1), (z0, z1) = brain.box
    local = tuple(brain.vox - np.array([x0, y0, z0])[:, None])
    done = {}
    for c, contrast in enumerate(CONTRASTS):
        thin, axis, mm = rng.uniform() < THIN_3D[contrast], int(rng.choice([2, 2, 2, 0, 1])), rng.uniform(3.0, 6.0)
        sigma = np.sqrt(max(mm * mm - spacing * spacing, 0.0)) / 2.355 / spacing  # FWHM less the grid's voxel
        if thin or sigma < 0.3 or contrast in always_3d:
            continue
        vol = np.zeros((x1 - x0, y1 - y0, z1 - z0), dtype=np.float32)
        vol[local] = clean[c]
        vol = gaussian_filter1d(vol, sigma, axis=axis, mode="constant")
        if sampling is not None:
            step = mm * float(sampling.uniform(1.0 + SLICE_GAP[0], 1.0 + SLICE_GAP[1])) / spacing
            vol = _sample_slices(vol, axis, step, float(sampling.uniform(0.0, step)))
        clean[c] = vol[local]
        done[contrast] = ("xyz"[axis], round(float(mm), 2))
    return done


#: residual misregistration of each contrast: translation (mm) and rotation (degrees) per axis, uniform +-
MISREG_MM: float = 1.5
MISREG_DEG: float = 1.0


def misregister(rng: np.random.Generator, brain, clean: np.ndarray, slices: dict | None = None,
                mm: float | None = None) -> dict:
    """Move each contrast of ``clean (4, V)`` in place by its own small rigid transform about the brain box's
    centre, up to ``mm`` (default :data:`MISREG_MM`) per axis; ``slices`` (:func:`slice_blur`'s result): the 2D
    contrasts, whose translation along their slice axis reaches half the slice thickness; return
    ``{contrast: (tx, ty, tz mm, rx, ry, rz degrees)}``."""
    from scipy.ndimage import affine_transform
    from scipy.spatial.transform import Rotation

    spacing = float(brain.affine[0, 0])
    (x0, x1), (y0, y1), (z0, z1) = brain.box
    local = tuple(brain.vox - np.array([x0, y0, z0])[:, None])
    centre = (np.array([x1 - x0, y1 - y0, z1 - z0]) - 1) / 2.0
    done = {}
    for c, contrast in enumerate(CONTRASTS):
        amp = np.full(3, MISREG_MM if mm is None else mm)
        if slices and contrast in slices:
            axis, thick = slices[contrast]
            amp["xyz".index(axis)] = max(amp[0], thick / 2.0)
        t_mm, deg = rng.uniform(-1.0, 1.0, 3) * amp, rng.uniform(-MISREG_DEG, MISREG_DEG, 3)
        rot = Rotation.from_euler("xyz", deg, degrees=True).as_matrix()
        vol = np.zeros((x1 - x0, y1 - y0, z1 - z0), dtype=np.float32)
        vol[local] = clean[c]
        # output voxel o shows input voxel rot (o - centre) + centre - t: the content moves by about +t
        moved = affine_transform(vol, rot, centre - rot @ centre - t_mm / spacing, order=1, mode="constant")
        clean[c] = moved[local]
        done[contrast] = tuple(round(float(v), 3) for v in (*t_mm, *deg))
    return done


def make_subject(sid: str, seed: int, spacing: float = 1.0, return_tissue: bool = False,
                 parts: Parts | None = None) -> dict:
    """One version-2 subject; the layout of :func:`data_prep.phantom.make_subject`'s result, plus ``info``
    (protocol, lesion kinds placed, slices, noise sd as a fraction of each contrast's mean) and, with ``return_tissue``, v2's compartments in ``tissue``."""
    parts = parts or Parts()
    ss = np.random.SeedSequence(int(seed))
    (anatomy, kinds_ss, tissue_ss, protocol_ss, receive_ss, texture_ss, noise_ss, slices_ss, misreg_ss,
     t2bias_ss, sampling_ss) = ss.spawn(11)
    rng = np.random.default_rng(anatomy)
    brain = warped_brain(rng, spacing)
    lesion = grow_lesion(rng, brain.out_mm, brain.tpl_mm, brain.wm, spacing)
    normal = 1.0 - lesion.fractions.sum(axis=0)
    v = brain.vox.shape[1]
    frac = {"wm": brain.wm * normal, "gm": brain.gm * normal, "csf": (1.0 - brain.gm - brain.wm) * normal,
            **{k: f.copy() for k, f in zip(("necrosis", "enhancing", "edema"), lesion.fractions)},
            **{k: np.zeros(v, dtype=np.float32) for k in KINDS}}
    placed = add_kinds(np.random.default_rng(kinds_ss), frac, brain.out_mm, lesion, spacing, parts.prevalence)

    trng = np.random.default_rng(tissue_ss)
    reference = {**REFERENCE, **KIND_TISSUES}
    age = placed.get("haemorrhage", {}).get("age", "late")
    h = reference["haemorrhage"]
    reference["haemorrhage"] = type(h)(t1=h.t1, t2=HAEMORRHAGE_T2[age], pd=h.pd, gd=h.gd)
    tissues = jitter_tissues(trng, reference=reference, names=TISSUES_V2)
    protocol = draw_protocol(np.random.default_rng(protocol_ss), parts.mprage_post) if parts.protocol else REFERENCE_PROTOCOL
    tex, amp_normal, amp_lesion = texture(np.random.default_rng(texture_ss), brain) if parts.texture else (None, 0, 0)

    clean = np.zeros((len(CONTRASTS), v), dtype=np.float32)
    for name in TISSUES_V2:
        idx = np.flatnonzero(frac[name] > 0)
        if idx.size == 0:
            continue
        t, (f1, f2) = tissues[name], field_factors(name, protocol.field)
        t1 = np.full(idx.size, t.t1 * f1, dtype=np.float32)
        t2 = np.full(idx.size, t.t2 * f2, dtype=np.float32)
        if tex is not None:
            amp = amp_normal if name in NORMAL else amp_lesion
            t1 *= 1.0 + amp * tex[0, idx]
            t2 *= 1.0 + amp * tex[1, idx]
        clean[:, idx] += frac[name][idx] * signals(t.pd, t1, t2, t.gd, protocol)
    if parts.receive:
        clean *= receive_field(np.random.default_rng(receive_ss), brain)
    if parts.t2w_bias:
        clean[CONTRASTS.index("t2w")] *= t2w_bias(np.random.default_rng(t2bias_ss), brain)
    slices = slice_blur(np.random.default_rng(slices_ss), brain, clean,
                        ("t1gd",) if protocol.gd_kind == "mprage" else (),
                        np.random.default_rng(sampling_ss) if parts.slice_sampling else None) if parts.slices else {}
    moved = misregister(np.random.default_rng(misreg_ss), brain, clean,
                        slices if parts.thick_misregistration else None, parts.misreg_mm) if parts.misregistration else {}

    nrng = np.random.default_rng(noise_ss)
    gain = (GAIN * nrng.uniform(0.9, 1.1, len(CONTRASTS))).astype(np.float32)[:, None]
    low, high = (np.array([NOISE[c][k] for c in CONTRASTS]) for k in (0, 1))
    noise_frac = nrng.uniform(low, high)
    sigma = (noise_frac * clean.mean(axis=1)).astype(np.float32)[:, None]
    if parts.noise:
        re = clean + sigma * nrng.standard_normal(clean.shape, dtype=np.float32)
        im = sigma * nrng.standard_normal(clean.shape, dtype=np.float32)
        magnitude = np.sqrt(re * re + im * im) * gain  # Rician
    else:
        magnitude = clean * gain
    values = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)  # > 0 in the brain

    images = {contrast: brain.to_grid(values[c]) for c, contrast in enumerate(CONTRASTS)}
    out = {"sid": sid, "images": images, "seg": brain.to_grid(labels(frac)),
           "mask": brain.to_grid(np.ones(v, dtype=bool)), "affine": brain.affine,
           "info": {"protocol": protocol, "kinds": placed, "slices": slices, "misregistration": moved,
                    "noise": {c: round(float(f), 4) if parts.noise else 0.0 for c, f in zip(CONTRASTS, noise_frac)}}}
    if return_tissue:
        out["tissue"] = {name: brain.to_grid(frac[name]) for name in TISSUES_V2}
        out["clean"] = {contrast: brain.to_grid(clean[c] * gain[c]) for c, contrast in enumerate(CONTRASTS)}
    return out


__all__ = ["TISSUES_V2", "NOISE", "THIN_3D", "MISREG_MM", "MISREG_DEG", "T2W_BIAS", "Parts", "misregister",
           "receive_field", "t2w_bias", "texture", "slice_blur", "make_subject"]
