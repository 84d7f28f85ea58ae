"""Version 2 of the phantom (the default): lesion kinds, protocol, texture, receive field, slices, noise."""
import numpy as np
import pytest

from data_prep import phantom
from data_prep.schema import CONTRASTS

SEED = 123
ALL_KINDS = ("nonenhancing", "haemorrhage", "cyst", "calcification")
#: the parts added after commit 1983e6e, all off: v2 must then make 1983e6e's cohort (V2_1983E6E)
ADDED_OFF = dict(t2w_bias=False, slice_sampling=False, misreg_mm=1.0)
#: v2 subjects (4 mm, cohort seed 7) made by commit 1983e6e, as a fingerprint rather than bytes: per contrast the
#: int16 image's mean, std and intensity-weighted centroid (voxels), and the seg's label counts. A sha256 of the
#: bytes was pinned first and broke for subject 1 on a fresh environment with 1983e6e's own code (library builds or
#: CPU; the cause was not isolated); the fingerprint still moves with any change to a draw, a map or a part.
V2_1983E6E = [
    {"t1w": [501.759, 887.478, 30.7713, 28.4755, 15.8693], "t1gd": [298.498, 536.526, 30.8809, 28.4827, 15.6685],
     "t2w": [364.505, 639.382, 30.874, 28.264, 15.5839], "flair": [203.807, 356.497, 30.7587, 28.1526, 15.2759],
     "seg": [139847, 113, 374, 0, 66]},
    {"t1w": [278.653, 496.64, 30.8518, 28.6417, 16.3707], "t1gd": [271.034, 481.289, 30.7865, 28.6713, 16.0089],
     "t2w": [352.028, 631.2, 30.7752, 28.4524, 16.0949], "flair": [221.337, 397.544, 30.9614, 28.3906, 16.0196],
     "seg": [139458, 91, 719, 0, 132]},
]


@pytest.fixture(scope="module")
def kinds_subjects():
    """Two 2 mm v2 subjects with every lesion kind present (protocol, texture, receive field and noise on; thin
    slices and no misregistration, so that the specks of calcification stay where their tissue map says)."""
    from data_prep.phantom_v2 import Parts

    return [phantom.make_subject("x", s, spacing=2.0, return_tissue=True, version=2,
                                 parts=Parts.only(*ALL_KINDS, slices=False, misregistration=False))
            for s in (SEED, SEED + 5)]


def _pure(s, name, at=0.9, min_n=5):
    m = s["tissue"][name] > at
    assert m.sum() >= min_n, f"too few {name} voxels ({m.sum()})"
    return m


def _rel(s, contrast, name, ref="wm", min_n=5):
    """Mean of the pure ``name`` voxels relative to pure ``ref`` in one contrast."""
    img = s["images"][contrast]
    return float(img[_pure(s, name, min_n=min_n)].mean() / img[_pure(s, ref)].mean())


def test_v2_is_the_default_and_places_every_kind(kinds_subjects):
    assert phantom.PHANTOM_VERSION == 2
    for s in kinds_subjects:
        assert set(s["info"]["kinds"]) == set(ALL_KINDS)
        for name in (*ALL_KINDS, "haemosiderin") if s["info"]["kinds"]["haemorrhage"]["shape"] == "blob" \
                else ALL_KINDS:
            assert s["tissue"][name].sum() > 0, name
        np.testing.assert_allclose(sum(s["tissue"].values())[s["mask"]], 1.0, atol=1e-5)
        core_like = sum(s["tissue"][k] for k in ALL_KINDS) > 0.9
        assert (s["seg"][core_like] == 1).all()  # every kind is tumour core (BraTS label 1)


