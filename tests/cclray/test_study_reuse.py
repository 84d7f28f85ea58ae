"""``cclray study --reuse``: another study's store and finished jobs are linked when (and only when) they are the
same job; one end-to-end pair of smoke studies without Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cclray.config import stage_config
from cclray.runs import write_run_config
from cclray.study_plan import PRESETS, plan
from cclray.study_reuse import (
    check_links,
    check_others,
    finished_runs,
    identity,
    job_identity,
    link_jobs,
    link_stores,
    same_cohort,
)
from data_prep.errors import UserError

SMOKE = PRESETS["smoke"].replace(finetune_sizes=(2,), arms=("Baseline", "CCL"))


def fake_study(root: Path, cfg, src=None, done=("pretrain", "finetune"), only=None) -> list:
    """A study folder as `cclray study` leaves it, without training: study_config.json, a finished store, and
    each planned training job's config.json and DONE.json (``only``: those job paths)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "study_config.json").write_text(json.dumps({"config": cfg.to_dict(), "src": src, "test_src": None}))
    (root / "store.zarr").mkdir(exist_ok=True)
    (root / "store.zarr" / "DONE.json").write_text("{}")
    jobs = plan(cfg, str(root / "store.zarr"))
    for j in jobs:
        if j.kind in done and (only is None or j.path in only):
            spec = {**j.spec, **({"init": str(root / j.spec["init"])} if j.spec.get("init") else {})}
            write_run_config(root / j.path, j.kind, stage_config(j.kind, {**spec, "num_workers": 1}))
            (root / j.path / "DONE.json").write_text("{}")
    return jobs


def test_identity_is_the_config_without_how_the_job_was_spread_out(tmp_path):
    spec = next(j.spec for j in plan(SMOKE, str(tmp_path / "store.zarr")) if j.kind == "pretrain")
    assert identity("pretrain", {**spec, "num_workers": 4, "use_gpu": True}) == identity("pretrain", spec)
    assert identity("pretrain", {**spec, "epochs": spec["epochs"] + 1}) != identity("pretrain", spec)
    assert identity("pretrain", {**spec, "seed": 9}) != identity("pretrain", spec)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)  # paths compare as the folders they are
    assert identity("pretrain", {**spec, "store": str(tmp_path / "b")}) == identity("pretrain", {
        **spec, "store": str(tmp_path / "a")})


def test_a_longer_finetuning_reuses_the_pretrainings_and_the_matched_scratch_network(tmp_path):
    old = tmp_path / "old"
    fake_study(old, SMOKE.replace(arms=("Baseline", "CCL", "Baseline-matched")))
    new = tmp_path / "new"
    new.mkdir()
    cfg = SMOKE.replace(arms=("Baseline", "CCL"), finetune_steps=SMOKE.pretrain_steps + SMOKE.finetune_steps)
    said: list[str] = []
    assert link_stores(new, [old], cfg, None, None, said.append) == {"store.zarr": str((old / "store.zarr").resolve())}
    made = link_jobs(plan(cfg, str(new / "store.zarr")), new, [old], said.append)
    assert made == {"f0/seed0/pretrain": str((old / "f0/seed0/pretrain").resolve()),
                    "f0/seed0/n2/scratch": str((old / "f0/seed0/n2/scratch_matched").resolve())}  # found by config, not name
    assert not (new / "f0/seed0/n2/ccl").exists()  # 8 finetuning steps from that pretraining: not in old
    assert (new / "f0/seed0/n2/scratch").resolve() == (old / "f0/seed0/n2/scratch_matched").resolve()
    assert any("2 finished job(s) linked" in s and "1 pretraining(s), 1 finetuning(s)" in s for s in said), said
    (new / "f0/seed0/n2/ccl").mkdir()  # as after the study's run: a rerun has nothing left to link, and says nothing
    said.clear()
    assert link_jobs(plan(cfg, str(new / "store.zarr")), new, [old], said.append) == {} and said == []


def test_a_finetuning_is_reused_only_from_the_same_pretraining_and_store(tmp_path):
    old = tmp_path / "old"
    fake_study(old, SMOKE.replace(arms=("Baseline", "CCL")), only={"f0/seed0/n2/ccl", "f0/seed0/n2/scratch"})
    new = tmp_path / "new"
    new.mkdir()  # old's pretraining is not finished, so new trains its own: its CCL finetuning is another job
    link_stores(new, [old], SMOKE, None, None, lambda s: None)
    made = link_jobs(plan(SMOKE.replace(arms=("Baseline", "CCL")), str(new / "store.zarr")), new, [old],
                     lambda s: None)
    assert set(made) == {"f0/seed0/n2/scratch"}
    other = tmp_path / "other"  # the same jobs on another store: nothing is shared
    (other / "store.zarr").mkdir(parents=True)
    jobs = plan(SMOKE.replace(arms=("Baseline", "CCL")), str(other / "store.zarr"))
    said: list[str] = []
    assert link_jobs(jobs, other, [old], said.append) == {} and "no finished job" in said[0]
    ccl = next(j for j in jobs if j.path.endswith("/ccl"))  # init resolves under each study's own folder
    assert job_identity("finetune", ccl.spec, other) != job_identity("finetune", ccl.spec, old)


