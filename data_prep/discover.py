"""Find BraTS subject folders and tell which file naming each one uses: the one reader of BraTS folders.

A subject folder is any folder under ``SRC_DIR`` (at any depth, hidden folders such as ``.partial/``
excluded) that directly holds ``.nii.gz`` or ``.nii`` files. Its naming (:data:`data_prep.schema.NAMINGS`:
BraTS 2021 ``_t1, _t1ce, _t2, _flair, _seg`` or BraTS 2023+ ``-t1n, -t1c, -t2w, -t2f, -seg``) is detected
from the files present; ``seg`` is optional. The subject id is the files' common prefix. Which contrasts a subject must have is the
caller's (``contrasts``): all four for ``cclray prep``, the model's inputs for ``cclray synthesize``;
so both accept the same folders. Problems of one subject (unknown naming, a missing contrast) are
collected as :class:`SubjectError` so the caller can skip that subject; problems of the whole folder
(no subject at all, two folders giving the same subject id) raise :class:`DiscoveryError`. Both are
:class:`data_prep.errors.InputError` subclasses.

Imports only the standard library and :mod:`data_prep.schema` (the torch-free runtime uses it too).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .schema import CONTRASTS, NAMINGS, Naming, safe_subject_id

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


class DiscoveryError(InputError):
    """The source folder as a whole is unusable (empty, duplicate subject ids); the message says the fix."""


class SubjectError(InputError):
    """One subject is unusable. ``sid`` and ``file`` say which; the message names the file and the fix."""

    def __init__(self, message: str, sid: str | None = None, file: str | Path | None = None):
        super().__init__(message)
        self.sid = sid
        self.file = str(file) if file is not None else None

    def to_dict(self) -> dict:
        return {"sid": self.sid, "file": self.file, "error": str(self)}


@dataclass(frozen=True)
class SubjectFiles:
    """The NIfTI files of one subject: ``paths`` maps each canonical contrast asked for to its file."""

    sid: str
    naming: str
    paths: dict = field(hash=False)  # {contrast: Path}, every contrast the discovery asked for
    seg: Path | None = None

    @property
    def folder(self) -> Path:
        """The subject's folder."""
        return Path(next(iter(self.paths.values()))).parent

    def source_files(self) -> dict:
        out = {c: str(p) for c, p in self.paths.items()}
        if self.seg is not None:
            out["seg"] = str(self.seg)
        return out


@dataclass(frozen=True)
class Discovery:
    """Result of :func:`find_subjects`: usable subjects (sorted by id) and per-subject problems."""

    subjects: list
    failed: list  # [SubjectError]


def _nifti_folders(src: Path) -> list[Path]:
    """Folders under ``src`` holding NIfTI files; follows symlinked folders (once each), skips hidden
    ones (``.partial/`` of an interrupted phantom run, ``.git``)."""
    out, seen = [], set()
    for root, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(nifti_stem(Path(f)) is not None for f in files):
            out.append(Path(root))
    return sorted(out)


def nifti_stem(path: Path) -> str | None:
    """``"a_t1.nii.gz"`` -> ``"a_t1"``; None for a file that is not ``.nii.gz`` / ``.nii``."""
    name = path.name if hasattr(path, "name") else Path(path).name  # a Path, a UPath or a str
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def parse_stem(stem: str, naming: Naming) -> tuple[str, str] | None:
    """``"BraTS2021_00001_t1ce"`` -> ``("BraTS2021_00001", "t1gd")`` under ``naming``, else None."""
    if naming.sep not in stem:
        return None
    prefix, suffix = stem.rsplit(naming.sep, 1)
    for what, suf in naming.suffixes.items():
        if suffix.lower() == suf:
            return prefix, what
    return None


def _expected(naming: Naming, sid: str = "<ID>") -> str:
    return ", ".join(naming.filename(sid, w) for w in (*CONTRASTS, "seg"))


