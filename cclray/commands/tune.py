"""``cclray tune --store S --out SWEEP``: Ray Tune search over constraint and loss settings.

Each trial: constraint map (computed once per setting) -> CCL pretrain -> short finetune reporting
validation SSIM; Optuna TPE proposes, ASHA stops bad trials early. Writes results.csv, summary.md,
metric_vs_settings.png and best.json into SWEEP; ``cclray export --sweep SWEEP`` exports the best.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import dataclasses

    from tune.space import BUDGETS
    from tune.sweep import SweepConfig

    d = {f.name: f.default for f in dataclasses.fields(SweepConfig)}  # defaults shown are the config's
    parser.add_argument("--store", required=True, help="a store written by `cclray prep` (path or URL)")
    parser.add_argument("--out", required=True, metavar="SWEEP", help="sweep folder (local path or URL)")
    parser.add_argument("--runs-dir", default="", help="trials' run folders (default SWEEP/runs; needed for a URL)")
    parser.add_argument("--samples", type=int, default=d["samples"], help="trials (default %(default)s)")
    parser.add_argument("--max-concurrent", type=int, default=d["max_concurrent"],
                        help="trials at once (default: what the cluster holds; 1 without GPUs)")
    parser.add_argument("--workers-per-trial", type=int, default=d["workers_per_trial"],
                        help="Ray Train workers per trial (default %(default)s)")
    parser.add_argument("--gpus-per-worker", type=float, default=d["gpus_per_worker"],
                        help="GPUs per Train worker (default %(default)g)")
    parser.add_argument("--cpus-per-worker", type=float, default=d["cpus_per_worker"],
                        help="CPUs per Train worker (default: the cluster's CPUs shared by the trials)")
    parser.add_argument("--budget", default=d["budget"], choices=list(BUDGETS),
                        help="training size of every trial (default %(default)s; tiny = tests)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="Optuna and training seed (default %(default)s)")
    parser.add_argument("--grace-period", type=int, default=d["grace_period"],
                        help="ASHA: finetune epochs before a stop (default %(default)s)")
    parser.add_argument("--reduction-factor", type=int, default=d["reduction_factor"],
                        help="ASHA reduction factor (default %(default)s)")
    parser.add_argument("--trial-retries", type=int, default=d["trial_retries"],
                        help="re-runs of a failed trial (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in SWEEP (Tuner.restore)")
    parser.add_argument("--no-pretrain-arm", action="store_true",
                        help="do not sample the control arm (finetune from random init)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")


def run(args: argparse.Namespace) -> int:
    from cclray.train import init_ray
    from tune.space import SearchSpace
    from tune.sweep import SweepConfig, run_sweep

    cfg = SweepConfig(store=args.store, out=args.out, runs_dir=args.runs_dir, samples=args.samples,
                      budget=args.budget, max_concurrent=args.max_concurrent,
                      workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, seed=args.seed, grace_period=args.grace_period,
                      reduction_factor=args.reduction_factor, trial_retries=args.trial_retries,
                      space=SearchSpace(pretrain_arm=not args.no_pretrain_arm))
    init_ray(address=args.address)
    out = run_sweep(cfg, resume=args.resume)
    c = out["counts"]
    print(f"{sum(c.values())} trials: {c['ok']} finished, {c['stopped']} stopped early by ASHA, {c['error']} failed")
    for key, path in out["paths"].items():
        print(f"  {key}: {path}")
    best = out["best"]
    if best is None:
        print("no trial finished with a metric: see results.csv")
        return 1
    print(f"best {best['trial_id']}: val_ssim {best['metric']:.4f}; export it with "
          f"`cclray export --sweep {args.out} --out MODEL.onnx`")
    return 0
