"""Training patches from several stores (a stage config's ``extra``): the subjects of both, disjoint across
ranks; every bad entry refused naming the store and the fix; the JSON round trip; a 2-store pretraining."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cclray.cli import build_parser
from cclray.commands.training import build_config
from cclray.config import ExtraSource, FinetuneConfig, PretrainConfig
from cclray.data.sampling import pass_visits
from cclray.data.sources import training_sources
from cclray.engine_finetune import finetune_dataset
from cclray.engine_pretrain import pretrain_dataset
from cclray.runs import read_run_config, write_run_config
from conftest import make_tiny_store
from data_prep.config import ConfigError
from data_prep.store import Store, StoreError

TINY = {"model": {"widths": [8, 16, 32], "proj_stride": 2},
        "patch": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
        "loss": {"n_anchors": 16, "top_k": 64}, "steps_per_epoch": 4}
SMALL = {"pretrain": 3, "finetune": 1, "val": 1}


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second tiny store (3 pretrain subjects of 16³, ids S00.. like the first store's)."""
    return make_tiny_store(tmp_path_factory.mktemp("other") / "b.zarr", shape=(16, 16, 16), splits=SMALL, seed=1)


def _cfg(cls, store, *extra, **kw):
    return cls.from_dict({"store": store["url"], **TINY, "extra": list(extra), **kw})


def _rank(rank, world):
    return SimpleNamespace(rank=rank, world_size=world)


def test_two_stores_give_one_cohort_split_disjointly_across_ranks(tiny_store, other):
    cfg = _cfg(PretrainConfig, tiny_store, f"{other['url']}#pretrain")
    main, extra = training_sources(cfg)
    assert main.subjects == tuple(tiny_store["splits"]["pretrain"]) and extra.subjects == ("S00", "S01", "S02")
    shards = [set(pretrain_dataset(cfg, _rank(r, 2)).subjects) for r in range(2)]
    assert not shards[0] & shards[1]
    every = {*tiny_store["splits"]["pretrain"], "extra1/S00", "extra1/S01", "extra1/S02"}
    assert shards[0] | shards[1] == every  # 7 subjects, the same ids in both stores kept apart
    assert all(any(s.startswith("extra1/") for s in sh) and any("/" not in s for s in sh) for sh in shards)
    samples = list(pretrain_dataset(cfg.replace(steps_per_epoch=8), _rank(0, 1)))  # 16 samples, 2 passes of 7
    assert {s["sid"] for s in samples} == every
    assert all(s["input"].shape == (2, 16, 16, 16) and s["constraint"].shape == (16, 16, 16) for s in samples)


def test_finetune_takes_extra_stores_too(tiny_store, other):
    cfg = _cfg(FinetuneConfig, tiny_store, {"store": other["url"], "split": "pretrain,finetune"})
    ds = finetune_dataset(cfg, _rank(0, 1))
    assert len(ds.subjects) == 2 + 4 and "extra1/S03" in ds.subjects
    assert next(iter(ds))["target"].shape == (2, 16, 16, 16)


def test_pass_visits_weights():
    items = list(range(10))
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert pass_visits(rng, items, [1.0] * 10) == items and rng.bit_generator.state == state  # one store: as before
    assert pass_visits(rng, [0, 1], [1.0, 3.0]) == [0, 1, 1, 1]
    passes = [pass_visits(rng, items, [1.0] * 5 + [0.2] * 5) for _ in range(400)]
    light = np.mean([sum(v >= 5 for v in p) for p in passes])
    assert 0.8 < light < 1.2 and all(sum(v < 5 for v in p) == 5 for p in passes)  # 5 x 0.2 = 1 a pass
    assert all(pass_visits(rng, [7], [0.01]) == [7] for _ in range(20))  # never an empty pass


def _broken(path, **attrs):
    store = make_tiny_store(path, shape=(16, 16, 16), splits={"pretrain": 2})
    s = Store(store["url"], mode="r+")
    if attrs.pop("drop_constraint", False):
        for sid in s.subjects():
            del s.root[f"subjects/{sid}/constraint"]
        attrs["constraints"] = {}
    s.update_attrs(**attrs)
    return store["url"]


