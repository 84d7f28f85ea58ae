import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from data_prep.config import ConfigError
from data_prep.constraint import (
    RECIPE,
    ConstraintSpec,
    add_constraint,
    check_constraint,
    constraint_map,
    label_r2,
    tv_denoise,
)
from data_prep.schema import CONTRASTS
from data_prep.store import Store

# tissue -> mean intensity per contrast (t1w, t1gd, t2w, flair); distinct in every pair of contrasts
TISSUES = np.array([[600, 650, 900, 700], [800, 850, 700, 500], [200, 220, 2000, 100], [500, 1400, 1500, 1300]], float)


def phantom(shape=(24, 24, 24), noise=0.0, seed=0):
    """``(4, X, Y, Z)`` piecewise-constant volumes of 4 tissues (+ Gaussian noise of sd ``noise`` x 100),
    ``(X, Y, Z)`` brain mask (an ellipsoid), and the ``(X, Y, Z)`` ground-truth tissue 1..4 (0 outside)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))  # (3, X, Y, Z)
    r = np.sqrt(((g / np.array([0.9, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
    mask = r < 1
    truth = np.where(r < 0.45, 1, np.where(r < 0.7, 2, np.where(g[0] < 0, 3, 4)))
    lesion = ((g - np.array([0.35, 0.3, 0.0])[:, None, None, None]) ** 2).sum(0) < 0.2 ** 2
    truth = np.where(lesion, 4, np.where(truth == 4, 2, truth)) * mask  # tissue 4 = a lesion
    vols = TISSUES[np.clip(truth - 1, 0, None)].transpose(3, 0, 1, 2) * mask
    vols = vols + noise * 100 * rng.normal(size=vols.shape) * mask
    return vols.astype(np.float32), mask, truth.astype(np.uint8)


# ------------------------------------------------------------------------------------------ the map
@pytest.mark.parametrize("k", [2, 5, 12])
def test_labels_are_1_to_k_inside_and_0_outside(k):
    vols, mask, _ = phantom(noise=0.5)
    labels = constraint_map(vols, mask, k=k, seed=0)
    assert labels.dtype == np.uint8 and labels.shape == mask.shape
    assert set(np.unique(labels[mask])) == set(range(1, k + 1))
    assert not labels[~mask].any()


def test_same_seed_gives_identical_labels():
    vols, mask, _ = phantom(noise=0.5)
    a = constraint_map(vols, mask, k=8, seed=3)
    b = constraint_map(vols.copy(), mask.copy(), k=8, seed=3)
    assert np.array_equal(a, b)


def test_pca_and_kmeans_run_on_one_thread_whatever_the_callers_limit(monkeypatch):
    """k-means' float sums follow its OpenMP chunks, so its labels depended on the thread count (one real subject,
    1 vs 2 threads: ARI 0.99997); the map fits on one BLAS/OpenMP thread, whatever the caller allows."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    for cls, name in ((KMeans, "fit"), (PCA, "fit_transform")):
        def recorded(self, *a, _original=getattr(cls, name), **kw):
            seen.append((type(self).__name__, {p["num_threads"] for p in threadpool_info()}))
            return _original(self, *a, **kw)
        monkeypatch.setattr(cls, name, recorded)
    vols, mask, _ = phantom(noise=0.5)
    with threadpool_limits(limits=2):
        callers = [p["num_threads"] for p in threadpool_info()]
        two = constraint_map(vols, mask, k=8, seed=3)
        assert [p["num_threads"] for p in threadpool_info()] == callers  # the caller's limits are back
    assert {name for name, _ in seen} == {"KMeans", "PCA"}
    assert all(threads == {1} for _, threads in seen), seen
    with threadpool_limits(limits=1):
        assert np.array_equal(constraint_map(vols, mask, k=8, seed=3), two)