def test_v2_radiologist_checks(kinds_subjects):
    """Haemorrhage bright on T1w and T1Gd; non-enhancing tumour FLAIR-bright but T1Gd-dark (unlike the
    enhancing rim) and less T2-bright than edema; a cyst not nulled on FLAIR (unlike CSF); calcification dark."""
    for s in kinds_subjects:
        assert _rel(s, "t1w", "haemorrhage") > 1.2 and _rel(s, "t1gd", "haemorrhage") > 1.2
        assert _rel(s, "t1w", "haemorrhage") > 1.2 * _rel(s, "t1w", "enhancing")  # T1w tells them apart
        assert _rel(s, "flair", "nonenhancing") > 1.2
        assert _rel(s, "t1gd", "nonenhancing") < 1.0 < _rel(s, "t1gd", "enhancing")
        assert _rel(s, "t2w", "nonenhancing") < 0.9 * _rel(s, "t2w", "edema")
        assert _rel(s, "flair", "cyst") > 0.8 and _rel(s, "flair", "cyst") > 4 * _rel(s, "flair", "csf")
        assert _rel(s, "t2w", "cyst") > 2.0
        for c in CONTRASTS:
            assert _rel(s, c, "calcification", min_n=1) < 0.6, c  # specks: few pure voxels at 2 mm


def test_v2_haemosiderin_rim_dark_on_t2w_and_flair():
    from data_prep.phantom_v2 import Parts

    for seed in range(40):  # the first subject with a blob (not a layer)
        s = phantom.make_subject("x", seed, spacing=2.0, return_tissue=True, version=2,
                                 parts=Parts.only("haemorrhage", misregistration=False))
        if s["info"]["kinds"]["haemorrhage"]["shape"] == "blob":
            break
    rim = s["tissue"]["haemosiderin"] > 0.7
    assert rim.sum() >= 5
    for c in ("t2w", "flair"):
        assert s["images"][c][rim].mean() < 0.6 * s["images"][c][_pure(s, "wm")].mean(), c


def test_v2_parts_switch_off_and_keep_the_rest():
    from data_prep.phantom_v2 import Parts

    plain = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                                 parts=Parts.only(receive=False, texture=False, noise=False, slices=False,
                                                  misregistration=False, t2w_bias=False))
    assert plain["info"]["kinds"] == {} and all(plain["tissue"][k].sum() == 0 for k in ALL_KINDS)
    for c in CONTRASTS:  # noise off: the image is the oracle's prediction
        np.testing.assert_allclose(plain["images"][c], np.clip(np.rint(plain["clean"][c]), 1, None) * plain["mask"],
                                   atol=1)
    wm = plain["tissue"]["wm"] > 0.99
    assert plain["images"]["t2w"][wm].std() / plain["images"]["t2w"][wm].mean() < 0.01  # homogeneous, no field
    textured = phantom.make_subject("x", SEED, spacing=4.0, version=2,
                                    parts=Parts.only(receive=False, texture=True, noise=False, slices=False,
                                                     misregistration=False, t2w_bias=False))
    assert textured["images"]["t2w"][wm].std() / textured["images"]["t2w"][wm].mean() > 0.01
    np.testing.assert_array_equal(textured["seg"], plain["seg"])  # same anatomy and lesion


def test_v2_receive_field_is_shared_by_the_contrasts():
    """Without texture and noise, T1w varies over pure WM by the receive field (>= 10 %), but T1Gd / T1w
    there only by the small per-contrast parts (<= 3 % each)."""
    from data_prep.phantom_v2 import Parts

    s = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                             parts=Parts.only(texture=False, noise=False, slices=False, misregistration=False))
    wm = s["tissue"]["wm"] > 0.99
    t1w, t1gd = (s["images"][c][wm].astype(float) for c in ("t1w", "t1gd"))
    assert t1w.max() / t1w.min() > 1.1
    ratio = t1gd / t1w
    assert ratio.max() / ratio.min() < 1.07


def test_v2_protocol_varies_between_subjects():
    from data_prep.phantom_protocol import PRESETS, REFERENCE_PROTOCOL, draw_protocol
    from data_prep.phantom_v2 import Parts

    protocols = [draw_protocol(np.random.default_rng(i)) for i in range(40)]
    assert {p.field for p in protocols} == {1.5, 3.0} and {p.t1_kind for p in protocols} == {"se", "gre"}
    assert len({round(p.t2_te) for p in protocols}) > 10
    for p in protocols:
        assert any(p.field == f and p.t1_kind == k for f, k, *_ in PRESETS.values())
    off = phantom.make_subject("x", SEED, spacing=4.0, version=2, parts=Parts(protocol=False))
    assert off["info"]["protocol"] == REFERENCE_PROTOCOL


