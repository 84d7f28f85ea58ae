"""`cclray evaluate --pred DIR --truth DIR`: BraSyn and cclray names found, scored, clear errors."""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
from brats_files import AFFINE, SHAPE, write_subject_dir  # noqa: E402
from cclray.cli import main  # noqa: E402
from cclray.evaluation.folders import evaluate_folders, find_predictions  # noqa: E402
from cclray.evaluation.report import read_metrics_csv  # noqa: E402
from data_prep.errors import InputError  # noqa: E402


def _save(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFFINE), str(path))


@pytest.fixture
def truth(tmp_path):
    root = tmp_path / "truth"
    for i in (1, 2):
        write_subject_dir(root, i, "brats2023", seed=i)
    return root


def _vol(truth: Path, sid: str, suffix: str) -> np.ndarray:
    return np.asarray(nib.load(str(truth / sid / f"{sid}-{suffix}.nii.gz")).dataobj, np.float64)


def test_brasyn_and_cclray_names_scored_perfect_and_imperfect(truth, tmp_path):
    perfect, noisy = tmp_path / "perfect", tmp_path / "nested" / "noisy"
    rng = np.random.default_rng(0)
    for i in (1, 2):
        sid = f"BraTS-GLI-{i:05d}-000"
        for suffix in ("t1n", "t2w"):
            t = _vol(truth, sid, suffix)
            _save(perfect / f"{sid}-{suffix}-inference.nii.gz", t)  # BraSyn naming
            _save(noisy / "x" / f"{sid}-{suffix}-synth.nii.gz", np.where(t > 0, t + rng.normal(0, 80, t.shape), 0))
    assert set(find_predictions(noisy)["BraTS-GLI-00001-000"]) == {"t1w", "t2w"}
    result = evaluate_folders([perfect, noisy], truth, tmp_path / "out", ["A", "B"])
    rows = read_metrics_csv(tmp_path / "out" / "metrics.csv")
    assert {r["method"] for r in rows} == {"masked", "brasyn", "zscored"}
    a = [r for r in rows if r["run"] == "A" and r["region"] == "brain"]
    b = [r for r in rows if r["run"] == "B" and r["method"] == "masked" and r["region"] == "brain"]
    assert all(r["ssim"] == pytest.approx(1.0) for r in a) and len(b) == 4
    assert all(r["ssim"] < 0.99 for r in b)
    assert result["unscored_truth_subjects"] == 0 and (tmp_path / "out" / "figure.png").stat().st_size > 5000


def test_missing_truth_and_grid_mismatch_are_named(truth, tmp_path):
    _save(tmp_path / "p1" / "BraTS-GLI-00009-000-t1n-inference.nii.gz", np.ones(SHAPE))
    with pytest.raises(InputError, match="no truth"):
        evaluate_folders([tmp_path / "p1"], truth, tmp_path / "o")
    bad = tmp_path / "p2" / "BraTS-GLI-00001-000-t1n-inference.nii.gz"
    _save(bad, np.ones((10, 10, 10)))
    with pytest.raises(InputError, match="differs from the truth"):
        evaluate_folders([tmp_path / "p2"], truth, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no synthesized NIfTI"):
        find_predictions(tmp_path / "empty")


def test_cli_modes(truth, tmp_path, capsys):
    sid = "BraTS-GLI-00001-000"
    _save(tmp_path / "p" / f"{sid}-t1n-inference.nii.gz", _vol(truth, sid, "t1n"))
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(truth), "--out", str(tmp_path / "o")]) == 0
    assert "1 truth subject(s) had no prediction" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--out", str(tmp_path / "o2")]) == 2
    assert "--truth" in capsys.readouterr().err