@pytest.mark.parametrize("channels, noise, min_ari", [
    # (contrast indices, noise sd in units of 100, ARI vs the planted tissues)
    ([0, 1, 2, 3], 0.0, 0.95),
    ([0, 1, 2, 3], 0.3, 0.90),
    ([1, 3], 0.0, 0.95),  # T1Gd + FLAIR alone separate all four tissues
])
def test_recovers_planted_tissues(channels, noise, min_ari):
    vols, mask, truth = phantom(noise=noise)
    labels = constraint_map(vols[channels], mask, k=4, seed=0)
    assert adjusted_rand_score(truth[mask], labels[mask]) >= min_ari


@pytest.mark.parametrize("scale, offset", [(3.0, 0.0), (0.01, 5.0), (250.0, -40.0)])
def test_invariant_to_per_contrast_affine_intensity(scale, offset):
    vols, mask, _ = phantom(noise=0.5)
    changed = vols.copy()
    changed[1] = np.where(mask, scale * vols[1] + offset, 0)  # one contrast rescaled inside the brain
    changed[3] = np.where(mask, 2.0 * vols[3] + 7.0, 0)
    a = constraint_map(vols, mask, k=6, seed=0)
    b = constraint_map(changed, mask, k=6, seed=0)
    assert (a == b).mean() >= 0.999


def test_subsampled_fit_matches_full_fit():
    vols, mask, _ = phantom(noise=0.3)
    full = constraint_map(vols, mask, k=4, seed=0, fit_samples=10**9)
    sub = constraint_map(vols, mask, k=4, seed=0, fit_samples=800)  # of 3920 brain voxels
    assert mask.sum() > 4 * 800
    assert adjusted_rand_score(full[mask], sub[mask]) >= 0.98


def test_label_order_is_canonical():
    """Labels rise with the first principal component: relabelled, not k-means' arbitrary ids."""
    vols, mask, truth = phantom(noise=0.0)
    labels = constraint_map(vols, mask, k=4, seed=0)
    for seed in (1, 2):
        assert np.array_equal(constraint_map(vols, mask, k=4, seed=seed), labels)


@pytest.mark.parametrize("shape_v, shape_m, k, match", [
    ((4, 8, 8, 8), (8, 8, 7), 4, "same grid"),
    ((8, 8, 8), (8, 8, 8), 4, "same grid"),
    ((2, 8, 8, 8), (8, 8, 8), 1, "2 <= k"),
])
def test_bad_map_inputs(shape_v, shape_m, k, match):
    with pytest.raises(ValueError, match=match):
        constraint_map(np.ones(shape_v), np.ones(shape_m, bool), k=k)


def test_tiny_mask_names_the_fix():
    mask = np.zeros((8, 8, 8), bool)
    mask[2, 2, 2:5] = True
    with pytest.raises(ValueError, match="lower k"):
        constraint_map(np.ones((2, 8, 8, 8)), mask, k=5)


def test_label_r2_by_hand():
    labels = np.array([1, 1, 2, 2, 0])[:, None, None]
    values = np.array([1.0, 3.0, 5.0, 7.0, 100.0])[:, None, None]
    mask = labels > 0
    # inside the mask: mean 4, total SS 9+1+1+9 = 20; cluster means 2 and 6, residual SS 1+1+1+1 = 4
    assert label_r2(labels, values, mask) == pytest.approx(1 - 4 / 20)
    assert label_r2(np.ones_like(labels), values, mask) == pytest.approx(0.0)
    assert label_r2(np.arange(5)[:, None, None], values, mask) == pytest.approx(1.0)


def test_tv_denoise_is_the_authors_bregman_call():
    """v / max, denoise_tv_bregman(weight=40), times max; it smooths noise and keeps an edge."""
    from skimage.restoration import denoise_tv_bregman

    rng = np.random.default_rng(0)
    clean = np.zeros((16, 16, 16), np.float32)
    clean[8:] = 2.0
    noisy = clean + 0.2 * rng.normal(size=clean.shape).astype(np.float32)
    out = tv_denoise(noisy)
    assert np.allclose(out, denoise_tv_bregman(noisy / noisy.max(), weight=40) * noisy.max(), atol=1e-5)
    assert np.abs(out - clean).mean() < 0.75 * np.abs(noisy - clean).mean()  # mild: measured 0.65
    assert out[12:].mean() - out[:4].mean() > 1.8