@pytest.mark.parametrize("entry, error, words", [
    ("{tmp}/nowhere.zarr#pretrain", StoreError, r"extra\[0\].*no cclray store at .*nowhere.zarr.*cclray prep"),
    ("{other}#pretrian", StoreError, r"extra\[0\].*has no split 'pretrian'; it has \['finetune', 'pretrain'"),
    ("{other}#", ConfigError, "STORE#SPLIT"),
    ("{other}", ConfigError, "STORE#SPLIT"),
    ("{tiny}#pretrain", ConfigError, "drawn twice"),
    ("no-constraint", ConfigError, r"constraint \(in PretrainConfig.extra\[0\]\)=.*not in .*`cclray constraint`"),
    ("other-k", ConfigError, r"k=30; an earlier store's has .* k=20"),
    ("old-recipe", ConfigError, r"extra\[0\].*recipe 1"),
    ("channels", StoreError, r"extra\[0\].*channels \['t1w', 't2w'"),
    ("spacing", ConfigError, r"\[1.0, 1.0, 1.0\] mm grid, .* on \[2.0, 2.0, 2.0\] mm"),
])
def test_bad_extra_entries_are_refused_naming_the_store(tiny_store, other, tmp_path, entry, error, words):
    from data_prep.constraint import RECIPE
    from data_prep.schema import CONTRASTS

    name = tiny_store["constraint"]
    broken = {"no-constraint": {"drop_constraint": True},
              "other-k": {"constraints": {name: {"contrasts": list(CONTRASTS), "k": 30, "seed": 0, "recipe": RECIPE}}},
              "old-recipe": {"constraints": {name: {"contrasts": list(CONTRASTS), "k": 20, "seed": 0, "recipe": 1}}},
              "channels": {"channels": ["t1w", "t2w", "t1gd", "flair"]},
              "spacing": {"spacing": [1.0, 1.0, 1.0]}}
    main = tiny_store
    if entry in broken:
        if entry == "spacing":  # the main store on 2 mm: a copy, the session store stays as it is
            main = {"url": _broken(tmp_path / "main.zarr", spacing=[2.0, 2.0, 2.0])}
        entry = _broken(tmp_path / "bad.zarr", **broken[entry]) + "#pretrain"
    entry = entry.format(tmp=tmp_path, other=other["url"], tiny=tiny_store["url"])
    with pytest.raises(error, match=words):
        training_sources(_cfg(PretrainConfig, main, entry))


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig])
def test_extra_round_trips_through_the_run_config(cls, tiny_store, other, tmp_path):
    cfg = _cfg(cls, tiny_store, f"{other['url']}#pretrain", {"store": "/x.zarr", "split": "a,b", "weight": 0.25})
    assert cfg.extra == (ExtraSource(other["url"], "pretrain"), ExtraSource("/x.zarr", "a,b", 0.25))
    assert cls.from_json(cfg.to_json()) == cfg
    write_run_config(tmp_path, cfg.stage, cfg)
    assert read_run_config(tmp_path) == (cfg.stage, cfg)
    with pytest.raises(ConfigError, match="weight=0"):
        cfg.replace(extra=[{"store": "/x.zarr", "split": "a", "weight": 0}])


def test_cli_extra_store_flag_makes_paths_absolute(tiny_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv = ["pretrain", "--store", tiny_store["url"], "--out", str(tmp_path / "run"),
            "--extra-store", "rel/b.zarr#pretrain", "--extra-store", "/abs/c.zarr#x,y"]
    cfg = build_config(build_parser(argv).parse_args(argv), "pretrain")
    assert [(e.store, e.split) for e in cfg.extra] == [(str(tmp_path / "rel/b.zarr"), "pretrain"),
                                                       ("/abs/c.zarr", "x,y")]


def test_two_store_pretraining_runs_without_ray(tiny_store, other, tmp_path):
    from cclray.engine import LocalContext
    from cclray.engine_pretrain import run_pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = LocalContext(tmp_path)
        out = run_pretrain(_cfg(PretrainConfig, tiny_store, f"{other['url']}#pretrain", epochs=1), ctx)
    finally:
        torch.set_num_threads(threads)
    assert out["step"] == 4 and np.isfinite(out["loss"])
    seen = set(ctx.reports[-1]["rank_sids"][0])  # 8 patches: one pass over the 7 subjects of both stores
    assert any(s.startswith("extra1/") for s in seen) and any("/" not in s for s in seen) and len(seen) == 7
