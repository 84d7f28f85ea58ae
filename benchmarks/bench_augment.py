"""Per-patch cost of the geometric augmentation (``patch.augment``): the patch stream with no augmentation,
with flips only, and with flips + rotation + scale (the defaults: 15 degrees, 0.95-1.05).

    python benchmarks/bench_augment.py [--patches 300] [--patch 32] [--rounds 3] [--work DIR]

Each patch is a :class:`cclray.data.PatchDataset` sample of the finetune stream (inputs T1Gd+FLAIR, targets
T1w+T2w, mask, constraint labels; one patch a visit, the default), iterated in the main process: read (the
region grows by the rotation's margin), cut, augment. The store is 4 synthetic subjects (smooth random images
in an ellipsoid brain, 96x112x80, written directly, page-cached). The three settings are timed round-robin
(``--rounds`` rounds of ``--patches`` patches each), so load drifts hit all alike; the figures are the median
per-patch time and the median over rounds of the ratio to no augmentation in the same round. Also timed apart: the augmentation call alone on in-memory
arrays (flips vs the affine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cclray.config import PatchConfig  # noqa: E402
from cclray.data import PatchDataset  # noqa: E402
from cclray.data.augmentation import affine_margin, augment  # noqa: E402
from data_prep.store import Store  # noqa: E402

SHAPE = (96, 112, 80)
LABELS = "bench-k8"


def make_store(path: Path, n: int = 4) -> tuple[str, list[str]]:
    from scipy.ndimage import gaussian_filter

    store = Store.create(str(path), {"bench": "augment"})
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = np.sqrt(((grid / np.array([0.8, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0)) < 1
    sids = [f"B{i}" for i in range(n)]
    for i, sid in enumerate(sids):
        rng = np.random.default_rng(i)
        image = np.stack([gaussian_filter(rng.normal(size=SHAPE), 3) for _ in range(4)]).astype(np.float32)
        image = (image / image.std() * mask).astype(np.float32)
        labels = (np.digitize(image[0], np.quantile(image[0][mask], np.linspace(0, 1, 9)[1:-1])) + 1) * mask
        store.write_subject(sid, image, mask, {"affine": np.eye(4)}, constraints={LABELS: labels.astype(np.uint8)})
    store.update_attrs(subjects=sids)
    return str(path), sids


def per_patch(url: str, sids: list[str], cfg: PatchConfig, seed: int) -> float:
    ds = PatchDataset(url, sids, cfg, ("t1gd", "flair"), targets=("t1w", "t2w"), constraint=LABELS, seed=seed)
    it = iter(ds)
    next(it)  # open the store, read the masks
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return (time.perf_counter() - t) / n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=300)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None, help="folder for the synthetic store (default: a temporary one)")
    args = ap.parse_args(argv)
    p = (args.patch,) * 3
    base = PatchConfig(patch_size=p, batch_size=1, num_workers=0, samples_per_epoch=args.patches + 1)
    settings = {"none": base, "flips": base.replace(augment=True, rotate_deg=0.0, scale=[1.0, 1.0]),
                "flips+rotate+scale": base.replace(augment=True)}
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; patch {p}, margin "
          f"{affine_margin(p, 15.0, (0.95, 1.05))} voxels a side", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        url, sids = make_store(Path(tmp) / "s.zarr")
        times = {k: [] for k in settings}
        for r in range(args.rounds):
            for name, cfg in settings.items():
                times[name].append(per_patch(url, sids, cfg, seed=r))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratio = {}
    for name in settings:  # the ratio of each round (back to back), then its median
        runs = sorted(t / n for t, n in zip(times[name], times["none"]))
        ratio[name] = statistics.median(runs)
        print(f"  stream, {name:20s} {med[name]:7.2f} ms/patch  {ratio[name]:.2f}x none (rounds: "
              f"{', '.join(f'{t * 1e3:.2f}' for t in times[name])} ms; ratio min/max {runs[0]:.2f}/{runs[-1]:.2f})",
              flush=True)

    # the augmentation call alone, on in-memory arrays (source box = patch + 2 margin)
    rng = np.random.default_rng(0)
    g = affine_margin(p, 15.0, (0.95, 1.05))
    src = tuple(q + 2 * m for q, m in zip(p, g))
    x, y = rng.normal(size=(2, *src)).astype(np.float32), rng.normal(size=(2, *src)).astype(np.float32)
    m, k = rng.random(src) < 0.5, rng.integers(0, 8, src).astype(np.int64)
    crop = (slice(None), *(slice(a, a + q) for a, q in zip(g, p)))
    calls = {"flips": lambda: augment(rng, x[crop], y[crop], m[crop[1:]], k[crop[1:]]),
             "flips+rotate+scale": lambda: augment(rng, x, y, m, k, 15.0, (0.95, 1.05), p)}
    alone = {}
    for name, fn in calls.items():
        fn()
        t = time.perf_counter()
        for _ in range(args.patches):
            fn()
        alone[name] = (time.perf_counter() - t) / args.patches * 1e3
        print(f"  augment() alone, {name:20s} {alone[name]:7.3f} ms/patch", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}", flush=True)
    return {"stream_ms": med, "stream_ratio": ratio, "alone_ms": alone}


if __name__ == "__main__":
    main()
