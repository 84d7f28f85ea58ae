"""Ray Tune sweep: resources, best-trial choice, constraint caching under two processes, a real tiny sweep
(one trial fails, the sweep goes on; the best is the best reported; resume), and `cclray export --sweep`."""
from __future__ import annotations

import json
import math
import multiprocessing

import pytest

from cclray.checkpoint import is_complete
from conftest import make_tiny_store
from data_prep.config import ConfigError
from data_prep.constraint import ConstraintSpec
from tune.report import SweepReportError, best_checkpoint, pick_best, read_csv
from tune.space import DEFAULT_POINT, SearchSpace, stage_dicts
from tune.sweep import SweepConfig, resources
from tune.trial import ensure_constraint

# (cluster, config overrides, expected (max concurrent, resources per worker) or None = ConfigError)
RESOURCE_CASES = [
    ({"CPU": 2}, {}, (1, {"CPU": 1.98})),  # this machine: one trial, its worker takes the rest
    ({"CPU": 2}, {"workers_per_trial": 2}, (1, {"CPU": 0.99})),  # the 2-worker probe
    ({"CPU": 2}, {"max_concurrent": 2}, (2, {"CPU": 0.98})),
    ({"CPU": 16}, {"cpus_per_worker": 4}, (3, {"CPU": 4})),  # 3 x (4 + 2 x 0.01) <= 16
    ({"CPU": 16, "GPU": 4}, {"gpus_per_worker": 1}, (4, {"CPU": 3.98, "GPU": 1})),
    ({"CPU": 16, "GPU": 4}, {"gpus_per_worker": 1, "workers_per_trial": 2}, (2, {"CPU": 3.99, "GPU": 1})),
    ({"CPU": 2}, {"max_concurrent": 2, "cpus_per_worker": 1}, None),  # 2 x 1.02 > 2: would deadlock
    ({"CPU": 8, "GPU": 1}, {"gpus_per_worker": 1, "workers_per_trial": 2}, None),
]


@pytest.mark.parametrize("cluster,over,expected", RESOURCE_CASES)
def test_resources(cluster, over, expected):
    cfg = SweepConfig(store="s.zarr", out="/tmp/sweep", samples=8, **over)
    if expected is None:
        with pytest.raises(ConfigError, match="--max-concurrent|--workers-per-trial"):
            resources(cfg, cluster)
    else:
        assert resources(cfg, cluster) == expected


def _row(tid, status, metric, ckpt="c"):
    return {"trial_id": tid, "status": status, "metric": metric, "checkpoint": ckpt}


# (rows, expected best trial id or None = SweepReportError)
BEST_CASES = [
    ([_row("a", "ok", 0.5), _row("b", "ok", 0.7), _row("c", "stopped", 0.6)], "b"),
    ([_row("a", "ok", 0.5), _row("b", "error", float("nan")), _row("c", "stopped", 0.9)], "c"),
    ([_row("a", "ok", float("nan")), _row("b", "ok", 0.1)], "b"),
    ([_row("a", "ok", 0.8, ckpt=""), _row("b", "ok", 0.1)], "b"),  # no checkpoint: cannot be exported
    ([_row("a", "ok", 0.4), _row("b", "ok", 0.4)], "a"),  # tie: first trial id
    ([_row("a", "error", float("nan"))], None),
]


@pytest.mark.parametrize("rows,expected", BEST_CASES)
def test_pick_best(rows, expected):
    if expected is None:
        with pytest.raises(SweepReportError, match="results.csv"):
            pick_best(rows)
    else:
        assert pick_best(rows)["trial_id"] == expected


def test_default_point_is_the_config_defaults():
    """The reference point is not restated: it is the stage configs' defaults and prep's default map."""
    from cclray.config import LossConfig, ModelConfig, PretrainConfig, stage_config
    from data_prep.constraint import DEFAULT_SPEC
    from tune.space import constraint_spec

    pre, _ = stage_dicts(DEFAULT_POINT, "s.zarr", "medium")
    pre = stage_config("pretrain", pre)
    assert pre.loss == LossConfig() and pre.model == ModelConfig() and pre.lr == PretrainConfig(store="s").lr
    assert constraint_spec(DEFAULT_POINT) == DEFAULT_SPEC and DEFAULT_SPEC.name == pre.constraint


def test_point_to_stage_configs():
    from cclray.config import stage_config

    point = {**DEFAULT_POINT, "temperature": 0.3, "proj_stride": 2, "top_k": 50}
    pre, fine = stage_dicts(point, "s.zarr", "tiny", {"finetune": {"val_every": 1}})
    pre, fine = stage_config("pretrain", pre), stage_config("finetune", fine)
    assert (pre.loss.temperature, pre.loss.top_k, pre.model.proj_stride) == (0.3, 50, 2)
    assert fine.model.proj_stride == 2 and pre.model.widths == fine.model.widths == (8, 16, 32)
    assert pre.lr == DEFAULT_POINT["pretrain_lr"] and fine.patch.patch_size == (16, 16, 16)
    with pytest.raises(ConfigError, match="all above the network stride"):
        SearchSpace(proj_stride=(8,)).param_space(network_stride=4)
    with pytest.raises(ConfigError, match="points\\[0\\]"):
        SweepConfig(store="s", out="o", points=({"k": 20},))


