"""Names shared by every part of cclray: contrasts, BraTS file naming, and the Zarr store layout.

This module imports nothing heavy (no zarr, no torch): the ONNX runtime uses it too.

Store layout (Zarr v3, schema version ``SCHEMA_VERSION``)::

    STORE/                         root group
      attrs: schema_version, channels, prep_config, subjects, splits, failed,
             fingerprint, constraints {name: {contrasts, k, seed, recipe}}, layout {chunks, dtype, codec},
             spacing [sx, sy, sz] mm of the stored grid when every subject shares it (else null)
      subjects/<sid>/              one group a subject
        image      (4, X, Y, Z)  float, normalized, channel order = root attrs "channels"
        mask       (X, Y, Z)     uint8, 1 inside the brain
        seg        (X, Y, Z)     uint8, BraTS labels 0/1/2/4 (only when the source has seg)
        constraint/<name> (X, Y, Z) uint8, cluster labels 1..K inside the brain, 0 outside
        attrs: complete (written last), affine (4x4 of the source), source_shape, spacing [sx, sy, sz]
               (mm of the stored grid), grid_affine / grid_shape (the stored grid before cropping: the
               source grid, or its `prep --spacing` resampling, see data_prep.resample), crop
               [[x0, x1], [y0, y1], [z0, z1]] (on the stored grid), norm {contrast: {p_lo, p_hi, mean, std}},
               header {pixdim, qform_code, sform_code, xyzt_units}, source_files, naming
               (stores written before `--spacing` lack spacing/grid_*: the source grid is the stored grid,
               data_prep.resample.subject_spacing reads either)

Axes are the NIfTI array axes (i, j, k) as nibabel loads them, cropped; no reorientation, so the
source affine plus the crop offset gives each voxel's world position.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .errors import InputError

SCHEMA_VERSION = 1

#: Canonical contrast names, in the channel order of the store's ``image`` array.
CONTRASTS: tuple[str, ...] = ("t1w", "t1gd", "t2w", "flair")
#: How figures and tables name each contrast.
CONTRAST_DISPLAY: dict[str, str] = {"t1w": "T1w", "t1gd": "T1Gd", "t2w": "T2w", "flair": "FLAIR"}
#: What a person may type for a contrast (CLI, configs) -> canonical name.
CONTRAST_ALIASES: dict[str, str] = {
    "t1w": "t1w", "t1": "t1w", "t1n": "t1w",
    "t1gd": "t1gd", "t1ce": "t1gd", "t1c": "t1gd",
    "t2w": "t2w", "t2": "t2w",
    "flair": "flair", "t2f": "flair",
}
#: Defaults of the method: synthesize T1w and T2w from T1Gd and FLAIR.
DEFAULT_INPUTS: tuple[str, ...] = ("t1gd", "flair")
DEFAULT_TARGETS: tuple[str, ...] = ("t1w", "t2w")
SEG_LABELS: tuple[int, ...] = (1, 2, 4)  # necrosis, edema, enhancing


@dataclass(frozen=True)
class Naming:
    """One BraTS file-naming convention."""

    name: str
    sep: str  # between subject id and suffix
    suffixes: dict  # canonical contrast (or "seg") -> file suffix
    subject_pattern: str  # regex a subject folder name matches

    def filename(self, sid: str, what: str, synth: bool = False) -> str:
        return f"{sid}{self.sep}{self.suffixes[what]}{'-synth' if synth else ''}.nii.gz"


NAMINGS: dict[str, Naming] = {
    "brats2021": Naming(
        "brats2021", "_",
        {"t1w": "t1", "t1gd": "t1ce", "t2w": "t2", "flair": "flair", "seg": "seg"},
        r"^BraTS20\d\d_\d+$",
    ),
    "brats2023": Naming(
        "brats2023", "-",
        {"t1w": "t1n", "t1gd": "t1c", "t2w": "t2w", "flair": "t2f", "seg": "seg"},
        r"^BraTS-[A-Z]+-\d+-\d+$",
    ),
}


def canonical_contrast(name: str) -> str:
    """Map an alias ("t1ce", "T2F", ...) to the canonical name, or raise naming the choices."""
    key = name.strip().lower()
    if key not in CONTRAST_ALIASES:
        raise ConfigError(
            f"unknown contrast {name!r}: use one of {sorted(CONTRAST_ALIASES)} "
            f"(canonical: {', '.join(CONTRASTS)})"
        )
    return CONTRAST_ALIASES[key]


def channel_index(contrast: str) -> int:
    """Index of a contrast in the store's ``image`` array."""
    return CONTRASTS.index(canonical_contrast(contrast))


def constraint_name(contrasts, k: int) -> str:
    """Store name of a constraint-map setting, e.g. ``t1w+t1gd+t2w+flair-k20``."""
    cs = [canonical_contrast(c) for c in contrasts]
    ordered = [c for c in CONTRASTS if c in cs]
    if len(set(cs)) != len(cs) or not cs:
        raise ConfigError(f"constraint contrasts must be distinct and non-empty, got {list(contrasts)}")
    if k < 2:
        raise ConfigError(f"constraint k must be >= 2, got {k}")
    return f"{'+'.join(ordered)}-k{int(k)}"


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_subject_id(sid: str, source: str | Path | None = None) -> str:
    """Refuse subject ids that could escape the store (``..``, ``/``, absolute paths, odd characters)."""
    if not _SAFE_ID.match(sid) or ".." in sid:
        where = f" (from {source})" if source else ""
        raise InputError(
            f"subject id {sid!r}{where} is not a safe store name: use letters, digits, '.', '_' "
            f"and '-' only (no '..', no '/'); rename the folder"
        )
    return sid