def test_components_share_one_min_max():
    """Recipe 2 min-maxes all components together (their variance ratio kept: a noise component stays small);
    recipe 1 (``pc_scale="each"``) stretched each to [0, 1]. As the TV step sees them."""
    vols, mask, _ = phantom(noise=0.3)
    for scale in ("global", "each"):
        seen = []

        def spy(v):
            seen.append(v.ravel().copy())  # the brain box, outside filled with brain values
            return v

        constraint_map(vols, mask, k=4, seed=0, denoise=spy, pc_scale=scale)
        spans = [float(c.max() - c.min()) for c in seen]
        assert min(c.min() for c in seen) == pytest.approx(0.0, abs=1e-6)
        assert max(c.max() for c in seen) == pytest.approx(1.0, abs=1e-6)
        if scale == "each":
            assert spans == pytest.approx([1.0] * 4, abs=1e-6)
        else:
            assert spans[-1] < 0.5 * spans[0]
            stds = [float(c.std()) for c in seen]
            assert stds == sorted(stds, reverse=True)  # PCA order: decreasing variance


# ------------------------------------------------------------------------------------------ the spec
@pytest.mark.parametrize("text, contrasts, k, seed", [
    ("all:k=20", CONTRASTS, 20, 0),
    ("t1gd,t1w:k=30", ("t1w", "t1gd"), 30, 0),
    ("t2w,flair", ("t2w", "flair"), 20, 0),
    ("t1-only", ("t1w", "t1gd"), 20, 0),
    ("t2-only:k=25", ("t2w", "flair"), 25, 0),
    ("T1CE, t2f:k=12,seed=3", ("t1gd", "flair"), 12, 3),
    ("t1w+t1gd-k20", ("t1w", "t1gd"), 20, 0),  # a store name
    ("flair-k30", ("flair",), 30, 0),
])
def test_spec_parse(text, contrasts, k, seed):
    spec = ConstraintSpec.parse(text)
    assert (spec.contrasts, spec.k, spec.seed) == (tuple(contrasts), k, seed)
    assert ConstraintSpec.parse(spec.name).name == spec.name
    assert ConstraintSpec.from_dict(json.loads(spec.to_json())) == spec


def test_spec_name_and_channels():
    spec = ConstraintSpec(contrasts=("flair", "t1ce"), k=30)
    assert spec.name == "t1gd+flair-k30"
    assert spec.contrasts == ("t1gd", "flair")
    assert spec.channel_indices() == [1, 3]
    assert ConstraintSpec().name == "t1w+t1gd+t2w+flair-k20"


@pytest.mark.parametrize("text, match", [
    ("t1x:k=20", "unknown contrast 't1x'"),
    ("all:k=1", "2 <= k"),
    ("all:k=300", "2 <= k"),
    ("all:q=3", "bad constraint spec.*e.g."),
    ("all:k=abc", "bad constraint spec"),
    ("t1w,t1:k=5", "twice"),
    ("", "empty constraint spec"),
])
def test_bad_spec_names_the_fix(text, match):
    with pytest.raises(ConfigError, match=match):
        ConstraintSpec.parse(text)


def test_spec_from_dict_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="did you mean 'k'"):
        ConstraintSpec.from_dict({"kk": 3})


