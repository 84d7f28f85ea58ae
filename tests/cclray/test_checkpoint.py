"""Checkpoints: atomic write, weights_only load, damaged files refused, fallback, stage check, pruning."""
import json
import random

import numpy as np
import pytest
import torch

from cclray.checkpoint import (
    CKPT_FILE,
    META_FILE,
    CheckpointError,
    checkpoint_config,
    is_complete,
    load_checkpoint,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cclray.config import FinetuneConfig, PretrainConfig
from cclray.runs import (
    MetricsLog,
    checkpoint_dirs,
    checkpoint_name,
    find_checkpoint,
    latest_intact_checkpoint,
    prune_checkpoints,
    read_run_config,
    write_run_config,
)

CFG = PretrainConfig.from_dict({"store": "s.zarr", "model": {"widths": [8, 16, 32]}})


def _state(step, epoch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "step": step, "epoch": epoch,
            "rng": [rng_state()]}


def _write(run, epoch, score=None, stage="pretrain", cfg=CFG):
    d = run / checkpoint_name(epoch, epoch * 10)
    save_checkpoint(d, _state(epoch * 10, epoch), cfg, stage, meta={"score": score})
    return d


def test_round_trip_weights_only_with_config_json_and_meta(tmp_path):
    d = _write(tmp_path, 3, score=0.5)
    assert sorted(p.name for p in d.iterdir()) == [CKPT_FILE, META_FILE]  # no temporary file left
    ckpt = load_checkpoint(d, stage="pretrain")
    assert ckpt["step"] == 30 and ckpt["epoch"] == 3 and ckpt["stage"] == "pretrain"
    assert isinstance(ckpt["config"], str) and PretrainConfig.from_dict(checkpoint_config(ckpt)) == CFG
    assert set(ckpt["optimizer"]) == {"state", "param_groups"} and "best" in ckpt["scheduler"]
    meta = read_meta(d)
    assert meta["config_hash"] == CFG.hash() and meta["score"] == 0.5 and meta["bytes"] == (d / CKPT_FILE).stat().st_size
    assert load_checkpoint(d / CKPT_FILE)["epoch"] == 3  # the file itself works too


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    d = _write(tmp_path, 1)
    before = (d / CKPT_FILE).read_bytes()

    def boom(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(d, _state(99, 9), CFG, "pretrain")
    assert (d / CKPT_FILE).read_bytes() == before and read_meta(d)["step"] == 10
    assert sorted(p.name for p in d.iterdir()) == [CKPT_FILE, META_FILE]


@pytest.mark.parametrize("damage", ["truncate", "garbage_same_size", "meta_missing"])
def test_damaged_latest_is_refused_and_find_checkpoint_falls_back(tmp_path, damage):
    good = _write(tmp_path, 1)
    bad = _write(tmp_path, 2)
    f = bad / CKPT_FILE
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_same_size":
        f.write_bytes(b"\0" * len(data))
    else:
        (bad / META_FILE).unlink()
    assert not is_complete(bad)
    if damage != "meta_missing":
        with pytest.raises(CheckpointError, match=f"{f}.*(truncated|corrupt)"):
            load_checkpoint(bad)
    assert find_checkpoint(tmp_path, "latest") == good == latest_intact_checkpoint(tmp_path)
    assert find_checkpoint(tmp_path, "best") == good


def test_wrong_stage_and_missing_are_clear_errors(tmp_path):
    d = _write(tmp_path, 1, stage="pretrain")
    with pytest.raises(CheckpointError, match="'pretrain' checkpoint, a 'finetune' one is needed"):
        load_checkpoint(d, stage="finetune")
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        find_checkpoint(tmp_path / "empty_run")
    # the resume rule never raises: nothing to resume is None
    assert latest_intact_checkpoint(tmp_path / "nope") is None
    assert latest_intact_checkpoint(tmp_path / "empty_run") is None


@pytest.mark.parametrize("scores, keep, survivors", [
    ([0.5, 0.3, 0.4, 0.6], 1, [2, 4]),  # best (epoch 2) + latest (epoch 4)
    ([0.5, 0.3, 0.4, 0.6], 2, [2, 3, 4]),
    ([None, None, None], 2, [2, 3]),  # unscored: the most recent ones
])
def test_find_best_latest_and_prune(tmp_path, scores, keep, survivors):
    for epoch, s in enumerate(scores, 1):
        _write(tmp_path, epoch, score=s)
    best_epoch = min((s, e) for e, s in enumerate(scores, 1))[1] if scores[0] is not None else len(scores)
    assert read_meta(find_checkpoint(tmp_path, "best"))["epoch"] == best_epoch
    assert read_meta(find_checkpoint(tmp_path, "latest"))["epoch"] == len(scores)
    prune_checkpoints(tmp_path, keep)
    assert [read_meta(d)["epoch"] for d in checkpoint_dirs(tmp_path)] == survivors


def test_run_config_and_metrics_log(tmp_path):
    cfg = FinetuneConfig.from_dict({"store": "s.zarr"})
    write_run_config(tmp_path, "finetune", cfg)
    assert json.loads((tmp_path / "config.json").read_text())["stage"] == "finetune"
    assert read_run_config(tmp_path) == ("finetune", cfg)
    log = MetricsLog(tmp_path)
    for e in (1, 2, 3):
        log.append({"epoch": e, "step": 10 * e, "loss": 1.0 / e, "unknown": "dropped"})
    log.truncate(2)
    assert [r["epoch"] for r in log.rows()] == ["1", "2"] and "unknown" not in log.rows()[0]
