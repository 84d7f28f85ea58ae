"""Training checkpoints: one directory = ``checkpoint.pt`` (tensors and plain values only, loadable with
``torch.load(weights_only=True)``) + ``meta.json`` (what a person or a scheduler reads without torch).

``checkpoint.pt`` holds the ``model``/``optimizer``/``scheduler``/``scaler`` state dicts, ``step``,
``epoch``, ``rng`` (per-rank RNG states as tensors), ``config`` (the stage config as a JSON *string*),
``stage`` and ``format``. Both files are written atomically (:mod:`data_prep.atomic`), the
checkpoint first: a directory whose ``meta.json`` exists has a complete ``checkpoint.pt`` unless the
file was damaged later, which :func:`load_checkpoint` and :func:`is_complete` detect (size recorded
in ``meta.json``; a truncated zip archive is refused). The reading side takes local paths and
object-storage URLs alike (:func:`data_prep.objstore.location`); on object storage, where each object
is published whole, ``meta.json`` with the recorded size is the marker of a complete checkpoint.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from data_prep.atomic import atomic_path, atomic_write
from data_prep.config import FrozenConfig
from data_prep.errors import UserError
from data_prep.objstore import is_local, location

log = logging.getLogger(__name__)

CKPT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of the wrong stage; the message says the fix."""


# ---------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's RNG states (torch, CUDA, numpy, python) as tensors (``weights_only``-safe)."""
    np_state = np.random.get_state()  # ('MT19937', uint32 (624,), pos, has_gauss, cached_gaussian)
    py_state = random.getstate()  # (version, 625 ints, gauss_next)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    pos, has_gauss = (int(v) for v in state["numpy_pos"].tolist())
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------- write
def save_checkpoint(directory: str | os.PathLike, state: dict, config: FrozenConfig, stage: str,
                    meta: dict | None = None) -> Path:
    """Write ``directory/checkpoint.pt`` then ``directory/meta.json`` atomically; returns ``directory``.

    ``state``: ``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``step``, ``epoch``,
    ``rng`` ... (tensors and plain Python values only). ``meta``: extra JSON fields, e.g.
    ``{"metrics": {...}, "score": 0.3}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**state, "config": config.to_json(), "stage": stage, "format": FORMAT_VERSION}
    ckpt = directory / CKPT_FILE
    with atomic_path(ckpt) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)
    info = {
        "stage": stage, "step": int(state.get("step", 0)), "epoch": int(state.get("epoch", 0)),
        "config_hash": config.hash(), "bytes": ckpt.stat().st_size, "time": time.time(),
        **(meta or {}),
    }
    atomic_write(directory / META_FILE, json.dumps(info, indent=1, sort_keys=True, default=float))
    return directory


# ---------------------------------------------------------------------------------------- read
def checkpoint_file(path_or_dir: str | os.PathLike) -> Path:
    """``X/checkpoint.pt`` for a directory ``X``, the path itself for a file (local or a URL)."""
    p = location(path_or_dir)
    return p / CKPT_FILE if p.is_dir() else p


def read_meta(path_or_dir: str | os.PathLike) -> dict:
    """``meta.json`` next to the checkpoint ({} when absent or unreadable)."""
    meta = checkpoint_file(path_or_dir).parent / META_FILE
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}


def is_complete(path_or_dir: str | os.PathLike) -> bool:
    """Cheap check without unpickling: meta.json readable, size as recorded, zip directory intact."""
    f = checkpoint_file(path_or_dir)
    meta = read_meta(f)
    if not meta or not f.is_file():
        return False
    if "bytes" in meta and f.stat().st_size != meta["bytes"]:
        return False
    with f.open("rb") as fh:  # reads the zip's end record only (a ranged read on object storage)
        return zipfile.is_zipfile(fh)


def load_checkpoint(path_or_dir: str | os.PathLike, stage: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load ``checkpoint.pt`` (a checkpoint directory or the file) with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file and the fix when it is missing, truncated or
    corrupt, or when ``stage`` is given and the checkpoint is of another stage.
    """
    f = checkpoint_file(path_or_dir)
    if not f.is_file():
        raise CheckpointError(f"no checkpoint at {f}: pass a run directory, a checkpoint directory or "
                              f"its {CKPT_FILE} (find one with cclray.runs.find_checkpoint)")
    meta = read_meta(f)
    size = f.stat().st_size
    if "bytes" in meta and size != meta["bytes"]:
        raise CheckpointError(
            f"{f} is truncated ({size} bytes, {meta['bytes']} written): the copy or the job died while "
            f"writing; delete {f.parent} and use an earlier checkpoint (cclray.runs.find_checkpoint skips "
            f"damaged ones) or resume the run")
    try:
        source = f if is_local(f) else io.BytesIO(f.read_bytes())
        ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle errors of a damaged file come in many types
        if "Weights only load failed" in str(e):  # an intact file holding pickled Python objects
            raise CheckpointError(
                f"{f} holds pickled Python objects (not only tensors and plain values), which "
                f"torch.load(weights_only=True) refuses for safety: it was not written by cclray. Pass "
                f"a checkpoint written by `cclray pretrain` / `cclray finetune`, or re-save only its "
                f"tensors (load it yourself only if you trust its source)") from e
        raise CheckpointError(
            f"{f} is corrupt or truncated ({type(e).__name__}: {e}); delete {f.parent} and use an "
            f"earlier checkpoint (cclray.runs.find_checkpoint skips damaged ones) or retrain") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "stage" not in ckpt:
        raise CheckpointError(f"{f} is not a cclray checkpoint (no 'model'/'stage' entries): pass a "
                              f"checkpoint written by `cclray pretrain` or `cclray finetune`")
    if stage is not None and ckpt["stage"] != stage:
        hint = ("a finetune run takes `--init PRETRAIN_RUN`; evaluation and export take finetune runs"
                if stage == "finetune" else "pass the run of `cclray pretrain`")
        raise CheckpointError(f"{f} is a {ckpt['stage']!r} checkpoint, a {stage!r} one is needed: {hint}")
    return ckpt


def checkpoint_config(ckpt: dict) -> dict:
    """The stage config stored in a loaded checkpoint, as a plain dict."""
    return json.loads(ckpt["config"])
