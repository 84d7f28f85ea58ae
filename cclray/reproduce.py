"""Reproduce the paper's table: CCL-pretrained vs from-scratch finetuning, same finetune budget, several seeds,
between a floor and a ceiling.

One phantom cohort with the paper's split (pretrain 80, finetune 10, val 5, test 10) is made and prepared
once; for every training seed :func:`cclray.demo.train_and_evaluate` runs CCL pretraining, finetuning from
it, finetuning from scratch, the regressor floor, the supervised-all ceiling (scratch on pretrain +
finetune), and evaluates the four on the test split. ``table.md`` gives, for every (metric family, region),
each arm's mean over test subjects (a subject's seeds averaged first) with a bootstrap 95 % CI, and every
arm's paired difference to the Baseline with its CI and Wilcoxon p (:mod:`cclray.evaluation.stats`); the
primary endpoint (T1w SSIM, masked, brain) first. Every step is kept on disk: a rerun continues.

Presets: ``cpu`` (2 mm volumes, 32³ patches, a few hundred steps a stage: 15–26 min a seed on 2 CPU cores)
and ``paper`` (1 mm, 128³ patches, the paper's sizes: a GPU cluster job).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from cclray.demo import PRESETS as DEMO_PRESETS
from cclray.demo import DemoConfig, Steps, prepare_cohort, train_and_evaluate
from cclray.evaluation.figure import draw_arms
from cclray.evaluation.report import PUBLISHED, read_metrics_csv
from data_prep.splits import PAPER_SPLITS

log = logging.getLogger(__name__)

PRESETS: dict[str, DemoConfig] = {
    # 2 CPU cores, 2-3 h for 3 seeds (shared machine): 2 mm volumes, 32³ patches, 4000 pretrain steps and
    # 600 finetune steps of batch 4 (4 subjects a batch, 512 anchors a patch: 8.2M anchor terms, docs/METHOD.md).
    # What was reduced is printed and written to the results. proj_stride 2 keeps the paper's physical feature
    # size (2 mm x 2 = 1 mm x 4 = 4 mm voxels of the constraint grid). Both CPU presets keep the plateau
    # finetuning schedule their recorded runs used (docs/REPRODUCTION.md); the stage default is now cosine.
    "cpu": DemoConfig(n_subjects=105, spacing=2.0, splits=PAPER_SPLITS, widths=(16, 32, 64, 128), patch=32,
                      proj_stride=2, batch=4, pretrain_epochs=200, finetune_epochs=30, steps_per_epoch=20, workers=1,
                      prep_workers=2, finetune_schedule="plateau"),
    # the same with a tenth of the pretraining and a third of the finetuning: ~30 min for 3 seeds.
    "cpu-quick": DemoConfig(n_subjects=105, spacing=2.0, splits=PAPER_SPLITS, widths=(16, 32, 64, 128), patch=32,
                            batch=4, pretrain_epochs=10, finetune_epochs=10, steps_per_epoch=20, workers=1,
                            prep_workers=2, finetune_schedule="plateau"),
    "paper": DEMO_PRESETS["paper"],
}
METRICS = ("ssim", "mse", "psnr")
CONTRASTS = ("t1w", "t2w")


def run_reproduction(out: str | os.PathLike, preset: str = "cpu", seeds: Sequence[int] = (0, 1, 2),
                     overrides: dict | None = None, say: Callable[[str], None] = print) -> dict:
    """Run (or continue) the reproduction into ``out``; write ``table.md``, ``results.json``, ``figure.png``
    (the last seed's evaluation figure) and ``arms.png`` (per-subject primary endpoint of every arm)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    cfg = PRESETS[preset].replace(**(overrides or {}))
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce_config.json").write_text(json.dumps({"preset": preset, "seeds": list(seeds),
                                                            **cfg.to_dict()}, indent=2))
    say(f"reproduction, preset {preset!r}, seeds {list(seeds)}: {cfg.n_subjects} phantom subjects at "
        f"{cfg.spacing:g} mm, splits {cfg.splits}, widths {list(cfg.widths)}, {cfg.patch}³ patches, batch "
        f"{cfg.batch}, pretrain {cfg.pretrain_epochs * cfg.steps_per_epoch} steps, finetune "
        f"{cfg.finetune_epochs * cfg.steps_per_epoch} steps (CCL and scratch alike), {cfg.workers} worker(s)")
    t0 = time.perf_counter()
    per_seed = 6  # pretrain, CCL, scratch, regressor floor, supervised-all ceiling, evaluate
    step, total = Steps(say), 2 + per_seed * len(seeds)
    nifti, store = out / "phantom", str(out / "store.zarr")
    prepare_cohort(cfg, nifti, store, step, first=1, total=total)
    rows_by_seed = {}
    for i, seed in enumerate(seeds):
        seed_dir = out / f"seed{seed}"
        train_and_evaluate(cfg, store, seed_dir / "runs", seed_dir / "evaluation", step,
                           first=3 + per_seed * i, total=total, seed=seed, floor_and_ceiling=True)
        rows_by_seed[seed] = read_metrics_csv(seed_dir / "evaluation" / "metrics.csv")
    result = aggregate_views(rows_by_seed)
    result.update(preset=preset, config=cfg.to_dict(), wall_seconds=round(time.perf_counter() - t0, 1),
                  step_seconds=step.times)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_json_float))
    table = render_report(result)
    (out / "table.md").write_text(table)
    primary = result["views"]["masked/brain"]
    draw_arms(out / "arms.png", {a: primary["per_subject"][a]["t1w"]["ssim"] for a in primary["arms"]},
              f"T1w SSIM (masked, brain), test split, {len(primary['seeds'])} seed(s) averaged per subject")
    shutil.copyfile(out / f"seed{seeds[-1]}" / "evaluation" / "figure.png", out / "figure.png")
    say("\n" + table)
    return result


