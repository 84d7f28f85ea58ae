"""Statistics over subjects: per-arm means and paired differences with bootstrap CIs and a Wilcoxon p.

The unit of resampling is the subject. With several training seeds, each subject's values are first
averaged over the seeds (the seeds are repeated measurements of one subject, not new subjects), then:

- :func:`mean_ci`: the mean over subjects with a BCa bootstrap 95 % CI (``scipy.stats.bootstrap``);
- :func:`paired_difference`: per subject the mean over seeds of ``b - a`` (same seed, same subject),
  then its mean, BCa 95 % CI and the Wilcoxon signed-rank p (``scipy.stats.wilcoxon``, two-sided);
- :func:`over_seeds`: the other level. A subject CI leaves out how much a second training run moves the whole
  difference (the same seed trained again on another kind of CPU can flip its sign); with several seeds, each seed's mean
  difference over its subjects, then their mean with a t-based 95 % CI over seeds (``paired_difference``
  carries it as ``over_seeds``).

Non-finite values (PSNR ``inf`` of a perfect prediction) are left out before averaging.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 9999


def subject_means(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``{subject: [value per seed]}`` -> ``{subject: mean over its finite values}`` (subjects with none dropped)."""
    out = {}
    for sid, vals in values.items():
        v = np.asarray(vals, np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[sid] = float(v.mean())
    return out


def _ci(x: np.ndarray, seed: int) -> tuple[float, float]:
    if x.size < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:  # every subject the same: the bootstrap distribution is a point
        return (float(x[0]), float(x[0]))
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap((x,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="BCa",
                        rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa can fail on tiny, lumpy samples: percentile
        lo, hi = (float(q) for q in np.percentile(res.bootstrap_distribution, [2.5, 97.5]))
    return lo, hi


def mean_ci(values: Mapping[str, Sequence[float]], seed: int = 0) -> dict:
    """``{subject: [value per seed]}`` -> ``{"mean", "ci": [lo, hi], "n"}`` over subjects (seeds averaged first)."""
    x = np.asarray(list(subject_means(values).values()), np.float64)
    if not x.size:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    return {"mean": float(x.mean()), "ci": list(_ci(x, seed)), "n": int(x.size)}


def over_seeds(per_seed: Mapping[int, float]) -> dict:
    """``{seed: that seed's mean difference over subjects}`` -> ``{"mean", "ci": [lo, hi], "n", "per_seed"}``: the
    mean over seeds with a Student-t 95 % CI (``n - 1`` degrees of freedom; ``nan`` below 2 seeds)."""
    x = np.asarray([v for v in per_seed.values() if math.isfinite(v)], np.float64)
    out = {"mean": math.nan, "ci": [math.nan, math.nan], "n": int(x.size), "per_seed": dict(per_seed)}
    if not x.size:
        return out
    out["mean"] = float(x.mean())
    if x.size >= 2:
        from scipy.stats import t

        half = float(t.ppf(0.5 + CONFIDENCE / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def paired_difference(a: Mapping[str, Mapping[int, float]], b: Mapping[str, Mapping[int, float]],
                      seed: int = 0) -> dict:
    """Paired ``b - a``: ``a``/``b`` are ``{subject: {seed: value}}``; pairs need the same subject and seed.

    Returns ``{"mean", "ci": [lo, hi], "p", "n", "n_pairs", "per_subject": {subject: mean diff}, "over_seeds"}``;
    ``p`` is the two-sided Wilcoxon signed-rank p over the per-subject differences (``nan`` when all are 0 or
    n < 2); ``over_seeds`` is :func:`over_seeds` of each seed's mean difference over its paired subjects.
    """
    diffs: dict[str, list[float]] = {}
    by_seed: dict[int, list[float]] = {}
    for sid in a:
        for s, va in a[sid].items():
            vb = b.get(sid, {}).get(s)
            if vb is not None and math.isfinite(va) and math.isfinite(vb):
                diffs.setdefault(sid, []).append(vb - va)
                by_seed.setdefault(s, []).append(vb - va)
    seeds = over_seeds({s: float(np.mean(v)) for s, v in sorted(by_seed.items())})
    per_subject = subject_means(diffs)
    d = np.asarray(list(per_subject.values()), np.float64)
    n_pairs = sum(len(v) for v in diffs.values())
    if not d.size:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "p": math.nan, "n": 0, "n_pairs": 0,
                "per_subject": {}, "over_seeds": seeds}
    p = math.nan
    if d.size >= 2 and np.any(d != 0):
        from scipy.stats import wilcoxon

        p = float(wilcoxon(d).pvalue)
    return {"mean": float(d.mean()), "ci": list(_ci(d, seed)), "p": p, "n": int(d.size), "n_pairs": n_pairs,
            "per_subject": per_subject, "over_seeds": seeds}


def format_ci(stat: Mapping, decimals: int = 3, signed: bool = False) -> str:
    """``0.692 [0.681, 0.703]`` (``+0.004 [...]`` with ``signed``), and ``p = 0.002`` when the stat has a p."""
    if not stat or stat.get("n", 0) == 0 or not math.isfinite(stat["mean"]):
        return "–"
    f = f"{{:{'+' if signed else ''}.{decimals}f}}"
    text = f.format(stat["mean"])
    lo, hi = stat["ci"]
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{f.format(lo)}, {f.format(hi)}]"
    if "p" in stat and math.isfinite(stat["p"]):
        text += f", p = {stat['p']:.3g}"
    return text
