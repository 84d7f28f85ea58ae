"""What a sweep leaves for people and for ``cclray export --sweep``.

``results.csv``  one row a trial: its trial id, status (``ok`` | ``stopped`` by ASHA | ``error``), the point's
                 settings, the metric (last reported ``val_ssim``, the one ASHA compared and the one the
                 finetune's latest checkpoint holds), its best epoch value, ``val_l1``, epochs, seconds, error.
``summary.md``   best settings beside the reference point, counts, the table.
``metric_vs_settings.png``  the metric against each searched setting (control arm marked).
``best.json``    the best trial: point, stage configs' run folders, ``checkpoint`` (its finetune checkpoint).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

from data_prep.atomic import atomic_write
from data_prep.errors import UserError
from tune.space import DEFAULT_POINT, POINT_KEYS
from tune.trial import METRIC, MODE, read_record

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
FIGURE_PNG = "metric_vs_settings.png"
BEST_JSON = "best.json"
COLUMNS = ("trial_id", "status", *POINT_KEYS, "metric", "best_metric", "val_l1", "epochs", "time_s",
           "constraint", "constraint_computed", "checkpoint", "finetune_run", "error")


class SweepReportError(UserError, RuntimeError):
    """No usable best trial (all failed, or no report yet); the message says what to do."""


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def trial_rows(grid, runs_dir: str | os.PathLike, max_epochs: int) -> list[dict]:
    """One row per trial of a Tune ``ResultGrid`` (see :data:`COLUMNS`)."""
    from cclray.checkpoint import CheckpointError
    from cclray.runs import find_checkpoint

    rows = []
    for result in grid:
        point = {k: (result.config or {}).get(k) for k in POINT_KEYS}
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        record = read_record(Path(runs_dir) / trial_id)
        df = result.metrics_dataframe
        history = df[METRIC].dropna().tolist() if df is not None and METRIC in df else []
        epochs = int(metrics.get("training_iteration") or 0)
        if result.error is not None:
            status = "error"
        elif not history:
            status = "error"  # finished without one validation report
        else:
            status = "ok" if epochs >= max_epochs else "stopped"
        ckpt = metrics.get("checkpoint_path")
        if status != "error" and not (ckpt and Path(ckpt).exists()):
            try:
                ckpt = str(find_checkpoint(record.get("finetune_run") or Path(runs_dir) / trial_id / "finetune",
                                           "latest"))
            except CheckpointError:
                ckpt = None
        err = "" if result.error is None else (str(result.error).strip().splitlines() or [""])[-1][:300]
        if status == "error" and not err:
            err = "no validation metric was reported"
        rows.append({"trial_id": trial_id, "status": status, **point,
                     "metric": _num(metrics.get(METRIC)) if status != "error" else float("nan"),
                     "best_metric": (max(history) if MODE == "max" else min(history)) if history else float("nan"),
                     "val_l1": _num(metrics.get("val_l1")), "epochs": epochs,
                     "time_s": _num(metrics.get("time_total_s")),
                     "constraint": record.get("constraint"), "constraint_computed": record.get("constraint_computed"),
                     "checkpoint": ckpt or "", "finetune_run": record.get("finetune_run", ""), "error": err})
    return sorted(rows, key=lambda r: r["trial_id"])


def pick_best(rows: list[dict]) -> dict:
    """The non-failed trial with the best ``metric`` (max for SSIM); ties go to the first trial id."""
    ok = [r for r in rows if r["status"] != "error" and math.isfinite(_num(r["metric"])) and r.get("checkpoint")]
    if not ok:
        raise SweepReportError("no trial of the sweep finished with a validation metric and a checkpoint: see "
                               "the error column of results.csv, fix the cause and run `cclray tune --resume` "
                               "or a new sweep")
    sign = 1.0 if MODE == "max" else -1.0
    return max(ok, key=lambda r: (sign * _num(r["metric"]), [-ord(c) for c in r["trial_id"]]))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_summary(rows: list[dict], best: dict | None, path: Path) -> Path:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "error")}
    lines = [f"# Sweep summary ({METRIC}, {MODE})", "",
             f"{len(rows)} trials: {counts['ok']} finished, {counts['stopped']} stopped early by ASHA, "
             f"{counts['error']} failed.", ""]
    ref = [r for r in rows if r["status"] != "error" and all(r.get(k) == v for k, v in DEFAULT_POINT.items())]
    if best is not None:
        lines += ["## Best trial", "", f"`{best['trial_id']}`: {METRIC} = {_fmt(best['metric'])}; checkpoint "
                  f"`{best['checkpoint']}`", "", "| setting | best | reference |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(best[k])} | {_fmt(DEFAULT_POINT[k])} |" for k in POINT_KEYS]
        lines += ["", f"Reference point (the stage configs' defaults): {METRIC} = "
                  + (_fmt(ref[0]["metric"]) if ref else "not run (or failed)")]
    else:
        lines += ["No trial finished with a metric: see the error column below."]
    lines += ["", "## Trials", "", "| " + " | ".join(COLUMNS[:-4]) + " |", "|" + "---|" * len(COLUMNS[:-4])]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in COLUMNS[:-4]) + " |" for r in rows]
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- `{r['trial_id']}`: {r['error']}" for r in errors]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_figure(rows: list[dict], path: Path) -> Path:
    """``METRIC`` against each searched setting, one panel each; the no-pretrain arm drawn as crosses."""
    from data_prep.figures import new_figure, save_png

    keys = [k for k in POINT_KEYS if k != "pretrain"]
    fig = new_figure((3.2 * 4, 2.8 * 2))
    axes = fig.subplots(2, 4).ravel()
    done = [r for r in rows if r["status"] != "error" and math.isfinite(_num(r["metric"]))]
    for ax, key in zip(axes, keys):
        for arm, marker, label in ((True, "o", "CCL pretrained"), (False, "x", "no pretraining")):
            pts = [r for r in done if bool(r["pretrain"]) == arm]
            if not pts:
                continue
            xs = [r[key] if arm else DEFAULT_POINT[key] for r in pts]
            if key == "contrasts":
                cats = sorted({str(x) for x in xs} | {str(DEFAULT_POINT[key])})
                xs = [cats.index(str(x)) for x in xs]
                ax.set_xticks(range(len(cats)), cats)
            ax.scatter(xs, [r["metric"] for r in pts], marker=marker, label=label,
                       c=["tab:red" if r["status"] == "stopped" else "tab:blue" for r in pts])
        if key in ("temperature", "pretrain_lr"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(METRIC)
    axes[0].legend(fontsize=7, title="red: stopped by ASHA", title_fontsize=7)
    axes[-1].set_visible(len(keys) >= len(axes))
    fig.suptitle(f"{METRIC} (last report) vs settings; no-pretraining trials drawn at the reference value")
    return save_png(fig, path, dpi=100)


def write_report(grid, cfg) -> dict:
    """Write results.csv, summary.md, the PNG and best.json for a finished ``ResultGrid`` of sweep ``cfg``."""
    from tune.space import budget

    out = Path(cfg.report_path)
    out.mkdir(parents=True, exist_ok=True)
    max_epochs = int(budget(cfg.budget)["finetune"].get("epochs", 10))
    rows = trial_rows(grid, cfg.runs_path, max_epochs)
    try:
        best = pick_best(rows)
    except SweepReportError as e:
        log.error("%s", e)
        best = None
    paths = {"csv": str(write_csv(rows, out / RESULTS_CSV)), "summary": str(write_summary(rows, best, out / SUMMARY_MD))}
    try:
        paths["figure"] = str(write_figure(rows, out / FIGURE_PNG))
    except Exception:  # noqa: BLE001 - a figure must not lose the sweep's results
        log.exception("could not draw %s", out / FIGURE_PNG)
    if best is not None:
        record = read_record(Path(cfg.runs_path) / best["trial_id"])
        data = {"trial_id": best["trial_id"], "metric": METRIC, "mode": MODE, "value": best["metric"],
                "point": {k: best[k] for k in POINT_KEYS}, "checkpoint": best["checkpoint"],
                "finetune_run": best["finetune_run"], "pretrain_run": record.get("pretrain_run"),
                "constraint": best["constraint"], "sweep": cfg.to_dict()}
        atomic_write(out / BEST_JSON, json.dumps(data, indent=1, sort_keys=True, default=str))
        paths["best"] = str(out / BEST_JSON)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "error")}
    return {"paths": paths, "best": best, "counts": counts, "rows": rows}


def best_checkpoint(sweep_dir: str | os.PathLike) -> Path:
    """The finetune checkpoint of a sweep's best trial (from ``SWEEP/best.json``), checked to exist."""
    from cclray.checkpoint import is_complete

    path = Path(sweep_dir).expanduser() / BEST_JSON
    if not path.is_file():
        raise SweepReportError(f"{path} not found: {sweep_dir} is not a finished sweep (run `cclray tune --out "
                               f"{sweep_dir}`, or `--resume` it if it was interrupted)")
    ckpt = json.loads(path.read_text()).get("checkpoint")
    if not ckpt or not is_complete(ckpt):
        raise SweepReportError(f"{path} names checkpoint {ckpt!r}, which is missing or incomplete: the sweep's "
                               f"run folders were moved or deleted; re-run the sweep or export a run with --run")
    return Path(ckpt)
