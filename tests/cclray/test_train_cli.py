"""`cclray pretrain` / `cclray finetune`: arguments -> typed config (no Ray), errors as exit 2, curves;
one Ray end-to-end run (pretrain -> finetune --init, then a refused rerun)."""
import json
from pathlib import Path

import pytest

from cclray.cli import build_parser, main
from cclray.commands.training import build_config, parse_overrides, parse_value
from cclray.curves import plot_curves
from cclray.runs import MetricsLog, find_checkpoint
from data_prep.config import ConfigError

TINY_SET = ["--set", "model.widths=[8,16,32]", "--set", "model.proj_stride=2",
            "--set", "patch.patch_size=[16,16,16]", "--set", "patch.batch_size=2",
            "--set", "patch.num_workers=0", "--set", "loss.n_anchors=8", "--set", "loss.top_k=32"]


def _args(*argv):
    argv = list(argv)
    return build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("text, value", [
    ("0.2", 0.2), ("3", 3), ("true", True), ("null", None), ("[32,32,32]", [32, 32, 32]),
    ('"t1gd"', "t1gd"), ("pretrain", "pretrain"), ("t1w_t1gd_k20", "t1w_t1gd_k20"),
    ('["t1gd","flair"]', ["t1gd", "flair"]),
])
def test_set_values_are_json_else_strings(text, value):
    assert parse_value(text) == value


def test_set_value_that_looks_like_a_list_must_be_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_value("[t1gd,flair]", "model.inputs")


@pytest.mark.parametrize("items, expected", [
    (["epochs=3"], {"epochs": 3}),
    (["loss.temperature=0.2", "loss.top_k=50"], {"loss": {"temperature": 0.2, "top_k": 50}}),
    (["patch.patch_size=[32,32,32]", "lr=1e-4"], {"patch": {"patch_size": [32, 32, 32]}, "lr": 1e-4}),
    (["split=pretrain", "split=finetune"], {"split": "finetune"}),  # the later one wins
    (["init=a=b"], {"init": "a=b"}),  # split at the first '='
])
def test_set_overrides_nest_dotted_keys(items, expected):
    assert parse_overrides(items) == expected


@pytest.mark.parametrize("item", ["epochs", "=3", "loss..top_k=1", "loss.=1"])
def test_set_overrides_refuse_malformed_items(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides([item])


@pytest.mark.parametrize("stage, argv, key, value", [
    ("pretrain", ["--epochs", "4"], "epochs", 4),
    ("pretrain", ["--steps", "5"], "steps_per_epoch", 5),
    ("pretrain", ["--workers", "2"], "num_workers", 2),
    ("pretrain", ["--gpus"], "use_gpu", True),
    ("pretrain", ["--constraint", "t1gd_t1w_k30"], "constraint", "t1gd_t1w_k30"),
    ("finetune", ["--scratch"], "init", None),
    ("finetune", ["--scratch", "--set", "val_split=null"], "val_split", None),
])
def test_flags_reach_the_typed_config(tmp_path, stage, argv, key, value):
    extra = ["--scratch"] if stage == "finetune" and "--scratch" not in argv else []
    args = _args(stage, "--store", "s.zarr", "--out", str(tmp_path / "run"), *argv, *extra)
    cfg = build_config(args, stage)
    assert cfg.stage == stage and getattr(cfg, key) == value
    assert cfg.store == str(Path("s.zarr").resolve())  # local paths made absolute


def test_config_file_then_set_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"store": "memory://s", "epochs": 5, "steps_per_epoch": 7,
                                "loss": {"temperature": 0.3, "top_k": 10}}))
    args = _args("pretrain", "--out", str(tmp_path / "run"), "--config", str(path),
                 "--set", "epochs=6", "--set", "loss.top_k=50", "--epochs", "8")
    cfg = build_config(args, "pretrain")
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.loss.temperature, cfg.loss.top_k) == (8, 7, 0.3, 50)
    assert cfg.store == "memory://s"  # URLs are left alone
    # a run's config.json is accepted as --config, for its own stage only
    path.write_text(json.dumps({"stage": "pretrain", "config": {"store": "memory://s", "epochs": 2}}))
    assert build_config(args, "pretrain").epochs == 8
    with pytest.raises(ConfigError, match="`cclray pretrain`"):
        build_config(_args("finetune", "--out", "r", "--scratch", "--config", str(path)), "finetune")


