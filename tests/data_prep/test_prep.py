"""Ingestion end to end on tiny subjects: round trip, namings, URLs, resumability, failures, splits, CLI."""
import json
import re

import numpy as np
import pytest

import test_nifti as broken  # the file breakers
from brats_files import SHAPE, contrast_file, make_volumes, write_subject_dir
from brats_files import _stub_map as stub_constraint_map
from data_prep import preprocess
from data_prep.config import ConfigError
from data_prep.constraint import RECIPE
from data_prep.prep import PrepConfig, run_prep
from data_prep.schema import CONTRASTS, constraint_name
from data_prep.splits import PAPER_SPLITS, make_splits, parse_splits, split_sizes
from data_prep.store import Store

K = 4
CNAME = constraint_name(CONTRASTS, K)


@pytest.fixture(autouse=True)
def constraint(request, monkeypatch):
    """The real constraint map only in tests asking for ``real_constraint`` (it costs ~1 s a subject)."""
    if "real_constraint" not in request.fixturenames:
        import data_prep.constraint

        monkeypatch.setattr(data_prep.constraint, "constraint_map", stub_constraint_map)


@pytest.fixture
def real_constraint():
    """Marker fixture: this test uses the real k-means constraint map."""


@pytest.fixture
def cfg(constraint):
    return PrepConfig(constraints=({"contrasts": list(CONTRASTS), "k": K, "seed": 0},),
                      splits={"pretrain": 2, "finetune": 1, "val": 1, "test": 1})


def _cohort(root, n=5, namings=("brats2021", "brats2023")):
    for i in range(n):
        write_subject_dir(root, i + 1, namings[i % len(namings)], seg=i % 3 != 2)
    return root


@pytest.fixture
def src(tmp_path):
    return _cohort(tmp_path / "src")


def _arrays(store, sid):
    names = ["image", "mask", f"constraint/{CNAME}"] + (["seg"] if store.has_array(sid, "seg") else [])
    return {n: store.read(sid, n) for n in names}


def test_round_trip(cfg, tmp_path, src, real_constraint):
    report = run_prep(src, str(tmp_path / "store.zarr"), cfg)
    store = Store(str(tmp_path / "store.zarr"))
    assert report.failed == [] and len(report.written) == 5
    assert store.subjects() == sorted(report.written) == report.subjects
    for i, sid in enumerate(store.subjects()):
        attrs = store.subject_attrs(sid)
        raw, seg = make_volumes(SHAPE, int(re.findall(r"\d{5}", sid)[0]))  # seed = subject number
        full_mask = preprocess.brain_mask(raw)
        box = tuple(map(tuple, attrs["crop"]))
        assert box == preprocess.crop_box(full_mask, cfg.margin)
        assert attrs["source_shape"] == list(SHAPE) and attrs["shape"] == [b - a for a, b in box]
        np.testing.assert_allclose(np.array(attrs["affine"]), np.array(
            [[-1.0, 0, 0, 90], [0, -1.0, 0, 126], [0, 0, 1.0, -72], [0, 0, 0, 1]]))
        mask = store.read(sid, "mask").astype(bool)
        np.testing.assert_array_equal(preprocess.uncrop(mask, box, SHAPE), full_mask)  # crop recorded
        image = store.read(sid, "image")
        for c, ci in zip(CONTRASTS, range(4)):
            st = attrs["norm"][c]
            back = preprocess.denormalize(image[ci], st, mask)
            src_c = preprocess.crop(raw[ci].astype(np.float32), box)
            inside = mask & (src_c > st["p_lo"]) & (src_c < st["p_hi"])
            # float16 storage: ~1e-3 relative on z-scores up to ~4
            np.testing.assert_allclose(back[inside], src_c[inside], atol=5e-3 * st["std"] * 4)
            assert np.all(back[~mask] == 0)
        labels = store.read(sid, f"constraint/{CNAME}")
        assert labels.dtype == np.uint8 and set(np.unique(labels[mask])) <= set(range(1, K + 1))
        assert not labels[~mask].any()
        if attrs["has_seg"]:
            np.testing.assert_array_equal(store.read(sid, "seg"), preprocess.crop(seg, box))
        assert attrs["naming"] in ("brats2021", "brats2023")
        assert set(attrs["source_files"]) >= set(CONTRASTS)
    root = store.attrs
    assert root["constraints"] == {CNAME: {"contrasts": list(CONTRASTS), "k": K, "seed": 0, "recipe": RECIPE}}
    assert root["prep_config"] == cfg.to_dict() and root["failed"] == []
    assert sorted(sum(root["splits"].values(), [])) == store.subjects()
    assert len(root["fingerprint"]) == 16


