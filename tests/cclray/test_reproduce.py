"""The reproduction's aggregation over seeds: mean ± sd of per-seed means, paired differences, the table."""
import pytest

from cclray.reproduce import PRESETS, aggregate, render_table
from data_prep.splits import PAPER_SPLITS


def _summary(t1_ssim: dict) -> dict:
    """A minimal evaluation summary.json with T1w SSIM per run given, every other metric 1.0."""
    def cell(run, c, m):
        return {"mean": t1_ssim[run] if (c, m) == ("t1w", "ssim") else 1.0}
    res = {run: {"brain": {c: {m: cell(run, c, m) for m in ("ssim", "mse", "psnr")} for c in ("t1w", "t2w")}}
           for run in ("Baseline", "CCL")}  # results[method][run][region][contrast][metric], as evaluation writes
    pub = {"Baseline (from scratch)": {c: {"ssim": 0.5, "mse": 1.0, "psnr": 17.0} for c in ("t1w", "t2w")}}
    return {"results": {"masked": res}, "subjects": ["a", "b"], "published": pub}


def test_aggregate_mean_sd_and_paired_difference():
    out = aggregate({0: _summary({"Baseline": 0.5, "CCL": 0.7}), 1: _summary({"Baseline": 0.7, "CCL": 0.8})})
    t1 = out["table"]["CCL"]["t1w"]["ssim"]
    assert t1["mean"] == pytest.approx(0.75) and t1["sd"] == pytest.approx(0.0707107, rel=1e-5)
    d = out["ccl_minus_baseline"]["t1w"]["ssim"]
    assert d["per_seed"] == pytest.approx([0.2, 0.1]) and d["mean"] == pytest.approx(0.15)
    assert out["n_test"] == 2 and out["seeds"] == [0, 1]
    table = render_table(out)
    assert "| CCL (this reproduction) | 0.750 ± 0.071" in table
    assert "| Baseline (from scratch) (published) | 0.5 |" in table
    assert "t1w SSIM +0.150" in table


def test_presets_use_the_papers_split():
    for cfg in PRESETS.values():
        assert cfg.splits == PAPER_SPLITS
