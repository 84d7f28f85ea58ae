import numpy as np
import pytest

from data_prep.preprocess import brain_mask, crop, crop_box, denormalize, normalize, uncrop


def _vol(seed=0, shape=(20, 24, 18)):
    rng = np.random.default_rng(seed)
    v = np.zeros(shape, np.float32)
    v[4:15, 5:20, 3:14] = rng.uniform(100, 1000, (11, 15, 11))
    return v


def test_mask_is_union_of_nonzero():
    a, b = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    a[0, 0, 0], b[1, 1, 1] = 1, -2
    m = brain_mask([a, b])
    assert m.sum() == 2 and m[0, 0, 0] and m[1, 1, 1]


@pytest.mark.parametrize("margin, box", [(0, ((4, 15), (5, 20), (3, 14))), (2, ((2, 17), (3, 22), (1, 16))),
                                          (10, ((0, 20), (0, 24), (0, 18)))])
def test_crop_box_margin_clipped_to_volume(margin, box):
    assert crop_box(_vol() != 0, margin) == box


def test_crop_uncrop_round_trip():
    v = _vol()
    box = crop_box(v != 0, 3)
    assert np.array_equal(uncrop(crop(v, box), box, v.shape), v)
    four = np.stack([v] * 4)
    assert crop(four, box).shape == (4, *[b - a for a, b in box])


def test_empty_mask_is_refused():
    with pytest.raises(ValueError, match="empty brain mask"):
        crop_box(np.zeros((3, 3, 3), bool))


def test_normalize_is_zscore_inside_mask_and_invertible():
    v = _vol()
    m = v != 0
    out, stats = normalize(v, m, percentiles=(0.0, 100.0))
    assert abs(out[m].mean()) < 1e-5 and abs(out[m].std() - 1) < 1e-4
    assert np.all(out[~m] == 0)
    back = denormalize(out, stats, mask=m)
    np.testing.assert_allclose(back[m], v[m], rtol=1e-4)
    assert stats.to_dict().keys() == {"p_lo", "p_hi", "mean", "std"}


def test_normalize_clips_outliers():
    v = _vol()
    m = v != 0
    v[10, 10, 10] = 1e6
    out, stats = normalize(v, m, percentiles=(0.5, 99.5))
    assert stats.p_hi < 1e6 and out.max() < 5
