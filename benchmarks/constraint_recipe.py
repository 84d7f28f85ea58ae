"""Constraint-map recipes compared on a store's subjects: how much T1w/T2w variance the labels explain.

    python benchmarks/constraint_recipe.py STORE [--subjects 4] [--k 20] [--json OUT.json] [--png OUT.png]

Per subject (all four contrasts, K clusters, seed 0), four settings:

* ``recipe 1``: each principal component min-maxed on its own, ``denoise_tv_chambolle(weight=0.1)``;
* ``recipe 2``: the authors' (one min-max for all components, ``denoise_tv_bregman(pc / max, weight=40)``),
  brain voxels only: what ``cclray prep`` computes;
* ``recipe 2, Chambolle 0.0125``: the same with the Chambolle weight the Bregman call is said to equal;
* ``authors, whole volume``: recipe 2 clustering every voxel of the cropped volume (background included), as the
  authors' script does; R² is still measured inside the brain.

R² (:func:`data_prep.constraint.label_r2`): T1w/T2w variance inside the brain explained by the cluster means.
ARI: agreement with recipe 2's labels inside the brain (scikit-learn ``adjusted_rand_score``). The TV check
denoises PC1 of the first subject with Bregman 40 and with Chambolle at several weights and prints the RMS
difference of each from Bregman's output (the smallest marks the equivalent Chambolle weight).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.constraint import constraint_map, label_r2, stretch, tv_denoise  # noqa: E402
from data_prep.schema import channel_index  # noqa: E402

CHAMBOLLE = (0.00625, 0.0125, 0.025, 0.05, 0.1)


def chambolle(weight: float, iters: int = 20):
    from skimage.restoration import denoise_tv_chambolle

    return lambda v: denoise_tv_chambolle(v, weight=weight, max_num_iter=iters).astype(np.float32)


SETTINGS = {
    "recipe 1": dict(pc_scale="each", denoise=chambolle(0.1)),
    "recipe 2": {},
    "recipe 2, Chambolle 0.0125": dict(denoise=chambolle(0.0125, 100)),
    "authors, whole volume": {"whole": True},
}


def measure(image: np.ndarray, mask: np.ndarray, k: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    out, ref = {}, None
    for name, opts in SETTINGS.items():
        opts = dict(opts)
        t0 = time.perf_counter()
        if opts.pop("whole", False):  # the authors: stretch inside the brain, then cluster every voxel
            vols = np.zeros_like(image)
            vols[:, mask] = stretch(image[:, mask].T).T
            labels = constraint_map(vols, np.ones_like(mask), k=k, **opts).astype(np.int64)
        else:
            labels = constraint_map(image, mask, k=k, **opts).astype(np.int64)
        secs = time.perf_counter() - t0
        if ref is None and name == "recipe 2":
            ref = labels
        out[name] = {"seconds": secs, "labels": labels,
                     **{f"r2_{c}": label_r2(labels, image[channel_index(c)], mask) for c in ("t1w", "t2w")}}
    for v in out.values():
        v["ari_vs_recipe2"] = float(adjusted_rand_score(ref[mask], v.pop("labels")[mask]))
    return out


def tv_check(image: np.ndarray, mask: np.ndarray) -> dict:
    from sklearn.decomposition import PCA

    pcs = PCA(n_components=image.shape[0], random_state=0).fit_transform(stretch(image[:, mask].T))
    pcs = (pcs - pcs.min()) / (pcs.max() - pcs.min())
    vol = np.zeros(mask.shape, np.float32)
    vol[mask] = pcs[:, 0]
    ref = tv_denoise(vol)[mask]
    return {f"chambolle {w:g}": float(np.sqrt(np.mean((chambolle(w, 100)(vol)[mask] - ref) ** 2)))
            for w in CHAMBOLLE} | {"noise removed by bregman 40": float(np.sqrt(np.mean((vol[mask] - ref) ** 2)))}


def figure(summary: dict, png: str) -> None:
    from data_prep.figures import new_figure, save_png

    names = list(SETTINGS)
    fig = new_figure((7.5, 3.6))
    ax = fig.subplots()
    x = np.arange(len(names))
    for i, c in enumerate(("t1w", "t2w")):
        mean = [summary[n][f"r2_{c}"]["mean"] for n in names]
        sd = [summary[n][f"r2_{c}"]["sd"] for n in names]
        ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=sd, capsize=3, label=c.upper()[:2] + "w")
        for xi, m in zip(x + (i - 0.5) * 0.38, mean):
            ax.text(xi, m + 0.005, f"{m:.3f}", ha="center", va="bottom", fontsize=7)
    lo = min(summary[n][f"r2_{c}"]["mean"] for n in names for c in ("t1w", "t2w"))
    ax.set_ylim(max(0.0, lo - 0.08), 1.0)
    ax.set_xticks(x, [n.replace(", ", ",\n") for n in names], fontsize=8)
    ax.set_ylabel("R² of cluster means, inside the brain")
    ax.set_title(f"Constraint-map recipes: variance explained (n={summary['n']} subjects, K={summary['k']})",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, png)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    from data_prep.store import Store

    store = Store(args.store)
    sids = store.subjects()[: args.subjects]
    rows, tv = [], None
    for sid in sids:
        image = store.read(sid, "image").astype(np.float32)
        mask = store.read(sid, "mask").astype(bool)
        if tv is None:
            tv = tv_check(image, mask)
        rows.append(measure(image, mask, args.k))
        print(sid, {n: {m: round(v, 4) for m, v in r.items()} for n, r in rows[-1].items()}, flush=True)
    summary: dict = {"n": len(sids), "k": args.k, "subjects": sids, "tv_rms_vs_bregman40": tv}
    for name in SETTINGS:
        summary[name] = {m: {"mean": float(np.mean([r[name][m] for r in rows])),
                             "sd": float(np.std([r[name][m] for r in rows]))} for m in rows[0][name]}
    print("\nsetting | R² T1w | R² T2w | ARI vs recipe 2 | seconds")
    for name in SETTINGS:
        s = summary[name]
        print(f"{name} | {s['r2_t1w']['mean']:.3f} ± {s['r2_t1w']['sd']:.3f} | {s['r2_t2w']['mean']:.3f} ± "
              f"{s['r2_t2w']['sd']:.3f} | {s['ari_vs_recipe2']['mean']:.3f} | {s['seconds']['mean']:.1f}")
    print("TV on PC1 (RMS difference from Bregman 40):", {k: round(v, 5) for k, v in tv.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.png:
        figure(summary, args.png)
    return summary


if __name__ == "__main__":
    main()
