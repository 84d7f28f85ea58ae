"""The regressor floor: features, fit on the finetune split, save/load, scored by evaluate like any run;
and the supervised-all ceiling's split union."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cclray.config import FinetuneConfig
from cclray.evaluation import evaluate_run_dirs
from cclray.evaluation.regressor import RegressorSpec, VoxelRegressor, features, fit_regressor, is_regressor_run
from data_prep.config import ConfigError
from data_prep.schema import channel_index
from data_prep.store import Store

SHAPE = (20, 20, 16)


def _subject(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    image = np.zeros((4, *SHAPE), np.float32)
    t1gd = gaussian_filter(rng.normal(size=SHAPE), 1.5) * 3
    flair = gaussian_filter(rng.normal(size=SHAPE), 1.5) * 3
    image[channel_index("t1gd")], image[channel_index("flair")] = t1gd, flair
    image[channel_index("t1w")] = 2 * t1gd - flair  # a voxelwise rule the floor can learn
    image[channel_index("t2w")] = gaussian_filter(flair, 2.5)  # needs context: the blurred features
    return np.where(mask, image, 0).astype(np.float32), mask


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("reg") / "store.zarr")
    store = Store.create(url, {"test": True})
    sids = [f"s{i}" for i in range(4)]
    for i, sid in enumerate(sids):
        image, mask = _subject(i)
        store.write_subject(sid, image, mask, {"affine": np.eye(4), "crop": [[0, n] for n in SHAPE],
                                               "source_shape": list(SHAPE)})
    store.update_attrs(subjects=sids, splits={"pretrain": ["s0"], "finetune": ["s1", "s2"], "test": ["s3"]})
    return url


def test_features_are_inputs_and_mask_normalised_blurs():
    image, mask = _subject(0)
    x = features(image, mask, ("t1gd", "flair"), (1.0, 2.5))
    assert x.shape == (mask.sum(), 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], image[channel_index("t1gd")][mask])
    const = np.where(mask, 5.0, 0.0)[None].repeat(4, 0)  # a constant brain blurs to itself, edges included
    assert np.allclose(features(const, mask, ("t1gd",), (2.5,))[:, 1], 5.0, atol=1e-4)


def test_fit_save_load_and_evaluate_like_any_run(store_url, tmp_path):
    reg, info = fit_regressor(store_url, RegressorSpec(max_voxels=4000, max_iter=50))
    assert info["subjects"] == 2 and info["voxels"] == 4000 and min(info["train_r2"]) > 0.8
    reg.save(tmp_path / "floor", info)
    assert is_regressor_run(tmp_path / "floor") and not is_regressor_run(tmp_path)
    image, mask = _subject(3)
    back = VoxelRegressor.load(tmp_path / "floor")
    pred = back.predict_volume(image, mask)
    assert pred.shape == (2, *SHAPE) and np.all(pred[:, ~mask] == 0)
    np.testing.assert_allclose(pred, reg.predict_volume(image, mask))
    t1w = image[channel_index("t1w")][mask]
    assert np.corrcoef(pred[0][mask], t1w)[0, 1] > 0.9  # held-out subject: the rule was learned
    result = evaluate_run_dirs(store_url, [tmp_path / "floor"], ["Regressor"], "test", tmp_path / "eval")
    cell = result["results"]["masked"]["Regressor"]["brain"]["t1w"]["ssim"]
    assert cell["n"] == 1 and 0.5 < cell["mean"] <= 1.0


def test_ceiling_trains_on_the_union_of_splits():
    cfg = FinetuneConfig(store="s.zarr", split="pretrain, finetune")
    assert cfg.splits == ("pretrain", "finetune")
    with pytest.raises(ConfigError, match="val_split"):
        FinetuneConfig(store="s.zarr", split="finetune,val")


def test_regressor_command_refuses_an_empty_split(store_url, tmp_path):
    from cclray.cli import main

    assert main(["regressor", "--store", store_url, "--out", str(tmp_path / "r"), "--split", "nope"]) == 2
