"""NIfTI in and out for the ONNX runtime: read and validate, find BraTS subjects, write results.

Imports only numpy, nibabel and numpy-only cclray modules (no torch, no Ray, no zarr, no scipy):
an inference host installs ``cclray[runtime]``. Every error names the file and the fix.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.schema import NAMINGS, Naming, canonical_contrast, safe_subject_id

log = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3  # mm; BraTS contrasts share one grid, float32 headers differ by rounding only


class InputError(ValueError):
    """An input volume or folder is unusable; the message names the file and the fix."""


@dataclass
class Volume:
    """One loaded 3D image: ``data (X, Y, Z)`` float32, its 4x4 ``affine``, nibabel ``header``, ``path``."""

    data: np.ndarray
    affine: np.ndarray
    header: object
    path: str


@dataclass
class SubjectInputs:
    """Input files of one subject and how to name its outputs."""

    sid: str
    naming: Naming
    files: dict = field(default_factory=dict)  # canonical contrast -> path


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D NIfTI as float32 ``(X, Y, Z)``; refuse missing, non-NIfTI, 4D and non-finite files."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path (expected a .nii or .nii.gz volume)")
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a readable NIfTI ({type(e).__name__}: {e}); pass a .nii/.nii.gz volume") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: image has shape {tuple(img.shape)} ({len(img.shape)}D); pass one 3D volume "
                         f"per contrast (split a 4D series, e.g. with nibabel's four_to_three or fslsplit)")
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: {bad} voxels are NaN or infinite; replace them (e.g. with 0, "
                         f"numpy.nan_to_num) before synthesis")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine is not finite; fix the NIfTI header (qform/sform)")
    return Volume(data, affine, img.header, str(path))


def check_consistent(volumes: dict[str, Volume]) -> None:
    """Refuse inputs on different grids or with an empty brain (all zero), naming the files."""
    items = list(volumes.items())
    c0, v0 = items[0]
    for c, v in items[1:]:
        if v.data.shape != v0.data.shape:
            raise InputError(f"{v.path} ({c}) has shape {v.data.shape} but {v0.path} ({c0}) has "
                             f"{v0.data.shape}: inputs must be co-registered on one grid (resample first)")
        if not np.allclose(v.affine, v0.affine, atol=AFFINE_ATOL):
            raise InputError(f"{v.path} ({c}) and {v0.path} ({c0}) have different affines "
                             f"(max diff {np.abs(v.affine - v0.affine).max():.3g}): inputs must be "
                             f"co-registered on one grid (register/resample first)")
    if not any(np.any(v.data != 0) for v in volumes.values()):
        raise InputError(f"every voxel of {', '.join(v.path for v in volumes.values())} is 0: empty brain; "
                         f"pass skull-stripped volumes with the brain non-zero")


def load_inputs(files: dict[str, str | os.PathLike]) -> dict[str, Volume]:
    """``{contrast: path}`` -> ``{canonical contrast: Volume}``, validated to share one grid."""
    volumes = {canonical_contrast(c): load_volume(p) for c, p in files.items()}
    check_consistent(volumes)
    return volumes


def detect_naming(name: str) -> Naming | None:
    """The BraTS naming whose subject pattern matches a folder name (or None)."""
    return next((n for n in NAMINGS.values() if re.match(n.subject_pattern, name)), None)


def subject_inputs(folder: str | os.PathLike, contrasts) -> SubjectInputs:
    """Input files of one BraTS subject folder (2021 ``<sid>_t1ce.nii.gz`` or 2023 ``<sid>-t1c.nii.gz``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; pass a BraTS subject folder (e.g. BraTS-GLI-00000-000/)")
    sid = safe_subject_id(folder.name, folder)
    namings = [detect_naming(sid)] if detect_naming(sid) else list(NAMINGS.values())
    for naming in namings:
        files = {c: folder / naming.filename(sid, c) for c in contrasts}
        if all(p.is_file() for p in files.values()):
            return SubjectInputs(sid, naming, {c: str(p) for c, p in files.items()})
    wanted = [str(folder / n.filename(sid, c)) for n in namings for c in contrasts
              if not (folder / n.filename(sid, c)).is_file()]
    raise InputError(f"{folder}: missing input file(s) {wanted}; name them like BraTS 2023 "
                     f"(<sid>-t1c.nii.gz, <sid>-t2f.nii.gz) or BraTS 2021 (<sid>_t1ce.nii.gz, <sid>_flair.nii.gz)")


def cohort_inputs(root: str | os.PathLike, contrasts) -> list[SubjectInputs]:
    """Every BraTS subject folder directly under ``root`` (sorted), validated for its input files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass the folder holding the BraTS subject folders")
    subjects = [subject_inputs(d, contrasts) for d in sorted(root.iterdir())
                if d.is_dir() and detect_naming(d.name)]
    if not subjects:
        raise InputError(f"{root}: no BraTS subject folders (BraTS2021_XXXXX or BraTS-GLI-XXXXX-YYY) inside; "
                         f"use --subject for a single folder or --t1c/--flair for files")
    return subjects


def files_subject(files: dict[str, str]) -> tuple[str, Naming]:
    """Subject id and naming for loose input files: parsed from a BraTS file name, else the file stem."""
    for c, p in files.items():
        name = Path(p).name
        for naming in NAMINGS.values():
            suffix = f"{naming.sep}{naming.suffixes[canonical_contrast(c)]}.nii.gz"
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)], naming
    stem = re.sub(r"\.nii(\.gz)?$", "", Path(next(iter(files.values()))).name)
    return stem, NAMINGS["brats2023"]


def output_paths(out_dir: str | os.PathLike, sid: str, naming: Naming, targets) -> dict[str, Path]:
    """``{target: OUT/<sid>-t1n-synth.nii.gz}`` (2023) or ``OUT/<sid>_t1-synth.nii.gz`` (2021)."""
    return {t: Path(out_dir) / naming.filename(sid, t, synth=True) for t in targets}


def write_outputs(outputs: dict[str, np.ndarray], reference: Volume, paths: dict[str, Path]) -> list[str]:
    """Write float32 NIfTIs with the reference input's affine and header, all or none.

    Each file goes to a temp name first; they are renamed into place only after every one was
    written, so an error leaves no partial output.
    """
    import nibabel as nib

    tmps: list[tuple[Path, Path]] = []
    try:
        for t, data in outputs.items():
            final = Path(paths[t])
            final.parent.mkdir(parents=True, exist_ok=True)
            header = reference.header.copy()
            header.set_data_dtype(np.float32)
            img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine, header)
            img.header.set_slope_inter(1.0, 0.0)
            img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0
            img.header["descrip"] = f"cclray synthesized {t} (z-scored units)".encode()[:79]
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}.nii.gz")
            nib.save(img, str(tmp))
            tmps.append((tmp, final))
        for tmp, final in tmps:
            os.replace(tmp, final)
        return [str(f) for _, f in tmps]
    finally:
        for tmp, _ in tmps:
            if tmp.exists():
                tmp.unlink()


# ---------------------------------------------------------------- ONNX external data (security)
# A minimal protobuf wire-format walk over the fields that can hold tensors, so the check needs no
# `onnx` package on the inference host. Field numbers from onnx/onnx.proto3.
_CHILDREN = {
    "model": {7: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _varint(buf, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield ``(field_number, wire_type, value)``; value is ``(a, b)`` byte span for wire type 2."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, i = _varint(buf, i)
        elif wt == 1:
            value, i = None, i + 8
        elif wt == 5:
            value, i = None, i + 4
        elif wt == 2:
            n, i = _varint(buf, i)
            value, i = (i, i + n), i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, value


def external_data_locations(model_path: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(tensor name, location)]`` of every tensor of an ONNX file stored as external data."""
    buf = memoryview(Path(model_path).read_bytes())
    found: list[tuple[str, str]] = []

    def tensor(a: int, b: int) -> None:
        name, location, external = "", None, False
        for num, wt, v in _fields(buf, a, b):
            if num == 8 and wt == 2:
                name = bytes(buf[v[0]:v[1]]).decode(errors="replace")
            elif num == 14 and wt == 0:
                external = v == 1  # TensorProto.EXTERNAL
            elif num == 13 and wt == 2:
                entry = {k: bytes(buf[e[0]:e[1]]).decode(errors="replace")
                         for k, w, e in _fields(buf, *v) if w == 2}
                if entry.get(1) == "location":
                    location = entry.get(2, "")
        if external or location is not None:
            found.append((name, location or ""))

    def walk(kind: str, a: int, b: int) -> None:
        children = _CHILDREN[kind]
        for num, wt, v in _fields(buf, a, b):
            if wt == 2 and num in children:
                child = children[num]
                tensor(*v) if child == "tensor" else walk(child, *v)

    try:
        walk("model", 0, len(buf))
    except (IndexError, ValueError) as e:
        raise InputError(f"{model_path}: not a valid ONNX file ({e}); re-export it with `cclray export`") from None
    return found


def check_external_data(model_path: str | os.PathLike) -> None:
    """Refuse external-data locations that are absolute or leave the model's folder (security)."""
    path = Path(model_path)
    base = path.resolve().parent
    for name, loc in external_data_locations(path):
        target = (base / loc).resolve()
        if not loc or os.path.isabs(loc) or (target != base and base not in target.parents):
            raise InputError(
                f"{path}: tensor {name!r} reads external data from {loc!r}, outside the model's folder "
                f"{base}; refused for safety. Keep the .onnx and its data file together in one folder "
                f"(re-save with onnx.save_model(model, path, save_as_external_data=True, location='<name>.data'))"
            )
