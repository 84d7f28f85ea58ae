"""`prep --spacing`: the resampling recipe (grid, masked interpolation, labels, the way back) and the store
attrs it leaves (source affine kept, spacing and stored grid recorded)."""
import json

import nibabel as nib
import numpy as np
import pytest

from brats_files import AFFINE, SHAPE, write_subject_dir
from brats_files import _stub_map as stub_constraint_map
from data_prep import resample
from data_prep.config import ConfigError
from data_prep.prep import PrepConfig, run_prep
from data_prep.schema import CONTRASTS
from data_prep.store import Store


@pytest.fixture(autouse=True)
def fast_constraint(monkeypatch):
    import data_prep.constraint

    monkeypatch.setattr(data_prep.constraint, "constraint_map", stub_constraint_map)


def _world(affine, idx):
    return (np.asarray(affine) @ np.r_[np.asarray(idx, float), 1.0])[:3]


# ---------------------------------------------------------------------------------------- the grid
def test_brats_grid_at_2mm_keeps_the_field_of_view():
    g = resample.target_grid((240, 240, 155), AFFINE, 2.0)
    assert g.shape == (120, 120, 78)
    assert g.spacing == pytest.approx([2.0, 2.0, 2.0])
    # new voxel 0 is centred midway between source voxels 0 and 1 (edges of both grids meet)
    np.testing.assert_allclose(_world(g.affine, [0, 0, 0]), (_world(AFFINE, [0, 0, 0]) + _world(AFFINE, [1, 1, 1])) / 2)
    # the axes (and their signs: AFFINE flips x and y) are kept
    np.testing.assert_allclose(np.sign(np.diag(g.affine)[:3]), np.sign(np.diag(AFFINE)[:3]))


def test_voxel_map_and_refusals():
    g = resample.target_grid(SHAPE, AFFINE, 2.0)
    scale, offset = resample.voxel_map(AFFINE, g.affine)
    np.testing.assert_allclose(scale, 2.0)
    np.testing.assert_allclose(offset, 0.5)
    rotated = AFFINE.copy()
    rotated[:3, :3] = AFFINE[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="share their axes"):
        resample.voxel_map(AFFINE, rotated)
    for bad in (0, -1, 100, "2", True):
        with pytest.raises(ValueError, match="between 0.25 and 16"):
            resample.check_spacing(bad)
    assert not resample.needs_resampling(AFFINE, 1.0) and not resample.needs_resampling(AFFINE, None)
    assert resample.needs_resampling(AFFINE, 2.0)


def test_subject_spacing_reads_new_and_old_attrs():
    assert resample.subject_spacing({"spacing": [2, 2, 2], "affine": AFFINE.tolist()}) == [2.0, 2.0, 2.0]
    assert resample.subject_spacing({"affine": np.diag([1.0, 1.0, 1.5, 1]).tolist()}) == [1.0, 1.0, 1.5]
    with pytest.raises(KeyError, match="re-create the store"):
        resample.subject_spacing({})


# ---------------------------------------------------------------------------------------- the values
def _ball(shape=(40, 36, 30), radius=0.8):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return (grid ** 2).sum(0) < radius ** 2


def test_constant_brain_stays_constant_up_to_its_edge():
    """Normalized convolution: the zero background does not darken the brain's edge voxels."""
    brain = _ball()
    vols = np.stack([np.where(brain, 100.0 * (i + 1), 0.0) for i in range(4)]).astype(np.float32)
    r = resample.resample_subject(vols, np.eye(4), 2.0)
    assert r.volumes.shape == (4, 20, 18, 15) and r.mask.any()
    for i in range(4):
        np.testing.assert_allclose(r.volumes[i][r.mask], 100.0 * (i + 1), rtol=1e-5)
        assert (r.volumes[i][~r.mask] == 0).all()
    # the mask keeps the brain's volume (8 source voxels a new one), within the edge's partial voxels
    assert r.mask.sum() * 8 == pytest.approx(brain.sum(), rel=0.1)


def test_linear_ramp_is_sampled_at_the_new_centres():
    """Linear interpolation and a symmetric filter keep a linear function exact away from the edges."""
    shape = (32, 32, 32)
    idx = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    ramp = 3.0 * idx[0] - 2.0 * idx[1] + 0.5 * idx[2] + 200.0
    vols = np.stack([ramp] * 4).astype(np.float32)
    r = resample.resample_subject(vols, np.eye(4), 2.0)
    j = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in r.grid.shape], indexing="ij"))
    src = 2.0 * j + 0.5  # source index of each new centre
    expect = 3.0 * src[0] - 2.0 * src[1] + 0.5 * src[2] + 200.0
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(r.volumes[0][inner], expect[inner], rtol=1e-5)


