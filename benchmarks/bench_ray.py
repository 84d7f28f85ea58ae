"""Ray Train overhead and scaling: the finetune loop under ``TorchTrainer`` (cclray.train.fit) vs the same
loop called directly (``run_finetune`` under ``LocalContext``, world size 1, no Ray); then 1 vs 2 workers.

    python benchmarks/bench_ray.py [--smoke | --quick]

- **overhead**: steps/s of the training loop (the engine's own ``steps_per_s``, epochs after the
  first, median) with 1 Ray worker (all cores as threads) / the direct call with the same threads.
  Goal >= 0.9. End-to-end wall times (Ray start, worker group start) are printed beside it.
- **scaling**: samples/s (``steps_per_s * batch * world_size``) with 2 workers (1 thread each, DDP
  over gloo) / 1 worker. Documented: on 2 cores the two workers split the same cores the single
  worker's 2 threads used, so ~1x is the ceiling; the gain is for nodes with more cores or GPUs.

A private local Ray instance is started once (``address="local"``), never one already running here,
and serves both TorchTrainer runs.

Repetitions (``--repeats``, default 3): each run (direct before, Ray 1 worker, Ray 2 workers, direct
after) trains 1 + N epochs; repetition i pairs epoch i + 1 of every run. A TorchTrainer run's worker group
start-up is ~15-20 s on 2 cores, so each variant is one run whose steady epochs are the repetitions
rather than N runs; the direct runs before and after bracket the Ray runs against load drift.

- ``--quick``: widths 8-16-32-64, patch 32³, batch 2, 6 steps an epoch, 4 epochs, 2-subject phantom store.
- full (no flag): the default network at 64³, 4 steps an epoch. ``--smoke``: widths 8-16-32, 16³, synthetic.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402


def steady_rates(rows: list[dict], n: int) -> list[float]:
    """steps/s of the last ``n`` epochs (the first epoch pays start-up and allocations and is left out)."""
    rates = [float(r["steps_per_s"]) for r in rows]
    if len(rates) < n + 1:
        raise RuntimeError(f"{len(rates)} epochs reported, {n + 1} expected")
    return rates[-n:]


def main() -> int:
    ap = _common.parser(__doc__)
    args = ap.parse_args()
    report = _common.Report("ray", args)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    widths, patch, steps, source = _common.pick(
        args.size, ((8, 16, 32), 16, 4, "synthetic"), ((8, 16, 32, 64), 32, 6, "phantom"), (None, 64, 4, "phantom"))
    reps = _common.repeats(args)
    epochs = 1 + reps  # the repetitions: the epochs after the first, of every run alike
    batch, threads = 2, _common.cores()
    store = _data.prepared_store(Path(args.work), 2, source=source)
    model = {"widths": list(widths)} if widths else {}
    cfg = {"store": store, "model": model, "val_split": None, "epochs": epochs, "steps_per_epoch": steps,
           "checkpoint_every": 100, "patch": {"patch_size": [patch] * 3, "batch_size": batch, "num_workers": 0}}
    runs = _common.fresh_dir(Path(args.work) / "ray-runs")

    from cclray.config import FinetuneConfig
    from cclray.engine import LocalContext
    from cclray.engine_finetune import run_finetune
    from cclray.runs import MetricsLog

    def direct() -> list[float]:
        torch.set_num_threads(threads)  # what the 1-worker TorchTrainer gives its worker
        t = time.perf_counter()
        ctx = LocalContext(None)
        run_finetune(FinetuneConfig.from_dict(cfg), ctx)
        report.figure("direct run_finetune: end to end", time.perf_counter() - t, "s")
        return steady_rates(ctx.reports, reps)

    import ray

    from cclray.train import fit

    t = time.perf_counter()
    ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    report.figure("ray.init", time.perf_counter() - t, "s")

    def trainer(workers: int) -> list[float]:
        t = time.perf_counter()
        out = runs / f"w{workers}-{time.time_ns()}"
        fit("finetune", cfg, out, num_workers=workers)
        report.figure(f"TorchTrainer {workers} worker(s): end to end", time.perf_counter() - t, "s")
        return steady_rates(MetricsLog(out).rows(), reps)

    try:
        rate = {"direct": direct(), 1: trainer(1), 2: trainer(2)}
        rate["direct2"] = direct()  # before and after the Ray runs: load drift shows here
    finally:
        ray.shutdown()
    d = [(a + b) / 2 for a, b in zip(rate["direct"], rate["direct2"])]  # epoch i before and after the Ray runs
    report.figure("direct steps/s (before, after)", _common.median(d), "steps/s",
                  runs=[[round(x, 3) for x in rate[k]] for k in ("direct", "direct2")])
    report.figure("TorchTrainer 1 worker steps/s", _common.median(rate[1]), "steps/s", runs=[round(x, 3) for x in rate[1]])
    report.figure("TorchTrainer 2 workers steps/s (each)", _common.median(rate[2]), "steps/s",
                  runs=[round(x, 3) for x in rate[2]])
    report.ratio_runs("Ray 1 worker / direct (steps/s)", rate[1], d, goal=0.9,
                      note="repetition i: epoch i+1 of each run; direct = mean of the runs before and after Ray's")
    report.ratio_runs("Ray 2 workers / 1 worker (samples/s)", [2 * x for x in rate[2]], rate[1],
                      note=f"{threads} cores: the 2 workers share the cores 1 worker used as threads")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
