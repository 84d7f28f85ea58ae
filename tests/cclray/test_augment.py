"""Geometric augmentation (cclray/data/augmentation.py): one affine for images, mask and labels, no padding
artifacts, exact identity and flips, reproducible draws, and the PatchConfig keys that drive it."""
import numpy as np
import pytest

from cclray.config import PatchConfig
from cclray.data.augmentation import affine_margin, apply_affine, augment, random_affine
from data_prep.config import ConfigError

P = (12, 12, 12)
ROT, SCALE = 15.0, (0.95, 1.05)


def _source(size=P, rotate_deg=ROT, scale=SCALE):
    return tuple(p + 2 * g for p, g in zip(size, affine_margin(size, rotate_deg, scale)))


def _blocks(shape, edge=5):
    """Integer labels constant on ``edge``-voxel blocks, and the same values as a float image."""
    idx = np.meshgrid(*(np.arange(s) // edge for s in shape), indexing="ij")
    k = (1 + idx[0] + 3 * idx[1] + 7 * idx[2]).astype(np.int64)
    return k, k.astype(np.float32)


def _smooth(shape, seed=0):
    """A smooth positive image (sum of low-frequency cosines)."""
    g = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij")
    ph = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    return (5 + sum(np.cos(0.3 * gi + p) for gi, p in zip(g, ph))).astype(np.float32)


def test_margin_covers_the_worst_rotation_and_scale():
    m = affine_margin((32, 32, 32), 15.0, (0.95, 1.05))
    assert m == (8, 8, 8)  # 15.5 -> (15.5 cos15 + 21.9 sin15) / 0.95 = 21.7: 6.2 -> 7, + 1 for interpolation
    assert affine_margin((32, 32, 32), 0.0, (1.0, 1.0)) == (0, 0, 0)
    assert affine_margin((32, 32, 32), 0.0, (0.95, 1.0)) == (2, 2, 2)
    # anisotropic patch: the short axis reaches further into the long ones
    mz = affine_margin((32, 32, 8), 15.0, (1.0, 1.0))
    assert mz[2] > mz[0] > 0
    # no draw of random_affine maps a patch corner outside the source box
    rng = np.random.default_rng(0)
    h = (np.array(P) - 1) / 2
    g = np.array(affine_margin(P, ROT, SCALE))
    corners = np.array(np.meshgrid(*([-1, 1],) * 3, indexing="ij")).reshape(3, -1) * h[:, None]
    for _ in range(200):
        a = random_affine(rng, ROT, SCALE)
        assert np.all(np.abs(a @ corners).max(axis=1) <= h + g - 1)
        s = 1 / abs(np.linalg.det(a)) ** (1 / 3)  # the scale drawn, the anatomy appears s times larger
        assert SCALE[0] <= s <= SCALE[1]
        np.testing.assert_allclose((a * s) @ (a * s).T, np.eye(3), atol=1e-9)  # a rotation (and flips) times 1/s
        rot = (a * s) @ np.diag(np.sign(np.diag(a)))  # undo the flips (R_ii > 0 for <= 15 deg)
        assert np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))) <= ROT + 1e-6
    # scale 2 without rotation: a patch voxel step is half a source voxel step (zoom in)
    np.testing.assert_allclose(np.abs(random_affine(rng, 0.0, (2.0, 2.0))), np.eye(3) / 2)


def test_identity_and_flip_give_back_the_centre_crop_exactly():
    src = _source()
    k, img = _blocks(src)
    x = np.stack([_smooth(src), 2 * img])
    m = k % 2 == 0
    g = affine_margin(P, ROT, SCALE)
    centre = tuple(slice(a, a + p) for a, p in zip(g, P))
    xo, yo, mo, ko = apply_affine(np.eye(3), x, x[:1], m, k, P)
    assert np.array_equal(xo, x[(slice(None), *centre)]) and np.array_equal(yo, x[:1][(slice(None), *centre)])
    assert np.array_equal(mo, m[centre]) and np.array_equal(ko, k[centre]) and ko.dtype == np.int64
    xf, _, mf, kf = apply_affine(np.diag([1.0, -1.0, 1.0]), x, None, m, k, P)
    assert np.array_equal(xf, np.flip(x[(slice(None), *centre)], 2)) and np.array_equal(kf, np.flip(k[centre], 1))
    assert np.array_equal(mf, np.flip(m[centre], 1))


def test_rotation_by_90_degrees_is_rot90():
    src = _source()
    x = _smooth(src)[None]
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # output (i, j) <- source (-j, i)
    xo, _, _, _ = apply_affine(rot, x, None, np.ones(src, bool), None, P)
    g = affine_margin(P, ROT, SCALE)
    crop = x[0][tuple(slice(a, a + p) for a, p in zip(g, P))]
    np.testing.assert_allclose(xo[0], np.rot90(crop, -1, axes=(0, 1)), atol=1e-5)


