"""Subject discovery: both BraTS namings, optional seg, and each folder-level error."""
import shutil

import pytest

from brats_files import SIDS, contrast_file, write_subject_dir
from data_prep.discover import DiscoveryError, SubjectError, discover, find_subjects
from data_prep.schema import CONTRASTS

NAMING_CASES = [
    # naming,     suffix of the t1gd file, seg written
    ("brats2021", "_t1ce.nii.gz", True),
    ("brats2023", "-t1c.nii.gz", True),
    ("brats2021", "_t1ce.nii.gz", False),
    ("brats2023", "-t1c.nii.gz", False),
]


@pytest.mark.parametrize("naming,t1gd_suffix,seg", NAMING_CASES)
def test_detects_naming(tmp_path, naming, t1gd_suffix, seg):
    write_subject_dir(tmp_path / "data", 3, naming, seg=seg)
    write_subject_dir(tmp_path / "data", 1, naming, seg=seg)
    subjects = discover(tmp_path / "data")
    assert [s.sid for s in subjects] == [SIDS[naming].format(1), SIDS[naming].format(3)]  # sorted
    s = subjects[0]
    assert s.naming == naming
    assert set(s.paths) == set(CONTRASTS)
    assert s.paths["t1gd"].name == s.sid + t1gd_suffix
    assert (s.seg is not None) == seg


def test_nested_and_mixed_namings(tmp_path):
    write_subject_dir(tmp_path / "a" / "train", 1, "brats2021")
    write_subject_dir(tmp_path / "b", 2, "brats2023")
    write_subject_dir(tmp_path / ".partial", 3, "brats2021")  # an interrupted writer's leftovers
    found = discover(tmp_path)
    assert {s.naming for s in found} == {"brats2021", "brats2023"} and len(found) == 2


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "README.txt").write_text("no images")
    with pytest.raises(DiscoveryError, match="holds no .nii.gz") as e:
        find_subjects(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "point SRC_DIR" in str(e.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(DiscoveryError, match="is not a folder"):
        find_subjects(tmp_path / "nope")


def test_unknown_naming(tmp_path):
    folder = tmp_path / "subj01"
    folder.mkdir()
    for name in ("subj01_anat.nii.gz", "subj01_gad.nii.gz"):
        (folder / name).write_bytes(b"")
    found = find_subjects(tmp_path)
    assert found.subjects == [] and len(found.failed) == 1
    msg = str(found.failed[0])
    # lists what was found and the expected names, and says what to do
    assert "subj01_gad.nii.gz" in msg and "subj01_t1ce.nii.gz" in msg and "t2f.nii.gz" in msg
    assert "rename the files" in msg
    with pytest.raises(SubjectError):
        discover(tmp_path)


def test_missing_contrast(tmp_path):
    folder = write_subject_dir(tmp_path, 1, "brats2021")
    write_subject_dir(tmp_path, 2, "brats2021")
    contrast_file(folder, "flair").unlink()
    found = find_subjects(tmp_path)
    assert [s.sid for s in found.subjects] == ["BraTS2021_00002"]
    (err,) = found.failed
    assert err.sid == "BraTS2021_00001"
    assert err.file.endswith("BraTS2021_00001_flair.nii.gz")
    assert "missing BraTS2021_00001_flair.nii.gz" in str(err) and "add the file" in str(err)


def test_duplicate_subject_id(tmp_path):
    folder = write_subject_dir(tmp_path / "a", 1, "brats2021")
    shutil.copytree(folder, tmp_path / "b" / folder.name)
    with pytest.raises(DiscoveryError, match="duplicate subject id 'BraTS2021_00001'") as e:
        find_subjects(tmp_path)
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "b") in str(e.value)
    assert "remove or rename" in str(e.value)


def test_unsafe_subject_id_is_a_subject_failure(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for c in ("t1", "t1ce", "t2", "flair"):
        (folder / f"x y_{c}.nii.gz").write_bytes(b"")
    found = find_subjects(tmp_path)
    assert found.subjects == [] and "not a safe store name" in str(found.failed[0])


def test_symlinked_subject_folders(tmp_path):
    real = write_subject_dir(tmp_path / "store", 7, "brats2023")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / real.name).symlink_to(real, target_is_directory=True)
    (tmp_path / "src" / "loop").symlink_to(tmp_path / "src", target_is_directory=True)  # must not hang
    (s,) = discover(tmp_path / "src")
    assert s.sid == real.name and s.naming == "brats2023"