def test_v2_kinds_prevalence_and_count_vary():
    """Over a cohort each kind is in some subjects and not in others (20-40 % each)."""
    from data_prep.phantom_kinds import PREVALENCE

    assert all(0.2 <= p <= 0.4 for p in PREVALENCE.values())
    seen = [phantom.make_subject("x", phantom.subject_seed(0, i), spacing=4.0, version=2)["info"]["kinds"]
            for i in range(12)]
    for kind in PREVALENCE:
        n = sum(kind in k for k in seen)
        assert 0 < n < 12, (kind, n)


def test_v2_slice_blur_only_in_the_2d_contrasts():
    """A 2D contrast is smoother across its slices than with the slice part off; 3D contrasts are untouched."""
    from data_prep.phantom_v2 import Parts

    on = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(noise=False))
    off = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(noise=False, slices=False))
    assert on["info"]["slices"] and off["info"]["slices"] == {}
    for c in CONTRASTS:
        if c not in on["info"]["slices"]:
            np.testing.assert_array_equal(on["images"][c], off["images"][c])
            continue
        axis = "xyz".index(on["info"]["slices"][c][0])
        inside = on["mask"] & np.roll(on["mask"], 1, axis)

        def step(img):
            return np.abs(np.diff(img.astype(float), axis=axis, prepend=0))[inside].mean()
        assert step(on["images"][c]) < step(off["images"][c]), c


def test_v2_noise_is_lower_on_the_t1_weighted_contrasts():
    """The Rician noise sd, relative to each contrast's mean, falls in that contrast's NOISE range: lower on
    T1w / T1Gd (small tissue contrast, acquired at higher SNR) than on T2w / FLAIR."""
    from data_prep.phantom_v2 import NOISE, Parts

    assert max(NOISE["t1w"]) <= min(NOISE["t2w"]) + 0.005
    for seed in (SEED, SEED + 1):
        on = phantom.make_subject("x", seed, spacing=4.0, version=2)
        off = phantom.make_subject("x", seed, spacing=4.0, version=2, parts=Parts(noise=False))
        for c in CONTRASTS:
            ref = off["images"][c].astype(float)
            bright = ref > 0.5 * ref[on["mask"]].mean()  # Rician is ~Gaussian where the signal is well above sd
            rel = (on["images"][c] - ref)[bright].std() / ref[on["mask"]].mean()
            low, high = NOISE[c]
            assert low <= on["info"]["noise"][c] <= high and off["info"]["noise"][c] == 0.0
            assert rel == pytest.approx(on["info"]["noise"][c], rel=0.2), c


def test_v2_mprage_post_contrast():
    """T1Gd as a 3D MPRAGE (inversion prepared): CSF nearly nulled (far darker relative to WM than on the T1w),
    never slice-blurred; the other timings are those of the same subject without it."""
    from data_prep.phantom_v2 import Parts

    mp = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                              parts=Parts.only(mprage_post=1.0, noise=False))
    same = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                                parts=Parts.only(mprage_post=0.0, noise=False))
    p, q = mp["info"]["protocol"], same["info"]["protocol"]
    assert (p.gd_kind, q.gd_kind) == ("mprage", "same") and p.t2_te == q.t2_te and p.t1_tr == q.t1_tr
    assert 1800 <= p.gd_tr <= 2300 and 850 <= p.gd_ti <= 1100
    assert "t1gd" not in mp["info"]["slices"]
    csf = _rel(mp, "t1gd", "csf", min_n=20)
    assert csf < 0.25 and csf < 0.6 * _rel(mp, "t1w", "csf", min_n=20)
    assert _rel(same, "t1gd", "csf", min_n=20) == pytest.approx(_rel(same, "t1w", "csf", min_n=20), rel=0.1)
    np.testing.assert_array_equal(mp["images"]["t2w"], same["images"]["t2w"])


