"""NIfTI loading and validation: a good subject loads; each broken file is refused naming file and fix."""
import gzip

import nibabel as nib
import numpy as np
import pytest

from brats_files import AFFINE, SHAPE, contrast_file, make_volumes, save, write_subject_dir
from data_prep.discover import discover
from data_prep.nifti import SubjectError, load_subject
from data_prep.schema import CONTRASTS


def _subject(tmp_path, naming="brats2021", seg=True):
    folder = write_subject_dir(tmp_path, 1, naming, seg=seg)
    return folder, discover(tmp_path)[0]


def test_loads_good_subject(tmp_path):
    _, files = _subject(tmp_path)
    s = load_subject(files)
    vols, seg = make_volumes(SHAPE, 1)
    assert s.volumes.shape == (4, *SHAPE) and s.volumes.dtype == np.float32
    np.testing.assert_array_equal(s.volumes, vols.astype(np.float32))  # schema channel order
    np.testing.assert_allclose(s.affine, AFFINE)
    np.testing.assert_array_equal(s.seg, seg)
    assert s.header["pixdim"][1:4] == [1.0, 1.0, 1.0] and s.header["datatype"] == "int16"
    assert {"qform_code", "sform_code", "xyzt_units"} <= set(s.header)


def test_trailing_singleton_axis_is_squeezed(tmp_path):
    folder, files = _subject(tmp_path)
    path = contrast_file(folder, "t2w")
    save(path, np.asanyarray(nib.load(path).dataobj)[..., None])
    assert nib.load(path).shape == (*SHAPE, 1)
    assert load_subject(files).volumes.shape == (4, *SHAPE)


def test_brats2023_enhancing_label_3_becomes_4(tmp_path):
    folder, files = _subject(tmp_path, "brats2023")
    seg = np.asanyarray(nib.load(contrast_file(folder, "seg")).dataobj).copy()
    seg[seg == 4] = 3
    save(contrast_file(folder, "seg"), seg)
    assert set(np.unique(load_subject(files).seg)) == {0, 2, 4}


def _break_shape(path):
    save(path, np.asanyarray(nib.load(path).dataobj)[:-2])


def _break_affine(path):
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += 0.5
    save(path, np.asanyarray(img.dataobj), affine)


def _break_4d(path):
    data = np.asanyarray(nib.load(path).dataobj)
    save(path, np.stack([data, data], axis=-1))


def _break_nan(path):
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    save(path, data)


def _break_zero(path):
    save(path, np.zeros(SHAPE, np.int16))


def _break_truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _break_not_nifti(path):
    path.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))


def _break_seg_labels(path):
    save(path, np.full(SHAPE, 7, np.uint8))


BAD_CASES = [
    # breaker,          file broken, message fragment,              fix fragment
    (_break_shape, "flair", "shape (22, 28, 20) differs", "resample all contrasts"),
    (_break_affine, "t2w", "affine differs", "co-register"),
    (_break_4d, "t1gd", "is not a 3D volume", "export one 3D volume per contrast"),
    (_break_nan, "t1w", "NaN or infinite", "nan_to_num"),
    (_break_zero, "t2w", "every voxel is 0", "replace the file"),
    (_break_truncate, "flair", "cannot be read as NIfTI", "re-download or re-export"),
    (_break_not_nifti, "t1gd", "cannot be read as NIfTI", "re-download or re-export"),
    (_break_seg_labels, "seg", "are not BraTS labels", "relabel them"),
    (_break_shape, "seg", "shape (22, 28, 20) differs", "resample all contrasts"),
]


@pytest.mark.parametrize("breaker,contrast,what,fix", BAD_CASES, ids=[f"{b.__name__}-{c}" for b, c, *_ in BAD_CASES])
def test_bad_input_names_file_and_fix(tmp_path, breaker, contrast, what, fix):
    folder, files = _subject(tmp_path)
    path = contrast_file(folder, contrast)
    breaker(path)
    with pytest.raises(SubjectError) as e:
        load_subject(files)
    msg = str(e.value)
    assert str(path) in msg and what in msg and fix in msg, msg
    assert e.value.file == str(path) and e.value.sid == files.sid


def test_every_contrast_checked(tmp_path):
    """The shape check compares each contrast to the first, whichever is broken."""
    folder, files = _subject(tmp_path)
    for c in CONTRASTS[1:]:
        path = contrast_file(folder, c)
        good = path.read_bytes()
        _break_shape(path)
        with pytest.raises(SubjectError, match=path.name):
            load_subject(files)
        path.write_bytes(good)
    load_subject(files)
