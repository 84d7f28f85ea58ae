import os
import time

import nibabel as nib
import numpy as np
import pytest

from data_prep import phantom
from data_prep.phantom_tissue import REFERENCE, inversion_recovery, null_ti
from data_prep.schema import CONTRASTS, NAMINGS

SEED = 123


@pytest.fixture(scope="module")
def subject():
    """One 2 mm subject (120, 120, 78) with its tissue fraction maps."""
    return phantom.make_subject("BraTS2021_00000", SEED, spacing=2.0, return_tissue=True)


def _masks(s) -> dict:
    """Pure-tissue masks (fraction > 0.9) and lesion masks (seg labels) of one subject."""
    out = {name: s["tissue"][name] > 0.9 for name in ("wm", "gm", "csf")}
    out.update(necrosis=s["seg"] == 1, edema=s["seg"] == 2, enhancing=s["seg"] == 4)
    return out


def _mean(s, contrast, tissue) -> float:
    m = _masks(s)[tissue]
    assert m.sum() >= 20, f"too few {tissue} voxels ({m.sum()}) to compare"
    return float(s["images"][contrast][m].mean())


# spacing -> grid shape (X, Y, Z): same 240 x 240 x 155 mm field of view
@pytest.mark.parametrize("spacing, shape", [
    (1.0, (240, 240, 155)),
    (2.0, (120, 120, 78)),
    (3.0, (80, 80, 52)),
    (4.0, (60, 60, 39)),
])
def test_grid_shape_and_affine(spacing, shape):
    got, affine = phantom.grid(spacing)
    assert got == shape
    np.testing.assert_allclose(np.diag(affine)[:3], spacing)  # RAS, isotropic
    centre = affine @ np.array([*((np.asarray(shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], phantom.GRID_CENTRE_MM, atol=1e-9)


@pytest.mark.parametrize("spacing", [0.0, -1.0, 100.0, "2"])
def test_grid_refuses_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        phantom.grid(spacing)


def test_subject_arrays(subject):
    shape, affine = phantom.grid(2.0)
    assert set(subject["images"]) == set(CONTRASTS)
    for img in subject["images"].values():
        assert img.shape == shape and img.dtype == np.int16
        assert 500 < img.max() < 6000  # int16 in the BraTS-like range, no overflow
    assert subject["seg"].shape == shape and subject["seg"].dtype == np.uint8
    np.testing.assert_array_equal(subject["affine"], affine)
    assert set(np.unique(subject["seg"])) == {0, 1, 2, 4}  # all three lesion labels, nothing else


def test_background_exactly_zero_and_brain_positive(subject):
    mask = subject["mask"]
    assert 150_000 < mask.sum() < 330_000  # ~1.9 M mm^3 brain at 8 mm^3 a voxel, +-25 % scale
    for c, img in subject["images"].items():
        assert (img[~mask] == 0).all(), c
        assert (img[mask] > 0).all(), c  # so preprocess.brain_mask recovers the brain from any contrast
    assert (subject["seg"][~mask] == 0).all()
    fractions = sum(subject["tissue"].values())
    np.testing.assert_allclose(fractions[mask], 1.0, atol=1e-5)


# (contrast, brighter tissue, darker tissue): what a radiologist checks first
@pytest.mark.parametrize("contrast, bright, dark", [
    ("t1w", "wm", "gm"),
    ("t1w", "gm", "csf"),
    ("t2w", "csf", "wm"),
    ("t2w", "csf", "gm"),
    ("t2w", "gm", "wm"),
    ("flair", "wm", "csf"),
    ("flair", "gm", "csf"),
    ("flair", "edema", "wm"),
    ("flair", "edema", "gm"),
    ("t2w", "edema", "wm"),
    ("t1gd", "enhancing", "wm"),
    ("t1w", "wm", "enhancing"),  # the rim is not bright before contrast
])
def test_tissue_contrast(subject, contrast, bright, dark):
    assert _mean(subject, contrast, bright) > 1.1 * _mean(subject, contrast, dark)


def test_enhancement_is_from_gadolinium(subject):
    rel = {c: _mean(subject, c, "enhancing") / _mean(subject, c, "wm") for c in ("t1w", "t1gd")}
    assert rel["t1gd"] > 1.5 * rel["t1w"]
    # away from the lesion T1Gd is T1w up to gain, bias and noise: no enhancement in normal tissue
    wm_ratio = _mean(subject, "t1gd", "wm") / _mean(subject, "t1w", "wm")
    gm_ratio = _mean(subject, "t1gd", "gm") / _mean(subject, "t1w", "gm")
    assert abs(wm_ratio / gm_ratio - 1) < 0.1


def test_flair_nulls_csf():
    csf = REFERENCE["csf"]
    ti = null_ti(csf.t1, 9000.0)
    assert 2000 < ti < 2800  # ~ ln2 * T1csf, corrected for finite TR
    assert inversion_recovery(1.0, csf.t1, csf.t2, 9000.0, 100.0, ti) < 1e-9


def test_subjects_differ_and_seed_reproduces(subject):
    again = phantom.make_subject("BraTS2021_00000", SEED, spacing=2.0)
    other = phantom.make_subject("BraTS2021_00001", SEED + 1, spacing=2.0)
    for c in CONTRASTS:
        np.testing.assert_array_equal(again["images"][c], subject["images"][c])
        assert not np.array_equal(other["images"][c], subject["images"][c])
    np.testing.assert_array_equal(again["seg"], subject["seg"])
    assert not np.array_equal(other["seg"], subject["seg"])


# sha256 of the four int16 contrasts then the seg of version-1 subjects, taken from the code before
# version 2 existed (numpy 2.4, scipy 1.17): `--phantom-version 1` must keep making these bytes.
V1_PINNED = [
    (4.0, 7, 0, "0eeb2fc6ad13a7d59d475933dec12d43a6eec1dff9b5a39664a52a55764b356f"),
    (4.0, 7, 1, "dc4ebbcb818150d45a3aa43b92850a4c5d353de299bf864b1ee6320a1d390740"),
]


@pytest.mark.parametrize("spacing, cohort_seed, i, digest", V1_PINNED)
def test_version_1_is_bit_for_bit_the_old_cohort(spacing, cohort_seed, i, digest):
    import hashlib

    s = phantom.make_subject("x", phantom.subject_seed(cohort_seed, i), spacing=spacing, version=1)
    h = hashlib.sha256()
    for c in CONTRASTS:
        h.update(s["images"][c].tobytes())
    h.update(s["seg"].tobytes())
    assert h.hexdigest() == digest


@pytest.mark.parametrize("version", [0, 3, "2", True])
def test_unknown_version_refused(tmp_path, version):
    with pytest.raises(ValueError, match="phantom version"):
        phantom.write_cohort(tmp_path, 1, spacing=4.0, version=version)


def test_subject_seed_depends_on_cohort_seed_and_index():
    seeds = {phantom.subject_seed(s, i) for s in range(3) for i in range(5)}
    assert len(seeds) == 15


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


@pytest.mark.parametrize("naming, sid", [
    ("brats2021", "BraTS2021_00001"),
    ("brats2023", "BraTS-GLI-00001-000"),
])
def test_write_cohort_layout(tmp_path, naming, sid):
    from data_prep.discover import discover

    paths = phantom.write_cohort(tmp_path, 2, seed=5, naming=naming, spacing=4.0)
    assert [p.name for p in paths] == [phantom.subject_id(i, naming) for i in range(2)]
    assert paths[1].name == sid
    shape, affine = phantom.grid(4.0)
    for what in (*CONTRASTS, "seg"):
        img = nib.load(paths[1] / NAMINGS[naming].filename(sid, what))
        assert img.shape == shape
        assert img.get_data_dtype() == (np.uint8 if what == "seg" else np.int16)
        np.testing.assert_allclose(img.affine, affine)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    found = discover(tmp_path)  # the real ingestion path reads it back
    assert [s.sid for s in found] == [p.name for p in paths]
    assert {s.naming for s in found} == {naming} and all(s.seg is not None for s in found)
    assert not (tmp_path / phantom.PARTIAL_DIR).exists()


def test_cohort_bytes_reproducible_and_independent_of_n(tmp_path):
    a = phantom.write_cohort(tmp_path / "a", 2, seed=7, spacing=4.0)
    b = phantom.write_cohort(tmp_path / "b", 1, seed=7, spacing=4.0)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 10 and len(fb) == 5
    for rel, data in fb.items():
        assert fa[rel] == data, rel  # identical bytes: gzip without timestamp
    assert fa[a[0].relative_to(tmp_path / "a") / "BraTS2021_00000_t1.nii.gz"] != \
        fa[a[1].relative_to(tmp_path / "a") / "BraTS2021_00001_t1.nii.gz"]
    assert b[0].name == a[0].name


def test_rerun_skips_complete_and_redoes_incomplete(tmp_path):
    paths = phantom.write_cohort(tmp_path, 2, seed=1, spacing=4.0)
    stamps = {p: p.stat().st_mtime_ns for p in paths[0].iterdir()}
    (paths[1] / "BraTS2021_00001_t2.nii.gz").unlink()  # an incomplete subject
    (tmp_path / phantom.PARTIAL_DIR / "BraTS2021_00001.999").mkdir(parents=True)  # a crashed run's leftover
    seen = []
    phantom.write_cohort(tmp_path, 2, seed=1, spacing=4.0, progress=seen.append)
    assert sorted(seen) == paths
    assert {p: p.stat().st_mtime_ns for p in paths[0].iterdir()} == stamps  # untouched
    assert (paths[1] / "BraTS2021_00001_t2.nii.gz").is_file()
    assert not (tmp_path / phantom.PARTIAL_DIR).exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n "),
    ({"naming": "brats2019"}, "naming"),
    ({"seed": -1}, "seed"),
    ({"workers": 0}, "workers"),
    ({"spacing": 0.1}, "spacing"),
])
def test_write_cohort_refuses_bad_arguments(tmp_path, kwargs, match):
    args = {"n": 1, "spacing": 4.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        phantom.write_cohort(tmp_path, **args)


def test_other_settings_in_same_folder_refused(tmp_path):
    phantom.write_cohort(tmp_path, 1, seed=0, spacing=4.0)
    with pytest.raises(ValueError, match="phantom.json.*another --out"):
        phantom.write_cohort(tmp_path, 1, seed=0, spacing=3.0)


def test_process_pool_matches_serial(tmp_path):
    phantom.write_cohort(tmp_path / "serial", 2, seed=3, spacing=4.0)
    phantom.write_cohort(tmp_path / "pool", 2, seed=3, spacing=4.0, workers=2)
    assert _files(tmp_path / "serial") == _files(tmp_path / "pool")


def test_cli(tmp_path):
    from cclray.cli import main

    out = tmp_path / "cohort"
    assert main(["phantom", "--out", str(out), "--n", "1", "--spacing", "4", "--naming", "brats2023"]) == 0
    assert (out / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").is_file()
    assert main(["phantom", "--out", str(out), "--n", "1", "--spacing", "3"]) == 2  # other settings


@pytest.mark.slow
def test_full_size_subject(tmp_path):
    """A 1 mm subject has BraTS's grid. Its time is printed, not asserted (shared machines are noisy;
    benchmarks/bench_prep.py measures it)."""
    phantom.make_subject("warm-up", 0, spacing=2.0)  # template load is once per process
    start = time.perf_counter()
    path = phantom.write_subject(tmp_path, "BraTS2021_00000", 11, spacing=1.0)
    seconds = time.perf_counter() - start
    print(f"1 mm subject: {seconds:.1f} s (make + write), loadavg {os.getloadavg()}")
    assert nib.load(path / "BraTS2021_00000_t1.nii.gz").shape == (240, 240, 155)


# ------------------------------------------------------------------------------------ version 2
ALL_KINDS = ("nonenhancing", "haemorrhage", "cyst", "calcification")


@pytest.fixture(scope="module")
def kinds_subjects():
    """Two 2 mm v2 subjects with every lesion kind present (protocol, texture, receive field and noise on; thin
    slices, so that the specks of calcification are not blurred into their surroundings)."""
    from data_prep.phantom_v2 import Parts

    return [phantom.make_subject("x", s, spacing=2.0, return_tissue=True, version=2,
                                 parts=Parts.only(*ALL_KINDS, slices=False))
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
                                 parts=Parts.only("haemorrhage"))
        if s["info"]["kinds"]["haemorrhage"]["shape"] == "blob":
            break
    rim = s["tissue"]["haemosiderin"] > 0.7
    assert rim.sum() >= 5
    for c in ("t2w", "flair"):
        assert s["images"][c][rim].mean() < 0.6 * s["images"][c][_pure(s, "wm")].mean(), c


def test_v2_parts_switch_off_and_keep_the_rest():
    from data_prep.phantom_v2 import Parts

    plain = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                                 parts=Parts.only(receive=False, texture=False, noise=False, slices=False))
    assert plain["info"]["kinds"] == {} and all(plain["tissue"][k].sum() == 0 for k in ALL_KINDS)
    for c in CONTRASTS:  # noise off: the image is the oracle's prediction
        np.testing.assert_allclose(plain["images"][c], np.clip(np.rint(plain["clean"][c]), 1, None) * plain["mask"],
                                   atol=1)
    wm = plain["tissue"]["wm"] > 0.99
    assert plain["images"]["t2w"][wm].std() / plain["images"]["t2w"][wm].mean() < 0.01  # homogeneous, no field
    textured = phantom.make_subject("x", SEED, spacing=4.0, version=2,
                                    parts=Parts.only(receive=False, texture=True, noise=False, slices=False))
    assert textured["images"]["t2w"][wm].std() / textured["images"]["t2w"][wm].mean() > 0.01
    np.testing.assert_array_equal(textured["seg"], plain["seg"])  # same anatomy and lesion


def test_v2_receive_field_is_shared_by_the_contrasts():
    """Without texture and noise, T1w varies over pure WM by the receive field (>= 10 %), but T1Gd / T1w
    there only by the small per-contrast parts (<= 3 % each)."""
    from data_prep.phantom_v2 import Parts

    s = phantom.make_subject("x", SEED, spacing=4.0, return_tissue=True, version=2,
                             parts=Parts.only(texture=False, noise=False, slices=False))
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


def test_v1_refuses_parts():
    from data_prep.phantom_v2 import Parts

    with pytest.raises(ValueError, match="version 1"):
        phantom.make_subject("x", 0, spacing=4.0, version=1, parts=Parts())
    with pytest.raises(ValueError, match="unknown lesion kind"):
        Parts.only("glioma")


def test_cli_phantom_version_1(tmp_path):
    from cclray.cli import main

    assert main(["phantom", "--out", str(tmp_path / "v1"), "--n", "1", "--spacing", "4", "--phantom-version", "1"]) == 0
    assert '"version": 1' in (tmp_path / "v1" / "phantom.json").read_text()
    assert main(["phantom", "--out", str(tmp_path / "v9"), "--n", "1", "--spacing", "4", "--phantom-version", "9"]) == 2


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