def test_round_trip_to_2mm_and_back_recovers_a_smooth_volume():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    brain = _ball((48, 48, 40))
    field = gaussian_filter(rng.normal(size=brain.shape), 6)
    smooth = 500 + 100 * field / field.std()
    vols = np.stack([np.where(brain, smooth, 0)] * 4).astype(np.float32)
    r = resample.resample_subject(vols, AFFINE, 2.0)
    back = resample.to_grid(r.volumes[0], r.grid.affine, brain.shape, AFFINE, mask=r.mask)
    inside = brain & (gaussian_filter(brain.astype(float), 1.5) > 0.99)  # away from the edge
    err = np.abs(back[inside] - smooth[inside]).mean()
    # measured 2.7 (3 % of the signal's sd); the same volume shifted by half a voxel is 7.3 off
    assert err < 0.05 * smooth[inside].std()


def test_labels_resample_by_largest_indicator():
    brain = _ball((40, 40, 40))
    seg = np.zeros(brain.shape, np.uint8)
    seg[10:30, 10:30, 10:30] = 2
    seg[16:24, 16:24, 16:24] = 4
    vols = np.stack([np.where(brain, 100.0, 0)] * 4).astype(np.float32)
    r = resample.resample_subject(vols, np.eye(4), 2.0, seg=seg)
    assert r.seg.dtype == np.uint8 and set(np.unique(r.seg)) == {0, 2, 4}
    assert (r.seg[8:12, 8:12, 8:12] == 4).all() and (r.seg[5:8, 5:8, 5:8] == 2).all()
    assert (r.seg == 4).sum() * 8 == pytest.approx((seg == 4).sum(), rel=0.05)


# ---------------------------------------------------------------------------------------- prep and the store
def _prep(tmp_path, spacing):
    src = tmp_path / "src"
    for i in range(3):
        write_subject_dir(src, i + 1)
    cfg = PrepConfig(constraints=({"contrasts": list(CONTRASTS), "k": 4, "seed": 0},),
                     splits={"pretrain": 1, "finetune": 1, "test": 1}, spacing=spacing)
    url = str(tmp_path / f"store-{spacing}.zarr")
    report = run_prep(src, url, cfg)
    assert report.failed == []
    return Store(url)


def test_prep_at_2mm_records_the_source_and_the_stored_grid(tmp_path):
    store = _prep(tmp_path, 2.0)
    assert store.attrs["spacing"] == [2.0, 2.0, 2.0]
    sid = store.subjects()[0]
    a = store.subject_attrs(sid)
    np.testing.assert_allclose(a["affine"], AFFINE)  # the SOURCE affine and shape
    assert a["source_shape"] == list(SHAPE)
    assert a["spacing"] == [2.0, 2.0, 2.0] and a["grid_shape"] == [12, 14, 10]
    np.testing.assert_allclose(a["grid_affine"], resample.target_grid(SHAPE, AFFINE, 2.0).affine)
    (x0, x1), (y0, y1), (z0, z1) = a["crop"]
    assert store.read(sid, "image").shape == (4, x1 - x0, y1 - y0, z1 - z0)
    assert x1 <= 12 and y1 <= 14 and z1 <= 10
    assert store.has_array(sid, "seg") and set(np.unique(store.read(sid, "seg"))) <= {0, 2, 4}


def test_prep_default_keeps_the_source_grid(tmp_path):
    store = _prep(tmp_path, None)
    assert store.attrs["spacing"] == [1.0, 1.0, 1.0]
    a = store.subject_attrs(store.subjects()[0])
    assert a["grid_shape"] == list(SHAPE) and a["spacing"] == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(a["grid_affine"], AFFINE)


def test_prep_config_spacing_is_checked_and_old_stores_reopen(tmp_path):
    with pytest.raises(ConfigError, match="PrepConfig.spacing"):
        PrepConfig(spacing=0.0)
    cfg = PrepConfig()
    old = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k != "spacing"}
    Store.create(str(tmp_path / "old.zarr"), old)  # a store written before PrepConfig had `spacing`
    Store.create(str(tmp_path / "old.zarr"), cfg.to_dict())  # reopens: the new key at its default
    with pytest.raises(Exception, match="another config"):
        Store.create(str(tmp_path / "old.zarr"), cfg.replace(spacing=2.0).to_dict())


def test_synth_nifti_goes_back_onto_the_source_grid(tmp_path):
    from cclray.evaluation.report import write_synth_nifti

    store = _prep(tmp_path, 2.0)
    sid = store.subjects()[0]
    a = store.subject_attrs(sid)
    t1w = store.read(sid, "image")[0].astype(np.float32)
    path = write_synth_nifti(t1w, a, tmp_path / "out.nii.gz")
    img = nib.load(str(path))
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.affine, AFFINE)
    assert np.abs(img.get_fdata()).max() > 0.5  # the volume is there, not zeros


def test_cli_prep_spacing(tmp_path):
    from cclray.cli import main

    src = tmp_path / "src"
    for i in range(2):
        write_subject_dir(src, i + 1)
    out = tmp_path / "cli.zarr"
    assert main(["prep", str(src), "--out", str(out), "--spacing", "2", "--splits", "finetune=1,test=1",
                 "--constraint", "t1w,t1gd,t2w,flair:k=4", "--workers", "1"]) == 0
    assert Store(str(out)).attrs["spacing"] == [2.0, 2.0, 2.0]
    assert main(["prep", str(src), "--out", str(tmp_path / "bad.zarr"), "--spacing", "0"]) == 2
