"""NIfTI in and out for the ONNX runtime: find BraTS subjects, read and validate, write results.

Finding subjects and reading NIfTI are :mod:`data_prep.discover` and :mod:`data_prep.nifti`, the same
rules as ``cclray prep`` (asked for the model's input contrasts only), so ``cclray prep DIR`` and
``cclray synthesize --cohort DIR`` accept the same folders. Imports only numpy, nibabel and torch-free
modules of this project (no torch, no Ray, no zarr, no scipy): an inference host installs
``cclray[runtime]``. Every error names the file and the fix.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.atomic import atomic_path
from data_prep.discover import SubjectError, find_subjects, nifti_stem, parse_stem, subject_from_folder
from data_prep.errors import InputError
from data_prep.nifti import load_contrasts
from data_prep.schema import NAMINGS, Naming, canonical_contrast

log = logging.getLogger(__name__)

__all__ = ["InputError", "Volume", "SubjectInputs", "load_inputs", "subject_inputs", "cohort_inputs",
           "files_subject", "output_paths", "write_outputs", "save_nifti", "check_external_data"]


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


def load_inputs(files: dict[str, str | os.PathLike], sid: str | None = None) -> dict[str, Volume]:
    """``{contrast: path}`` -> ``{canonical contrast: Volume}``, validated by :func:`data_prep.nifti.load_contrasts`
    (readable 3D NIfTI, finite, not all zero, one grid)."""
    paths = {canonical_contrast(c): Path(p) for c, p in files.items()}
    loaded = load_contrasts(paths, sid)
    return {c: Volume(data, affine, img.header, str(paths[c])) for c, (data, affine, img) in loaded.items()}


def _subject(found) -> SubjectInputs:
    return SubjectInputs(found.sid, NAMINGS[found.naming], {c: str(p) for c, p in found.paths.items()})


def subject_inputs(folder: str | os.PathLike, contrasts) -> SubjectInputs:
    """Input files of one BraTS subject folder (2021 ``<sid>_t1ce.nii.gz`` or 2023 ``<sid>-t1c.nii.gz``)."""
    return _subject(subject_from_folder(Path(folder), tuple(canonical_contrast(c) for c in contrasts)))


def cohort_inputs(root: str | os.PathLike, contrasts) -> tuple[list[SubjectInputs], list[SubjectError]]:
    """Every BraTS subject under ``root`` holding ``contrasts`` (the folders ``cclray prep`` finds), and
    the unusable ones as :class:`SubjectError` (naming the file and the fix)."""
    found = find_subjects(root, tuple(canonical_contrast(c) for c in contrasts))
    return [_subject(s) for s in found.subjects], list(found.failed)


def files_subject(files: dict[str, str]) -> tuple[str, Naming]:
    """Subject id and naming for loose input files: parsed from a BraTS file name, else the file stem."""
    for c, p in files.items():
        stem = nifti_stem(Path(p))
        for naming in NAMINGS.values():
            parsed = parse_stem(stem, naming) if stem else None
            if parsed and parsed[0] and parsed[1] == canonical_contrast(c):
                return parsed[0], naming
    first = Path(next(iter(files.values())))
    return nifti_stem(first) or first.name, NAMINGS["brats2023"]


def output_paths(out_dir: str | os.PathLike, sid: str, naming: Naming, targets) -> dict[str, Path]:
    """``{target: OUT/<sid>-t1n-synth.nii.gz}`` (2023) or ``OUT/<sid>_t1-synth.nii.gz`` (2021)."""
    return {t: Path(out_dir) / naming.filename(sid, t, synth=True) for t in targets}


def write_outputs(outputs: dict[str, np.ndarray], reference: Volume, paths: dict[str, Path]) -> list[str]:
    """Write float32 NIfTIs with the reference input's affine and header, all or none.

    Each file goes to a temp name first (:func:`data_prep.atomic.atomic_path`); they are renamed into
    place only after every one was written, so an error leaves no partial output.
    """
    import nibabel as nib

    with contextlib.ExitStack() as stack:  # leaving it renames every file, or (on an error) removes them
        for t, data in outputs.items():
            header = reference.header.copy()
            header.set_data_dtype(np.float32)
            img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine, header)
            img.header.set_slope_inter(1.0, 0.0)
            img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0
            img.header["descrip"] = f"cclray synthesized {t} (z-scored units)".encode()[:79]
            save_nifti(img, stack.enter_context(atomic_path(paths[t], suffix=".tmp.nii.gz")))
    return [str(paths[t]) for t in outputs]


def save_nifti(img, path: str | os.PathLike) -> None:
    """``nib.save``, but a ``.nii.gz`` is gzipped by ISA-L (``isal``, level 1) when it is installed: 5-8x
    faster than zlib's level 1 (nibabel's default) for a 240x240x155 float32 volume, a same-size file
    any gzip reader opens (docs/BENCHMARKS.md)."""
    import nibabel as nib

    path = Path(path)
    if path.name.endswith(".gz"):
        try:
            from isal import igzip
        except ImportError:
            igzip = None
        if igzip is not None:
            path.write_bytes(igzip.compress(img.to_bytes(), compresslevel=1))
            return
    nib.save(img, str(path))


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