def test_started_jobs_are_left_to_resume_and_finished_runs_are_found_through_links(tmp_path):
    old = tmp_path / "old"
    fake_study(old, SMOKE.replace(arms=("Baseline",)))
    mid = tmp_path / "mid"  # a study that itself linked old's run
    fake_study(mid, SMOKE.replace(arms=("Baseline",)), done=())
    (mid / "store.zarr" / "DONE.json").unlink()
    (mid / "store.zarr").rmdir()
    link_stores(mid, [old], SMOKE, None, None, lambda s: None)
    link_jobs(plan(SMOKE.replace(arms=("Baseline",)), str(mid / "store.zarr")), mid, [old], lambda s: None)
    assert [f for _, f in finished_runs(mid)] == [(old / "f0/seed0/n2/scratch").resolve()]
    new = tmp_path / "new"
    (new / "f0/seed0/n2/scratch").mkdir(parents=True)  # started here: it resumes, it is not replaced
    link_stores(new, [mid], SMOKE, None, None, lambda s: None)
    said: list[str] = []
    assert link_jobs(plan(SMOKE.replace(arms=("Baseline",)), str(new / "store.zarr")), new, [mid], said.append) == {}
    assert not (new / "f0/seed0/n2/scratch").is_symlink() and said == []  # nothing left to link


@pytest.mark.parametrize("change, src, same", [
    ({}, None, True), ({"spacing": 2.0}, None, False), ({"n_subjects": 9}, None, False),
    ({"phantom_version": 1}, None, False), ({}, "/data/brats", False), ({"seeds": (3,), "finetune_steps": 50}, None,
                                                                       True)])
def test_the_store_is_shared_only_by_the_same_cohort(tmp_path, change, src, same):
    recorded = {"config": SMOKE.to_dict(), "src": None}
    assert same_cohort(recorded, SMOKE.replace(**change), src) is same
    real = {"config": SMOKE.to_dict(), "src": "/data/brats"}  # a real cohort: its folder and spacing, not the count
    assert same_cohort(real, SMOKE.replace(n_subjects=99), "/data/brats")
    assert not same_cohort(real, SMOKE.replace(spacing=1.0), "/data/brats")


def test_a_store_of_another_cohort_is_not_linked_and_an_existing_one_is_kept(tmp_path):
    old = tmp_path / "old"
    fake_study(old, SMOKE, done=())
    new = tmp_path / "new"
    new.mkdir()
    assert link_stores(new, [old], SMOKE.replace(spacing=2.0), None, None, lambda s: None) == {}
    assert not (new / "store.zarr").exists()
    (new / "store.zarr").mkdir()
    assert link_stores(new, [old], SMOKE, None, None, lambda s: None) == {}
    assert not (new / "store.zarr").is_symlink()


def test_a_bad_reuse_folder_is_refused_with_the_fix(tmp_path):
    fake_study(tmp_path / "old", SMOKE, done=())
    assert check_others([tmp_path / "old"], tmp_path / "new") == [(tmp_path / "old").resolve()]
    with pytest.raises(UserError, match="own --out"):
        check_others([tmp_path / "old"], tmp_path / "old")
    with pytest.raises(UserError, match="no such folder"):
        check_others([tmp_path / "gone"], tmp_path / "new")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"study_config.json is missing.*cclray study --out"):
        check_others([tmp_path / "empty"], tmp_path / "new")


def test_a_shared_store_refuses_split_names_that_hold_other_subjects(tiny_store, tmp_path):
    import shutil

    from cclray.study import write_study_splits
    from data_prep.store import Store

    url = str(tmp_path / "store.zarr")
    shutil.copytree(tiny_store["url"], url)
    cfg = SMOKE.replace(splits={"pretrain": 3, "finetune": 2, "val": 1, "test": 2})
    written = write_study_splits(url, cfg, None)
    assert write_study_splits(url, cfg, None) == written  # the same study again: nothing changes
    with pytest.raises(UserError, match=r"already hold other subjects"):
        write_study_splits(url, cfg.replace(splits={"pretrain": 2, "finetune": 2, "val": 1, "test": 3}), None)
    assert Store(url).attrs["splits"]["s.f0.pretrain"] == written["s.f0.pretrain"]  # left as it was


def test_a_study_beside_a_finished_one_trains_only_what_is_new(tmp_path):
    from cclray.study import run_study

    old, new = tmp_path / "old", tmp_path / "new"
    run_study(old, SMOKE.replace(arms=("Baseline", "CCL", "Baseline-matched")), backend="local", device="cpu",
              say=lambda s: None, threads=1)
    said: list[str] = []
    longer = SMOKE.replace(arms=("Baseline", "CCL"), finetune_steps=SMOKE.pretrain_steps + SMOKE.finetune_steps)
    result = run_study(new, longer, backend="local", device="cpu", say=said.append, threads=1, reuse=(old,))
    assert any("4 jobs, 2 already done, 2 to run" in s for s in said), said
    assert not any(s.startswith("phantom") or s.startswith("prep") for s in said), said  # the store is old's
    assert result["linked"] == {"f0/seed0/pretrain": str((old / "f0/seed0/pretrain").resolve()),
                                "f0/seed0/n2/scratch": str((old / "f0/seed0/n2/scratch_matched").resolve())}
    assert (new / "store.zarr").resolve() == (old / "store.zarr").resolve()
    assert json.loads((new / "f0/seed0/n2/ccl/config.json").read_text())["config"]["epochs"] == 4
    assert result["by_n"][2]["masked/brain"]["arms"] == ["Baseline", "CCL"]


def test_a_link_into_a_folder_that_is_gone_is_named_before_anything_runs(tmp_path):
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    fake_study(old, SMOKE)
    new.mkdir()
    link_stores(new, [old], SMOKE, None, None, lambda s: None)
    jobs = plan(SMOKE, str(new / "store.zarr"))
    link_jobs(jobs, new, [old], lambda s: None)
    check_links(jobs, new)  # all there
    shutil.rmtree(old)
    with pytest.raises(UserError, match=r"new/store.zarr links to .*old/store.zarr, which is gone \(and 3 more "
                                        r"link\(s\)\): put that study folder back, or delete the link"):
        check_links(jobs, new)