ARM_ORDER = ("Regressor", "Baseline", "CCL", "Supervised-all")
#: what each arm is, printed under the table
ARM_NOTES = {
    "Regressor": "floor: HistGradientBoostingRegressor per target on the inputs and their Gaussian blurs "
                 "(σ 1, 2.5 voxels), fitted on the finetune split",
    "Baseline": "finetune from scratch (random init)",
    "CCL": "finetune from the CCL-pretrained network, same budget",
    "Supervised-all": "ceiling: the finetune recipe from scratch on the pretrain + finetune subjects' real targets",
}
#: (method, region) tables in results.json / table.md; the first is the primary endpoint's
VIEWS = (("masked", "brain"), ("masked", "tumor"), ("masked", "healthy"), ("brasyn", "brain"),
         ("brasyn", "tumor"), ("zscored", "brain"))


def arm_values(rows_by_seed: dict[int, list[dict]], method: str = "masked", region: str = "brain") -> dict:
    """``values[arm][contrast][metric][subject][seed]`` of one (method, region) view: the paired layout that
    :func:`~cclray.evaluation.stats.paired_difference` takes (``values[a][c][m]`` is ``{subject: {seed: value}}``)."""
    values: dict = {}
    for seed in sorted(rows_by_seed):
        for r in rows_by_seed[seed]:
            if r["method"] == method and r["region"] == region:
                for m in METRICS:
                    values.setdefault(r["run"], {}).setdefault(r["contrast"], {}).setdefault(m, {}).setdefault(
                        r["subject"], {})[seed] = float(r[m])
    return values


def aggregate(rows_by_seed: dict[int, list[dict]], method: str = "masked", region: str = "brain") -> dict:
    """Per arm, contrast and metric: mean over test subjects (each subject's seeds averaged first) with a
    BCa bootstrap 95 % CI over subjects; paired CCL − Baseline (and every arm − Baseline): mean, CI, Wilcoxon p.

    ``rows_by_seed``: ``{seed: metrics.csv rows of that seed's evaluation}``.
    """
    from cclray.evaluation.stats import mean_ci, paired_difference, subject_means

    seeds = sorted(rows_by_seed)
    values = arm_values(rows_by_seed, method, region)
    arms = [a for a in ARM_ORDER if a in values] + sorted(a for a in values if a not in ARM_ORDER)
    table = {a: {c: {m: mean_ci({sid: list(v.values()) for sid, v in values[a][c][m].items()})
                     for m in METRICS} for c in CONTRASTS if c in values[a]} for a in arms}
    diffs = {}
    if "Baseline" in values:
        for a in arms:
            if a == "Baseline":
                continue
            diffs[a] = {c: {m: paired_difference(values["Baseline"][c][m], values[a][c][m]) for m in METRICS}
                        for c in CONTRASTS if c in values[a] and c in values["Baseline"]}
    subjects = sorted({sid for a in values.values() for c in a.values() for sid in c["ssim"]})
    per_subject = {a: {c: {m: subject_means({sid: list(v.values()) for sid, v in values[a][c][m].items()})
                           for m in METRICS} for c in values[a]} for a in arms}
    return {"seeds": seeds, "method": method, "region": region, "n_test": len(subjects), "arms": arms,
            "table": table, "minus_baseline": diffs, "per_subject": per_subject}


