"""Evaluation outputs: per-subject ``metrics.csv``, ``summary.md`` (tables like the paper's), ``summary.json``,
and the optional synthesized NIfTI volumes on the source grid.

Means and standard deviations are over subjects. A PSNR of ``inf`` (a prediction identical to its
target inside the region) is written as ``inf`` in the CSV and *left out* of means and sds; the
table says how many were left out, e.g. ``25.10 ± 1.20 (1 inf)``, and a cell whose every value is
``inf`` reads ``inf``. ``summary.json`` carries ``mean: null`` there (JSON has no infinity).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from data_prep.schema import CONTRAST_DISPLAY as DISPLAY
from data_prep.schema import CONTRASTS

log = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = ("run", "subject", "contrast", "method", "region", "ssim", "mse", "psnr")
METRICS: tuple[str, ...] = ("ssim", "mse", "psnr")
DECIMALS = {"ssim": 3, "mse": 3, "psnr": 2}
PUBLISHED_LABEL = "published (BraTS 2021)"
#: The seed paper's table (BraTS 2021, pretrain n=80, finetune n=10), paper way: (SSIM, MSE, PSNR),
#: as printed there (strings keep the published precision).
PUBLISHED: dict[str, dict[str, tuple[str, str, str]]] = {
    "Baseline (from scratch)": {"t1w": ("0.52", "1.12", "17.22"), "t2w": ("0.729", "0.18", "25.07")},
    "CCL pretrained": {"t1w": ("0.78", "0.11", "25.30"), "t2w": ("0.715", "0.18", "24.47")},
}


# ------------------------------------------------------------------------------------------- CSV
def write_metrics_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """One line per (run, subject, contrast, method, region); floats with 6 significant digits, ``inf`` as is."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if k in METRICS else r[k]) for k in CSV_COLUMNS})
    return path


def read_metrics_csv(path: str | Path) -> list[dict]:
    """Rows of :func:`write_metrics_csv`, metrics as floats (``inf`` included)."""
    with Path(path).open(newline="") as f:
        return [{k: (float(v) if k in METRICS else v) for k, v in r.items()} for r in csv.DictReader(f)]


# --------------------------------------------------------------------------------------- summary
def _stats(values: Sequence[float]) -> dict:
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else None),
        "n": int(vals.size),
        "n_inf": int(np.isinf(vals).sum()),
    }


def summarize(rows: Sequence[dict], runs: Sequence[str] | None = None) -> dict:
    """``{"runs", "contrasts", "subjects", "results": {method: {run: {region: {contrast: {metric: stats}}}}}}``.

    ``stats`` = ``{mean, sd, n, n_inf}`` over subjects, ``inf`` left out of mean and sd.
    """
    runs = list(runs) if runs is not None else list(dict.fromkeys(r["run"] for r in rows))
    contrasts = [c for c in CONTRASTS if any(r["contrast"] == c for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["run"], r["region"], r["contrast"]), []).append(r)
    results: dict = {}
    for (method, run, region, contrast), rs in groups.items():
        cell = {m: _stats([r[m] for r in rs]) for m in METRICS}
        results.setdefault(method, {}).setdefault(run, {}).setdefault(region, {})[contrast] = cell
    return {
        "runs": runs,
        "contrasts": contrasts,
        "subjects": sorted({r["subject"] for r in rows}),
        "results": results,
        "published": {k: {c: {m: float(x) for m, x in zip(METRICS, v)} for c, v in d.items()}
                      for k, d in PUBLISHED.items()},
    }


def _cell(stats: dict | None, metric: str) -> str:
    if not stats:
        return "–"
    d = DECIMALS[metric]
    if stats["mean"] is None:
        return "inf" if stats["n_inf"] else "–"
    finite = stats["n"] - stats["n_inf"]
    text = f"{stats['mean']:.{d}f}" + (f" ± {stats['sd']:.{d}f}" if finite > 1 else "")
    return text + (f" ({stats['n_inf']} inf)" if stats["n_inf"] else "")


