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


def test_mixed_pretraining_adds_the_other_store_per_fold_and_seed():
    from cclray.config import stage_config

    cfg = PRESETS["real"].replace(arms=("Baseline", "CCL", "CCL-mixed"), mix_store="/p/store.zarr")
    jobs = plan(cfg, "S")
    by_path = {j.path: j for j in jobs}
    mixed = [j for j in jobs if j.path.endswith("pretrain_mixed")]
    assert len(mixed) == 3 * 2 and all(j.kind == "pretrain" and not j.deps for j in mixed)
    spec = by_path["f1/seed0/pretrain_mixed"].spec
    assert spec["split"] == "s.f1.pretrain" and spec["extra"] == [{"store": "/p/store.zarr", "split": "s.f0.pretrain"}]
    assert stage_config("pretrain", spec).extra[0].store == "/p/store.zarr"  # a valid PretrainConfig
    assert "extra" not in by_path["f1/seed0/pretrain"].spec  # CCL stays real only
    fin = by_path["f1/seed1/n2/ccl-mixed"]
    assert fin.spec["init"] == "f1/seed1/pretrain_mixed" and fin.deps == ("f1/seed1/pretrain_mixed",)
    assert fin.spec["split"] == "s.f1.finetune_n2" and "extra" not in fin.spec  # the same finetune as CCL
    ev = by_path["f1/seed1/n2/evaluation"]
    assert ev.spec["labels"] == ["Baseline", "CCL", "CCL-mixed"] and "f1/seed1/n2/ccl-mixed" in ev.deps
    order = [j.path for j in jobs]
    assert all(order.index(d) < order.index(j.path) for j in jobs for d in j.deps)


def test_dry_run_checks_the_mix_store_and_shows_its_jobs(tmp_path):
    from cclray.study import run_study
    from conftest import make_tiny_store
    from data_prep.store import StoreError

    mix = make_tiny_store(tmp_path / "phantom.zarr", shape=(16, 16, 16), splits={"s.f0.pretrain": 3})["url"]
    cfg = PRESETS["smoke"].replace(arms=("Baseline", "CCL-mixed"), mix_store=mix)
    said: list[str] = []
    run_study(tmp_path / "study", cfg, backend="local", dry_run=True, say=said.append)
    assert any(f"plus 3 subjects of {mix} (split s.f0.pretrain)" in s for s in said)
    assert any(s.split() == ["pretrain", "f0/seed0/pretrain_mixed"] for s in said)
    assert any("f0/seed0/n2/ccl-mixed  <- f0/seed0/pretrain_mixed" in s for s in said)
    with pytest.raises(StoreError, match=r"--mix-store: .*has no split 'pretrain'"):
        run_study(tmp_path / "study", cfg.replace(mix_split="pretrain"), backend="local", dry_run=True,
                  say=said.append)


def test_report_tables_and_figure_include_the_mixed_arm(tmp_path):
    from cclray.evaluation.report import write_metrics_csv
    from cclray.study_plan import ARMS, Job
    from cclray.study_report import ARM_NOTES, write_report

    assert set(ARM_NOTES) == set(ARMS)
    rows = [{"run": arm, "subject": f"s{i}", "contrast": c, "method": "masked", "region": "brain",
             "ssim": 0.5 + 0.01 * i + (0.02 if arm == "CCL-mixed" else 0), "mse": 0.1, "psnr": 20.0}
            for arm in ("Baseline", "CCL-mixed") for i in range(4) for c in ("t1w", "t2w")]
    (tmp_path / "f0/seed0/n2/evaluation").mkdir(parents=True)
    write_metrics_csv(rows, tmp_path / "f0/seed0/n2/evaluation/metrics.csv")
    cfg = PRESETS["smoke"].replace(arms=("Baseline", "CCL-mixed"), mix_store="/p")
    result = write_report(tmp_path, cfg, [Job("evaluate", "f0/seed0/n2/evaluation", {})])
    view = result["by_n"][2]["masked/brain"]
    assert view["arms"] == ["Baseline", "CCL-mixed"]
    assert view["minus_baseline"]["CCL-mixed"]["t1w"]["ssim"]["mean"] == pytest.approx(0.02, abs=1e-6)
    table = (tmp_path / "table.md").read_text()
    assert "| CCL-mixed |" in table and "- CCL-mixed: finetuning from CCL pretraining on this study's" in table
    assert (tmp_path / "study.png").stat().st_size > 5000


