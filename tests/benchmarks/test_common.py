"""The benchmarks' shared repetition and ratio helpers (benchmarks/_common.py) and run_all's table: every
ratio is min / median / max over back-to-back repetitions, the goal judged on the median. No timing."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common  # noqa: E402
import run_all  # noqa: E402


def test_rounds_runs_the_variants_round_robin_after_untimed_warmup():
    calls = []
    got = _common.rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or 7.0}, repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then a b, a b, a b
    assert got["b"] == [7.0, 7.0, 7.0]  # a returned figure is the figure
    assert len(got["a"]) == 3 and all(t >= 0 for t in got["a"])  # None: its wall seconds


def test_rounds_merges_several_figures_from_one_call():
    n = iter(range(10))
    got = _common.rounds({"block": lambda: {"x": next(n), "y": -1}}, repeat=2)
    assert got == {"x": [0.0, 1.0], "y": [-1.0, -1.0]}


def test_repeats_default_and_override():
    ns = argparse.Namespace
    assert _common.repeats(ns(size="smoke", repeats=None)) == 2
    assert _common.repeats(ns(size="quick", repeats=None)) == 3
    assert _common.repeats(ns(size="full", repeats=None)) == 3
    assert _common.repeats(ns(size="quick", repeats=5)) == 5
    assert _common.parser("doc").parse_args(["--quick", "--repeats", "4"]).repeats == 4


@pytest.fixture
def report(capsys):
    return _common.Report("t", argparse.Namespace(size="quick", json=None, device="cpu"))


def test_ratio_records_min_median_max_and_judges_the_goal_on_the_median(report):
    assert report.ratio("r", [4.0, 0.5, 3.0], goal=2) == 3.0
    r = report.ratios[-1]
    assert (r["min"], r["median"], r["max"], r["n"], r["value"]) == (0.5, 3.0, 4.0, 3, 3.0)
    assert r["runs"] == [4.0, 0.5, 3.0] and r["met"] is True  # round order kept; the min below the goal does not fail it
    report.ratio("s", [1.0, 9.0, 1.5], goal=2)
    assert report.ratios[-1]["met"] is False  # nor does one lucky run pass it
    report.ratio("u", [1.0, 2.0], goal=None)
    assert report.ratios[-1]["met"] is None and report.ratios[-1]["median"] == 1.5


def test_ratio_runs_pairs_rounds_and_refuses_a_single_value(report):
    report.ratio_runs("p", [2.0, 6.0, 3.0], [1.0, 2.0, 3.0], goal=None)
    assert report.ratios[-1]["runs"] == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError):
        report.ratio_runs("q", [1.0, 2.0], [1.0])
    with pytest.raises(TypeError):
        report.ratio("one run", 1.7)
    with pytest.raises(ValueError):
        report.ratio("none", [])


def test_results_table_shows_min_median_max(report):
    report.ratio_runs("x / y", [3.0, 2.0, 5.0], [1.0, 1.0, 1.0], goal=2)
    md = run_all.markdown([{**report.record(), "wall_s": 1.0}], ["--quick"])
    assert "| min | median | max | n |" in md
    assert "| t | x / y | 2 | **3** | 5 | 3 | >= 2 | yes |" in md
