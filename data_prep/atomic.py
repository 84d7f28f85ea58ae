"""Atomic file writes: the one helper every writer of a file that must be whole or absent uses.

:func:`atomic_path` yields a temporary path next to the target; when the block ends without an error the
temporary file is flushed to disk (``fsync``), renamed onto the target (``os.replace``: readers see the old
file or the new one, never half of one) and the folder entry is synced; on an error it is removed and the
target is untouched. :func:`atomic_write` writes bytes or text that way, and on object storage (a
``UPath`` from :func:`data_prep.objstore.location`) in one PUT: an object store publishes an object whole.
Standard library only: every layer (the torch-free runtime included) may use it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDONLY)
    except OSError:  # a folder cannot be opened on some platforms: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield ``.<name>.<random><suffix>`` in ``path``'s folder (created if missing) to write to; on success
    it replaces ``path``. ``suffix`` keeps a writer's extension when it matters (``".tmp.nii.gz"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, data: bytes | str):
    """Write ``data`` (text as UTF-8) to ``path`` (a local path, or a ``UPath`` on object storage)
    atomically; returns ``path``."""
    data = data.encode() if isinstance(data, str) else data
    if getattr(path, "protocol", "") not in ("", "file", "local"):  # object storage: one PUT is atomic
        path.write_bytes(data)
        return path
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