def test_the_report_answers_arm_against_arm_questions_paired_by_subject_and_seed(tmp_path):
    from cclray.evaluation.report import write_metrics_csv
    from cclray.study_plan import Job
    from cclray.study_report import answer_questions, write_report

    # probe gaps by subject: s0 +0.10, s1 +0.20, s2 +0.30 (seed 0) and +0.30, +0.20, +0.10 (seed 1) -> +0.2 each
    gap = {0: [0.10, 0.20, 0.30], 1: [0.30, 0.20, 0.10]}
    by_seed = {seed: [{"run": arm, "subject": f"s{i}", "contrast": "t1w", "method": "masked", "region": "brain",
                       "ssim": 0.4 + (g[i] if arm == "Probe-CCL" else 0.0), "mse": 0.1, "psnr": 20.0}
                      for arm in ("Baseline", "Probe-CCL", "Probe-random") for i in range(3)]
               for seed, g in gap.items()}
    answers = answer_questions(by_seed)
    assert list(answers) == ["Probe-CCL − Probe-random"]  # no other question has both its arms
    d = answers["Probe-CCL − Probe-random"]["t1w"]
    assert d["mean"] == pytest.approx(0.2) and d["n"] == 3 and d["n_pairs"] == 6
    assert d["per_subject"] == pytest.approx({"s0": 0.2, "s1": 0.2, "s2": 0.2})
    assert answer_questions(by_seed, region="tumor") == {}
    for seed, rows in by_seed.items():
        (tmp_path / f"f0/seed{seed}/n2/evaluation").mkdir(parents=True)
        write_metrics_csv(rows, tmp_path / f"f0/seed{seed}/n2/evaluation/metrics.csv")
    cfg = PRESETS["smoke"].replace(arms=("Baseline", "CCL", "Probe-CCL", "Probe-random"), seeds=(0, 1))
    result = write_report(tmp_path, cfg, [Job("evaluate", f"f0/seed{s}/n2/evaluation", {}) for s in (0, 1)])
    assert result["questions"][2]["Probe-CCL − Probe-random"]["t1w"]["mean"] == pytest.approx(0.2)
    assert "| Probe-CCL − Probe-random | how much more of the targets" in (tmp_path / "table.md").read_text()
    assert "3/3 > 0" in (tmp_path / "table.md").read_text()


def test_with_three_seeds_the_questions_get_a_seed_level_ci_too(tmp_path):
    from cclray.evaluation.report import write_metrics_csv
    from cclray.study_plan import Job
    from cclray.study_report import write_report

    gap = {0: 0.30, 1: 0.10, 2: 0.20}  # Probe-CCL − Probe-random per seed, the same for every subject
    for seed, g in gap.items():
        rows = [{"run": arm, "subject": f"s{i}", "contrast": "t1w", "method": "masked", "region": "brain",
                 "ssim": 0.4 + 0.01 * i + (g if arm == "Probe-CCL" else 0.0), "mse": 0.1, "psnr": 20.0}
                for arm in ("Baseline", "Probe-CCL", "Probe-random") for i in range(4)]
        (tmp_path / f"f0/seed{seed}/n2/evaluation").mkdir(parents=True)
        write_metrics_csv(rows, tmp_path / f"f0/seed{seed}/n2/evaluation/metrics.csv")
    cfg = PRESETS["smoke"].replace(arms=("Baseline", "CCL", "Probe-CCL", "Probe-random"), seeds=(0, 1, 2))
    result = write_report(tmp_path, cfg, [Job("evaluate", f"f0/seed{s}/n2/evaluation", {}) for s in gap])
    over = result["questions"][2]["Probe-CCL − Probe-random"]["t1w"]["over_seeds"]
    assert over["per_seed"] == pytest.approx(gap) and over["ci"] == pytest.approx([0.2 - 0.2484, 0.2 + 0.2484],
                                                                                  abs=1e-4)
    table = (tmp_path / "table.md").read_text()
    assert table.count("Over training seeds [0, 1, 2]") == 2  # arm − Baseline, and the questions
    assert "| Probe-CCL − Probe-random | +0.300, +0.100, +0.200 | +0.200 [-0.048, +0.448] |" in table


def test_the_figure_shows_each_subjects_own_difference():
    from cclray.study_report import subject_differences

    def view(per_subject):
        diff = {"t1w": {"ssim": {"per_subject": per_subject}}}
        return {"minus_baseline": {"Regressor": {"t1w": {"ssim": {"per_subject": {"a": 9.0}}}}, "CCL": diff}}

    arm, points = subject_differences({10: view({"a": 0.02, "b": -0.01}), 2: view({"a": 0.03})})
    assert arm == "CCL" and points == [(2, [0.03]), (10, [0.02, -0.01])]
    arm, points = subject_differences({2: {"minus_baseline": {"Regressor": view({})["minus_baseline"]["Regressor"]}}})
    assert arm == "Regressor" and points == [(2, [9.0])]
    assert subject_differences({2: {"minus_baseline": {}}}) == ("CCL", [])


