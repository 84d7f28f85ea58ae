"""Evaluate synthesizers on a store split: sliding-window prediction, three metric families, tables, figure.

:func:`evaluate_runs` works on in-memory models; :func:`evaluate_run_dirs` resolves run directories
or checkpoints with :func:`cclray.runs.load_synthesizer` first. Outputs in ``out_dir``:
``metrics.csv`` (one row per run, subject, contrast, method, region), ``summary.md``, ``summary.json``,
``figure.png`` and, with ``save_nifti``, ``nifti/<run>/<subject file>-synth.nii.gz``.

torch is imported only when prediction runs, so :mod:`cclray.evaluation.metrics` and
:mod:`cclray.evaluation.report` stay usable without it.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from data_prep.schema import NAMINGS, canonical_contrast, channel_index

from .metrics import PRIMARY_METHOD, subject_metrics
from .report import summarize, write_metrics_csv, write_summary, write_synth_nifti

log = logging.getLogger(__name__)

__all__ = ["RunSpec", "evaluate_runs", "evaluate_run_dirs"]


class RunSpec(NamedTuple):
    """One synthesizer to evaluate. ``model_cfg`` has ``.inputs``, ``.targets`` and ``.stride``."""

    label: str
    model: Any  # torch.nn.Module: (B, len(inputs), p, p, p) -> (B, len(targets), p, p, p), or an object with
    # predict_volume((4, X, Y, Z) image, (X, Y, Z) mask) -> (T, X, Y, Z) (the regressor floor)
    model_cfg: Any
    patch_size: int | Sequence[int]


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def _nifti_name(sid: str, contrast: str, attrs: dict) -> str:
    naming = NAMINGS.get(attrs.get("naming", ""))
    return naming.filename(sid, contrast, synth=True) if naming else f"{sid}_{contrast}-synth.nii.gz"


def evaluate_runs(store_url: str, runs: Sequence[RunSpec | tuple], split: str = "test",
                  out_dir: str | Path = "evaluation", *, overlap: float = 0.5, batch: int = 4,
                  device: str = "cpu", save_nifti: bool = False, subjects: Sequence[str] | None = None,
                  figure_subject: str | None = None,
                  on_subject: Callable[[str, str, float], None] | None = None) -> dict:
    """Predict every subject of ``split`` with every run, score it, and write the outputs.

    Args:
        store_url: the Zarr store (:class:`data_prep.store.Store`).
        runs: ``(label, model, model_cfg, patch_size)`` each; labels must be distinct.
        split: store split to evaluate; ``subjects`` overrides it with an explicit list (e.g. a subset).
        overlap, batch: sliding-window overlap and windows per forward pass.
        device: torch device of the models ("cpu", "cuda", ...).
        save_nifti: also write each synthesis uncropped on the source grid (float32, z-scored).
        figure_subject: subject of ``figure.png`` (default: the subject of the split with the largest tumour,
            else the first).
        on_subject: called ``(run label, subject, seconds)`` after each prediction (progress display).

    Returns:
        The summary dict of :func:`cclray.evaluation.report.summarize` plus ``paths`` and ``seconds``.
    """
    from data_prep.store import Store

    from .figure import draw_figure
    from .predict import predict_subject

    specs = [RunSpec(*r) for r in runs]
    labels = [s.label for s in specs]
    if not specs:
        raise ValueError("no runs to evaluate: pass at least one (label, model, model_cfg, patch_size)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels {labels} repeat; give each run its own label (--labels)")
    store = Store(store_url)
    sids = list(subjects) if subjects is not None else store.subjects(split)
    if not sids:
        raise ValueError(f"split {split!r} of {store.url} is empty; choose another --split")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_sid = figure_subject or _figure_subject(store, sids)
    if fig_sid not in sids:
        raise ValueError(f"figure subject {fig_sid!r} is not among the evaluated subjects {sids[:5]}...")

    rows: list[dict] = []
    seconds: dict[str, list[float]] = {s.label: [] for s in specs}
    fig_data: dict = {}
    for spec in specs:
        if not hasattr(spec.model, "predict_volume"):
            spec.model.to(device)
    for sid in sids:
        image = np.asarray(store.read(sid, "image"), dtype=np.float32)  # (4, X, Y, Z)
        mask = store.read(sid, "mask").astype(bool)  # (X, Y, Z)
        seg = store.read(sid, "seg") if store.has_array(sid, "seg") else None
        attrs = store.subject_attrs(sid) if save_nifti else {}
        for spec in specs:
            cfg = spec.model_cfg
            t0 = time.perf_counter()
            if hasattr(spec.model, "predict_volume"):  # the floor (cclray.evaluation.regressor): no windows
                pred = spec.model.predict_volume(image, mask)  # (T, X, Y, Z)
            else:
                pred = predict_subject(spec.model, store, sid, cfg.inputs, spec.patch_size, overlap, batch,
                                       device, stride=int(cfg.stride), image=image, mask=mask)  # (T, X, Y, Z)
            dt = time.perf_counter() - t0
            seconds[spec.label].append(dt)
            targets = [canonical_contrast(c) for c in cfg.targets]
            if pred.shape[0] != len(targets):
                raise ValueError(f"run {spec.label!r}: model gives {pred.shape[0]} channels but its config "
                                 f"names targets {targets}; the checkpoint and its config disagree")
            for t, contrast in enumerate(targets):
                target = image[channel_index(contrast)]
                for (method, region), sc in subject_metrics(pred[t], target, mask, seg).items():
                    rows.append({"run": spec.label, "subject": sid, "contrast": contrast, "method": method,
                                 "region": region, **sc.to_dict()})
                if save_nifti:
                    write_synth_nifti(pred[t], attrs, out / "nifti" / _file_label(spec.label)
                                      / _nifti_name(sid, contrast, attrs))
            if sid == fig_sid:
                fig_data[spec.label] = {c: pred[t] for t, c in enumerate(targets)}
            log.info("%s %s: %.1f s", spec.label, sid, dt)
            if on_subject is not None:
                on_subject(spec.label, sid, dt)
        if sid == fig_sid:
            fig_data["_subject"] = (image, mask, seg)

    summary = summarize(rows, labels)
    paths = {"metrics": str(write_metrics_csv(rows, out / "metrics.csv"))}
    paths["figure"] = str(_figure(draw_figure, out / "figure.png", fig_sid, fig_data, specs, rows))
    extra = {"seconds_per_subject": {k: float(np.mean(v)) for k, v in seconds.items()},
             "split": split, "overlap": overlap, "paths": paths}
    md, js = write_summary(summary, out, split, extra)
    paths.update(summary=str(md), json=str(js))
    return {**summary, **extra}


def _figure_subject(store, sids: Sequence[str]) -> str:
    """The subject with the largest tumour (by seg), else the first."""
    best, best_n = sids[0], 0
    for sid in sids:
        if store.has_array(sid, "seg"):
            n = int((store.read(sid, "seg") > 0).sum())
            if n > best_n:
                best, best_n = sid, n
    return best


def _figure(draw, path: Path, sid: str, fig_data: dict, specs: Sequence[RunSpec], rows: list[dict]) -> Path:
    image, mask, seg = fig_data.pop("_subject")
    first = specs[0].model_cfg
    inputs = {canonical_contrast(c): image[channel_index(c)] for c in first.inputs}
    targets: dict[str, np.ndarray] = {}
    for spec in specs:
        for c in spec.model_cfg.targets:
            targets.setdefault(canonical_contrast(c), image[channel_index(c)])
    ssim = {r["run"]: {} for r in rows}
    for r in rows:
        if r["subject"] == sid and r["method"] == PRIMARY_METHOD and r["region"] == "brain":
            ssim[r["run"]][r["contrast"]] = r["ssim"]
    return draw(path, inputs, targets, fig_data, mask, seg, ssim, title=f"subject {sid}")


def evaluate_run_dirs(store_url: str, run_paths: Sequence[str | Path], labels: Sequence[str] | None = None,
                      split: str = "test", out_dir: str | Path = "evaluation", *, device: str = "cpu",
                      **kwargs) -> dict:
    """Load each run (directory or checkpoint) with :func:`cclray.runs.load_synthesizer` (a ``cclray regressor``
    folder with :class:`~cclray.evaluation.regressor.VoxelRegressor`), then
    :func:`evaluate_runs`. ``labels`` default to the run directories' names (of a checkpoint: its run's)."""
    from cclray.runs import load_synthesizer

    from .regressor import VoxelRegressor, is_regressor_run

    if labels is not None and len(labels) != len(run_paths):
        raise ValueError(f"{len(labels)} label(s) {list(labels)} for {len(run_paths)} run(s): "
                         f"give one --labels entry per run (--run first, then each --compare)")
    specs = []
    for i, rp in enumerate(run_paths):
        if is_regressor_run(rp):
            reg = VoxelRegressor.load(rp)
            label = labels[i] if labels is not None else Path(str(rp).rstrip("/")).name
            specs.append(RunSpec(label, reg, reg.spec, reg.spec.patch_size))
            continue
        model, cfg, meta = load_synthesizer(str(rp), device)
        label = labels[i] if labels is not None else Path(str(meta.get("run", rp)).rstrip("/")).name
        specs.append(RunSpec(label, model, cfg.model, cfg.patch.patch_size))
    return evaluate_runs(store_url, specs, split, out_dir, device=device, **kwargs)