def _table(summary: dict, method: str, regions: Sequence[str], published: bool) -> list[str]:
    """Rows = runs (× regions when more than one), columns = contrast × metric."""
    contrasts = summary["contrasts"]
    by_region = len(regions) > 1
    head = ["run"] + (["region", "n"] if by_region else []) + [
        f"{DISPLAY.get(c, c)} {m.upper() if m != 'ssim' else 'SSIM'}" for c in contrasts for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    res = summary["results"].get(method, {})
    for run in summary["runs"]:
        for region in regions:
            got = res.get(run, {}).get(region, {})
            cells = [_cell(got.get(c, {}).get(m), m) for c in contrasts for m in METRICS]
            n = max((got[c]["ssim"]["n"] for c in got), default=0)
            lines.append("| " + " | ".join([run] + ([region, str(n)] if by_region else []) + cells) + " |")
    if published:
        for name, vals in PUBLISHED.items():
            cells = [vals[c][i] if c in vals else "–" for c in contrasts for i in range(len(METRICS))]
            lines.append("| " + " | ".join([f"*{PUBLISHED_LABEL}: {name}*"] + [f"*{x}*" for x in cells]) + " |")
    return lines


METHOD_TITLES = {
    "masked": "masked (primary: each volume clipped to its 0.5–99.5 percentiles in the brain, scaled to [0, 1]; "
              "SSIM map averaged inside the region)",
    "brasyn": "BraSyn procedure (secondary: percentiles over the whole volume, strictlyPositive, complementary "
              "region zeroed, SSIM averaged over the volume; region brain = the whole volume)",
    "zscored": "z-scored (secondary, a guess at the paper's convention: z-scored volumes, data range = max − min "
               "of the target in the brain; shift-sensitive, see docs/EVALUATION.md)",
}


def render_markdown(summary: dict, split: str | None = None) -> str:
    """The summary as markdown: one brain table per metric family (masked first), then tumour/healthy tables."""
    n = len(summary["subjects"])
    out = [f"# cclray evaluation{f' — split `{split}`' if split else ''}, {n} subject(s)", "",
           "Mean ± sd over subjects (sd only when there are 2+ values). PSNR = inf (prediction identical to "
           "the target) is left out of mean and sd; the cell says how many, e.g. `(1 inf)`. "
           "Primary endpoint: T1w SSIM, masked, brain.", ""]
    methods = [m for m in METHOD_TITLES if m in summary["results"]]
    for method in methods:
        out += [f"## {METHOD_TITLES[method]}", ""]
        out += _table(summary, method, ["brain"], published=method == "zscored")
        if method == "zscored":
            out += ["", f"Rows in *italics* are the seed paper's numbers ({PUBLISHED_LABEL}, pretrain n=80, "
                    "finetune n=10), for reference; they were not measured here, and their convention is not "
                    "stated there.", ""]
        out += [""]
    present = {reg for m in summary["results"].values() for r in m.values() for reg in r}
    regions = [r for r in ("tumor", "healthy") if r in present]
    if regions:
        out += ["## Tumour (seg > 0) and healthy (seg = 0) regions",
                "", "Subjects with a segmentation only; n = subjects with a non-empty region.", ""]
        for method in methods:
            out += [f"### {method}", ""] + _table(summary, method, regions, published=False) + [""]
    return "\n".join(out).rstrip() + "\n"


def write_summary(summary: dict, out_dir: str | Path, split: str | None = None,
                  extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.json`` (the summary plus ``extra``) into ``out_dir``."""
    out_dir = Path(out_dir)
    md = out_dir / "summary.md"
    md.write_text(render_markdown(summary, split))
    js = out_dir / "summary.json"
    payload = {**summary, **({"split": split} if split else {}), **(extra or {})}
    js.write_text(json.dumps(payload, indent=2, allow_nan=False))
    return md, js


# ----------------------------------------------------------------------------------------- NIfTI
def write_synth_nifti(volume: np.ndarray, attrs: dict, path: str | Path) -> Path:
    """Put a cropped ``(X, Y, Z)`` volume back on the source grid with the source affine; float32 NIfTI.

    ``attrs`` are the subject's store attrs (``affine``, ``crop``, ``source_shape``, optional ``header``;
    ``grid_affine``/``grid_shape`` of a store prepared with ``--spacing``: resampled back to the source).
    """
    import nibabel as nib

    from data_prep.preprocess import uncrop

    missing = [k for k in ("affine", "crop", "source_shape") if k not in attrs]
    if missing:
        raise KeyError(f"subject attrs lack {missing}: re-create the store with `cclray prep` to save NIfTI")
    affine = np.asarray(attrs["affine"], dtype=np.float64)
    full = uncrop(np.asarray(volume, np.float32), attrs["crop"], attrs.get("grid_shape") or attrs["source_shape"])
    if attrs.get("grid_affine") is not None and list(full.shape) != list(attrs["source_shape"]):
        from data_prep.resample import to_grid  # stored at `prep --spacing`: back onto the source grid

        full = to_grid(full, attrs["grid_affine"], attrs["source_shape"], affine, mask=full != 0)
    img = nib.Nifti1Image(full, affine)
    header = attrs.get("header") or {}
    img.set_qform(affine, code=int(header.get("qform_code", 1) or 1))
    img.set_sform(affine, code=int(header.get("sform_code", 1) or 1))
    if "xyzt_units" in header:
        img.header["xyzt_units"] = int(header["xyzt_units"])
    img.header["descrip"] = b"cclray synthesis (z-scored)"
    img.set_data_dtype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
