"""Pretraining step time against CCL anchors per patch (the loss is vectorized over anchors).

    python benchmarks/bench_anchors.py [--anchors 20 64 256 512] [--steps 6] [--patch 32] [--batch 4]

The ``cpu`` reproduction preset's network (widths 16-32-64-128, proj_stride 2, 32³ patches, batch 4, two input
contrasts); labels are 20 clusters of a smooth random field, the whole patch foreground. One step = forward,
CCL loss, backward, Adam step; the median of ``--steps`` timed steps after two warm-up steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cclray.config import ModelConfig  # noqa: E402
from cclray.losses import CCLLoss  # noqa: E402
from cclray.models import build_ccl_net  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchors", type=int, nargs="+", default=[20, 64, 256, 512])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    p, b = args.patch, args.batch
    field = gaussian_filter(rng.normal(size=(b, p, p, p)), (0, 3, 3, 3))
    labels = torch.from_numpy(np.digitize(field, np.quantile(field, np.linspace(0, 1, 21)[1:-1])) + 1)
    mask = torch.ones(b, p, p, p, dtype=torch.bool)
    x = torch.randn(b, 2, p, p, p)
    out = {}
    for a in args.anchors:
        net = build_ccl_net(ModelConfig(widths=(16, 32, 64, 128), proj_stride=2))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        loss_fn = CCLLoss(n_anchors=a, top_k=100)
        times, loss_times = [], []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            feats = net(x)
            t1 = time.perf_counter()
            loss = loss_fn(feats, labels, mask)
            t2 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
                loss_times.append(t2 - t1)
        out[a] = (statistics.median(times), statistics.median(loss_times))
        print(f"anchors {a:4d}: step {out[a][0] * 1000:.0f} ms (loss forward {out[a][1] * 1000:.0f} ms), "
              f"{a * b} anchor terms a step", flush=True)
    base = out[args.anchors[0]][0]
    print("step time relative to", args.anchors[0], "anchors:",
          {a: round(t / base, 2) for a, (t, _) in out.items()})
    return out


if __name__ == "__main__":
    main()