# ------------------------------------------------------------------------------------------ a store
def make_store(url: str, n: int = 3, shape=(20, 22, 18), seg: bool = True) -> list[str]:
    store = Store.create(url, {"test": True})
    sids = [f"S{i}" for i in range(n)]
    for i, sid in enumerate(sids):
        vols, mask, truth = phantom(shape, noise=0.4, seed=i)
        store.write_subject(sid, vols / 500.0, mask, {"affine": np.eye(4)},
                            seg=(truth == 4).astype(np.uint8) * 4 if seg else None)
    store.update_attrs(subjects=sids)
    return sids


def _meta_mtime(url: str, sid: str, name: str) -> float:
    return os.stat(Path(url) / "subjects" / sid / "constraint" / name / "zarr.json").st_mtime_ns


def test_add_constraint_writes_records_and_is_idempotent(tmp_path):
    url = str(tmp_path / "s.zarr")
    sids = make_store(url)
    spec = ConstraintSpec.parse("t1-only:k=5")
    calls = []
    assert add_constraint(url, spec, progress=lambda sid, did: calls.append((sid, did))) == spec.name
    assert sorted(calls) == [(s, True) for s in sids]
    store = Store(url)
    assert store.attrs["constraints"] == {spec.name: spec.to_dict()}
    for sid in sids:
        got = store.read(sid, f"constraint/{spec.name}")
        image = store.read(sid, "image")[spec.channel_indices()].astype(np.float32)
        assert np.array_equal(got, constraint_map(image, store.read(sid, "mask").astype(bool), k=5, seed=0))
    before = [_meta_mtime(url, s, spec.name) for s in sids]
    calls.clear()
    add_constraint(url, spec, progress=lambda sid, did: calls.append((sid, did)))  # second call: nothing to do
    assert sorted(calls) == [(s, False) for s in sids]
    assert [_meta_mtime(url, s, spec.name) for s in sids] == before
    add_constraint(url, ConstraintSpec.parse("all:k=4"))  # a second setting keeps the first recorded
    assert set(Store(url).attrs["constraints"]) == {spec.name, "t1w+t1gd+t2w+flair-k4"}


def test_add_constraint_recomputes_a_torn_map_and_refuses_a_seed_clash(tmp_path):
    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=2)
    spec = ConstraintSpec(k=4)
    store = Store(url, mode="a")
    store.write_constraint(sids[0], spec.name, np.zeros((20, 22, 18), np.uint8))  # as if killed before its chunks
    calls = []
    add_constraint(url, spec, progress=lambda sid, did: calls.append((sid, did)))
    assert sorted(calls) == [(sids[0], True), (sids[1], True)]
    assert (Store(url).read(sids[0], f"constraint/{spec.name}") > 0).sum() > 0
    with pytest.raises(ConfigError, match="another setting.*seed"):
        add_constraint(url, spec.replace(seed=7))


def test_an_older_recipe_is_refused_for_training_and_recomputed_on_request(tmp_path):
    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=2)
    spec = ConstraintSpec(k=4)
    add_constraint(url, spec)
    old = {k: v for k, v in spec.to_dict().items() if k != "recipe"}  # as a store of recipe 1 records it
    store = Store(url, mode="a")
    store.update_attrs(constraints={spec.name: old})
    store.write_constraint(sids[0], spec.name, store.read(sids[0], "mask").astype(np.uint8))  # a valid old map
    with pytest.raises(ConfigError, match=f"recipe 1.*recipe {RECIPE}.*cclray constraint .* --k 4"):
        check_constraint(Store(url), spec.name, sids)
    calls = []
    add_constraint(url, spec, progress=lambda sid, did: calls.append((sid, did)))
    assert sorted(calls) == [(s, True) for s in sids]  # recomputed, though the maps were there
    assert Store(url).attrs["constraints"][spec.name]["recipe"] == RECIPE
    check_constraint(Store(url), spec.name, sids)
    with pytest.raises(ConfigError, match="recipe"):
        ConstraintSpec(recipe=1)