def render_table(result: dict, published: dict | None = None) -> str:
    """One (method, region) table: every arm with its CI, then the paired differences against Baseline."""
    from cclray.evaluation.stats import format_ci

    head = "| arm | " + " | ".join(f"{c[:2].upper()}w {m.upper() if m != 'ssim' else 'SSIM'}"
                                   for c in CONTRASTS for m in METRICS) + " |"
    lines = [f"Test split (n={result['n_test']} subjects), method `{result['method']}`, region `{result['region']}`; "
             f"seeds {result['seeds']} averaged per subject; mean over subjects [BCa bootstrap 95 % CI over "
             "subjects].", "", head, "|" + "---|" * (1 + len(CONTRASTS) * len(METRICS))]
    for arm in result["arms"]:
        cells = [format_ci(result["table"][arm].get(c, {}).get(m, {}), 2 if m == "psnr" else 3)
                 for c in CONTRASTS for m in METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for name, vals in (published or {}).items():
        lines.append(f"| *{name} (published, paper's own convention)* | "
                     + " | ".join(f"*{vals[c][m]:g}*" for c in CONTRASTS for m in METRICS) + " |")
    if result["minus_baseline"]:
        lines += ["", "Paired difference against Baseline (same seed, same subject; per-subject means over seeds): "
                  "mean [95 % CI], Wilcoxon signed-rank p.", "",
                  "| arm − Baseline | " + " | ".join(f"{c[:2].upper()}w {m.upper() if m != 'ssim' else 'SSIM'}"
                                                     for c in CONTRASTS for m in ("ssim", "psnr")) + " |",
                  "|" + "---|" * (1 + 2 * len(CONTRASTS))]
        for arm, d in result["minus_baseline"].items():
            cells = [format_ci(d.get(c, {}).get(m, {}), 2 if m == "psnr" else 3, signed=True)
                     for c in CONTRASTS for m in ("ssim", "psnr")]
            lines.append(f"| {arm} − Baseline | " + " | ".join(cells) + " |")
        if len(result["seeds"]) >= MIN_SEEDS_FOR_SPREAD:
            lines += ["", render_over_seeds([(f"{a} − Baseline", {c: v["ssim"] for c, v in d.items()})
                                             for a, d in result["minus_baseline"].items()])]
    return "\n".join(lines) + "\n"


MIN_SEEDS_FOR_SPREAD = 3  # below it a t CI over seeds says little (2 seeds: t = 12.7)


def render_over_seeds(rows: Sequence[tuple[str, dict]]) -> str:
    """A table of paired SSIM differences at the seed level: ``rows`` are ``(label, {contrast: paired_difference})``;
    per contrast each seed's mean difference over subjects, then their mean [Student-t 95 % CI over seeds]."""
    from cclray.evaluation.stats import format_ci

    def seeds(d: dict) -> str:
        per = d.get("over_seeds", {}).get("per_seed", {})
        return ", ".join(f"{v:+.3f}" for v in per.values()) or "–"

    head = " | ".join(f"{c[:2].upper()}w SSIM {w}" for c in CONTRASTS for w in ("per seed", "over seeds"))
    named = sorted({s for _, by_c in rows for c in CONTRASTS
                    for s in (by_c.get(c) or {}).get("over_seeds", {}).get("per_seed", {})})
    lines = [f"Over training seeds {named} (each seed's mean paired difference over its subjects, in that order, "
             "then their mean [Student-t 95 % CI over seeds]): the run-to-run spread that the subject CIs leave "
             "out.", "",
             f"| paired difference | {head} |", "|" + "---|" * (1 + 2 * len(CONTRASTS))]
    for label, by_contrast in rows:
        cells = [x for c in CONTRASTS
                 for x in (seeds(by_contrast.get(c) or {}),
                           format_ci((by_contrast.get(c) or {}).get("over_seeds", {}), signed=True))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate_views(rows_by_seed: dict[int, list[dict]]) -> dict:
    """:func:`aggregate` for every (method, region) of :data:`VIEWS` present in the rows."""
    present = {(r["method"], r["region"]) for rows in rows_by_seed.values() for r in rows}
    views = {f"{m}/{r}": aggregate(rows_by_seed, m, r) for m, r in VIEWS if (m, r) in present}
    return {"seeds": sorted(rows_by_seed), "primary": "masked/brain", "views": views}


def render_report(result: dict) -> str:
    """``table.md``: the primary view first, then the secondary ones, each with its CIs and differences."""
    out = ["Primary endpoint: T1w SSIM, method `masked`, region brain, test split. Everything else is secondary.",
           ""]
    for key, view in result["views"].items():
        label = "primary" if key == result["primary"] else "secondary"
        out += [f"### {key} ({label})", "",
                render_table(view, {f"{k}": {c: {m: float(x) for m, x in zip(METRICS, v)} for c, v in d.items()}
                                    for k, d in PUBLISHED.items()} if key == "zscored/brain" else None), ""]
    notes = [f"- {a}: {ARM_NOTES[a]}" for a in ARM_ORDER
             if any(a in v["arms"] for v in result["views"].values())]
    return "\n".join(out + ["Arms:", *notes]) + "\n"


def _json_float(x):
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)
