"""Streaming patch dataset: shapes, foreground sampling, sharding, determinism, flips, workers, padding."""
import numpy as np
import pytest
import torch

from cclray.config import PatchConfig
from cclray.data import PatchDataset, make_loader, shard_subjects, worker_count
from cclray.data.sampling import box_around, choose_centre, cut, foreground_sample
from data_prep.config import ConfigError
from data_prep.store import Store

SHAPE = (20, 24, 18)
CONSTRAINT = "t1w+t1gd+t2w+flair-k20"
INPUTS, TARGETS = ("t1gd", "flair"), ("t1w", "t2w")


def _ramp(shape):
    """1 + x + 2y + 4z: integer (exact in float16), increasing along every axis by 1, 2, 4."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return (1 + x + 2 * y + 4 * z).astype(np.float32)


def _make_store(path, n=4, shape=SHAPE, mask_box=((2, -2), (2, -2), (2, -2))):
    """Channels (t1w, t1gd, t2w, flair) = (r, r, 3r, 2r) inside the mask, 0 outside; constraint = r."""
    store = Store.create(str(path), {"test": True})
    sids = [f"S{i}" for i in range(n)]
    for sid in sids:
        mask = np.zeros(shape, bool)
        mask[tuple(slice(a, b) for a, b in mask_box)] = True
        r = _ramp(shape) * mask
        image = np.stack([r, r, 3 * r, 2 * r])
        store.write_subject(sid, image, mask, {"affine": np.eye(4)},
                            constraints={CONSTRAINT: r.astype(np.uint8)})
    store.update_attrs(subjects=sids)
    return str(path), sids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("patches") / "s.zarr")


def _dataset(tiny, **kw):
    url, sids = tiny
    ds_kw = {k: kw.pop(k) for k in ("rank", "world_size", "seed", "epoch", "targets", "constraint") if k in kw}
    cfg = PatchConfig(**{"patch_size": (8, 8, 8), "samples_per_epoch": 8, "num_workers": 0, **kw})
    ds_kw.setdefault("targets", TARGETS)
    ds_kw.setdefault("constraint", CONSTRAINT)
    return PatchDataset(url, sids, cfg, INPUTS, **ds_kw)


def test_shapes_and_dtypes(tiny):
    samples = list(_dataset(tiny, patch_size=(8, 16, 8)))
    assert len(samples) == 8
    s = samples[0]
    assert s["input"].shape == (2, 8, 16, 8) and s["input"].dtype == torch.float32
    assert s["target"].shape == (2, 8, 16, 8) and s["target"].dtype == torch.float32
    assert s["mask"].shape == (8, 16, 8) and s["mask"].dtype == torch.bool
    assert s["constraint"].shape == (8, 16, 8) and s["constraint"].dtype == torch.int64
    assert s["sid"] in tiny[1]
    bare = next(iter(_dataset(tiny, targets=(), constraint=None)))
    assert set(bare) == {"input", "mask", "sid"}


def test_foreground_fraction_one_puts_every_patch_on_the_brain(tmp_path):
    """A 3-voxel brain in a 20x24x18 crop: fg_fraction=1 always hits it, fg_fraction=0 mostly misses."""
    url, sids = _make_store(tmp_path / "small.zarr", n=2, mask_box=((15, 18), (2, 5), (12, 15)))
    hits = {}
    for frac in (1.0, 0.0):
        cfg = PatchConfig(patch_size=(6, 6, 6), fg_fraction=frac, samples_per_epoch=40, num_workers=0)
        hits[frac] = [bool(s["mask"].any()) for s in PatchDataset(url, sids, cfg, INPUTS)]
    assert all(hits[1.0])
    assert not all(hits[0.0])  # the check above could fail


def test_choose_centre_with_fraction_one_is_always_foreground():
    rng = np.random.default_rng(0)
    mask = np.zeros(SHAPE, bool)
    mask[3:5, 10:12, 7] = True
    fg = foreground_sample(mask, rng)
    assert all(mask[tuple(choose_centre(rng, SHAPE, fg, 1.0))] for _ in range(200))
    assert not all(mask[tuple(choose_centre(rng, SHAPE, fg, 0.0))] for _ in range(200))


@pytest.mark.parametrize("centre, shape, size, box", [
    # centre       shape        size        clamped box
    ((10, 0, 17), (20, 24, 18), (8, 8, 8), ((6, 14), (0, 8), (10, 18))),
    ((0, 23, 5), (20, 24, 18), (30, 4, 3), ((0, 20), (20, 24), (4, 7))),  # patch > volume: whole axis
])
def test_box_around_clamps_inside_the_volume(centre, shape, size, box):
    assert box_around(centre, shape, size) == box


def test_cut_pads_centred_with_fill():
    arr = np.ones((2, 4, 4, 4), np.float32)
    out = cut(arr, ((0, 4), (0, 4), (1, 3)), (4, 6, 5))
    assert out.shape == (2, 4, 6, 5)
    assert out[:, :, 1:5, 1:3].min() == 1 and out.sum() == 2 * 4 * 4 * 2


@pytest.mark.parametrize("subjects, world, expected", [
    # subjects                 world  shards (rank 0, 1, ...)
    (["a", "b", "c", "d", "e"], 2, [["a", "c", "e"], ["b", "d"]]),
    (["a", "b", "c"], 3, [["a"], ["b"], ["c"]]),
    (["a", "b"], 3, [["a"], ["b"], ["a"]]),  # fewer subjects than ranks: round-robin, one each
])
def test_shard_subjects(subjects, world, expected):
    assert [shard_subjects(subjects, r, world) for r in range(world)] == expected


def test_ranks_see_disjoint_subjects_and_equal_counts(tiny):
    seen, counts = [], []
    for rank in range(2):
        samples = list(_dataset(tiny, rank=rank, world_size=2, samples_per_epoch=10, patches_per_volume=1))
        seen.append({s["sid"] for s in samples})
        counts.append(len(samples))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(tiny[1])
    assert counts == [5, 5]


@pytest.mark.parametrize("n, workers, batch", [(10, 2, 2), (7, 2, 2), (9, 3, 4), (3, 4, 2), (32, 1, 2)])
def test_worker_counts_deal_whole_batches(n, workers, batch):
    counts = [worker_count(n, workers, w, batch) for w in range(workers)]
    assert sum(counts) == n
    assert sum(-(-c // batch) for c in counts) == -(-n // batch)  # same batch count as one worker


def _stack(samples):
    return np.concatenate([s["input"].numpy().ravel() for s in samples])


def test_deterministic_per_seed_and_epoch(tiny):
    a = _stack(_dataset(tiny, seed=3, epoch=1))
    assert np.array_equal(a, _stack(_dataset(tiny, seed=3, epoch=1)))
    assert not np.array_equal(a, _stack(_dataset(tiny, seed=3, epoch=2)))
    assert not np.array_equal(a, _stack(_dataset(tiny, seed=4, epoch=1)))
    ds = _dataset(tiny, seed=3, epoch=0)
    ds.set_epoch(1)
    assert np.array_equal(a, _stack(ds))


def test_flips_keep_input_target_mask_constraint_aligned(tiny):
    flipped = np.zeros(3, int)
    for s in _dataset(tiny, samples_per_epoch=48, fg_fraction=1.0, augment=True, rotate_deg=0.0, scale=(1.0, 1.0)):
        x, y, m, k = (s[key].numpy() for key in ("input", "target", "mask", "constraint"))
        r = y[0]
        assert np.array_equal(y[1], 3 * r) and np.array_equal(k, r.astype(np.int64))
        assert np.array_equal(m, r > 0)
        # inputs keep their intensities exactly (no jitter): the stored ramp times the channel's factor
        for c, f in enumerate((1.0, 2.0)):
            np.testing.assert_allclose(x[c], f * r, atol=1e-3)
        for axis, step in enumerate((1, 2, 4)):
            d = np.diff(r, axis=axis)[np.diff(m, axis=axis) == 0]
            inner = d[np.abs(d) == step]
            assert inner.size and (np.all(inner == step) or np.all(inner == -step))
            flipped[axis] += inner[0] < 0
    assert np.all((flipped > 0) & (flipped < 48))  # each axis flipped sometimes, not always


def test_rotation_and_scale_keep_input_target_mask_constraint_aligned(tiny, monkeypatch):
    """augment with the default rotation (15 deg) and scale (0.95-1.05): the region read grows by the margin,
    the channels keep their ratios (one linear transform), labels stay in the stored set, the mask is the
    nearest-neighbour one, and patches are really rotated or scaled (non-integer ramp values)."""
    from data_prep.reader import PatchReader

    boxes = []
    real = PatchReader.read
    monkeypatch.setattr(PatchReader, "read", lambda self, sid, name, box=None:
                        (boxes.append(box) if name == "image" else None) or real(self, sid, name, box))
    stored = set(np.unique(_ramp(SHAPE).astype(np.uint8))) | {0}
    off_grid = 0
    for s in _dataset(tiny, samples_per_epoch=12, fg_fraction=1.0, augment=True):
        x, y, m, k = (s[key].numpy() for key in ("input", "target", "mask", "constraint"))
        assert x.shape == (2, 8, 8, 8) and m.shape == k.shape == (8, 8, 8)
        r = y[0]
        np.testing.assert_allclose(x[0], r, rtol=1e-5, atol=1e-4)  # t1gd == t1w
        np.testing.assert_allclose(x[1], 2 * r, rtol=1e-5, atol=1e-4)  # flair == 2 t1w
        np.testing.assert_allclose(y[1], 3 * r, rtol=1e-5, atol=1e-4)  # t2w == 3 t1w
        assert set(np.unique(k)) <= stored and m.any()
        assert np.array_equal(m[k > 0], np.ones(int((k > 0).sum()), bool))  # labels > 0 only inside the mask
        off_grid += np.abs(r - np.round(r)).max() > 1e-3
    assert off_grid >= 10
    assert all(b - a == 14 for box in boxes for a, b in box)  # 8 + 2 * 3 margin voxels read, not 8
    # a volume (20, 24, 18) smaller than the source box (26^3) of a 16^3 patch: padded, still consistent
    # (test_augment.py::test_padding_is_left_out_of_the_mask checks the mask there)
    for s in _dataset(tiny, patch_size=(16, 16, 16), samples_per_epoch=4, augment=True):
        x, y, m = s["input"].numpy(), s["target"].numpy(), s["mask"].numpy()
        assert x.shape == (2, 16, 16, 16) and m.any()
        np.testing.assert_allclose(y[1], 3 * y[0], rtol=1e-5, atol=1e-4)


def test_default_batches_mix_subjects_and_do_not_augment(tiny):
    """patches_per_volume=1 (default): consecutive patches, so every batch, come from different subjects
    (4 subjects, batch 4); augment=False (default): no flips."""
    ds = _dataset(tiny, samples_per_epoch=16, fg_fraction=1.0)
    assert ds.cfg.patches_per_volume == 1 and not ds.cfg.augment
    loader = make_loader(ds, ds.cfg.replace(batch_size=4))
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert len(set(batch["sid"])) == 4
        for y in batch["target"].numpy():
            r = y[0]
            m = r > 0
            for axis, step in enumerate((1, 2, 4)):
                d = np.diff(r, axis=axis)[np.diff(m, axis=axis) == 0]
                inner = d[np.abs(d) == step]
                assert inner.size == 0 or np.all(inner == step)  # never flipped


def test_region_reads_serve_several_patches(tiny, monkeypatch):
    from data_prep.reader import PatchReader

    calls = []
    real = PatchReader.read
    monkeypatch.setattr(PatchReader, "read", lambda self, sid, name, box=None:
                        calls.append(name) or real(self, sid, name, box))
    n = len(list(_dataset(tiny, samples_per_epoch=12, patches_per_volume=4, constraint=None)))
    assert n == 12 and calls.count("image") == 3


def test_patch_larger_than_volume_pads(tiny):
    for s in _dataset(tiny, patch_size=(24, 32, 16), samples_per_epoch=4, augment=False):
        x, m = s["input"].numpy(), s["mask"].numpy()
        assert x.shape == (2, 24, 32, 16)
        # x: 20 -> 24 (pad 2 | 2), y: 24 -> 32 (pad 4 | 4), z: 16 of 18 cut, no pad
        assert not m[:2].any() and not m[-2:].any() and not m[:, :4].any() and not m[:, -4:].any()
        assert not x[:, :2].any() and not x[:, :, -4:].any()
        assert m.sum() > 0


def test_loader_with_two_forkserver_workers(tiny):
    cfg = PatchConfig(patch_size=(8, 8, 8), batch_size=2, samples_per_epoch=14, num_workers=2)
    url, sids = tiny
    ds = PatchDataset(url, sids, cfg, INPUTS, TARGETS, CONSTRAINT, rank=1, world_size=2)
    loader = make_loader(ds, cfg)
    epochs = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)  # persistent workers must see it
        batches = list(loader)
        assert len(batches) == len(loader) == 4  # 7 samples -> 4 batches, as with one worker
        assert sum(b["input"].shape[0] for b in batches) == 7
        assert batches[0]["input"].shape == (2, 2, 8, 8, 8) and len(batches[0]["sid"]) == 2
        assert {sid for b in batches for sid in b["sid"]} <= set(shard_subjects(sids, 1, 2))
        epochs.append(torch.cat([b["input"].flatten() for b in batches]))
    assert torch.equal(epochs[0], epochs[2]) and not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize("bad, match", [
    ({"patch_size": (0, 8, 8)}, "patch_size"),
    ({"fg_fraction": 1.5}, "fg_fraction"),
    ({"patches_per_volume": 0}, "patches_per_volume"),
    ({"region_factor": 0.5}, "region_factor"),
    ({"num_workers": -1}, "num_workers"),
    ({"batch_sise": 2}, "batch_size"),  # typo -> did-you-mean
])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        PatchConfig.from_dict(bad)


def test_dataset_refuses_fewer_samples_than_ranks(tiny):
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        _dataset(tiny, samples_per_epoch=1, rank=0, world_size=2)