def test_resume_starts_from_the_runs_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"stage": "finetune", "config": {
        "store": "memory://s", "epochs": 3, "init": "/pre", "loss": {"ssim_weight": 0.5}}}))
    cfg = build_config(_args("finetune", "--out", str(run), "--resume", "--scratch", "--epochs", "6"),
                       "finetune")
    assert (cfg.store, cfg.epochs, cfg.init, cfg.loss.ssim_weight) == ("memory://s", 6, None, 0.5)
    assert build_config(_args("finetune", "--out", str(run), "--scratch", "--store", "memory://t"),
                        "finetune").epochs == 10  # without --resume the run's config is not read


@pytest.mark.parametrize("argv", [
    ["finetune", "--store", "s", "--out", "r"],
    ["finetune", "--store", "s", "--out", "r", "--init", "pre", "--scratch"],
])
def test_init_and_scratch_are_required_and_exclusive(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _args(*argv)
    assert e.value.code == 2 and "--init" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--set", "loss.temprature=0.2"], ["unknown LossConfig key", "did you mean 'temperature'"]),
    (["--set", "modle.widths=[8,16]"], ["unknown PretrainConfig key", "did you mean 'model'"]),
    (["--set", "epochs"], ["KEY=VALUE"]),
    (["--set", "epochs=many"], ["PretrainConfig.epochs must be an integer"]),
    (["--epochs", "0"], ["epochs=0 must be >= 1"]),
    (["--config", "/nonexistent/c.json"], ["/nonexistent/c.json", "no such file"]),
])
def test_config_errors_are_one_line_exit_2(tmp_path, capsys, argv, words):
    code = main(["pretrain", "--store", "memory://s", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cclray pretrain: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_missing_store_names_the_path_and_prep(tmp_path, capsys):
    missing = tmp_path / "nowhere.zarr"
    assert main(["finetune", "--store", str(missing), "--out", str(tmp_path / "r"), "--scratch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cclray finetune: error: ") and str(missing) in err and "cclray prep" in err


def _fake_run(path, stage, rows):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"stage": stage, "config": {}}))
    log = MetricsLog(path)
    for r in rows:
        log.append(r)
    return path


def test_plot_curves_draws_the_panels_the_runs_have(tmp_path):
    pre = _fake_run(tmp_path / "pre", "pretrain", [{"epoch": e, "loss": 3 - e} for e in (1, 2, 3)])
    ft = _fake_run(tmp_path / "ft", "finetune",
                   [{"epoch": e, "loss": 1 / e, "val_l1": 0.5 / e, "val_ssim": 0.2 * e} for e in (1, 2)])
    out = plot_curves([pre, ft], ["CCL pretrain", "CCL finetune"], tmp_path / "figs" / "curves.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    w_all, _ = Image.open(out).size
    w_one, _ = Image.open(plot_curves([pre], None, tmp_path / "one.png")).size
    assert w_all > 3 * w_one  # 4 panels (pretrain loss, finetune loss, val L1, val SSIM) vs 1
    with pytest.raises(ValueError, match="one label per run"):
        plot_curves([pre, ft], ["only one"], tmp_path / "x.png")


@pytest.mark.ray
def test_pretrain_then_finetune_from_the_command_line(ray_session, tiny_store, tmp_path, capsys):
    store, pre, ft = tiny_store["url"], tmp_path / "pre", tmp_path / "ft"
    small = ["--workers", "1", "--epochs", "1", "--steps", "2", *TINY_SET]
    assert main(["pretrain", "--store", store, "--out", str(pre), *small]) == 0
    out = capsys.readouterr().out
    assert f"best:   {find_checkpoint(pre, 'best')}" in out and "final:  epoch 1  step 2" in out
    assert (pre / "curves.png").is_file()

    assert main(["finetune", "--store", store, "--out", str(ft), "--init", str(pre), *small,
                 "--set", "val_samples=2"]) == 0
    out = capsys.readouterr().out
    assert find_checkpoint(ft, "latest").is_dir() and (ft / "curves.png").is_file()
    assert f"latest: {find_checkpoint(ft, 'latest')}" in out and "val_ssim" in out
    assert json.loads((ft / "config.json").read_text())["config"]["init"] == str(pre)

    assert main(["pretrain", "--store", store, "--out", str(pre), *small]) == 2  # no --resume: refused
    assert "--resume" in capsys.readouterr().err