def test_a_rerun_of_a_study_recorded_before_a_new_setting_is_the_same_study(tmp_path):
    from cclray.study import check_same_study
    from data_prep.errors import UserError

    cfg = PRESETS["smoke"].to_dict()
    old = {"config": {k: v for k, v in cfg.items() if k not in ("mix_store", "mix_split")}, "src": None}
    check_same_study(json.loads(json.dumps(old)), json.loads(json.dumps({"config": cfg, "src": None})), tmp_path)
    with pytest.raises(UserError, match="other settings"):
        check_same_study(json.loads(json.dumps(old)), json.loads(json.dumps(
            {"config": {**cfg, "mix_store": "/p"}, "src": None})), tmp_path / "study_config.json")


def test_a_rerun_may_add_seeds_sizes_and_arms_but_not_drop_them(tmp_path):
    from cclray.study import check_same_study
    from data_prep.errors import UserError

    cfg = PRESETS["pilot"].replace(finetune_sizes=(2, 10), arms=("Regressor", "Baseline", "CCL"), seeds=(0,))
    old = json.loads(json.dumps({"config": cfg.to_dict(), "src": None}))
    more = cfg.replace(finetune_sizes=(2, 5, 10), arms=("Regressor", "Baseline", "CCL", "CCL-inputs"), seeds=(0, 1))
    check_same_study(old, json.loads(json.dumps({"config": more.to_dict(), "src": None})), tmp_path / "s.json")
    for fewer in (cfg.replace(finetune_sizes=(2,)), cfg.replace(arms=("Regressor", "Baseline")),
                  cfg.replace(finetune_steps=cfg.finetune_steps * 2)):
        with pytest.raises(UserError, match="may only add seeds, finetune sizes or arms"):
            check_same_study(old, json.loads(json.dumps({"config": fewer.to_dict(), "src": None})), tmp_path / "s.json")


def test_finetune_schedule_and_augment_reach_every_finetuned_arm_and_only_them():
    from cclray.config import stage_config

    cfg = PRESETS["pilot"].replace(finetune_sizes=(2,), arms=("Regressor", "Baseline", "CCL", "Baseline-matched",
                                                              "Supervised-all"))
    default = {j.path: j for j in plan(cfg, "/s.zarr")}
    assert all("augment" not in j.spec.get("patch", {}) for j in default.values())
    # the study's declared schedule (plateau), written into every finetuning job although the stage default is
    # cosine: a recorded study resumes as it ran; pretraining keeps its own (cosine)
    for j in default.values():
        if j.kind in ("finetune", "pretrain"):
            c = stage_config(j.kind, {k: v for k, v in j.spec.items() if k != "init"})
            assert c.lr_schedule == ("plateau" if j.kind == "finetune" else "cosine"), j.path
    jobs = plan(cfg.replace(finetune_schedule="cosine", augment=True), "/s.zarr")
    for j in jobs:
        if j.kind == "finetune":
            c = stage_config("finetune", {k: v for k, v in j.spec.items() if k != "init"})
            assert c.lr_schedule == "cosine" and c.patch.augment, j.path
        elif j.kind == "pretrain":
            c = stage_config("pretrain", j.spec)
            assert not c.patch.augment and j.spec == default[j.path].spec, j.path
    with pytest.raises(ConfigError, match="finetune_schedule"):
        cfg.replace(finetune_schedule="step")


def test_an_evaluation_is_done_only_for_the_runs_it_scored(tmp_path):
    from cclray.study import DONE, is_done
    from cclray.study_plan import Job

    ev = Job("evaluate", "f0/seed0/n2/evaluation", {"runs": ["a", "b"]}, ())
    train = Job("finetune", "f0/seed0/n2/scratch", {}, ())
    assert not is_done(ev, tmp_path) and not is_done(train, tmp_path)
    for j, done in ((ev, {"kind": "evaluate", "runs": ["a"]}), (train, {"kind": "finetune"})):
        (tmp_path / j.path).mkdir(parents=True)
        (tmp_path / j.path / DONE).write_text(json.dumps(done))
    assert is_done(train, tmp_path) and not is_done(ev, tmp_path)  # an arm was added since: evaluate again
    (tmp_path / ev.path / DONE).write_text(json.dumps({"kind": "evaluate", "runs": ["a", "b"]}))
    assert is_done(ev, tmp_path)


@pytest.mark.parametrize("over, words", [
    ({"arms": ("Baseline", "Magic")}, "unknown"),
    ({"arms": ("CCL",)}, "Baseline"),
    ({"arms": ("Baseline", "Probe-CCL")}, "Probe-CCL"),
    ({"finetune_sizes": (20,)}, "finetune_sizes"),
    ({"arms": ("Baseline", "CCL-external")}, "external-pretrain"),
    ({"arms": ("Baseline", "CCL-mixed")}, "mix-store"),
    ({"pretrain_steps": 7}, "multiple of steps_per_epoch"),
])
def test_bad_settings_are_refused_with_the_fix(over, words):
    with pytest.raises(ConfigError, match=words):
        StudyConfig(**{**PRESETS["smoke"].to_dict(), **over})