def test_one_transform_for_images_mask_and_labels():
    """target = 3 * input + 1 stays so (linear interpolation is linear); where the image's interpolation stays
    inside one block it equals the nearest-neighbour label there; labels keep the original set."""
    src = _source()
    k, img = _blocks(src)
    s = _smooth(src, 1)
    x = np.stack([img, s])
    y = np.stack([3 * img + 1, 3 * s + 1])
    m = k % 2 == 1
    rng = np.random.default_rng(7)
    moved = 0
    for _ in range(20):
        xo, yo, mo, ko = augment(rng, x, y, m, k, ROT, SCALE, P)
        assert xo.shape == (2, *P) and yo.shape == (2, *P) and mo.shape == P and ko.shape == P
        np.testing.assert_allclose(yo, 3 * xo + 1, rtol=1e-5)
        assert ko.dtype == np.int64 and set(np.unique(ko)) <= set(np.unique(k))
        inside = np.abs(xo[0] - np.round(xo[0])) < 1e-4  # a voxel whose footprint is in one block
        assert inside.mean() > 0.3
        assert np.array_equal(ko[inside], np.round(xo[0][inside]).astype(np.int64))
        assert np.array_equal(mo[inside], ko[inside] % 2 == 1)
        moved += not inside.all()
    assert moved == 20  # a rotation or scale was applied every time


def test_constant_volume_stays_constant_no_out_of_region_voxels():
    src = _source(P, 30.0, (0.9, 1.1))  # exactly the box the wider setting needs; the default one needs less
    x = np.full((2, *src), 7.0, np.float32)
    m = np.ones(src, bool)
    k = np.full(src, 3, np.int64)
    rng = np.random.default_rng(1)
    for _ in range(20):
        xo, _, mo, ko = augment(rng, x, None, m, k, 30.0 if _ % 2 else ROT, (0.9, 1.1) if _ % 2 else SCALE, P)
        np.testing.assert_allclose(xo, 7.0, rtol=1e-6)
        assert mo.all() and np.all(ko == 3)
    with pytest.raises(ValueError, match="margin"):
        augment(rng, x[:, 1:], None, m[1:], k[1:], 30.0, (0.9, 1.1), P)


def test_padding_is_left_out_of_the_mask():
    """A volume smaller than the source box: padded source voxels (valid False) never reach the mask."""
    src = _source()
    m = np.ones(src, bool)
    valid = np.ones(src, bool)
    valid[:4] = False  # as if the volume stopped 4 voxels before the box edge (zeros there)
    x = np.where(valid, 5.0, 0.0).astype(np.float32)[None]
    rng = np.random.default_rng(2)
    for _ in range(10):
        xo, _, mo, _ = augment(rng, x, None, m, None, ROT, SCALE, P, valid=valid)
        np.testing.assert_allclose(xo[0][mo], 5.0, rtol=1e-6)  # masked-in voxels hold real data only
        assert mo.mean() > 0.5


def test_seeded_rng_is_reproducible_and_flips_only_is_exact():
    src = _source()
    k, img = _blocks(src)
    x = np.stack([_smooth(src), img])
    m = k % 3 == 0
    a = augment(np.random.default_rng(5), x, x, m, k, ROT, SCALE, P)
    b = augment(np.random.default_rng(5), x, x, m, k, ROT, SCALE, P)
    c = augment(np.random.default_rng(6), x, x, m, k, ROT, SCALE, P)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    # no rotation or scale: exact flips of the patch itself, the draws of the flips only
    xp, kp, mp = x[:, :12, :12, :12], k[:12, :12, :12], m[:12, :12, :12]
    xo, _, mo, ko = augment(np.random.default_rng(5), xp, None, mp, kp, 0.0, (1.0, 1.0))
    r = np.random.default_rng(5)
    axes = [ax for ax in range(3) if r.random() < 0.5]
    assert np.array_equal(xo, np.flip(xp, [a + 1 for a in axes])) and np.array_equal(ko, np.flip(kp, axes))
    assert np.array_equal(mo, np.flip(mp, axes))


@pytest.mark.parametrize("key, value", [("rotate_deg", -1.0), ("rotate_deg", 200.0), ("scale", [1.1, 0.9]),
                                        ("scale", [0.0, 1.0]), ("scale", [0.9]), ("rotate_deg", "15")])
def test_config_refuses_bad_values_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"PatchConfig.{key}"):
        PatchConfig.from_dict({"augment": True, key: value})


def test_config_defaults_and_round_trip():
    cfg = PatchConfig()
    assert not cfg.augment and cfg.rotate_deg == 15.0 and cfg.scale == (0.95, 1.05)
    again = PatchConfig.from_dict({**cfg.to_dict(), "augment": True, "rotate_deg": 10, "scale": [1, 1]})
    assert again.rotate_deg == 10.0 and again.scale == (1.0, 1.0)
    assert PatchConfig.from_json(again.to_json()) == again
