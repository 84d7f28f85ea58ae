"""Realism of a cohort in one number per target: how much of it a voxelwise regressor explains.

    python benchmarks/realism.py STORE [--fit 5] [--subjects 15] [--rotations 3] [--json OUT]

A ``HistGradientBoostingRegressor`` per target (T1w, T2w) on the z-scored inputs (T1Gd, FLAIR) plus
Gaussian-blurred copies of each (σ 1 and 2.5 voxels; the same features as the evaluation's regressor
floor, :func:`cclray.evaluation.regressor.features`), fitted on the brain voxels of the first ``--fit``
subjects of the store and scored (R², pooled over every brain voxel) on the others; the per-subject R²
is printed too. High R² means the targets are nearly a function of the inputs at each place, which leaves
a network nothing spatial to learn and pretraining nothing to teach (docs/PHANTOM.md, "Acceptance").

The store is any ``cclray prep`` output; docs/PHANTOM.md measures at 2 mm:

    cclray phantom --n 15 --spacing 2 --out ph && cclray prep ph --out ph.zarr
    cclray prep YOUR_BRATS_FOLDER --spacing 2 --out real.zarr

Subjects are taken in the store's recorded order (``--subjects`` caps how many). Which 5 subjects the tree
is fitted on moves the figure by a few hundredths on 15 real cases, so ``--rotations R`` repeats the fit on R
disjoint blocks of ``--fit`` subjects (block r = subjects r*fit .. (r+1)*fit - 1, scored on all the others)
and reports each block's pooled R² and their mean. Needs scikit-learn (the ``prep`` extra), not torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cclray.evaluation.regressor import features  # noqa: E402
from data_prep.schema import channel_index  # noqa: E402
from data_prep.store import Store  # noqa: E402

INPUTS, TARGETS, SIGMAS = ("t1gd", "flair"), ("t1w", "t2w"), (1.0, 2.5)


def subject_xy(store: Store, sid: str) -> tuple[np.ndarray, np.ndarray]:
    """Brain-voxel features ``(N, 6)`` and targets ``(N, 2)`` of one stored subject."""
    image = np.asarray(store.read(sid, "image"), np.float32)
    brain = np.asarray(store.read(sid, "mask"), bool)
    y = np.stack([image[channel_index(c)][brain] for c in TARGETS], axis=1)
    return features(image, brain, INPUTS, SIGMAS), y


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def realism(store_url: str, fit: int = 5, subjects: int | None = None, max_fit_voxels: int = 400_000,
            max_iter: int = 200, seed: int = 0, block: int = 0) -> dict:
    """Fit on subjects ``block*fit .. (block+1)*fit - 1``, score on the others -> {"pooled": {target: R²},
    "per_subject": ...}."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    store = Store(store_url)
    sids = store.subjects()[:subjects]
    if len(sids) < (block + 1) * fit or len(sids) <= fit:
        raise SystemExit(f"{store.url} has {len(sids)} subject(s): realism needs more than --fit {fit} "
                         f"(fit on {fit}, score on the rest), and {(block + 1) * fit} for fit block {block + 1}; "
                         f"prepare more subjects or lower --fit / --rotations")
    rng = np.random.default_rng(seed)
    fitted = sids[block * fit:(block + 1) * fit]
    scored = [s for s in sids if s not in fitted]
    xs, ys = zip(*(subject_xy(store, s) for s in fitted))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_fit_voxels:
        pick = rng.choice(len(x), size=max_fit_voxels, replace=False)
        x, y = x[pick], y[pick]
    models = [HistGradientBoostingRegressor(max_iter=max_iter, random_state=seed).fit(x, y[:, t])
              for t in range(len(TARGETS))]
    per_subject, held_y, held_p = {}, [], []
    for sid in scored:
        xt, yt = subject_xy(store, sid)
        pt = np.stack([m.predict(xt) for m in models], axis=1)
        per_subject[sid] = {c: r2(yt[:, t], pt[:, t]) for t, c in enumerate(TARGETS)}
        held_y.append(yt)
        held_p.append(pt)
    hy, hp = np.concatenate(held_y), np.concatenate(held_p)
    pooled = {c: r2(hy[:, t], hp[:, t]) for t, c in enumerate(TARGETS)}
    return {"store": store.url, "fit_subjects": list(fitted), "scored_subjects": len(per_subject),
            "fit_voxels": int(len(x)), "pooled": pooled, "per_subject": per_subject,
            "median_per_subject": {c: float(np.median([v[c] for v in per_subject.values()])) for c in TARGETS}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="a cclray store (`cclray prep` output)")
    ap.add_argument("--fit", type=int, default=5, help="subjects the regressor is fitted on (default 5)")
    ap.add_argument("--subjects", type=int, default=None, help="use only the first N subjects")
    ap.add_argument("--rotations", type=int, default=1,
                    help="fit on this many disjoint blocks of --fit subjects in turn; report each and the mean")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    blocks = []
    for b in range(max(1, args.rotations)):
        t = time.perf_counter()
        res = realism(args.store, fit=args.fit, subjects=args.subjects, block=b)
        res["seconds"] = round(time.perf_counter() - t, 1)
        for sid, v in res["per_subject"].items():
            print(f"{sid}: " + "  ".join(f"{c} R² {r:.3f}" for c, r in v.items()))
        print(f"fit block {b + 1} ({', '.join(res['fit_subjects'])}), scored on {res['scored_subjects']} subjects "
              f"({res['seconds']} s): pooled R² " + ", ".join(f"{c} {r:.3f}" for c, r in res["pooled"].items())
              + "; median per subject " + ", ".join(f"{c} {r:.3f}" for c, r in res["median_per_subject"].items()),
              flush=True)
        blocks.append(res)
    mean = {c: float(np.mean([r["pooled"][c] for r in blocks])) for c in TARGETS}
    print(f"realism of {blocks[0]['store']}: pooled R² over {len(blocks)} fit block(s) of {args.fit}: "
          + ", ".join(f"{c} {mean[c]:.3f} (" + " / ".join(f"{r['pooled'][c]:.3f}" for r in blocks) + ")"
                      for c in TARGETS))
    if args.json:
        Path(args.json).write_text(json.dumps({"mean_pooled": mean, "blocks": blocks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