def test_smoke_study_runs_without_ray_resumes_and_refuses_other_settings(tmp_path):
    from cclray.host import signature
    from cclray.study import DONE, run_study
    from data_prep.errors import UserError

    cfg = PRESETS["smoke"].replace(finetune_sizes=(2,), arms=("Regressor", "Baseline", "CCL", "Probe-CCL"))
    said: list[str] = []
    result = run_study(tmp_path, cfg, backend="local", device="cpu", parallel=1, say=said.append, threads=1)
    assert result["torch_threads"] == {1: 4}  # the pretraining and three finetunings, each with the pinned count
    view = result["by_n"][2]["masked/brain"]
    assert view["arms"] == ["Regressor", "Baseline", "CCL", "Probe-CCL"] and view["n_test"] == 2
    assert set(view["minus_baseline"]) == {"Regressor", "CCL", "Probe-CCL"}
    assert (tmp_path / "study.png").stat().st_size > 5000
    assert "T1w SSIM" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "f0/seed0/n2/ccl" / DONE).read_text()) | {"seconds": 0} == {
        "kind": "finetune", "threads": 1, "seconds": 0, "host": signature("cpu")}
    assert result["hosts"] == {signature("cpu"): 4} and signature("cpu").endswith(")")
    first = json.loads((tmp_path / "results.json").read_text())["wall_seconds"]
    said.clear()
    run_study(tmp_path, cfg, backend="local", device="cpu", say=said.append)
    assert any("already done, 0 to run" in s for s in said)
    walls = json.loads((tmp_path / "results.json").read_text())  # the report-only rerun keeps the first run's time
    assert walls["wall_seconds_per_invocation"][0] == first and len(walls["wall_seconds_per_invocation"]) == 2
    assert walls["wall_seconds"] == pytest.approx(sum(walls["wall_seconds_per_invocation"]), abs=0.05)
    with pytest.raises(UserError, match="other settings"):
        run_study(tmp_path, cfg.replace(seeds=(1,)), backend="local", device="cpu", say=said.append)
    with pytest.raises(UserError, match="other settings"):
        run_study(tmp_path, cfg.replace(finetune_steps=6), backend="local", device="cpu", say=said.append)
    said.clear()  # adding a seed keeps seed 0's jobs and pools both seeds in the tables
    done = tmp_path / "f0/seed0/n2/ccl" / DONE  # as if that job had run on another kind of CPU
    done.write_text(json.dumps({**json.loads(done.read_text()), "host": "Other CPU (AVX2)"}))
    result = run_study(tmp_path, cfg.replace(seeds=(0, 1)), backend="local", device="cpu", parallel=2,
                       say=said.append, threads=2)
    assert any("12 jobs, 6 already done, 6 to run" in s and "2 torch thread(s) each" in s for s in said), said
    assert any("4 finished training job(s) ran with 1 torch thread(s), these with 2" in s for s in said), said
    assert result["by_n"][2]["masked/brain"]["seeds"] == [0, 1]
    assert any("1 finished training job(s) ran on Other CPU (AVX2), these on " in s for s in said), said
    recorded = json.loads((tmp_path / "results.json").read_text())
    assert recorded["torch_threads"] == {"1": 4, "2": 4}
    assert recorded["hosts"] == {"Other CPU (AVX2)": 1, signature("cpu"): 7}


def test_job_threads_share_the_cores_unless_pinned(monkeypatch):
    from cclray.study import job_threads
    from data_prep.errors import UserError

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [job_threads(p) for p in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert job_threads(4, threads=3) == 3
    with pytest.raises(UserError, match="--threads must be at least 1"):
        job_threads(1, threads=0)


def test_a_bad_thread_count_is_refused_before_anything_is_written(tmp_path):
    from cclray.study import run_study
    from data_prep.errors import UserError

    with pytest.raises(UserError, match="--threads must be at least 1"):
        run_study(tmp_path / "s", PRESETS["smoke"], backend="local", threads=0)
    assert not (tmp_path / "s").exists()


def test_recorded_wall_seconds_reads_both_layouts(tmp_path):
    from cclray.study import recorded_wall_seconds

    results = tmp_path / "results.json"
    assert recorded_wall_seconds(results) == []  # no earlier invocation
    results.write_text(json.dumps({"wall_seconds": 4502.6}))  # written before the per-invocation list
    assert recorded_wall_seconds(results) == [4502.6]
    results.write_text(json.dumps({"wall_seconds": 4504.2, "wall_seconds_per_invocation": [4502.6, 1.6]}))
    assert recorded_wall_seconds(results) == [4502.6, 1.6]
    results.write_text("{not json")
    assert recorded_wall_seconds(results) == []
