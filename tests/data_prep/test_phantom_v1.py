"""Version 1 of the phantom: `--phantom-version 1` keeps the first cohort byte for byte."""
import pytest

from data_prep import phantom
from data_prep.schema import CONTRASTS

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
