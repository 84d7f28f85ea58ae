"""The reproduction's aggregation: per-subject values (seeds averaged), CIs over subjects, paired differences."""
import pytest

from cclray.reproduce import PRESETS, aggregate, aggregate_views, render_report, render_table
from data_prep.splits import PAPER_SPLITS


def _rows(t1_ssim: dict, seed_shift: float = 0.0) -> list[dict]:
    """metrics.csv rows: T1w SSIM per arm = base + 0.01 * subject index + seed_shift; every other metric 1.0."""
    rows = []
    for arm, base in t1_ssim.items():
        for i in range(8):
            for c in ("t1w", "t2w"):
                ssim = base + 0.01 * i + seed_shift if c == "t1w" else 1.0
                rows.append({"run": arm, "subject": f"s{i}", "contrast": c, "method": "masked", "region": "brain",
                             "ssim": ssim, "mse": 1.0, "psnr": 1.0})
    return rows


def test_aggregate_means_cis_and_paired_difference():
    by_seed = {0: _rows({"Baseline": 0.5, "CCL": 0.6, "Regressor": 0.4}),
               1: _rows({"Baseline": 0.5, "CCL": 0.6, "Regressor": 0.4}, seed_shift=0.1)}
    out = aggregate(by_seed)
    assert out["arms"] == ["Regressor", "Baseline", "CCL"] and out["n_test"] == 8 and out["seeds"] == [0, 1]
    t1 = out["table"]["CCL"]["t1w"]["ssim"]
    assert t1["mean"] == pytest.approx(0.6 + 0.035 + 0.05) and t1["n"] == 8
    assert t1["ci"][0] < t1["mean"] < t1["ci"][1]
    d = out["minus_baseline"]["CCL"]["t1w"]["ssim"]
    assert d["mean"] == pytest.approx(0.1) and d["ci"] == pytest.approx([0.1, 0.1]) and d["p"] < 0.01
    assert d["n"] == 8 and d["n_pairs"] == 16
    assert out["minus_baseline"]["Regressor"]["t1w"]["ssim"]["mean"] == pytest.approx(-0.1)
    table = render_table(out)
    assert "| CCL | 0.685 [" in table and "| CCL − Baseline | +0.100 [+0.100, +0.100], p = " in table


def test_three_seeds_add_the_over_seeds_table_two_do_not():
    two = {s: _rows({"Baseline": 0.5, "CCL": 0.6 + 0.01 * s}, seed_shift=0.1 * s) for s in (0, 1)}
    assert "Over training seeds" not in render_table(aggregate(two))
    three = {**two, 2: _rows({"Baseline": 0.5, "CCL": 0.5}, seed_shift=0.2)}  # seed 2: CCL − Baseline = 0
    table = render_table(aggregate(three))
    assert "Over training seeds [0, 1, 2]" in table
    # per seed +0.100, +0.110, +0.000 (T1w); T2w is 1.0 everywhere; over seeds +0.070 [t CI], not a point
    row = next(line for line in table.splitlines() if line.startswith("| CCL − Baseline | +0.100, +0.110, +0.000"))
    assert "| +0.070 [-0." in row and "| +0.000, +0.000, +0.000 | +0.000 [+0.000, +0.000] |" in row


def test_per_subject_points_figure(tmp_path):
    from cclray.evaluation.figure import draw_arms

    out = aggregate({0: _rows({"Baseline": 0.5, "CCL": 0.6}), 1: _rows({"Baseline": 0.5, "CCL": 0.6}, 0.1)})
    pts = out["per_subject"]["CCL"]["t1w"]["ssim"]
    assert len(pts) == 8 and pts["s0"] == pytest.approx(0.65)  # the subject's two seeds averaged
    png = draw_arms(tmp_path / "arms.png", {a: out["per_subject"][a]["t1w"]["ssim"] for a in out["arms"]}, "t")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_report_puts_the_primary_view_first():
    result = aggregate_views({0: _rows({"Baseline": 0.5, "CCL": 0.6})})
    assert list(result["views"]) == ["masked/brain"] and result["primary"] == "masked/brain"
    md = render_report(result)
    assert md.startswith("Primary endpoint: T1w SSIM, method `masked`") and "### masked/brain (primary)" in md


def test_presets_use_the_papers_split():
    for cfg in PRESETS.values():
        assert cfg.splits == PAPER_SPLITS
