"""Ray Train: 2 CPU workers pretrain (on two stores), then finetune from it, then resume; ranks agree and
shard subjects."""
import pytest

from cclray.checkpoint import read_meta
from cclray.runs import MetricsLog, checkpoint_dirs, find_checkpoint, load_synthesizer
from cclray.train import RunExistsError, fit
from conftest import make_tiny_store

TINY = {"model": {"widths": [8, 16, 32], "proj_stride": 2},
        "patch": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
        "loss": {"n_anchors": 8, "top_k": 32}, "steps_per_epoch": 3, "val_samples": 4}


def _check_ranks(metrics, subjects):
    assert metrics["rank_checksums"][0] == metrics["rank_checksums"][1]  # DDP kept the weights equal
    seen = [set(s) for s in metrics["rank_sids"]]
    assert len(seen) == 2 and all(seen)
    if len(subjects) >= 2:
        assert not seen[0] & seen[1]  # each rank read its own subjects
    assert set().union(*seen) <= set(subjects)


@pytest.mark.ray
def test_two_workers_pretrain_finetune_and_resume(ray_session, tiny_store, tmp_path):
    store = tiny_store["url"]
    other = make_tiny_store(tmp_path / "other.zarr", shape=(16, 16, 16), splits={"pretrain": 3}, seed=1)
    pre_cfg = {"store": store, **{k: v for k, v in TINY.items() if k != "val_samples"}, "epochs": 2,
               "extra": [f"{other['url']}#pretrain"]}  # a second store: 4 + 3 subjects, one cohort
    pre = fit("pretrain", pre_cfg, tmp_path / "pre", num_workers=2)
    assert pre["metrics"]["step"] == 6 and pre["metrics"]["epoch"] == 2
    both = tiny_store["splits"]["pretrain"] + [f"extra1/{sid}" for sid in other["splits"]["pretrain"]]
    _check_ranks(pre["metrics"], both)
    assert set().union(*map(set, pre["metrics"]["rank_sids"])) == set(both)  # 6 patches a rank: all 7 seen
    assert len(checkpoint_dirs(tmp_path / "pre")) == 2 and (tmp_path / "pre" / "config.json").is_file()
    with pytest.raises(RunExistsError, match="--resume"):
        fit("pretrain", pre_cfg, tmp_path / "pre", num_workers=2)

    ft_cfg = {"store": store, **TINY, "epochs": 1, "init": str(tmp_path / "pre")}
    ft = fit("finetune", ft_cfg, tmp_path / "ft", num_workers=2)
    assert ft["metrics"]["step"] == 3 and -1 <= ft["metrics"]["val_ssim"] <= 1
    _check_ranks(ft["metrics"], tiny_store["splits"]["finetune"])

    again = fit("finetune", {**ft_cfg, "epochs": 2}, tmp_path / "ft", num_workers=2, resume=True)
    assert again["metrics"]["step"] == 6 and again["metrics"]["epoch"] == 2  # continued, not restarted
    _check_ranks(again["metrics"], tiny_store["splits"]["finetune"])
    assert [int(r["step"]) for r in MetricsLog(tmp_path / "ft").rows()] == [3, 6]
    assert read_meta(find_checkpoint(tmp_path / "ft", "latest"))["step"] == 6
    model, cfg, meta = load_synthesizer(tmp_path / "ft")
    assert cfg.num_workers == 2 and meta["stage"] == "finetune" and not model.training
