"""Reproduce the paper's table: CCL-pretrained vs from-scratch finetuning, same finetune budget, several seeds.

One phantom cohort with the paper's split (pretrain 80, finetune 10, val 5, test 10) is made and prepared
once; for every training seed the demo's training steps run (:func:`cclray.demo.train_and_evaluate`:
CCL pretrain, finetune from it, finetune from scratch, evaluate both on the test split). The table gives,
per run and metric, the mean ± sd over seeds of each seed's test-split mean, beside the published numbers,
plus the per-seed paired difference CCL − Baseline. Every step is kept on disk: a rerun continues.

Presets: ``cpu`` (2 mm volumes, 32³ patches, a few hundred steps a stage: about two hours on 2 CPU cores)
and ``paper`` (1 mm, 128³ patches, the paper's sizes: a GPU cluster job).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from cclray.demo import PRESETS as DEMO_PRESETS
from cclray.demo import DemoConfig, Steps, prepare_cohort, train_and_evaluate
from data_prep.splits import PAPER_SPLITS

log = logging.getLogger(__name__)

PRESETS: dict[str, DemoConfig] = {
    # 2 CPU cores, 1-2 h for 3 seeds (shared machine): 2 mm volumes, 32³ patches, 2000 pretrain steps and
    # 600 finetune steps of batch 4. What was reduced is printed and written to the results. proj_stride 2
    # keeps the paper's physical feature size (2 mm x 2 = 1 mm x 4 = 4 mm voxels of the constraint grid).
    "cpu": DemoConfig(n_subjects=105, spacing=2.0, splits=PAPER_SPLITS, widths=(16, 32, 64, 128), patch=32,
                      proj_stride=2, batch=4, pretrain_epochs=100, finetune_epochs=30, steps_per_epoch=20, workers=1,
                      prep_workers=2),
    # the same with a tenth of the pretraining and a third of the finetuning: ~30 min for 3 seeds.
    "cpu-quick": DemoConfig(n_subjects=105, spacing=2.0, splits=PAPER_SPLITS, widths=(16, 32, 64, 128), patch=32,
                            batch=4, pretrain_epochs=10, finetune_epochs=10, steps_per_epoch=20, workers=1,
                            prep_workers=2),
    "paper": DEMO_PRESETS["paper"],
}
METRICS = ("ssim", "mse", "psnr")
CONTRASTS = ("t1w", "t2w")
RUNS = ("Baseline", "CCL")


def run_reproduction(out: str | os.PathLike, preset: str = "cpu", seeds: Sequence[int] = (0, 1, 2),
                     overrides: dict | None = None, say: Callable[[str], None] = print) -> dict:
    """Run (or continue) the reproduction into ``out``; write ``table.md``, ``results.json``, ``figure.png``."""
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
    step, total = Steps(say), 2 + 4 * len(seeds)
    nifti, store = out / "phantom", str(out / "store.zarr")
    prepare_cohort(cfg, nifti, store, step, first=1, total=total)
    summaries = {}
    for i, seed in enumerate(seeds):
        seed_dir = out / f"seed{seed}"
        train_and_evaluate(cfg, store, seed_dir / "runs", seed_dir / "evaluation", step,
                           first=3 + 4 * i, total=total, seed=seed)
        summaries[seed] = json.loads((seed_dir / "evaluation" / "summary.json").read_text())
    result = aggregate(summaries)
    result.update(preset=preset, config=cfg.to_dict(), wall_seconds=round(time.perf_counter() - t0, 1),
                  step_seconds=step.times)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = render_table(result)
    (out / "table.md").write_text(table)
    shutil.copyfile(out / f"seed{seeds[-1]}" / "evaluation" / "figure.png", out / "figure.png")
    say("\n" + table)
    return result


def aggregate(summaries: dict[int, dict], method: str = "masked", region: str = "brain") -> dict:
    """Per run, contrast and metric: mean ± sd over seeds of each seed's test mean; paired CCL − Baseline."""
    seeds = sorted(summaries)

    def per_seed(run, c, m):
        return [summaries[s]["results"][method][run][region][c][m]["mean"] for s in seeds]

    table, diff = {}, {}
    for run in RUNS:
        table[run] = {c: {m: _mean_sd(per_seed(run, c, m)) for m in METRICS} for c in CONTRASTS}
    for c in CONTRASTS:
        diff[c] = {}
        for m in METRICS:
            d = [b - a for a, b in zip(per_seed("Baseline", c, m), per_seed("CCL", c, m))]
            diff[c][m] = {**_mean_sd(d), "per_seed": d}
    first = summaries[seeds[0]]
    return {"seeds": seeds, "method": method, "region": region, "n_test": len(first["subjects"]),
            "table": table, "ccl_minus_baseline": diff, "published": first.get("published", {}),
            "per_seed": {s: {run: {c: {m: per_seed(run, c, m)[i] for m in METRICS} for c in CONTRASTS}
                             for run in RUNS} for i, s in enumerate(seeds)}}


def _mean_sd(values: list[float]) -> dict:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": statistics.fmean(finite), "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "n": len(finite)}


def render_table(result: dict) -> str:
    """The seed's table (rows Baseline, CCL; T1w and T2w SSIM/MSE/PSNR) with the published rows beside it."""
    head = "| run | " + " | ".join(f"{c[:2].upper()}w {m.upper()}" for c in CONTRASTS for m in METRICS) + " |"
    lines = [f"Test split (n={result['n_test']}), {result['method']} way, region {result['region']}; mean ± sd "
             f"over seeds {result['seeds']} of each seed's test mean.", "", head,
             "|" + "---|" * (1 + len(CONTRASTS) * len(METRICS))]
    for run in RUNS:
        cells = [f"{result['table'][run][c][m]['mean']:.3f} ± {result['table'][run][c][m]['sd']:.3f}"
                 for c in CONTRASTS for m in METRICS]
        lines.append(f"| {run} (this reproduction) | " + " | ".join(cells) + " |")
    for name, values in result.get("published", {}).items():
        lines.append(f"| {name} (published) | " + " | ".join(f"{values[c][m]:g}" for c in CONTRASTS for m in METRICS)
                     + " |")
    d = result["ccl_minus_baseline"]
    lines += ["", "Paired difference CCL − Baseline (same seed, same test subjects): "
              + "; ".join(f"{c} {m.upper()} {d[c][m]['mean']:+.3f} ± {d[c][m]['sd']:.3f} "
                          f"(per seed {', '.join(f'{v:+.3f}' for v in d[c][m]['per_seed'])})"
                          for c in CONTRASTS for m in ("ssim", "psnr")), ""]
    return "\n".join(lines)
