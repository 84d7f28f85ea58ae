"""PatchReader: same answers as Store.read through tensorstore and the zarr fallback; pickles to a URL."""
import pickle

import numpy as np
import pytest

from data_prep.reader import PatchReader, kvstore_spec
from data_prep.store import Layout, Store, StoreError

SHAPE = (4, 30, 26, 22)


def _store(url: str, layout=Layout()) -> Store:
    rng = np.random.default_rng(0)
    store = Store.create(url, {"test": 1}, layout)
    for i, sid in enumerate(["a", "b"]):
        image = rng.normal(size=SHAPE).astype(np.float32)
        mask = rng.random(SHAPE[1:]) > 0.3
        store.write_subject(sid, image, mask, {"norm": {"t1w": {"mean": float(i)}}},
                            seg=(rng.random(SHAPE[1:]) * 3).astype(np.uint8),
                            constraints={"t1w+t1gd-k5": rng.integers(0, 6, SHAPE[1:]).astype(np.uint8)})
    return store


BOXES = [
    None,
    ((0, 30), (0, 26), (0, 22)),
    ((3, 19), (5, 21), (2, 18)),  # crosses chunk borders
    ((25, 40), (20, 26), (0, 5)),  # beyond the edge: clamped like numpy
    ((10, 10), (0, 4), (0, 4)),  # empty
]


@pytest.mark.parametrize("layout", [Layout(), Layout(chunk=16, dtype="float32", codec="none")], ids=["default", "f32-raw"])
@pytest.mark.parametrize("url_kind", ["path", "file"])
def test_tensorstore_matches_store(tmp_path, layout, url_kind):
    url = str(tmp_path / "s.zarr") if url_kind == "path" else f"file://{tmp_path}/s.zarr"
    store = _store(url, layout)
    reader = PatchReader(url)
    assert reader.backend == "tensorstore"
    for sid in ("a", "b"):
        for name in ("image", "mask", "seg", "constraint/t1w+t1gd-k5"):
            for box in BOXES:
                want = store.read(sid, name, box)
                got = reader.read(sid, name, box)
                assert got.dtype == want.dtype and got.shape == want.shape, (name, box)
                np.testing.assert_array_equal(got, want)
        assert reader.attrs(sid) == store.subject_attrs(sid)


def test_memory_url_falls_back_to_zarr(tmp_path):
    url = f"memory://reader-{tmp_path.name}/s.zarr"
    store = _store(url)
    reader = PatchReader(url)
    assert reader.backend == "zarr"
    box = ((3, 19), (5, 21), (2, 18))
    np.testing.assert_array_equal(reader.read("b", "image", box), store.read("b", "image", box))
    assert reader.attrs("b")["norm"]["t1w"]["mean"] == 1.0


@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
def test_incomplete_and_missing_refused(tmp_path, backend):
    url = str(tmp_path / "s.zarr")
    store = _store(url)
    store.root["subjects/a"].attrs["complete"] = False
    reader = PatchReader(url, backend=backend)
    with pytest.raises(StoreError, match="incomplete.*re-run `cclray prep`"):
        reader.read("a", "image")
    with pytest.raises(StoreError, match="missing or incomplete"):
        reader.attrs("zzz")
    with pytest.raises(StoreError, match="no array"):
        reader.read("b", "constraint/nope")


def test_pickles_without_handles(tmp_path):
    url = str(tmp_path / "s.zarr")
    _store(url)
    reader = PatchReader(url)
    reader.read("a", "image", BOXES[2])
    assert reader._arrays  # handles cached after use
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._arrays == {} and clone._attrs == {} and clone.url == url
    np.testing.assert_array_equal(clone.read("a", "image", BOXES[2]), reader.read("a", "image", BOXES[2]))
    assert len(pickle.dumps(reader)) < 500


@pytest.mark.parametrize("url,spec", [
    ("/data/s.zarr", {"driver": "file", "path": "/data/s.zarr/"}),
    ("file:///data/s.zarr", {"driver": "file", "path": "/data/s.zarr/"}),
    ("gs://bucket/a/s.zarr", {"driver": "gcs", "bucket": "bucket", "path": "a/s.zarr/"}),
    ("s3://bucket/s.zarr/", {"driver": "s3", "bucket": "bucket", "path": "s.zarr/", "aws_region": "us-east-1"}),
    ("memory://x/s.zarr", None),
    ("http://host/s.zarr", None),
])
def test_kvstore_spec(url, spec, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    assert kvstore_spec(url) == spec


def test_bad_backend():
    with pytest.raises(ValueError, match="tensorstore cannot open"):
        PatchReader("memory://x", backend="tensorstore")
