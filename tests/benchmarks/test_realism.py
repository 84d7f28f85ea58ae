"""benchmarks/realism.py: the cohort-realism R² is high where the targets follow the inputs voxel by voxel
and near 0 where they do not."""
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import realism  # noqa: E402


def test_targets_that_follow_the_inputs_are_explained(tmp_path):
    store = make_tiny_store(tmp_path / "s.zarr", shape=(16, 16, 16), splits={"a": 6})
    res = realism.realism(store["url"], fit=3, max_iter=20)
    assert res["scored_subjects"] == 3 and len(res["fit_subjects"]) == 3
    assert res["pooled"]["t1w"] > 0.9 and res["pooled"]["t2w"] > 0.9, res["pooled"]


def test_targets_independent_of_the_inputs_are_not(tmp_path):
    from data_prep.schema import channel_index
    from data_prep.store import Store

    url = make_tiny_store(tmp_path / "s.zarr", shape=(16, 16, 16), splits={"a": 6})["url"]
    store, rng = Store(url, mode="a"), np.random.default_rng(1)
    for sid in store.subjects():
        image = np.asarray(store.read(sid, "image"), np.float32)
        mask = np.asarray(store.read(sid, "mask"), bool)
        for c in ("t1w", "t2w"):
            image[channel_index(c)] = rng.normal(size=mask.shape) * mask
        store.write_subject(sid, image, mask, {"affine": np.eye(4).tolist()})
    res = realism.realism(url, fit=3, max_iter=20)
    assert abs(res["pooled"]["t1w"]) < 0.1 and abs(res["pooled"]["t2w"]) < 0.1, res["pooled"]


def test_too_few_subjects_is_a_clear_error(tmp_path):
    url = make_tiny_store(tmp_path / "s.zarr", shape=(16, 16, 16), splits={"a": 3})["url"]
    with pytest.raises(SystemExit, match="more than --fit 5"):
        realism.realism(url, fit=5)


def test_each_rotation_fits_on_its_own_block_and_scores_the_rest(tmp_path):
    url = make_tiny_store(tmp_path / "s.zarr", shape=(16, 16, 16), splits={"a": 6})["url"]
    res = realism.realism(url, fit=2, block=2, max_iter=10)
    assert res["fit_subjects"] == ["S04", "S05"] and set(res["per_subject"]) == {"S00", "S01", "S02", "S03"}
    with pytest.raises(SystemExit, match="fit block 4"):
        realism.realism(url, fit=2, block=3)