def test_v2_misregistration_moves_each_contrast_by_its_recorded_shift(monkeypatch):
    """Without rotation, each contrast is the unmoved one translated by its recorded (tx, ty, tz) mm: it matches the
    unmoved image shifted by +t better than shifted by -t or not at all; the labels stay on the true anatomy."""
    from scipy.ndimage import binary_erosion, shift

    from data_prep import phantom_v2
    from data_prep.phantom_v2 import Parts

    monkeypatch.setattr(phantom_v2, "MISREG_DEG", 0.0)
    kw = dict(noise=False, slices=False, receive=False)
    on = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(**kw))
    off = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(misregistration=False, **kw))
    assert off["info"]["misregistration"] == {}
    np.testing.assert_array_equal(on["seg"], off["seg"])
    inner = binary_erosion(on["mask"], iterations=3)
    for c in CONTRASTS:
        t = np.array(on["info"]["misregistration"][c][:3]) / 2.0  # voxels
        assert np.all(np.abs(t) <= phantom_v2.MISREG_MM / 2.0) and np.abs(t).max() > 0.05
        ref = off["images"][c].astype(float)

        def err(moved):
            return np.abs(on["images"][c][inner] - moved[inner]).mean()
        assert err(shift(ref, t, order=1)) < min(err(ref), err(shift(ref, -t, order=1))), c


def test_v2_2d_contrasts_misregister_up_to_half_a_slice_across_their_slices():
    from data_prep.phantom_v2 import MISREG_MM, Parts

    beyond = 0
    for seed in range(SEED, SEED + 12):
        s = phantom.make_subject("x", seed, spacing=4.0, version=2, parts=Parts.only(noise=False))
        thin = phantom.make_subject("x", seed, spacing=4.0, version=2,
                                    parts=Parts.only(noise=False, thick_misregistration=False))
        for c, t in s["info"]["misregistration"].items():
            same = thin["info"]["misregistration"][c]
            assert t[3:] == same[3:]  # same draws: only the scale across the slices changes
            if c not in s["info"]["slices"]:
                assert t == same and max(abs(v) for v in t[:3]) <= MISREG_MM
                continue
            axis, mm = s["info"]["slices"][c]
            k = "xyz".index(axis)
            assert abs(t[k]) <= max(MISREG_MM, mm / 2) + 1e-3
            beyond += abs(t[k]) > MISREG_MM
    assert beyond > 0


@pytest.mark.parametrize("i", [0, 1])
def test_v2_with_the_added_parts_off_is_the_1983e6e_cohort(i):
    from data_prep.phantom_v2 import Parts

    s = phantom.make_subject("x", phantom.subject_seed(7, i), spacing=4.0, version=2, parts=Parts(**ADDED_OFF))
    ref = V2_1983E6E[i]
    for c in CONTRASTS:
        x = s["images"][c].astype(np.float64)
        grid = np.indices(x.shape).reshape(3, -1)
        got = [x.mean(), x.std(), *((grid * x.ravel()).sum(1) / x.sum())]
        np.testing.assert_allclose(got, ref[c], rtol=2e-5, atol=2e-3, err_msg=c)
    np.testing.assert_allclose(np.bincount(s["seg"].ravel(), minlength=5), ref["seg"], atol=2)


def test_v2_t2w_has_its_own_non_uniformity():
    """Over pure white matter, T2w / FLAIR varies by the T2w-only field (>= 15 % peak, by its draw) while T1Gd / T1w
    stays flat; with the part off T2w / FLAIR is flat too, and only the T2w changes between on and off."""
    from data_prep.phantom_v2 import T2W_BIAS, Parts

    kw = dict(texture=False, noise=False, slices=False, misregistration=False)
    for seed in (SEED, SEED + 1):
        on = phantom.make_subject("x", seed, spacing=4.0, return_tissue=True, version=2, parts=Parts.only(**kw))
        off = phantom.make_subject("x", seed, spacing=4.0, return_tissue=True, version=2,
                                   parts=Parts.only(t2w_bias=False, **kw))
        wm = on["tissue"]["wm"] > 0.99

        def spread(s, a, b):
            r = s["images"][a][wm].astype(float) / s["images"][b][wm]
            return r.max() / r.min()
        assert spread(on, "t2w", "flair") > 1.0 + T2W_BIAS[0] and spread(off, "t2w", "flair") < 1.08
        assert spread(on, "t1gd", "t1w") < 1.08
        field = on["images"]["t2w"][wm].astype(float) / off["images"]["t2w"][wm]
        assert 1.0 - T2W_BIAS[1] - 0.01 <= field.min() and field.max() <= 1.0 + T2W_BIAS[1] + 0.01
        for c in ("t1w", "t1gd", "flair"):
            np.testing.assert_array_equal(on["images"][c], off["images"][c])


