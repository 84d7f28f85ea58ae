"""Score folders of synthesized NIfTIs against a BraTS folder: ``cclray evaluate --pred DIR --truth DIR``.

Predictions may come from ``cclray synthesize`` (``<id>_t1-synth.nii.gz`` / ``<id>-t1n-synth.nii.gz``) or
from any other tool using the BraSyn naming (``<id>-t1n-inference.nii.gz``, ``<id>-t2w-inference.nii.gz``),
at any depth under ``--pred``. The truth is a BraTS 2021 or 2023+ folder (found by
:func:`data_prep.discover.find_subjects`). Per subject and contrast: the three metric families of
:mod:`cclray.evaluation.metrics` on the volumes as they are on disk —

- ``masked``: brain = the truth's nonzero voxels (BraTS volumes are skull-stripped, background 0);
- ``brasyn``: the BraSyn procedure on the raw volumes, exactly as the challenge computes it;
- ``zscored``: prediction and truth each z-scored inside that brain first (their own mean and sd).

A prediction whose subject is not in the truth folder, or whose grid differs from the truth's, is an
error naming both files; truth subjects without a prediction are not scored (their count is reported).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep.discover import NIFTI_EXTENSIONS, find_subjects, nifti_stem
from data_prep.errors import InputError
from data_prep.schema import NAMINGS

from .metrics import PRIMARY_METHOD, brasyn_metrics, masked_metrics, unit_scale, zscored_metrics
from .report import summarize, write_metrics_csv, write_summary

log = logging.getLogger(__name__)

SYNTH_TAGS = ("synth", "inference")  # cclray synthesize's, BraSyn's


def _patterns() -> list[tuple[re.Pattern, str]]:
    out = []
    for naming in NAMINGS.values():
        for contrast, suffix in naming.suffixes.items():
            if contrast == "seg":
                continue
            tags = "|".join(SYNTH_TAGS)
            out.append((re.compile(rf"^(?P<sid>.+){re.escape(naming.sep)}{re.escape(suffix)}-(?:{tags})$"), contrast))
    return out


def find_predictions(pred_dir: str | Path) -> dict[str, dict[str, Path]]:
    """``{subject id: {contrast: file}}`` of every synthesized NIfTI under ``pred_dir``."""
    root = Path(pred_dir).expanduser()
    if not root.is_dir():
        raise InputError(f"--pred {root}: not a folder; pass the folder holding the synthesized NIfTI files")
    pats = _patterns()
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.name.endswith(NIFTI_EXTENSIONS)):
        stem = nifti_stem(path)
        for pat, contrast in pats:
            m = pat.match(stem or "")
            if m:
                sid = m.group("sid")
                if contrast in found.get(sid, {}):
                    raise InputError(f"two predictions of {contrast} for subject {sid}: {found[sid][contrast]} "
                                     f"and {path}; keep one")
                found.setdefault(sid, {})[contrast] = path
                break
    if not found:
        raise InputError(f"--pred {root}: no synthesized NIfTI found; expected names like <id>-t1n-inference.nii.gz "
                         "(BraSyn), <id>-t1n-synth.nii.gz or <id>_t1-synth.nii.gz (cclray synthesize)")
    return found


def _zscore(v: np.ndarray, brain: np.ndarray) -> np.ndarray:
    vals = v[brain]
    sd = float(vals.std()) or 1.0
    return np.where(brain, (v - float(vals.mean())) / sd, 0.0)


def score_pair(pred: np.ndarray, truth: np.ndarray, seg: np.ndarray | None) -> list[tuple[str, str, object]]:
    """``[(method, region, Scores)]`` of one raw prediction against one raw truth volume."""
    brain = truth != 0
    if not brain.any():
        raise ValueError("the truth volume is all zero")
    out = [("masked", r, s) for r, s in masked_metrics(pred, truth, brain, seg).items()]
    out += [("brasyn", r, s) for r, s in brasyn_metrics(pred, truth, seg).items()]
    out += [("zscored", r, s) for r, s in zscored_metrics(_zscore(pred, brain), _zscore(truth, brain), brain,
                                                          seg).items()]
    return out


def evaluate_folders(pred_dirs: Sequence[str | Path], truth_dir: str | Path, out_dir: str | Path,
                     labels: Sequence[str] | None = None) -> dict:
    """Score each ``--pred`` folder against ``truth_dir``; write metrics.csv, summary.md/.json, figure.png."""
    from data_prep.nifti import load_volume

    from .figure import draw_figure

    labels = list(labels) if labels else [Path(str(d).rstrip("/")).name for d in pred_dirs]
    if len(labels) != len(pred_dirs) or len(set(labels)) != len(labels):
        raise InputError(f"labels {labels} for {len(pred_dirs)} --pred folder(s): give one distinct label each")
    preds = {lab: find_predictions(d) for lab, d in zip(labels, pred_dirs)}
    contrasts = tuple(sorted({c for p in preds.values() for files in p.values() for c in files}))
    truth = {s.sid: s for s in find_subjects(truth_dir, contrasts).subjects}
    rows: list[dict] = []
    fig: dict = {}
    for lab, by_sid in preds.items():
        missing = sorted(set(by_sid) - set(truth))
        if missing:
            raise InputError(f"--pred {dict(zip(labels, pred_dirs))[lab]}: subject(s) {missing[:5]} have no "
                             f"truth under --truth {truth_dir} (with {', '.join(contrasts)}); check the ids "
                             "or the folder")
        for sid in sorted(by_sid):
            sub = truth[sid]
            seg = load_volume(sub.seg, sid)[0] if sub.seg is not None else None
            for contrast, path in sorted(by_sid[sid].items()):
                t = load_volume(sub.paths[contrast], sid)[0].astype(np.float64)
                p = load_volume(path, sid)[0].astype(np.float64)
                if p.shape != t.shape:
                    raise InputError(f"{path}: grid {p.shape} differs from the truth {sub.paths[contrast]} "
                                     f"{t.shape}; synthesize on the truth's grid (cclray synthesize resamples back)")
                for method, region, sc in score_pair(p, t, seg):
                    rows.append({"run": lab, "subject": sid, "contrast": contrast, "method": method,
                                 "region": region, **sc.to_dict()})
                if not fig or fig["sid"] == sid:
                    fig.setdefault("sid", sid)
                    brain = t != 0
                    fig.setdefault("targets", {})[contrast] = unit_scale(t, brain)
                    fig.setdefault("preds", {}).setdefault(lab, {})[contrast] = unit_scale(p, brain)
                    fig["mask"], fig["seg"] = brain, seg
    unscored = sorted(set(truth) - {s for p in preds.values() for s in p})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, labels)
    paths = {"metrics": str(write_metrics_csv(rows, out / "metrics.csv"))}
    ssim = {lab: {r["contrast"]: r["ssim"] for r in rows if r["run"] == lab and r["subject"] == fig["sid"]
                  and r["method"] == PRIMARY_METHOD and r["region"] == "brain"} for lab in labels}
    paths["figure"] = str(draw_figure(out / "figure.png", {}, fig["targets"], fig["preds"], fig["mask"],
                                      fig["seg"], ssim, title=f"subject {fig['sid']} (each volume scaled to [0, 1])"))
    extra = {"pred": [str(d) for d in pred_dirs], "truth": str(truth_dir), "unscored_truth_subjects": len(unscored),
             "paths": paths}
    md, js = write_summary(summary, out, None, extra)
    paths.update(summary=str(md), json=str(js))
    log.info("scored %d prediction folder(s); %d truth subject(s) had no prediction", len(labels), len(unscored))
    return {**summary, **extra}


__all__ = ["find_predictions", "score_pair", "evaluate_folders"]
