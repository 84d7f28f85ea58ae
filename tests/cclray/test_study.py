"""The study's design (splits, jobs, config checks) and one end-to-end run of the smoke preset without Ray."""
from __future__ import annotations

import json

import pytest

from cclray.study_plan import PRESETS, StudyConfig, plan, split_name, study_splits
from data_prep.config import ConfigError

SIDS = [f"sub{i:03d}" for i in range(15)]


def test_one_fold_splits_are_disjoint_and_sizes_are_prefixes():
    cfg = PRESETS["smoke"].replace(splits={"pretrain": 6, "finetune": 4, "val": 2, "test": 3}, finetune_sizes=(1, 3))
    sp = study_splits(SIDS, cfg)
    main = [sp[split_name(0, k)] for k in ("pretrain", "finetune", "val", "test")]
    assert [len(x) for x in main] == [6, 4, 2, 3]
    assert len(set().union(*map(set, main))) == 15
    fin = sp[split_name(0, "finetune")]
    assert sp[split_name(0, "finetune_n1")] == fin[:1] and sp[split_name(0, "finetune_n3")] == fin[:3]


def test_folds_rotate_disjoint_test_blocks_over_the_whole_cohort():
    sp = study_splits(SIDS, PRESETS["real"])
    tests = [set(sp[split_name(f, "test")]) for f in range(3)]
    assert all(len(t) == 5 for t in tests) and set().union(*tests) == set(SIDS)
    for f, t in enumerate(tests):
        train = {s for k in ("pretrain", "finetune", "val") for s in sp[split_name(f, k)]}
        assert not train & t, f"fold {f} trains on a test subject"
        assert len(train) == 10


def test_plan_pairs_every_arm_with_its_pretraining_and_evaluates_after_all_of_them():
    cfg = PRESETS["phantom"]
    jobs = plan(cfg, "S", inputs_constraint="inputs_map")
    kinds = [j.kind for j in jobs]
    assert kinds.count("pretrain") == 6 and kinds.count("evaluate") == 9 and kinds.count("regressor") == 9
    assert kinds.count("finetune") == 3 * (1 + 3 * 6)
    by_path = {j.path: j for j in jobs}
    ccl = by_path["f0/seed1/n5/ccl"]
    assert ccl.spec["init"] == "f0/seed1/pretrain" and ccl.deps == ("f0/seed1/pretrain",)
    assert ccl.spec["split"] == "s.f0.finetune_n5" and ccl.spec["seed"] == 1
    assert by_path["f0/seed1/pretrain_inputs"].spec["constraint"] == "inputs_map"
    probe = by_path["f0/seed0/n10/probe_ccl"]
    assert probe.spec["probe"] is True and probe.spec["init"] == "f0/seed0/pretrain"
    assert "init" not in by_path["f0/seed0/n10/probe_random"].spec
    assert by_path["f0/seed0/n2/scratch_matched"].spec["epochs"] * cfg.steps_per_epoch == 3600
    ev = by_path["f0/seed2/n10/evaluation"]
    assert ev.spec["labels"][:3] == ["Regressor", "Baseline", "CCL"] and set(ev.deps) == set(ev.spec["runs"])
    order = [j.path for j in jobs]
    assert all(order.index(d) < order.index(j.path) for j in jobs for d in j.deps)


def test_external_pretraining_is_a_dependency_per_seed():
    cfg = PRESETS["real"].replace(arms=("Baseline", "CCL-external"), external_pretrain="/x/seed{seed}/pretrain")
    ext = [j for j in plan(cfg, "S") if j.path.endswith("ccl-external")]
    assert len(ext) == 6 and {j.spec["init"] for j in ext} == {"/x/seed0/pretrain", "/x/seed1/pretrain"}


@pytest.mark.parametrize("over, words", [
    ({"arms": ("Baseline", "Magic")}, "unknown"),
    ({"arms": ("CCL",)}, "Baseline"),
    ({"arms": ("Baseline", "Probe-CCL")}, "Probe-CCL"),
    ({"finetune_sizes": (20,)}, "finetune_sizes"),
    ({"arms": ("Baseline", "CCL-external")}, "external-pretrain"),
    ({"pretrain_steps": 7}, "multiple of steps_per_epoch"),
])
def test_bad_settings_are_refused_with_the_fix(over, words):
    with pytest.raises(ConfigError, match=words):
        StudyConfig(**{**PRESETS["smoke"].to_dict(), **over})


def test_smoke_study_runs_without_ray_resumes_and_refuses_other_settings(tmp_path):
    from cclray.study import DONE, run_study
    from data_prep.errors import UserError

    cfg = PRESETS["smoke"].replace(finetune_sizes=(2,), arms=("Regressor", "Baseline", "CCL", "Probe-CCL"))
    said: list[str] = []
    result = run_study(tmp_path, cfg, backend="local", device="cpu", parallel=1, say=said.append)
    view = result["by_n"][2]["masked/brain"]
    assert view["arms"] == ["Regressor", "Baseline", "CCL", "Probe-CCL"] and view["n_test"] == 2
    assert set(view["minus_baseline"]) == {"Regressor", "CCL", "Probe-CCL"}
    assert (tmp_path / "study.png").stat().st_size > 5000
    assert "T1w SSIM" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "f0/seed0/n2/ccl" / DONE).read_text())["kind"] == "finetune"
    said.clear()
    run_study(tmp_path, cfg, backend="local", device="cpu", say=said.append)
    assert any("already done, 0 to run" in s for s in said)
    with pytest.raises(UserError, match="other settings"):
        run_study(tmp_path, cfg.replace(seeds=(1,)), backend="local", device="cpu", say=said.append)
    with pytest.raises(UserError, match="other settings"):
        run_study(tmp_path, cfg.replace(finetune_steps=6), backend="local", device="cpu", say=said.append)
    said.clear()  # adding a seed keeps seed 0's jobs and pools both seeds in the tables
    result = run_study(tmp_path, cfg.replace(seeds=(0, 1)), backend="local", device="cpu", parallel=2,
                       say=said.append)
    assert any("12 jobs, 6 already done, 6 to run" in s for s in said), said
    assert result["by_n"][2]["masked/brain"]["seeds"] == [0, 1]