@pytest.mark.parametrize("url", ["file", "memory"])
def test_fsspec_urls(cfg, tmp_path, src, url):
    out = f"file://{tmp_path}/s.zarr" if url == "file" else f"memory://prep-test-{tmp_path.name}/s.zarr"
    report = run_prep(src, out, cfg, workers=2 if url == "memory" else 1)  # memory:// falls back to in-process
    assert len(report.subjects) == 5
    store = Store(out)
    assert store.subjects() == report.subjects and store.read(report.subjects[0], "image").shape[0] == 4


def test_resume_equals_uninterrupted(cfg, tmp_path, src):
    ref = run_prep(src, str(tmp_path / "a.zarr"), cfg)
    out = str(tmp_path / "b.zarr")
    run_prep(src, out, cfg)
    store = Store(out, mode="a")
    victim, done = ref.subjects[1], ref.subjects[0]
    # simulate a run killed while writing `victim`: its group exists but is not complete, data half-written
    g = store.root[f"subjects/{victim}"]
    g.attrs["complete"] = False
    g["image"][:, :5] = 0
    del g["mask"]
    assert not store.is_complete(victim)
    report = run_prep(src, out, cfg)
    assert report.written == [victim] and done in report.skipped and len(report.skipped) == 4
    a, b = Store(str(tmp_path / "a.zarr")), Store(out)
    for sid in ref.subjects:
        for name, arr in _arrays(a, sid).items():
            np.testing.assert_array_equal(_arrays(b, sid)[name], arr, err_msg=f"{sid}/{name}")
        assert a.subject_attrs(sid)["norm"] == b.subject_attrs(sid)["norm"]
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"] and a.attrs["splits"] == b.attrs["splits"]


def test_other_config_refused(cfg, tmp_path, src):
    out = str(tmp_path / "s.zarr")
    run_prep(src, out, cfg)
    with pytest.raises(Exception, match="another config"):
        run_prep(src, out, cfg.replace(margin=2))


BAD = [(b, c, what) for b, c, what, _ in broken.BAD_CASES] + [
    (lambda p: p.unlink(), "t2w", "missing"),
]


@pytest.mark.parametrize("breaker,contrast,what", BAD, ids=[f"{i}-{c}" for i, (_, c, _) in enumerate(BAD)])
def test_bad_subject_skipped_and_reported(cfg, tmp_path, breaker, contrast, what):
    src = _cohort(tmp_path / "src", n=2, namings=("brats2021",))
    bad = src / "BraTS2021_00001"
    path = contrast_file(bad, contrast)
    breaker(path)
    out = str(tmp_path / "s.zarr")
    report = run_prep(src, out, cfg)
    store = Store(out)
    (fail,) = report.failed
    assert fail["sid"] == "BraTS2021_00001" and fail["file"].endswith(path.name) and what in fail["error"]
    assert store.attrs["failed"] == report.failed
    assert store.subjects() == ["BraTS2021_00002"]
    assert not store.is_complete("BraTS2021_00001")
    assert "subjects/BraTS2021_00001" not in store.root  # nothing partial written


def test_unknown_naming_subject_reported(cfg, tmp_path, src):
    (src / "junk").mkdir()
    (src / "junk" / "junk_anat.nii.gz").write_bytes(b"")
    report = run_prep(src, str(tmp_path / "s.zarr"), cfg)
    assert [f["sid"] for f in report.failed] == ["junk"] and "known BraTS naming" in report.failed[0]["error"]


def test_parallel_workers_match_serial(cfg, tmp_path, src, real_constraint):
    """Spawned workers import the real constraint map (no monkeypatch there)."""
    a = run_prep(src, str(tmp_path / "a.zarr"), cfg, workers=1)
    b = run_prep(src, str(tmp_path / "b.zarr"), cfg, workers=2)
    assert a.subjects == b.subjects and a.fingerprint == b.fingerprint
    sa, sb = Store(str(tmp_path / "a.zarr")), Store(str(tmp_path / "b.zarr"))
    for sid in a.subjects:
        for name, arr in _arrays(sa, sid).items():
            np.testing.assert_array_equal(_arrays(sb, sid)[name], arr)


# ------------------------------------------------------------------ CLI
def _cli(*argv):
    from cclray.cli import main

    return main(["prep", *map(str, argv)])


def test_cli_exit_codes(tmp_path, src, capsys):
    broken._break_nan(contrast_file(src / "BraTS2021_00001", "t1w"))
    args = [src, "--workers", 1, "--constraint", "t1w,t1gd,t2w,flair:k=4", "--splits",
            "pretrain=1,finetune=1,val=1,test=1", "--margin", 2, "--percentiles", 1, 99]
    assert _cli(*args, "--out", tmp_path / "a.zarr") == 1
    err = capsys.readouterr().err
    assert "BraTS2021_00001" in err and "nan_to_num" in err and "--allow-skips" in err
    assert _cli(*args, "--out", tmp_path / "b.zarr", "--allow-skips") == 0
    store = Store(str(tmp_path / "b.zarr"))
    assert store.attrs["prep_config"]["margin"] == 2 and store.attrs["prep_config"]["percentiles"] == [1.0, 99.0]
    assert {k: len(v) for k, v in store.attrs["splits"].items()} == {"pretrain": 1, "finetune": 1, "val": 1, "test": 1}
    assert _cli(tmp_path / "nothing", "--out", tmp_path / "c.zarr") == 2


