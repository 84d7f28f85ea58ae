import numpy as np
import pytest

from data_prep.schema import CONTRASTS
from data_prep.store import Layout, Store, StoreError


def _subject(shape=(12, 14, 10), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(4, *shape)).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return img, mask


@pytest.mark.parametrize("url_kind", ["path", "file_url", "memory"])
def test_write_read_round_trip(tmp_path, url_kind):
    url = {"path": str(tmp_path / "s.zarr"), "file_url": f"file://{tmp_path}/s.zarr",
           "memory": f"memory://store-{id(tmp_path)}"}[url_kind]
    store = Store.create(url, {"margin": 4})
    img, mask = _subject()
    store.write_subject("S1", img, mask, {"affine": np.eye(4)}, seg=mask.astype(np.uint8) * 2,
                        constraints={"t1w-k2": mask.astype(np.uint8)})
    store.update_attrs(subjects=["S1"], splits={"test": ["S1"]})
    again = Store(url)
    assert again.attrs["channels"] == list(CONTRASTS)
    assert again.subjects() == ["S1"] and again.subjects("test") == ["S1"]
    np.testing.assert_allclose(again.read("S1", "image"), img, atol=2e-3 * np.abs(img).max())  # float16
    box = ((1, 5), (0, 3), (2, 9))
    assert again.read("S1", "image", box).shape == (4, 4, 3, 7)
    assert np.array_equal(again.read("S1", "seg"), mask * 2)
    assert again.subject_attrs("S1")["affine"] == np.eye(4).tolist()
    assert again.has_array("S1", "constraint/t1w-k2") and not again.has_array("S1", "constraint/x")


def test_incomplete_subject_is_invisible_and_rewritten(tmp_path):
    url = str(tmp_path / "s.zarr")
    store = Store.create(url, {})
    img, mask = _subject()
    g = store.root.create_group("subjects/S1")  # a write killed before its commit point
    g.attrs.update({"complete": False})
    assert not store.is_complete("S1")
    with pytest.raises(StoreError, match="incomplete"):
        store.read("S1", "image")
    store.write_subject("S1", img, mask, {})
    assert store.is_complete("S1")


def test_store_refuses_other_schema_and_other_config(tmp_path):
    with pytest.raises(StoreError, match="cclray prep"):
        Store(str(tmp_path / "missing.zarr"))
    url = str(tmp_path / "s.zarr")
    Store.create(url, {"margin": 4})
    with pytest.raises(StoreError, match="another config"):
        Store.create(url, {"margin": 8})
    assert Store.create(url, {"margin": 4}).attrs["prep_config"] == {"margin": 4}


def test_layout_codecs():
    assert Layout(codec="none").compressors() is None
    with pytest.raises(ValueError, match="unknown codec"):
        Layout(codec="gzip").compressors()


def test_missing_array_names_what_exists(tmp_path):
    store = Store.create(str(tmp_path / "s.zarr"), {})
    img, mask = _subject()
    store.write_subject("S1", img, mask, {})
    with pytest.raises(StoreError, match="has no array 'seg'"):
        store.read("S1", "seg")
