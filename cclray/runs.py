"""Run directories: what a training run leaves on disk, and how to find its checkpoints.

Layout (the same under Ray Train, whose ``storage_path/name`` is the run, and with ``LocalContext``)::

    RUN/config.json                {"stage": "pretrain"|"finetune", "config": {...}}
    RUN/metrics.csv                one row an epoch: METRICS_COLUMNS
    RUN/checkpoint_e0003_s000048/  checkpoint.pt + meta.json (see cclray.checkpoint)
    RUN/checkpoint_manager_snapshot.json, ...   Ray's own bookkeeping (Ray runs only)

Only the ``keep_checkpoints`` best (by ``score``, lower is better) plus the latest survive.

``RUN`` is a local folder or an object-storage URL (``s3://bucket/runs/x``): every function here goes
through :func:`data_prep.objstore.location` (``pathlib.Path`` or ``upath.UPath`` over fsspec), so
resuming, finding and pruning checkpoints read a bucket the way they read a folder. Object stores have
no rename: a checkpoint counts as written once its ``meta.json`` (uploaded last, recording the size of
``checkpoint.pt``) and a ``checkpoint.pt`` of that size are both there (:func:`cclray.checkpoint.is_complete`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path

from cclray.checkpoint import CKPT_FILE, META_FILE, CheckpointError, is_complete, read_meta
from data_prep.atomic import atomic_write
from data_prep.objstore import is_local, location, remove_tree

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CKPT_PREFIX = "checkpoint_"
METRICS_COLUMNS = ("epoch", "step", "loss", "val_l1", "val_ssim", "score", "lr", "steps_per_s",
                   "epoch_s", "time")


def checkpoint_name(epoch: int, step: int) -> str:
    """Directory name of the checkpoint taken after ``epoch`` epochs (1-based) and ``step`` steps."""
    return f"{CKPT_PREFIX}e{epoch:04d}_s{step:07d}"


# ---------------------------------------------------------------------------------------- config
def write_run_config(run_dir: str | os.PathLike, stage: str, config) -> Path:
    """Write ``RUN/config.json`` (stage + the stage config as plain JSON), atomically."""
    path = location(run_dir) / CONFIG_FILE
    text = json.dumps({"stage": stage, "config": config.to_dict()}, indent=1, sort_keys=True)
    return atomic_write(path, text)


def read_run_config(run_dir: str | os.PathLike):
    """``(stage, typed config)`` of a run directory."""
    from cclray.config import stage_config

    path = location(run_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} not found: {run_dir} is not a cclray run directory "
                              f"(it is made by `cclray pretrain` / `cclray finetune --out RUN`)") from e
    return data["stage"], stage_config(data["stage"], data["config"])


# ---------------------------------------------------------------------------------------- metrics
class MetricsLog:
    """``RUN/metrics.csv``: one row an epoch; rows after a resumed epoch are dropped first. Each change
    rewrites the (small) file atomically: object stores cannot append, and a reader never sees half a row."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = location(run_dir) / METRICS_FILE

    def rows(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return list(csv.DictReader(io.StringIO(text, newline="")))

    def _write(self, rows: list[dict]) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in METRICS_COLUMNS})
        atomic_write(self.path, buf.getvalue())

    def append(self, row: dict) -> None:
        self._write([*self.rows(), row])

    def truncate(self, after_epoch: int) -> None:
        """Keep only rows of epochs <= ``after_epoch`` (0 = remove the file)."""
        keep = [r for r in self.rows() if int(r["epoch"]) <= after_epoch]
        if keep:
            self._write(keep)
        elif self.path.exists():
            self.path.unlink()