RACER = textwrap.dedent("""
    import sys, time
    import data_prep.constraint as C
    url, start_at, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    real = C.constraint_map
    def counted(*a, **kw):
        with open(log, "a") as f:
            f.write("call\\n")
        return real(*a, **kw)
    C.constraint_map = counted
    time.sleep(max(0.0, start_at - time.time()))
    C.add_constraint(url, C.ConstraintSpec.parse("all:k=6"),
                     progress=lambda sid, did: print(sid, int(did), flush=True))
""")


def test_two_concurrent_callers_compute_each_subject_once(tmp_path):
    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=4, shape=(28, 28, 24), seg=False)
    log = tmp_path / "calls.txt"
    start_at = time.time() + 6.0  # both processes import first, then start together
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(start_at), str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = [line.split() for out, _ in outs for line in out.splitlines()]
    computed = sorted(sid for sid, did in lines if did == "1")
    assert computed == sids  # each subject computed by exactly one of the two
    assert len(lines) == 2 * len(sids)  # both saw every subject
    assert log.read_text().count("call") == len(sids)
    assert Store(url).attrs["constraints"] == {"t1w+t1gd+t2w+flair-k6": ConstraintSpec(k=6).to_dict()}


@pytest.mark.slow
def test_add_constraint_with_a_process_pool(tmp_path):
    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=3)
    add_constraint(url, ConstraintSpec(k=4), workers=2)
    store = Store(url)
    for sid in sids:
        image = store.read(sid, "image").astype(np.float32)
        want = constraint_map(image, store.read(sid, "mask").astype(bool), k=4, seed=0)
        assert np.array_equal(store.read(sid, "constraint/t1w+t1gd+t2w+flair-k4"), want)


# ------------------------------------------------------------------------------------------ figure and CLI
@pytest.mark.parametrize("axis, tumour_at, want", [
    (2, 5, 5),  # seg present: the slice with the most tumour
    (0, 11, 11),
    (2, None, 9),  # no tumour: the middle of the brain (brain spans z = 4..14)
])
def test_default_slice(axis, tumour_at, want):
    from data_prep.figures import default_slice

    mask = np.zeros((20, 20, 20), bool)
    mask[4:15, 4:15, 4:15] = True
    seg = np.zeros_like(mask, np.uint8)
    if tumour_at is not None:
        idx = [slice(6, 8)] * 3
        idx[axis] = tumour_at
        seg[tuple(idx)] = 4
    assert default_slice(mask, seg if tumour_at is not None else None, axis) == want


def test_constraint_figure_writes_a_png(tmp_path):
    from matplotlib.image import imread

    from data_prep.figures import constraint_figure

    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=1)
    name = add_constraint(url, ConstraintSpec(k=5))
    out = constraint_figure(url, sids[0], name, tmp_path / "fig" / "c.png")
    assert out.exists() and out.stat().st_size > 10_000
    img = imread(out)  # (H, W, 4) float RGBA
    assert img.ndim == 3 and img.shape[1] > 2 * img.shape[0] and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="outside axis"):
        constraint_figure(url, sids[0], name, tmp_path / "x.png", axis=2, slice_index=99)


def test_cli_adds_and_draws(tmp_path, capsys):
    from cclray.cli import main

    url = str(tmp_path / "s.zarr")
    sids = make_store(url, n=2)
    assert main(["constraint", url, "--contrasts", "t1gd,t1w", "--k", "4", "--workers", "1"]) == 0
    assert "R² of the contrast explained by the cluster labels" in capsys.readouterr().out
    assert Store(url).has_array(sids[1], "constraint/t1w+t1gd-k4")
    png = tmp_path / "c.png"
    assert main(["constraint", url, "--png", str(png), "--subject", sids[1]]) == 0
    assert png.stat().st_size > 10_000
    assert main(["constraint", url, "--contrasts", "t1x"]) == 2
    assert "unknown contrast" in capsys.readouterr().err
    assert main(["constraint", url, "--png", str(png), "--name", "flair-k9"]) == 2