def test_cli_layout_flags(tmp_path, src):
    """--codec none / --chunk reach the store: uncompressed chunks of the asked edge."""
    args = [src, "--workers", 1, "--constraint", "t1w,flair:k=3", "--splits", "pretrain=1,finetune=1,val=1,test=1",
            "--allow-skips", "--codec", "none", "--chunk", 16, "--out", tmp_path / "raw.zarr"]
    assert _cli(*args) == 0
    store = Store(str(tmp_path / "raw.zarr"))
    assert store.attrs["prep_config"]["layout"] == {"chunk": 16, "dtype": "float16", "codec": "none"}
    meta = next((tmp_path / "raw.zarr").rglob("image/zarr.json")).read_text()
    image = json.loads(meta)
    assert image["chunk_grid"]["configuration"]["chunk_shape"][1:] == [16, 16, 16]
    assert not any(c["name"] == "blosc" for c in image["codecs"])


# ------------------------------------------------------------------ config and splits
@pytest.mark.parametrize("changes,match", [
    ({"margn": 3}, "did you mean 'margin'"),
    ({"percentiles": [99, 1]}, "LO < HI"),
    ({"margin": -1}, "margin >= 0"),
    ({"splits": {"pretrain": 0}}, "positive count"),
    ({"layout": {"chunk": 32, "codec": "gzip9"}}, "unknown codec"),
    ({"layout": {"chunk": 4}}, r"chunk=4: use an integer edge in \[8, 256\]"),
    ({"layout": {"dtype": "int8"}}, "dtype='int8'"),
])
def test_prep_config_refuses(changes, match):
    with pytest.raises(ConfigError, match=match):
        PrepConfig.from_dict(changes)


SIZE_CASES = [
    # n,   expected sizes (paper request 80/10/5/10)
    (105, {"pretrain": 80, "finetune": 10, "val": 5, "test": 10}),
    (200, {"pretrain": 80, "finetune": 10, "val": 5, "test": 10}),  # + 95 "unused"
    (20, {"pretrain": 15, "finetune": 2, "val": 1, "test": 2}),
    (10, {"pretrain": 7, "finetune": 1, "val": 1, "test": 1}),
    (4, {"pretrain": 1, "finetune": 1, "val": 1, "test": 1}),
]


@pytest.mark.parametrize("n,expected", SIZE_CASES)
def test_split_sizes(n, expected):
    assert split_sizes(n, PAPER_SPLITS) == expected
    splits = make_splits([f"s{i:03d}" for i in range(n)], PAPER_SPLITS, seed=3)
    assert {k: len(v) for k, v in splits.items() if k != "unused"} == expected
    everything = sum(splits.values(), [])
    assert len(everything) == len(set(everything)) == n  # disjoint and complete
    assert len(splits.get("unused", [])) == n - sum(expected.values())


def test_splits_seeded():
    ids = [f"s{i:03d}" for i in range(30)]
    assert make_splits(ids, seed=1) == make_splits(list(reversed(ids)), seed=1)
    assert make_splits(ids, seed=1) != make_splits(ids, seed=2)


@pytest.mark.parametrize("text,error", [("pretrain=80,val=x", "NAME=COUNT"), ("a=0", "positive"), ("unused=3", "reserved")])
def test_parse_splits_refuses(text, error):
    with pytest.raises(ValueError, match=error):
        parse_splits(text)


def test_too_few_subjects_for_splits():
    with pytest.raises(ValueError, match="cannot fill 4 non-empty splits"):
        split_sizes(3)


def test_prep_map_equals_one_added_later(cfg, tmp_path, src, real_constraint):
    """Prep computes maps from the stored (normalized, float16) image, as add_constraint does later;
    a constraint added after prep stays recorded when prep is run again."""
    from data_prep.constraint import ConstraintSpec, add_constraint, constraint_map

    url = str(tmp_path / "store.zarr")
    run_prep(src, url, cfg)
    store = Store(url)
    sid = store.subjects()[0]
    image, mask = store.read(sid, "image").astype(np.float32), store.read(sid, "mask").astype(bool)
    again = constraint_map(image, mask, k=K, seed=0)
    np.testing.assert_array_equal(again, store.read(sid, f"constraint/{CNAME}"))

    extra = add_constraint(url, ConstraintSpec(contrasts=("t1gd", "flair"), k=3))
    run_prep(src, url, cfg)  # nothing to do, but finalize rewrites the root attrs
    assert set(Store(url).attrs["constraints"]) == {CNAME, extra}
