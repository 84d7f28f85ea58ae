"""Load one subject's NIfTI files with nibabel and validate them before anything is written.

Checks: every contrast readable (a missing file, a truncated ``.nii.gz`` or a non-NIfTI file with a
NIfTI name is refused), 3D (trailing singleton axes are squeezed, a real 4D series refused), one shape
and one affine (``allclose``, atol 1e-3) across contrasts and seg, finite values and a finite affine,
no contrast all zero. Every failure is a :class:`SubjectError` whose message names the file and the fix.

The one set of rules for both readers of NIfTI: ``cclray prep`` (:func:`load_subject`, all four
contrasts and seg) and the torch-free runtime (:func:`load_contrasts`, the model's inputs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .discover import SubjectError, SubjectFiles
from .schema import CONTRASTS, SEG_LABELS

log = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3
__all__ = ["SubjectError", "LoadedSubject", "load_subject", "load_contrasts", "load_volume", "header_essentials"]


@dataclass(frozen=True)
class LoadedSubject:
    """A validated subject. ``volumes``: ``(4, X, Y, Z)`` float32 in :data:`CONTRASTS` order."""

    files: SubjectFiles
    volumes: np.ndarray
    affine: np.ndarray  # (4, 4)
    header: dict
    seg: np.ndarray | None  # (X, Y, Z) uint8


def header_essentials(img) -> dict:
    """The header fields a writer needs to give an output the input's geometry and units."""
    h = img.header
    return {
        "pixdim": [float(v) for v in h["pixdim"]],
        "qform_code": int(h["qform_code"]),
        "sform_code": int(h["sform_code"]),
        "xyzt_units": int(h["xyzt_units"]),
        "datatype": str(h.get_data_dtype()),
    }


def load_volume(path: Path, sid: str | None = None) -> tuple[np.ndarray, np.ndarray, object]:
    """One NIfTI file -> ``(data (X, Y, Z) float32, affine (4, 4), image)``; raise :class:`SubjectError`."""
    path = Path(path)
    if not path.is_file():
        raise SubjectError(f"{path}: no such file; check the path (expected a .nii or .nii.gz volume)",
                           sid=sid, file=path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"a {type(img).__name__}, not a NIfTI image")
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]  # trailing singleton axes: squeezed
        if len(shape) != 3:
            raise SubjectError(
                f"{path}: shape {tuple(img.shape)} is not a 3D volume (a 4D series?); export one 3D volume "
                f"per contrast (e.g. fslroi/nibabel slicing, or nibabel's four_to_three) and re-run",
                sid=sid, file=path,
            )
        data = np.asanyarray(img.dataobj).astype(np.float32, copy=False).reshape(shape)
    except SubjectError:
        raise
    except Exception as e:  # nibabel raises many types for corrupt/truncated/non-NIfTI files
        raise SubjectError(
            f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e}); the file is truncated or not "
            f"a NIfTI file: re-download or re-export it",
            sid=sid, file=path,
        ) from e
    if not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise SubjectError(
            f"{path}: {n} voxel(s) are NaN or infinite; fix the file (e.g. set them to 0 with "
            f"numpy.nan_to_num) and re-run",
            sid=sid, file=path,
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise SubjectError(f"{path}: the affine is not finite; fix the NIfTI header (qform/sform) and re-run",
                           sid=sid, file=path)
    return data, affine, img


def load_contrasts(paths: dict, sid: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    """``{contrast: path}`` -> ``{contrast: (data (X, Y, Z) float32, affine (4, 4), image)}`` in the given
    order, validated: each readable, 3D, finite, not all zero, all on the first one's grid."""
    out: dict = {}
    ref_path = ref_shape = ref_affine = None
    for c, path in paths.items():
        data, affine, img = load_volume(path, sid)
        if ref_path is None:
            ref_path, ref_shape, ref_affine = path, data.shape, affine
        else:
            _check_same_grid(sid, path, data.shape, affine, ref_path, ref_shape, ref_affine)
        if not data.any():
            raise SubjectError(
                f"{path}: every voxel is 0 (empty {c} volume); replace the file with a valid export "
                f"or remove subject {sid}",
                sid=sid, file=path,
            )
        out[c] = (data, affine, img)
    return out


def load_subject(files: SubjectFiles) -> LoadedSubject:
    """Load and validate the four contrasts (and seg, when present) of one subject."""
    sid = files.sid
    loaded = load_contrasts({c: files.paths[c] for c in CONTRASTS}, sid)
    _, ref_affine, img0 = loaded[CONTRASTS[0]]
    ref_path, header = files.paths[CONTRASTS[0]], header_essentials(img0)
    volumes = np.stack([loaded[c][0] for c in CONTRASTS])
    seg = None
    if files.seg is not None:
        data, affine, _ = load_volume(files.seg, sid)
        _check_same_grid(sid, files.seg, data.shape, affine, ref_path, volumes.shape[1:], ref_affine)
        if files.naming == "brats2023":
            data = np.where(data == 3, 4, data)  # BraTS 2023+ labels enhancing tumour 3; the store uses 4
        labels = np.unique(data)
        bad = [v for v in labels if v not in (0, *SEG_LABELS)]
        if bad:
            raise SubjectError(
                f"{files.seg}: labels {bad[:8]} are not BraTS labels 0/{'/'.join(map(str, SEG_LABELS))}; "
                f"relabel them to 1 (necrosis), 2 (edema), 4 (enhancing) or remove the seg file",
                sid=sid, file=files.seg,
            )
        seg = data.astype(np.uint8)
    return LoadedSubject(files, volumes, ref_affine, header, seg)


def _check_same_grid(sid, path, shape, affine, ref_path, ref_shape, ref_affine) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise SubjectError(
            f"{path}: shape {tuple(shape)} differs from {Path(ref_path).name} {tuple(ref_shape)}; "
            f"resample all contrasts of {sid} onto one grid (co-register) and re-run",
            sid=sid, file=path,
        )
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL):
        diff = float(np.abs(affine - ref_affine).max())
        raise SubjectError(
            f"{path}: affine differs from {Path(ref_path).name} (max abs diff {diff:.4g} > {AFFINE_ATOL}); "
            f"co-register the contrasts of {sid} onto one grid and re-run",
            sid=sid, file=path,
        )
