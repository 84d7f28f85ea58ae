"""Paired differences over subjects (seeds averaged first), BCa bootstrap CIs, Wilcoxon p: hand-made cases."""
import math

import numpy as np
import pytest

from cclray.evaluation.stats import format_ci, mean_ci, paired_difference, subject_means


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
