import pytest

from data_prep.schema import CONTRASTS, NAMINGS, canonical_contrast, channel_index, constraint_name, safe_subject_id


@pytest.mark.parametrize("alias, canonical", [
    ("t1", "t1w"), ("T1N", "t1w"), ("t1ce", "t1gd"), ("t1c", "t1gd"), ("t2", "t2w"), ("t2f", "flair"), ("FLAIR", "flair"),
])
def test_aliases(alias, canonical):
    assert canonical_contrast(alias) == canonical


def test_unknown_contrast_names_the_choices():
    with pytest.raises(ValueError, match="unknown contrast 'pd'.*t1gd"):
        canonical_contrast("pd")


def test_channel_order_is_the_store_order():
    assert [channel_index(c) for c in CONTRASTS] == [0, 1, 2, 3]
    assert channel_index("t1ce") == 1


@pytest.mark.parametrize("contrasts, k, name", [
    (CONTRASTS, 20, "t1w+t1gd+t2w+flair-k20"),
    (("t1ce", "t1"), 30, "t1w+t1gd-k30"),  # order canonicalized, aliases resolved
    (("flair", "t2w"), 10, "t2w+flair-k10"),
])
def test_constraint_name(contrasts, k, name):
    assert constraint_name(contrasts, k) == name


@pytest.mark.parametrize("contrasts, k", [((), 20), (("t1w", "t1"), 20), (CONTRASTS, 1)])
def test_constraint_name_refuses(contrasts, k):
    with pytest.raises(ValueError):
        constraint_name(contrasts, k)


@pytest.mark.parametrize("naming, sid, what, name", [
    ("brats2021", "BraTS2021_00001", "t1gd", "BraTS2021_00001_t1ce.nii.gz"),
    ("brats2023", "BraTS-GLI-00001-000", "flair", "BraTS-GLI-00001-000-t2f.nii.gz"),
    ("brats2023", "BraTS-GLI-00001-000", "t1w", "BraTS-GLI-00001-000-t1n.nii.gz"),
])
def test_filenames(naming, sid, what, name):
    assert NAMINGS[naming].filename(sid, what) == name


def test_synth_filename():
    assert NAMINGS["brats2023"].filename("X-1", "t2w", synth=True) == "X-1-t2w-synth.nii.gz"


@pytest.mark.parametrize("bad", ["..", "../etc", "/abs", "a/b", "", "a b", ".hidden"])
def test_unsafe_ids_refused(bad):
    with pytest.raises(ValueError, match="rename the folder"):
        safe_subject_id(bad)


def test_safe_id_passes():
    assert safe_subject_id("BraTS-GLI-00001-000") == "BraTS-GLI-00001-000"
