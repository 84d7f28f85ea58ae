"""Ray Train overhead and scaling: the finetune loop under ``TorchTrainer`` (cclray.train.fit) vs the same
loop called directly (``run_finetune`` under ``LocalContext``, world size 1, no Ray); then 1 vs 2 workers.

    python benchmarks/bench_ray.py [--smoke | --quick]

- **overhead**: steps/s of the training loop (the engine's own ``steps_per_s``, epochs after the
  first, median) with 1 Ray worker (all cores as threads) / the direct call with the same threads.
  Goal >= 0.9. End-to-end wall times (Ray start, worker group start) are printed beside it.
- **scaling**: samples/s (``steps_per_s * batch * world_size``) with 2 workers (1 thread each, DDP
  over gloo) / 1 worker. Documented: on 2 cores the two workers split the same cores the single
  worker's 2 threads used, so ~1x is the ceiling; the gain is for nodes with more cores or GPUs.

A private local Ray instance is started (``address="local"``), never one already running here.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402


def steady_rate(rows: list[dict]) -> float:
    """Median steps/s of the epochs after the first (the first pays start-up and allocations)."""
    rates = [float(r["steps_per_s"]) for r in rows]
    return _common.median(rates[1:] or rates)


def main() -> int:
    ap = _common.parser(__doc__)
    args = ap.parse_args()
    report = _common.Report("ray", args)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    widths, patch, steps, epochs, source = _common.pick(
        args.size, ((8, 16, 32), 16, 4, 2, "synthetic"), ((8, 16, 32, 64), 32, 6, 3, "phantom"),
        (None, 64, 4, 3, "phantom"))
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

    def direct() -> float:
        torch.set_num_threads(threads)  # what the 1-worker TorchTrainer gives its worker
        t = time.perf_counter()
        ctx = LocalContext(None)
        run_finetune(FinetuneConfig.from_dict(cfg), ctx)
        report.figure("direct run_finetune: end to end", time.perf_counter() - t, "s")
        return steady_rate(ctx.reports)

    import ray

    from cclray.train import fit

    t = time.perf_counter()
    ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    report.figure("ray.init", time.perf_counter() - t, "s")

    def trainer(workers: int) -> float:
        t = time.perf_counter()
        out = runs / f"w{workers}-{time.time_ns()}"
        fit("finetune", cfg, out, num_workers=workers)
        report.figure(f"TorchTrainer {workers} worker(s): end to end", time.perf_counter() - t, "s")
        return steady_rate(MetricsLog(out).rows())

    try:
        rate = {"direct": direct(), 1: trainer(1), 2: trainer(2)}
        rate["direct2"] = direct()  # before and after the Ray runs: load drift shows here
    finally:
        ray.shutdown()
    d = (rate["direct"] + rate["direct2"]) / 2
    report.figure("direct steps/s (before, after)", d, "steps/s", runs=[round(rate["direct"], 3), round(rate["direct2"], 3)])
    report.figure("TorchTrainer 1 worker steps/s", rate[1], "steps/s")
    report.figure("TorchTrainer 2 workers steps/s (each)", rate[2], "steps/s")
    report.ratio("Ray 1 worker / direct (steps/s)", rate[1] / d, goal=0.9)
    samples = {w: rate[w] * batch * w for w in (1, 2)}
    report.ratio("Ray 2 workers / 1 worker (samples/s)", samples[2] / samples[1],
                 note=f"{threads} cores: the 2 workers share the cores 1 worker used as threads")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
