"""Paired differences over subjects (seeds averaged first), BCa bootstrap CIs, Wilcoxon p: hand-made cases."""
import math

import numpy as np
import pytest

from cclray.evaluation.stats import format_ci, mean_ci, over_seeds, paired_difference, subject_means


def test_subject_means_average_seeds_and_drop_inf():
    assert subject_means({"a": [1.0, 3.0], "b": [math.inf, 4.0], "c": [math.inf]}) == {"a": 2.0, "b": 4.0}


def test_constant_improvement_has_a_point_ci_and_a_small_p():
    a = {f"s{i}": {0: 0.5 + 0.01 * i, 1: 0.6 + 0.01 * i} for i in range(10)}
    b = {sid: {s: v + 0.1 for s, v in seeds.items()} for sid, seeds in a.items()}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.1) and d["ci"] == pytest.approx([0.1, 0.1])
    assert d["n"] == 10 and d["n_pairs"] == 20 and d["p"] < 0.01


def test_seeds_are_averaged_before_subjects_are_resampled():
    """Seed 0 says +1, seed 1 says -1 for every subject: the per-subject difference is 0, whatever the count."""
    a = {f"s{i}": {0: 0.0, 1: 0.0} for i in range(6)}
    b = {f"s{i}": {0: 1.0, 1: -1.0} for i in range(6)}
    d = paired_difference(a, b)
    assert d["mean"] == 0.0 and math.isnan(d["p"]) and d["n"] == 6


def test_noisy_difference_ci_covers_the_mean_and_p_is_large_for_no_effect():
    rng = np.random.default_rng(0)
    a = {f"s{i}": {0: float(v)} for i, v in enumerate(rng.normal(size=12))}
    b = {sid: {0: v[0] + float(e)} for (sid, v), e in zip(a.items(), rng.normal(scale=0.5, size=12))}
    d = paired_difference(a, b)
    lo, hi = d["ci"]
    assert lo < d["mean"] < hi and hi - lo > 0.1
    assert 0.0 <= d["p"] <= 1.0
    shifted = paired_difference(a, {sid: {0: v[0] + 2.0} for sid, v in b.items()})
    assert shifted["p"] < 0.001 and shifted["ci"][0] > 1.0


def test_unpaired_subjects_and_seeds_are_left_out():
    a = {"x": {0: 1.0, 1: 1.0}, "y": {0: 1.0}}
    b = {"x": {0: 2.0}, "z": {0: 5.0}}
    d = paired_difference(a, b)
    assert d["n"] == 1 and d["n_pairs"] == 1 and d["mean"] == 1.0 and math.isnan(d["ci"][0])


def test_mean_ci_and_format():
    stat = mean_ci({f"s{i}": [0.5 + 0.01 * i] for i in range(10)})
    assert stat["mean"] == pytest.approx(0.545) and stat["ci"][0] < 0.545 < stat["ci"][1] and stat["n"] == 10
    assert format_ci({"mean": 0.004, "ci": [-0.001, 0.01], "p": 0.0123, "n": 10}, signed=True) \
        == "+0.004 [-0.001, +0.010], p = 0.0123"
    assert format_ci({"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}) == "–"


def test_over_seeds_sees_the_run_to_run_spread_that_the_subject_ci_hides():
    """Every subject moves with its seed (+0.03, 0, -0.015): the subject CI is a point, the seed CI is wide."""
    from scipy.stats import t

    shift = {0: 0.03, 1: 0.0, 2: -0.015}
    a = {f"s{i}": {s: 0.5 + 0.01 * i for s in shift} for i in range(8)}
    b = {sid: {s: v + shift[s] for s, v in seeds.items()} for sid, seeds in a.items()}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.005) and d["ci"] == pytest.approx([0.005, 0.005])
    over = d["over_seeds"]
    assert over["n"] == 3 and over["per_seed"] == pytest.approx(shift) and list(over["per_seed"]) == [0, 1, 2]
    half = t.ppf(0.975, 2) * np.std(list(shift.values()), ddof=1) / math.sqrt(3)
    assert over["mean"] == pytest.approx(0.005) and over["ci"] == pytest.approx([0.005 - half, 0.005 + half])
    assert over["ci"][0] < 0 < over["ci"][1]
    assert format_ci(over, signed=True) == f"+0.005 [{0.005 - half:+.3f}, {0.005 + half:+.3f}]"


def test_over_seeds_needs_two_seeds_for_a_ci_and_skips_unpaired_ones():
    a = {"s0": {0: 0.5, 1: 0.5}, "s1": {0: 0.6}}
    b = {"s0": {0: 0.6}, "s1": {0: 0.8, 1: 0.9}}  # seed 1 has no pair: s0 lacks it in b, s1 in a
    over = paired_difference(a, b)["over_seeds"]
    assert over["n"] == 1 and over["per_seed"] == pytest.approx({0: 0.15}) and math.isnan(over["ci"][0])
    assert over_seeds({}) == {"mean": pytest.approx(math.nan, nan_ok=True), "ci": pytest.approx(
        [math.nan, math.nan], nan_ok=True), "n": 0, "per_seed": {}}
