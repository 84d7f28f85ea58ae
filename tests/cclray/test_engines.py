"""Stage engines under LocalContext (world size 1, no Ray): they learn, hand off, resume exactly."""
import logging

import pytest
import torch

from cclray.checkpoint import CheckpointError, read_meta
from cclray.config import FinetuneConfig, PretrainConfig
from cclray.engine import LocalContext
from cclray.engine_finetune import run_finetune
from cclray.engine_pretrain import run_pretrain
from cclray.runs import MetricsLog, checkpoint_dirs, find_checkpoint, load_synthesizer
from data_prep.config import ConfigError

TINY = {"model": {"widths": [8, 16, 32], "proj_stride": 2},
        "patch": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
        "loss": {"n_anchors": 16, "top_k": 64}, "steps_per_epoch": 8}


def _cfg(cls, store, **kw):
    return cls.from_dict({"store": store["url"], **TINY, **kw})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; also makes runs bitwise repeatable
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrain_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("pre")
    ctx = LocalContext(run)
    out = run_pretrain(_cfg(PretrainConfig, tiny_store, epochs=12, lr=3e-3, lr_schedule="plateau"), ctx)
    return run, ctx, out


def test_pretrain_lowers_the_ccl_loss(pretrain_run):
    run, ctx, out = pretrain_run
    losses = [r["loss"] for r in ctx.reports]
    assert len(losses) == 12 and out["step"] == 12 * 8
    # self-positive + centred label windows: measured 0.87 of the first epoch (0.83 with block windows)
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
    by_score = sorted(ctx.reports, key=lambda r: r["score"])
    kept = {r["epoch"] for r in by_score[:2]} | {12}  # keep_checkpoints=2 best + the latest
    assert sorted(read_meta(d)["epoch"] for d in checkpoint_dirs(run)) == sorted(kept)
    assert [int(r["epoch"]) for r in MetricsLog(run).rows()] == list(range(1, 13))
    assert (run / "config.json").is_file()


def test_finetune_from_pretrain_logs_keys_and_lowers_l1(pretrain_run, tiny_store, tmp_path, caplog):
    run, _, _ = pretrain_run
    ctx = LocalContext(tmp_path)
    with caplog.at_level(logging.INFO, logger="cclray"):
        out = run_finetune(_cfg(FinetuneConfig, tiny_store, epochs=4, init=str(run)), ctx)
    assert out["init"]["new"] == ["synth_head.bias", "synth_head.weight"]
    assert out["init"]["dropped"] and all(k.startswith("proj_head.") for k in out["init"]["dropped"])
    assert "new ['synth_head.bias', 'synth_head.weight']" in caplog.text and "dropped ['proj_head." in caplog.text
    losses = [r["loss"] for r in ctx.reports]
    assert losses[-1] < 0.8 * losses[0], losses
    assert ctx.reports[-1]["val_l1"] < ctx.reports[0]["val_l1"]
    assert 0 < ctx.reports[-1]["val_ssim"] <= 1
    model, cfg, meta = load_synthesizer(tmp_path, device="cpu")
    assert not model.training and cfg.init == str(run) and meta["stage"] == "finetune"
    assert meta["checkpoint"] == str(find_checkpoint(tmp_path, "best"))
    x = torch.zeros(1, 2, 16, 16, 16)
    assert model(x).shape == (1, 2, 16, 16, 16)


def test_scratch_finetune_is_the_baseline_and_load_synthesizer_refuses_pretrain(pretrain_run, tiny_store, tmp_path):
    out = run_finetune(_cfg(FinetuneConfig, tiny_store, epochs=1, steps_per_epoch=2), LocalContext(tmp_path))
    assert out["init"] is None and out["step"] == 2
    with pytest.raises(CheckpointError, match="'pretrain' checkpoint"):
        load_synthesizer(pretrain_run[0])


class _Killed(Exception):
    pass


