"""Pooling study folders (`cclray study-pool`): the union of their finished evaluations, refused when they differ."""
from __future__ import annotations

import json

import pytest

from cclray.study_plan import PRESETS
from data_prep.errors import UserError

CFG = PRESETS["smoke"].replace(finetune_sizes=(2,), arms=("Baseline", "CCL", "CCL-inputs"))


def make_study(folder, seed, gains, cfg=CFG, done=True, arms=("Baseline", "CCL")):
    """A study folder whose seed-``seed`` evaluation scores CCL ``gains[i]`` above Baseline on subject i."""
    from cclray.evaluation.report import write_metrics_csv

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study_config.json").write_text(json.dumps(
        {"config": cfg.replace(seeds=(seed,), arms=arms).to_dict(), "src": None, "test_src": None}))
    ev = folder / f"f0/seed{seed}/n2/evaluation"
    ev.mkdir(parents=True)
    rows = [{"run": arm, "subject": f"s{i}", "contrast": c, "method": "masked", "region": "brain",
             "ssim": 0.5 + (g if arm != "Baseline" else 0.0), "mse": 0.1, "psnr": 20.0}
            for arm in arms for i, g in enumerate(gains) for c in ("t1w", "t2w")]
    write_metrics_csv(rows, ev / "metrics.csv")
    if done:
        (ev / "DONE.json").write_text("{}")
    return folder


def test_pooled_folders_average_each_subjects_seeds_before_pairing(tmp_path):
    from cclray.study_pool import pool_studies

    a = make_study(tmp_path / "a", 0, [0.10, 0.00, 0.02])
    b = make_study(tmp_path / "b", 1, [0.00, 0.04, 0.02], arms=("Baseline", "CCL", "CCL-inputs"))
    make_study(tmp_path / "c", 2, [9.0, 9.0, 9.0], done=False)  # an unfinished evaluation is not pooled
    said: list[str] = []
    result = pool_studies([a, b, tmp_path / "c"], tmp_path / "pooled", say=said.append)
    view = result["by_n"][2]["masked/brain"]
    assert view["seeds"] == [0, 1] and view["n_test"] == 3
    d = view["minus_baseline"]["CCL"]["t1w"]["ssim"]
    assert d["per_subject"] == pytest.approx({"s0": 0.05, "s1": 0.02, "s2": 0.02})
    assert d["mean"] == pytest.approx(0.03)
    # CCL-inputs exists in seed 1 only: its question pairs that seed's subjects alone
    assert result["questions"][2]["CCL-inputs − CCL"]["t1w"]["per_subject"] == pytest.approx(
        {"s0": 0.0, "s1": 0.0, "s2": 0.0})
    table = (tmp_path / "pooled/table.md").read_text()
    assert "Pooled by `cclray study-pool` from 3 study folder(s): a (seeds [0]); b (seeds [1]); c (seeds [])" in table
    assert "seeds [0, 1]" in table and (tmp_path / "pooled/study.png").stat().st_size > 5000
    pool = json.loads((tmp_path / "pooled/pool.json").read_text())
    assert [f["seeds"] for f in pool["folders"]] == [[0], [1], []]
    assert pool["folders"][1]["arms"] == ["Baseline", "CCL", "CCL-inputs"]
    assert json.loads((tmp_path / "pooled/results.json").read_text())["pooled_from"][0]["folder"] == str(a)
    assert any("0 finished evaluation(s)" in s for s in said)
    assert not any(s.startswith("note:") for s in said)
    make_study(tmp_path / "d", 3, [0.01, 0.01])  # one test subject short (a fold never evaluated)
    said.clear()
    pool_studies([a, b, tmp_path / "d"], tmp_path / "pooled2", say=said.append)
    assert any(s.startswith("note: seed 3 at n = 2") and "has 2 of the 3 test subjects" in s for s in said), said


@pytest.mark.parametrize("case, words", [
    ("other recipe", "other settings than .*a \\(finetune_steps\\)"),
    ("same seed", "seed 0 at n = 2 is in both"),
    ("not a study", "no study_config.json, so not a `cclray study` folder"),
    ("out is an input", "is one of the folders pooled"),
    ("nothing finished", "no finished evaluation"),
])
def test_folders_that_do_not_pool_are_refused_with_the_folder_named(tmp_path, case, words):
    from cclray.study_pool import pool_studies

    a = make_study(tmp_path / "a", 0, [0.1, 0.0], done=case != "nothing finished")
    other = {"other recipe": lambda: make_study(tmp_path / "b", 1, [0.0, 0.0], cfg=CFG.replace(finetune_steps=40)),
             "same seed": lambda: make_study(tmp_path / "b", 0, [0.0, 0.0]),
             "not a study": lambda: (tmp_path / "b").mkdir() or tmp_path / "b",
             "out is an input": lambda: make_study(tmp_path / "b", 1, [0.0, 0.0]),
             "nothing finished": lambda: make_study(tmp_path / "b", 1, [0.0, 0.0], done=False)}[case]()
    out = other if case == "out is an input" else tmp_path / "pooled"
    with pytest.raises(UserError, match=words):
        pool_studies([a, other], out, say=lambda s: None)
    assert not (tmp_path / "pooled/table.md").exists()  # nothing half-written


def test_the_data_are_compared_by_store_fingerprint_not_by_source_path(tmp_path):
    from cclray.study_pool import pool_studies
    from data_prep.store import Store

    def study(name, seed, src, fingerprint):
        folder = make_study(tmp_path / name, seed, [0.1, 0.0])
        recorded = json.loads((folder / "study_config.json").read_text())
        (folder / "study_config.json").write_text(json.dumps({**recorded, "src": src}))
        Store.create(str(folder / "store.zarr"), {}).update_attrs(fingerprint=fingerprint)
        return folder

    a, b = study("a", 0, "/data/brats", "f00d"), study("b", 1, "/mnt/other/brats", "f00d")
    assert pool_studies([a, b], tmp_path / "pooled", say=lambda s: None)["by_n"][2]["masked/brain"]["seeds"] == [0, 1]
    c = study("c", 2, "/data/brats", "beef")  # the same path, other data
    with pytest.raises(UserError, match="other settings than .* \\(src\\)"):
        pool_studies([a, c], tmp_path / "pooled2", say=lambda s: None)


def test_the_command_pools_and_reports_a_bad_folder_as_an_error(tmp_path, capsys):
    from cclray.cli import main

    a, b = make_study(tmp_path / "a", 0, [0.1, 0.0]), make_study(tmp_path / "b", 1, [0.0, 0.1])
    assert main(["study-pool", str(a), str(b), "--out", str(tmp_path / "pooled")]) == 0
    assert "CCL − Baseline" in (tmp_path / "pooled/table.md").read_text()
    assert main(["study-pool", str(a), str(tmp_path), "--out", str(tmp_path / "p2")]) == 2
    assert f"{tmp_path}: no study_config.json" in capsys.readouterr().err
