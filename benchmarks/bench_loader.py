"""Data loading keeps up: patches/s the streaming loader (cclray.data.make_loader) delivers with 0, 1 and
2 DataLoader workers vs the patches/s of the training step it feeds.

    python benchmarks/bench_loader.py [--smoke | --quick]

The loader is the finetune one (inputs T1Gd+FLAIR, targets T1w+T2w, mask, augmentation on) over a
prepared phantom store; its rate is measured after the first batch (worker start-up reported
apart), the step's rate is a plain forward + backward + Adam of the default network on the same
patch size, measured in the same run. Goal: loader patches/s >= step patches/s for every worker
count ("never the bottleneck"). Measured apart: in training the workers share the cores with the step.

Repetitions (``--repeats``, default 3), round robin: a timed step, then one epoch of the loader with 0, 1
and 2 workers; each repetition's ratio is the worst worker count's patches/s (chosen by the median) over the
step's of that round.

- ``--quick``: patch 64³, batch 2, the default network; 1 step and a 32-patch epoch per worker count each
  round, over a 2-subject phantom store (made once under --work).
- full (no flag): 2 steps and 160 patches a round. ``--smoke``: 32³, widths 8-16-32, synthetic store.
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
    patch, widths, samples, steps, source = _common.pick(args.size, (32, (8, 16, 32), 16, 1, "synthetic"),
                                                         (64, None, 32, 1, "phantom"), (64, None, 160, 2, "phantom"))
    batch = 2
    store = _data.prepared_store(Path(args.work), 2, source=source)
    subjects = Store(store).subjects()
    cfg = ModelConfig(**({"widths": widths} if widths else {}))
    step = variants(cfg, patch, batch, torch.device("cpu"), compile_=False)["eager fp32"]
    step()  # first-call allocations out of the timing
    step_name = f"training step (widths {list(cfg.widths)}, fp32)"

    def loader(workers: int):
        def run():
            start, rate = loader_rate(store, subjects, patch, batch, workers, samples)
            return {f"loader {workers} worker(s)": rate, f"loader {workers} worker(s): start-up to first batch": start}
        return run

    per = _common.rounds({step_name: lambda: batch / _common.median(_common.timed(step, repeat=steps, warmup=0)),
                          **{f"loader {w}": loader(w) for w in (0, 1, 2)}}, _common.repeats(args))
    for name, values in per.items():
        report.figure(name, _common.median(values), "s" if "start-up" in name else "patches/s",
                      runs=[round(v, 3) for v in values], **({} if "start-up" in name else {"samples": samples}))
    rates = {w: _common.median(per[f"loader {w} worker(s)"]) for w in (0, 1, 2)}
    worst = min(rates, key=rates.get)
    report.ratio_runs(f"loader / step patches/s (worst: {worst} workers)", per[f"loader {worst} worker(s)"],
                      per[step_name], goal=1.0, note="each repetition: the step and the loader with 0, 1, 2 workers")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