def test_constraint_computed_once_by_two_processes(tmp_path):
    store = make_tiny_store(tmp_path / "store.zarr", shape=(16, 16, 16))
    spec = ConstraintSpec(contrasts=("t1gd", "t1w"), k=3)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        out = pool.starmap(ensure_constraint, [(store["url"], spec)] * 2)
    n = sum(len(v) for v in store["splits"].values())
    assert [name for name, _ in out] == [spec.name] * 2
    assert sorted(c for _, c in out) == [0, n]  # one computed every subject, the other found them done
    assert ensure_constraint(store["url"], spec) == (spec.name, 0)  # recorded: not recomputed


# --------------------------------------------------------------------------------------- a real sweep
POINT = {**DEFAULT_POINT, "contrasts": "t1-only", "k": 3, "top_k": 50, "n_anchors": 10}
POINTS = ({**POINT, "temperature": 0.1},  # pretrain; computes the new constraint t1w+t1gd-k3
          {**POINT, "temperature": 0.2},  # same constraint (cached), then fails (fail_when)
          {**POINT, "temperature": 0.3, "pretrain": False})  # the control arm


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    from tune.sweep import run_sweep

    root = tmp_path_factory.mktemp("sweep")
    store = make_tiny_store(root / "store.zarr")
    cfg = SweepConfig(store=store["url"], out=str(root / "sweep"), samples=3, budget="tiny", seed=0, grace_period=2,
                      space=SearchSpace(k=(3,), contrasts=("t1-only",), top_k=(50,), n_anchors=(10,)),
                      points=POINTS, fail_when={"temperature": 0.2})
    return {"cfg": cfg, "out": run_sweep(cfg), "store": store}


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sweep_survives_a_failure_and_picks_the_best(sweep):
    cfg, out = sweep["cfg"], sweep["out"]
    rows = {r["temperature"]: r for r in out["rows"]}
    assert sorted(rows) == [0.1, 0.2, 0.3]
    assert rows[0.2]["status"] == "error" and "injected failure" in rows[0.2]["error"]
    done = [rows[0.1], rows[0.3]]
    assert all(r["status"] in ("ok", "stopped") and -1 <= r["metric"] <= 1 for r in done)
    n = sum(len(v) for v in sweep["store"]["splits"].values())
    assert (rows[0.1]["constraint_computed"], rows[0.2]["constraint_computed"]) == (n, 0)  # computed once
    assert rows[0.1]["constraint"] == rows[0.2]["constraint"] == "t1w+t1gd-k3"
    assert rows[0.3]["constraint"] is None  # the control arm needs no constraint

    best = max(done, key=lambda r: r["metric"])
    data = json.loads((cfg.report_path / "best.json").read_text())
    assert data["trial_id"] == best["trial_id"] and math.isclose(data["value"], best["metric"])
    assert str(best_checkpoint(cfg.report_path)) == data["checkpoint"] and is_complete(data["checkpoint"])
    from cclray.checkpoint import read_meta

    meta = read_meta(best_checkpoint(cfg.report_path))  # the checkpoint holds the reported metric
    assert math.isclose(meta["metrics"]["val_ssim"], best["metric"], rel_tol=1e-6)

    csv_rows = read_csv(cfg.report_path / "results.csv")
    assert len(csv_rows) == 3 and {r["status"] for r in csv_rows} >= {"error"}
    assert "Best trial" in (cfg.report_path / "summary.md").read_text()
    assert (cfg.report_path / "metric_vs_settings.png").stat().st_size > 1000


@pytest.mark.ray
def test_resume_a_finished_sweep(sweep):
    from tune.sweep import SweepExistsError, run_sweep

    with pytest.raises(SweepExistsError, match="--resume"):
        run_sweep(sweep["cfg"])
    again = run_sweep(sweep["cfg"], resume=True)  # Tuner.restore: nothing left to run
    assert [r["trial_id"] for r in again["rows"]] == [r["trial_id"] for r in sweep["out"]["rows"]]
    assert again["best"]["trial_id"] == sweep["out"]["best"]["trial_id"]


@pytest.mark.ray
def test_export_sweep_cli(sweep, tmp_path):
    from cclray.cli import main

    model = tmp_path / "best.onnx"
    assert main(["export", "--sweep", str(sweep["cfg"].report_path), "--out", str(model)]) == 0
    assert model.stat().st_size > 10_000


def test_export_sweep_cli_errors(tmp_path, capsys):
    from cclray.cli import main

    assert main(["export", "--sweep", str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cclray export: error: ") and "best.json" in err and not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit):
        main(["export", "--sweep", str(tmp_path), "--run", str(tmp_path), "--out", "m.onnx"])