# ---------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """Checkpoint directories of a run, oldest first (by step, then epoch); damaged ones skipped
    (with a warning) unless ``complete_only`` is False."""
    run = location(run_dir)
    found = []
    for d in run.glob(f"{CKPT_PREFIX}*"):
        if not d.is_dir():
            continue
        if complete_only and not is_complete(d):
            log.warning("skipping %s: checkpoint missing, truncated or without %s", d, META_FILE)
            continue
        meta = read_meta(d)
        found.append((int(meta.get("step", -1)), int(meta.get("epoch", -1)), d.name, d))
    return [d for *_, d in sorted(found)]


def latest_intact_checkpoint(run_dir: str | os.PathLike):
    """The run's latest intact checkpoint directory (most steps; damaged ones skipped), or None when the
    folder does not exist or holds none. The one rule every resume path follows: ``cclray pretrain|finetune
    --resume``, a Ray worker group restarted after a failure, a Tune trial restored, a demo rerun."""
    run = location(run_dir)  # a local Path, or a UPath on object storage
    if not run.is_dir():
        return None
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


def find_checkpoint(run_or_ckpt: str | os.PathLike, which: str = "latest") -> Path:
    """The checkpoint directory to use: ``run_or_ckpt`` itself when it is a checkpoint (directory or
    ``checkpoint.pt``), else the run's ``"latest"`` or ``"best"`` (lowest ``score``; the latest when
    no checkpoint has a score) intact checkpoint. Raises :class:`CheckpointError` with the fix."""
    if which not in ("latest", "best"):
        raise ValueError(f"which={which!r}: use 'latest' or 'best'")
    p = location(run_or_ckpt)
    if p.is_file() and p.name == CKPT_FILE:
        return p.parent
    if (p / CKPT_FILE).is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p} does not exist: pass a run directory (--out of `cclray pretrain` / "
                              f"`cclray finetune`) or one of its {CKPT_PREFIX}* directories")
    latest = latest_intact_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"{p} holds no intact checkpoint ({CKPT_PREFIX}*/{CKPT_FILE}): the run "
                              f"stopped before its first checkpoint; re-run it (checkpoint_every=1)")
    if which == "latest":
        return latest
    dirs = checkpoint_dirs(p)
    scored = [(float(read_meta(d)["score"]), i, d) for i, d in enumerate(dirs)
              if read_meta(d).get("score") is not None]
    return min(scored)[2] if scored else dirs[-1]


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` best-scored checkpoints and the latest (Ray's policy); returns
    the deleted directories. Damaged checkpoint directories are left for a person to inspect."""
    dirs = checkpoint_dirs(run_dir)
    if len(dirs) <= keep:
        return []
    latest = dirs[-1]
    ranked = sorted(dirs, key=lambda d: (read_meta(d).get("score") is None,
                                         float(read_meta(d).get("score") or 0.0), -dirs.index(d)))
    doomed = [d for d in ranked[keep:] if d != latest]
    for d in doomed:
        remove_tree(d)
    return doomed


def install_checkpoint(src_dir: str | os.PathLike, run_dir: str | os.PathLike, name: str) -> Path:
    """Move a written checkpoint directory into ``RUN/name`` atomically: a local run by rename (copy
    across devices); a run on object storage by uploading every file, ``meta.json`` last, so that a
    killed upload leaves a checkpoint :func:`~cclray.checkpoint.is_complete` refuses."""
    run = location(run_dir)
    if not is_local(run):
        dest = run / name
        remove_tree(dest)
        files = sorted(Path(src_dir).iterdir(), key=lambda f: (f.name == META_FILE, f.name))
        for f in files:
            (dest / f.name).write_bytes(f.read_bytes())
        return dest
    dest = Path(run_dir) / name
    tmp = Path(run_dir) / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_dir, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------- models
def load_synthesizer(run_or_ckpt: str | os.PathLike, device: str = "cpu", which: str = "best"):
    """``(Synthesizer in eval mode on device, FinetuneConfig, meta)`` of a finetune run or checkpoint.

    ``meta`` = the checkpoint's ``meta.json`` plus ``checkpoint`` (its directory) and ``run``.
    """
    from cclray.checkpoint import checkpoint_config, load_checkpoint
    from cclray.config import FinetuneConfig
    from cclray.models import build_synthesizer

    ckpt_dir = find_checkpoint(run_or_ckpt, which)
    ckpt = load_checkpoint(ckpt_dir, stage="finetune", map_location="cpu")
    cfg = FinetuneConfig.from_dict(checkpoint_config(ckpt))
    model = build_synthesizer(cfg.model, probe=cfg.probe)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    meta = {**read_meta(ckpt_dir), "checkpoint": str(ckpt_dir), "run": str(ckpt_dir.parent)}
    return model, cfg, meta
