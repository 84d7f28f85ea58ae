"""Data loading keeps up: patches/s the streaming loader (cclray.data.make_loader) delivers with 0, 1 and
2 DataLoader workers vs the patches/s of the training step it feeds.

    python benchmarks/bench_loader.py [--smoke | --quick]

The loader is the finetune one (inputs T1Gd+FLAIR, targets T1w+T2w, mask, augmentation on) over a
prepared phantom store; its rate is measured after the first batch (worker start-up reported
apart), the step's rate is a plain forward + backward + Adam of the default network on the same
patch size, measured in the same run. Goal: loader patches/s >= step patches/s for every worker
count ("never the bottleneck"). Measured apart: in training the workers share the cores with the step.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402
from bench_train_step import variants  # noqa: E402  (the plain eager step of the default net)


def loader_rate(store: str, subjects: list[str], patch: int, batch: int, workers: int, samples: int):
    """(start-up s to the first batch, patches/s after it) of one epoch of the finetune loader."""
    from cclray.config import PatchConfig
    from cclray.data import PatchDataset, make_loader

    cfg = PatchConfig(patch_size=(patch,) * 3, batch_size=batch, num_workers=workers, samples_per_epoch=samples)
    ds = PatchDataset(store, subjects, cfg, ("t1gd", "flair"), targets=("t1w", "t2w"), seed=0)
    t0 = time.perf_counter()
    it = iter(make_loader(ds, cfg))
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for b in it:
        n += b["input"].shape[0]
    t2 = time.perf_counter()
    assert first["input"].shape == (batch, 2, patch, patch, patch)
    del it
    return t1 - t0, n / max(t2 - t1, 1e-9)


def main() -> int:
    ap = _common.parser(__doc__)
    args = ap.parse_args()
    report = _common.Report("loader", args)
    import torch

    from cclray.config import ModelConfig
    from data_prep.store import Store

    torch.set_num_threads(_common.cores())
    patch, widths, samples, source = _common.pick(args.size, (32, (8, 16, 32), 16, "synthetic"),
                                                  (64, None, 48, "phantom"), (64, None, 160, "phantom"))
    batch = 2
    store = _data.prepared_store(Path(args.work), 2, source=source)
    subjects = Store(store).subjects()
    cfg = ModelConfig(**({"widths": widths} if widths else {}))
    step = variants(cfg, patch, batch, torch.device("cpu"), compile_=False)["eager fp32"]
    step_s = _common.median(_common.timed(step, repeat=2, warmup=1))
    step_rate = report.figure(f"training step (widths {list(cfg.widths)}, fp32)", batch / step_s, "patches/s")
    del step
    rates = {}
    for workers in (0, 1, 2):
        start, rate = loader_rate(store, subjects, patch, batch, workers, samples)
        report.figure(f"loader {workers} worker(s): start-up to first batch", start, "s")
        rates[workers] = report.figure(f"loader {workers} worker(s)", rate, "patches/s", samples=samples)

    worst = min(rates, key=rates.get)
    report.ratio(f"loader / step patches/s (worst: {worst} workers)", rates[worst] / step_rate, goal=1.0)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