class _KilledAfter(LocalContext):
    """A run killed right after its ``n``-th checkpoint is written."""

    def __init__(self, run_dir, n):
        super().__init__(run_dir)
        self.n = n

    def report(self, metrics, checkpoint_dir=None, name=None, keep=None):
        super().report(metrics, checkpoint_dir, name, keep)
        if len(self.reports) == self.n:
            raise _Killed


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tiny_store, tmp_path, schedule):
    cfg = _cfg(FinetuneConfig, tiny_store, epochs=4, steps_per_epoch=3, lr_schedule=schedule)
    straight = LocalContext(tmp_path / "a")
    run_finetune(cfg, straight)
    with pytest.raises(_Killed):
        run_finetune(cfg, _KilledAfter(tmp_path / "b", 2))  # killed after epoch 2
    resumed = LocalContext(tmp_path / "b", resume_from=tmp_path / "b")
    out = run_finetune(cfg, resumed)
    assert (out["start_epoch"], out["start_step"]) == (2, 6)
    assert [r["step"] for r in resumed.reports] == [9, 12]
    assert out["weight_checksum"] == straight.reports[-1]["weight_checksum"]  # optimizer, scheduler, RNG restored
    assert out["val_l1"] == pytest.approx(straight.reports[-1]["val_l1"], rel=1e-6)
    assert [int(r["epoch"]) for r in MetricsLog(tmp_path / "b").rows()] == [1, 2, 3, 4]
    assert read_meta(find_checkpoint(tmp_path / "b"))["step"] == 12


def test_missing_constraint_is_a_config_error(tiny_store, tmp_path):
    with pytest.raises(ConfigError, match="constraint='t1w-k5'.*cclray constraint"):
        run_pretrain(_cfg(PretrainConfig, tiny_store, epochs=1, constraint="t1w-k5"), LocalContext(tmp_path))


@pytest.mark.parametrize("schedule, expect", [
    ("cosine", lambda lrs: all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-6)),
    ("constant", lambda lrs: lrs == [1e-3] * 3),
])
def test_lr_schedules(tiny_store, tmp_path, schedule, expect):
    """Both stages default to cosine (a noisy train or val loss is no plateau signal); constant is kept flat."""
    assert PretrainConfig.from_dict({"store": "s"}).lr_schedule == "cosine"
    assert FinetuneConfig.from_dict({"store": "s"}).lr_schedule == "cosine"
    ctx = LocalContext(tmp_path)
    run_pretrain(_cfg(PretrainConfig, tiny_store, epochs=3, steps_per_epoch=1, lr_schedule=schedule), ctx)
    lrs = [r["lr"] for r in ctx.reports]  # lr after each epoch's scheduler step
    assert expect(lrs), lrs


def test_unknown_lr_schedule_is_refused():
    with pytest.raises(ConfigError, match="lr_schedule='step'.*plateau"):
        PretrainConfig.from_dict({"store": "s", "lr_schedule": "step"})


def test_channels_last_trains_the_same_net_as_contiguous(tiny_store, tmp_path):
    """channels_last_3d is a layout, not a different computation: same losses to float tolerance."""
    cfg = _cfg(FinetuneConfig, tiny_store, epochs=2, steps_per_epoch=2, val_split=None)
    a, b = LocalContext(tmp_path / "cl"), LocalContext(tmp_path / "contig")
    run_finetune(cfg, a)
    run_finetune(cfg.replace(channels_last=False), b)
    assert [r["loss"] for r in a.reports] == pytest.approx([r["loss"] for r in b.reports], rel=1e-3)
    net = load_synthesizer(find_checkpoint(tmp_path / "cl"))[0]  # the checkpoint loads into a plain model
    assert all(p.is_contiguous() for p in net.parameters())


def test_cpu_bf16_autocast_is_opt_in_and_trains(tiny_store, tmp_path):
    from cclray.engine import autocast_settings
    cfg = _cfg(FinetuneConfig, tiny_store, epochs=1, steps_per_epoch=2, val_split=None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_settings(cfg, cpu) == (torch.bfloat16, False)
    assert autocast_settings(cfg.replace(cpu_bf16=True), cpu) == (torch.bfloat16, True)
    assert autocast_settings(cfg, cuda) == (torch.float16, True)
    assert autocast_settings(cfg.replace(amp=False), cuda) == (torch.float16, False)
    ctx = LocalContext(tmp_path)
    out = run_finetune(cfg.replace(cpu_bf16=True), ctx)
    assert torch.isfinite(torch.tensor(out["loss"])) and out["loss"] > 0


def test_to_channels_last_keeps_1x1x1_kernels_in_ddp_friendly_strides():
    from cclray.config import ModelConfig
    from cclray.models import build_synthesizer, to_channels_last

    net = to_channels_last(build_synthesizer(ModelConfig(widths=(8, 16, 32))))
    five = [p for p in net.parameters() if p.dim() == 5]
    big = [p for p in five if p.shape[2:] != (1, 1, 1)]
    one = [p for p in five if p.shape[2:] == (1, 1, 1)]
    assert big and one
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous() for p in big)
    # autograd makes 1×1×1 grads with plain strides; DDP warns and copies unless the weight has them too
    assert all(p.stride() == torch.empty(p.shape).stride() for p in one)
