"""The study's tables and figure from its evaluation folders (:mod:`cclray.study`).

Per finetune size n, the rows of every (fold, seed) evaluation are pooled by seed (folds test disjoint
subjects), and :func:`cclray.reproduce.aggregate` gives each arm's mean over test subjects (seeds averaged
per subject first) with a BCa bootstrap 95 % CI, and every arm's paired difference to Baseline with its CI
and Wilcoxon p. The primary endpoint (T1w SSIM, ``masked``, brain) comes first; tumour and BraSyn-style
views follow as secondary. On the primary view, :func:`answer_questions` pairs the arms the design compares
with each other rather than with Baseline (:data:`QUESTIONS`: CCL − Baseline-matched, Probe-CCL − Probe-random, ...).
With three or more seeds each paired table is followed by its seed-level one (each seed's mean difference, then
their mean with a t CI over seeds: :func:`cclray.evaluation.stats.over_seeds`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cclray.study_plan import ARMS, Job, StudyConfig

VIEWS = (("masked", "brain"), ("masked", "tumor"), ("brasyn", "brain"))
ARM_NOTES = {
    "Regressor": "floor: voxelwise gradient-boosted trees on the inputs and their blurs, fitted on the same n subjects",
    "Baseline": "finetuning from random weights",
    "CCL": "finetuning from CCL pretraining (constraint map of all four contrasts, the paper)",
    "CCL-inputs": "finetuning from CCL pretraining with a constraint map of T1Gd + FLAIR only",
    "Baseline-matched": "from random weights with pretraining + finetuning steps (compute-matched)",
    "Supervised-all": "ceiling: from random weights on the pretrain + finetune subjects' real targets",
    "Probe-CCL": "linear probe: 1x1x1 head on the frozen CCL-pretrained features (proj_stride level, upsampled)",
    "Probe-random": "linear probe: 1x1x1 head on frozen random features (same architecture)",
    "CCL-external": "finetuning from a CCL pretraining made elsewhere (--external-pretrain, e.g. on the phantom)",
    "CCL-mixed": "finetuning from CCL pretraining on this study's pretrain subjects plus another store's "
                 "(--mix-store, e.g. the phantom's), one cohort sampled per subject",
}
# the design's questions that are not "arm − Baseline" (docs/STUDY.md): (B, A, question) -> paired B − A
QUESTIONS = (
    ("CCL", "Baseline-matched", "more than optimisation time? (scratch given as many steps in all)"),
    ("CCL-inputs", "CCL", "does the T1w/T2w information in the constraint map matter?"),
    ("Probe-CCL", "Probe-random", "how much more of the targets the frozen CCL features hold than random ones"),
    ("CCL-external", "CCL", "pretraining on another cohort instead of this one"),
    ("CCL-mixed", "CCL", "another cohort added to this one's pretraining"),
    ("Supervised-all", "CCL", "how far CCL stays from the ceiling"),
    ("CCL", "Regressor", "CCL against the voxelwise floor"),
)


def collect(out: Path, jobs: list[Job]) -> dict[int, dict[int, list[dict]]]:
    """``{n: {seed: metrics.csv rows of every fold}}`` of the finished evaluations."""
    from cclray.evaluation.report import read_metrics_csv

    rows: dict[int, dict[int, list[dict]]] = {}
    for j in jobs:
        if j.kind != "evaluate":
            continue
        csv = out / j.path / "metrics.csv"
        if not csv.exists():
            continue
        parts = Path(j.path).parts  # f<fold>/seed<seed>/n<n>/evaluation
        seed, n = int(parts[1][4:]), int(parts[2][1:])
        rows.setdefault(n, {}).setdefault(seed, []).extend(read_metrics_csv(csv))
    return rows


def answer_questions(rows_by_seed: dict[int, list[dict]], method: str = "masked", region: str = "brain") -> dict:
    """``{"B − A": {"question", contrast: paired_difference}}`` for each of :data:`QUESTIONS` whose two arms
    were both evaluated (SSIM; pairs need the same subject and seed, as against Baseline)."""
    from cclray.evaluation.stats import paired_difference
    from cclray.reproduce import arm_values

    values = arm_values(rows_by_seed, method, region)
    out = {}
    for b, a, question in QUESTIONS:
        if a in values and b in values:
            out[f"{b} − {a}"] = {"question": question, **{
                c: paired_difference(values[a][c]["ssim"], values[b][c]["ssim"]) for c in values[b] if c in values[a]}}
    return out


def render_questions(answers: dict) -> str:
    """The answers of :func:`answer_questions` as a markdown table (T1w and T2w SSIM, subjects above 0)."""
    from cclray.evaluation.stats import format_ci

    def cell(d: dict | None) -> str:
        if not d or not d.get("n"):
            return "–"
        above = sum(v > 0 for v in d["per_subject"].values())
        return f"{format_ci(d, signed=True)}; {above}/{d['n']} > 0"

    lines = ["| paired difference | question | T1w SSIM | T2w SSIM |", "|---|---|---|---|"]
    lines += [f"| {name} | {a['question']} | {cell(a.get('t1w'))} | {cell(a.get('t2w'))} |"
              for name, a in answers.items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, cfg: StudyConfig, jobs: list[Job]) -> dict:
    """Write ``table.md`` and ``study.png`` of the finished evaluations among ``jobs``; return
    ``{"by_n": {n: {view: aggregate}}, "questions": {n: ...}}`` (the questions of :data:`QUESTIONS` on the
    primary view)."""
    return write_tables(out, cfg, collect(out, jobs))


def write_tables(out: Path, cfg: StudyConfig, rows: dict[int, dict[int, list[dict]]], note: str = "") -> dict:
    """:func:`write_report` from ``{n: {seed: metrics rows}}`` (one study's, or several pooled:
    :mod:`cclray.study_pool`); ``note`` is a line under the heading."""
    from cclray.reproduce import MIN_SEEDS_FOR_SPREAD, aggregate, render_over_seeds, render_table

    by_n = {n: {f"{m}/{r}": aggregate(rows[n], m, r) for m, r in VIEWS
                if any(x["method"] == m and x["region"] == r for s in rows[n].values() for x in s)}
            for n in sorted(rows)}
    lines = ["# Study: CCL pretraining vs training from scratch", "",
             "Primary endpoint (declared before the runs): T1w SSIM, method `masked`, whole brain, test subjects. "
             "Everything else is secondary.", "", *([note, ""] if note else []),
             f"Design: {cfg.folds} fold(s), seeds {list(cfg.seeds)}, finetune sizes n = {list(cfg.finetune_sizes)}; "
             f"{cfg.spacing:g} mm, widths {list(cfg.widths)}, {cfg.patch}³ patches, batch {cfg.batch}; "
             f"pretraining {cfg.pretrain_steps} steps, finetuning {cfg.finetune_steps} steps "
             f"({cfg.finetune_schedule} learning rate{', augmented patches' if cfg.augment else ''}).", ""]
    questions = {n: answer_questions(rows[n]) for n in by_n}
    for n, views in by_n.items():
        for key, view in views.items():
            label = "primary" if key == "masked/brain" else "secondary"
            lines += [f"## n = {n} finetune subjects — {key} ({label})", "", render_table(view), ""]
            if key == "masked/brain" and questions[n]:
                lines += ["Arm against arm (the design's other questions; same view, paired as above):", "",
                          render_questions(questions[n]), ""]
                if len(view["seeds"]) >= MIN_SEEDS_FOR_SPREAD:
                    lines += [render_over_seeds([(k, a) for k, a in questions[n].items()]), ""]
    lines += ["Arms:", *[f"- {a}: {ARM_NOTES[a]}" for a in ARMS if a in cfg.arms]]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    if by_n:
        draw_study(out / "study.png", {n: v["masked/brain"] for n, v in by_n.items() if "masked/brain" in v})
    return {"primary": "masked/brain", "by_n": by_n, "questions": questions}


def draw_study(path: Path, primary_by_n: dict[int, dict]) -> Path:
    """Primary endpoint vs n: each arm's mean with its 95 % CI band (left; an error bar when there is one n);
    CCL − Baseline and the other arms' paired differences with their CIs (middle); every test subject's own CCL − Baseline at each n
    (right, :func:`subject_differences`), so a mean carried by a few subjects shows as such."""
    from data_prep.figures import new_figure, save_png

    fig = new_figure((15, 4.2))
    ax, dx, sx = fig.subplots(1, 3)
    ns = sorted(primary_by_n)
    arms = [a for a in ARMS if any(a in primary_by_n[n]["table"] for n in ns)]

    def yerr(stats: list[dict]) -> list[list[float]]:  # a mean's distance to each end of its CI
        # clipped at 0: a CI of equal subjects' differences can sit a rounding error off its mean, and
        # matplotlib refuses negative error bars
        return [[max(0.0, s["mean"] - s["ci"][0]) for s in stats], [max(0.0, s["ci"][1] - s["mean"]) for s in stats]]

    for k, arm in enumerate(arms):
        pts = [(n, primary_by_n[n]["table"][arm]["t1w"]["ssim"]) for n in ns if arm in primary_by_n[n]["table"]]
        # one n: a band has no width, so each arm is an error bar, set a little apart from the others
        shift = (k - (len(arms) - 1) / 2) * 0.04 * ns[0] if len(ns) == 1 else 0.0
        x = [n + shift for n, _ in pts]
        colour = f"C{ARMS.index(arm)}"  # one colour an arm in both panels
        if len(ns) == 1:
            ax.errorbar(x, [s["mean"] for _, s in pts], yerr=yerr([s for _, s in pts]), marker="o", capsize=3,
                        label=arm, color=colour)
        else:
            ax.plot(x, [s["mean"] for _, s in pts], marker="o", label=arm, color=colour)
            ax.fill_between(x, [s["ci"][0] for _, s in pts], [s["ci"][1] for _, s in pts], alpha=0.15, color=colour)
        if arm == "Baseline":
            continue
        d = [(n, primary_by_n[n]["minus_baseline"][arm]["t1w"]["ssim"]) for n in ns
             if arm in primary_by_n[n].get("minus_baseline", {})]
        if d:
            dx.errorbar([n + shift for n, _ in d], [s["mean"] for _, s in d],
                        yerr=yerr([s for _, s in d]), marker="o", capsize=3, label=f"{arm} − Baseline", color=colour)
    dx.axhline(0, color="k", lw=0.8)
    arm, points = subject_differences(primary_by_n)
    for i, (n, diffs) in enumerate(points):
        jitter = np.linspace(-0.15, 0.15, len(diffs)) if len(diffs) > 1 else np.zeros(1)
        sx.scatter(n + jitter * max(1, n / 4), sorted(diffs), s=14, color=f"C{ARMS.index(arm)}", alpha=0.8,
                   label=f"one test subject ({arm} − Baseline)" if i == 0 else None)
        sx.text(n, max(diffs), f"{sum(d > 0 for d in diffs)}/{len(diffs)} > 0", fontsize=7, va="bottom", ha="center")
    sx.axhline(0, color="k", lw=0.8)
    panels = ((ax, "T1w SSIM (masked, brain), mean [95 % CI]"), (dx, "paired difference to Baseline [95 % CI]"),
              (sx, "per test subject, seeds averaged"))
    for a, title in panels:
        a.set_xlabel("finetune subjects n")
        a.set_xticks(ns)
        a.set_title(title, fontsize=10)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return save_png(fig, path)


def subject_differences(primary_by_n: dict[int, dict]) -> tuple[str, list[tuple[int, list[float]]]]:
    """The arm shown per subject (CCL, else the first other arm with a difference to Baseline) and, per n,
    its test subjects' T1w SSIM differences to Baseline (each subject's seeds averaged)."""
    arms = [a for a in ARMS if any(a in v.get("minus_baseline", {}) for v in primary_by_n.values())]
    if not arms:
        return "CCL", []
    arm = "CCL" if "CCL" in arms else arms[0]
    return arm, [(n, list(v["minus_baseline"][arm]["t1w"]["ssim"]["per_subject"].values()))
                 for n, v in sorted(primary_by_n.items())
                 if v.get("minus_baseline", {}).get(arm, {}).get("t1w", {}).get("ssim", {}).get("per_subject")]
