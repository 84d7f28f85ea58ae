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