def subject_from_folder(folder: Path, contrasts: tuple[str, ...] = CONTRASTS) -> SubjectFiles:
    """Read one subject folder holding (at least) ``contrasts``; raise :class:`SubjectError` naming the
    file(s) and the fix."""
    folder = Path(folder) if isinstance(folder, str) else folder  # a Path, or a UPath on object storage
    if not folder.is_dir():
        raise SubjectError(f"{folder}: not a folder; pass a BraTS subject folder (e.g. BraTS-GLI-00000-000/)",
                           sid=folder.name, file=folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and nifti_stem(p) is not None)
    best: tuple[int, Naming, dict] | None = None
    for naming in NAMINGS.values():
        found: dict[str, dict[str, Path]] = {}  # prefix -> {what: path}
        for p in files:
            parsed = parse_stem(nifti_stem(p), naming)
            if parsed:
                found.setdefault(parsed[0], {})[parsed[1]] = p
        score = sum(len(v) for v in found.values())
        if score and (best is None or score > best[0]):
            best = (score, naming, found)
    if best is None:
        raise SubjectError(
            f"{folder}: no file follows a known BraTS naming (found: {[p.name for p in files]}); "
            f"expected e.g. {_expected(NAMINGS['brats2021'], folder.name)} (BraTS 2021) or "
            f"{_expected(NAMINGS['brats2023'], folder.name)} (BraTS 2023+); rename the files",
            sid=folder.name, file=folder,
        )
    _, naming, found = best
    if len(found) > 1:
        raise SubjectError(
            f"{folder}: files of several subjects in one folder ({sorted(found)}); "
            f"put each subject in its own folder",
            sid=folder.name, file=folder,
        )
    (prefix, parts), = found.items()
    sid = safe_subject_id(prefix, folder)
    missing = [c for c in contrasts if c not in parts]
    if missing:
        names = [naming.filename(prefix, c) for c in missing]
        raise SubjectError(
            f"{folder}: missing {', '.join(names)} ({naming.name} naming; found "
            f"{[p.name for p in files]}; every subject needs {', '.join(contrasts)}); "
            f"add the file(s) or remove the folder",
            sid=sid, file=folder / names[0],
        )
    return SubjectFiles(sid, naming.name, {c: parts[c] for c in contrasts}, parts.get("seg"))


def find_subjects(src_dir: str | Path, contrasts: tuple[str, ...] = CONTRASTS) -> Discovery:
    """Every subject folder under ``src_dir`` holding ``contrasts``; per-subject problems collected, not
    raised."""
    src = Path(src_dir).expanduser()
    if not src.is_dir():
        raise DiscoveryError(f"{src} is not a folder: pass the folder that holds the BraTS subject folders")
    folders = _nifti_folders(src)
    if not folders:
        raise DiscoveryError(
            f"{src} holds no .nii.gz/.nii file: point SRC_DIR at the BraTS folder "
            f"(e.g. BraTS2021_Training_Data/ holding BraTS2021_XXXXX/ subject folders)"
        )
    subjects: dict[str, SubjectFiles] = {}
    failed: list[SubjectError] = []
    for folder in folders:
        try:
            s = subject_from_folder(folder, contrasts)
        except SubjectError as e:
            failed.append(e)
            continue
        except ValueError as e:  # unsafe subject id
            failed.append(SubjectError(str(e), sid=folder.name, file=folder))
            continue
        if s.sid in subjects:
            raise DiscoveryError(
                f"duplicate subject id {s.sid!r}: {subjects[s.sid].folder} and {s.folder}; remove or "
                f"rename one of the two folders"
            )
        subjects[s.sid] = s
    log.info("found %d subject(s) under %s (%d unusable)", len(subjects), src, len(failed))
    return Discovery([subjects[k] for k in sorted(subjects)], failed)


def discover(src_dir: str | Path, contrasts: tuple[str, ...] = CONTRASTS) -> list[SubjectFiles]:
    """Like :func:`find_subjects` but raise the first per-subject problem."""
    found = find_subjects(src_dir, contrasts)
    if found.failed:
        raise found.failed[0]
    return found.subjects