def test_sample_slices_keeps_the_centres_and_interpolates_between():
    from data_prep.phantom_v2 import _sample_slices

    vol = np.random.default_rng(0).standard_normal((3, 4, 40)).astype(np.float32)
    out = _sample_slices(vol, 2, step=3.5, offset=2.0)
    centres = np.unique(np.rint(2.0 + 3.5 * np.arange(12)).astype(int))  # each slice at its nearest voxel
    centres = centres[centres < 40]
    np.testing.assert_allclose(out[..., centres], vol[..., centres], atol=1e-6)
    np.testing.assert_array_equal(out[..., :2], vol[..., 2:3].repeat(2, axis=2))  # before the first: the first
    np.testing.assert_allclose(out[..., centres[-1]:], vol[..., centres[-1]:centres[-1] + 1].repeat(
        40 - centres[-1], axis=2), atol=1e-6)  # after the last: the last
    for a, b in zip(centres[:-1], centres[1:]):  # straight lines between neighbouring centres
        w = (np.arange(a, b + 1) - a) / (b - a)
        np.testing.assert_allclose(out[..., a:b + 1], vol[..., a:a + 1] + w * (vol[..., b:b + 1] - vol[..., a:a + 1]),
                                   atol=1e-5)
    assert np.abs(np.diff(out[..., centres[0]:centres[-1]], 2, axis=2)).mean() < \
        0.5 * np.abs(np.diff(vol, 2, axis=2)).mean()


def test_v2_2d_contrasts_are_known_at_their_slices_only():
    """With slice sampling, a 2D contrast is piecewise linear across its slices (far smaller second differences
    along the slice axis than the blurred profile without it); 3D contrasts are untouched; off gives the old image."""
    from data_prep.phantom_v2 import Parts

    kw = dict(noise=False, misregistration=False)
    on = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(**kw))
    off = phantom.make_subject("x", SEED, spacing=2.0, version=2, parts=Parts.only(slice_sampling=False, **kw))
    assert on["info"]["slices"] == off["info"]["slices"] and on["info"]["slices"]
    inner = on["mask"]
    for c in CONTRASTS:
        if c not in on["info"]["slices"]:
            np.testing.assert_array_equal(on["images"][c], off["images"][c])
            continue
        axis = "xyz".index(on["info"]["slices"][c][0])
        ok = inner & np.roll(inner, 1, axis) & np.roll(inner, -1, axis)

        def bend(img):
            img = img.astype(float)
            return np.abs(np.roll(img, 1, axis) + np.roll(img, -1, axis) - 2 * img)[ok].mean()
        assert not np.array_equal(on["images"][c], off["images"][c])
        assert bend(on["images"][c]) < 0.8 * bend(off["images"][c]), c


def test_v2_misregistration_size_is_a_part():
    """``Parts.misreg_mm`` scales the same draws: the default (MISREG_MM, 1.5 mm) moves each 3D contrast 1.5 times as far
    as 1 mm does, within its bound; rotations are unchanged."""
    from data_prep.phantom_v2 import MISREG_MM, Parts

    assert MISREG_MM == 1.5
    kw = dict(noise=False, receive=False, texture=False)
    wide = phantom.make_subject("x", SEED, spacing=4.0, version=2, parts=Parts.only(**kw))
    narrow = phantom.make_subject("x", SEED, spacing=4.0, version=2, parts=Parts.only(misreg_mm=1.0, **kw))
    assert wide["info"]["slices"] == narrow["info"]["slices"]
    for c in CONTRASTS:
        t, u = np.array(wide["info"]["misregistration"][c]), np.array(narrow["info"]["misregistration"][c])
        np.testing.assert_allclose(t[3:], u[3:])
        if c not in wide["info"]["slices"]:
            np.testing.assert_allclose(t[:3], 1.5 * u[:3], atol=2e-3)
            assert np.abs(u[:3]).max() <= 1.0 and np.abs(t[:3]).max() <= MISREG_MM
