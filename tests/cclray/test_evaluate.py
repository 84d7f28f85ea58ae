import csv
import json
import math
import sys
import types
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from cclray.config import ModelConfig
from cclray.evaluation import RunSpec, evaluate_runs
from cclray.evaluation.predict import predict_subject
from cclray.evaluation.report import PUBLISHED_LABEL, read_metrics_csv, render_markdown, summarize, write_metrics_csv
from cclray.models import build_synthesizer
from data_prep.store import Store

CROPPED = (20, 22, 18)  # (X, Y, Z) of the stored (cropped) volumes
SOURCE = (26, 30, 24)
CROP = [[3, 23], [4, 26], [2, 20]]
TINY = dict(widths=(8, 16, 32), groups=4)  # network stride 4


def _subject(seed, with_tumour):
    rng = np.random.default_rng(seed)
    mask = np.zeros(CROPPED, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    image = np.where(mask, rng.normal(size=(4, *CROPPED)), 0).astype(np.float32)  # (4, X, Y, Z)
    seg = np.zeros(CROPPED, np.uint8)
    if with_tumour:
        seg[6:11, 7:12, 6:10] = 2
        seg[7:9, 8:10, 7:9] = 4
    return image, mask, seg


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("eval") / "store.zarr")
    store = Store.create(url, {"test": True})
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-10, -12, 5]
    sids = ["BraTS2021_00001", "BraTS2021_00002"]
    for i, sid in enumerate(sids):
        image, mask, seg = _subject(i, with_tumour=(i == 0))
        attrs = {"affine": affine, "crop": CROP, "source_shape": list(SOURCE), "naming": "brats2021",
                 "header": {"qform_code": 1, "sform_code": 1, "xyzt_units": 10}}
        store.write_subject(sid, image, mask, attrs, seg=seg if i == 0 else None)
    store.update_attrs(subjects=sids, splits={"test": sids})
    return url


def _run(label, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(**TINY)
    return RunSpec(label, build_synthesizer(cfg), cfg, 16)


class _PickInputs(torch.nn.Module):
    """(B, C, p, p, p) -> the same: the 'synthesis' is the input channels themselves."""

    def forward(self, x):
        return x.clone()


def test_predict_subject_blends_back_the_exact_input_and_zeros_outside(store_url):
    store = Store(store_url)
    sid = "BraTS2021_00001"
    pred = predict_subject(_PickInputs(), store, sid, ["t1ce", "flair"], 16, overlap=0.5, batch=3, stride=4)
    image, mask = store.read(sid, "image").astype(np.float32), store.read(sid, "mask").astype(bool)
    assert pred.shape == (2, *CROPPED) and pred.dtype == np.float32
    np.testing.assert_allclose(pred, image[[1, 3]] * mask, atol=1e-5)  # channels t1gd, flair
    assert np.all(pred[:, ~mask] == 0)


@pytest.fixture(scope="module")
def evaluated(store_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = evaluate_runs(store_url, [_run("Baseline", 0), _run("CCL", 1)], "test", out,
                           overlap=0.25, batch=4, save_nifti=True)
    return out, result


def test_metrics_csv_has_one_row_per_run_subject_contrast_method_region(evaluated):
    out, _ = evaluated
    rows = read_metrics_csv(out / "metrics.csv")
    with (out / "metrics.csv").open() as f:
        assert next(csv.reader(f)) == ["run", "subject", "contrast", "method", "region", "ssim", "mse", "psnr"]
    # subject 1 has a tumour (brain, tumor, healthy), subject 2 none (brain)
    per_run_contrast_method = 3 + 1
    assert len(rows) == 2 * 2 * 3 * per_run_contrast_method  # 2 runs, 2 contrasts, 3 families
    keys = {(r["run"], r["subject"], r["contrast"], r["method"], r["region"]) for r in rows}
    assert len(keys) == len(rows)
    assert {r["region"] for r in rows if r["subject"] == "BraTS2021_00002"} == {"brain"}
    assert {r["contrast"] for r in rows} == {"t1w", "t2w"} and {r["run"] for r in rows} == {"Baseline", "CCL"}
    assert all(-1 <= r["ssim"] <= 1 and r["mse"] > 0 and np.isfinite(r["psnr"]) for r in rows)


def test_summary_md_and_json(evaluated):
    out, result = evaluated
    md = (out / "summary.md").read_text()
    for text in ("| Baseline |", "| CCL |", PUBLISHED_LABEL, "0.729", "25.30", "BraSyn", "T1w SSIM", "T2w PSNR"):
        assert text in md, text
    js = json.loads((out / "summary.json").read_text())
    cell = js["results"]["masked"]["CCL"]["brain"]["t2w"]["ssim"]
    rows = [r for r in read_metrics_csv(out / "metrics.csv")
            if (r["run"], r["method"], r["region"], r["contrast"]) == ("CCL", "masked", "brain", "t2w")]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(np.mean([r["ssim"] for r in rows]), rel=1e-5)
    assert set(js["seconds_per_subject"]) == {"Baseline", "CCL"} and result["split"] == "test"


def test_figure_png_written(evaluated):
    out, _ = evaluated
    data = (out / "figure.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_nifti_on_source_grid(evaluated, store_url):
    out, _ = evaluated
    img = nib.load(str(out / "nifti" / "CCL" / "BraTS2021_00001_t2-synth.nii.gz"))
    data = np.asarray(img.dataobj)
    assert data.shape == SOURCE and data.dtype == np.float32
    np.testing.assert_allclose(img.affine, Store(store_url).subject_attrs("BraTS2021_00001")["affine"])
    (x0, x1), (y0, y1), (z0, z1) = CROP
    inside = np.zeros(SOURCE, bool)
    inside[x0:x1, y0:y1, z0:z1] = True
    assert np.all(data[~inside] == 0) and np.abs(data[inside]).sum() > 0


@pytest.mark.parametrize("runs, match", [
    ([], "no runs"),
    ([("A", None, None, 16), ("A", None, None, 16)], "repeat"),
])
def test_bad_runs_are_refused(store_url, tmp_path, runs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_runs(store_url, runs, "test", tmp_path)


def _row(run, sid, psnr, contrast="t1w", ssim=0.5, mse=0.1):
    return {"run": run, "subject": sid, "contrast": contrast, "method": "masked", "region": "brain",
            "ssim": ssim, "mse": mse, "psnr": psnr}


def test_inf_psnr_is_written_and_left_out_of_means(tmp_path):
    rows = [_row("A", "s1", math.inf, mse=0.0, ssim=1.0), _row("A", "s2", 20.0), _row("A", "s3", 30.0),
            _row("B", "s1", math.inf, mse=0.0, ssim=1.0)]
    write_metrics_csv(rows, tmp_path / "m.csv")
    assert "inf" in (tmp_path / "m.csv").read_text().split("\n")[1].split(",")
    assert math.isinf(read_metrics_csv(tmp_path / "m.csv")[0]["psnr"])
    summary = summarize(rows)
    psnr_a = summary["results"]["masked"]["A"]["brain"]["t1w"]["psnr"]
    assert psnr_a == {"mean": 25.0, "sd": pytest.approx(math.sqrt(50)), "n": 3, "n_inf": 1}
    assert summary["results"]["masked"]["B"]["brain"]["t1w"]["psnr"]["mean"] is None
    md = render_markdown(summary)
    line_a = next(ln for ln in md.splitlines() if ln.startswith("| A |"))
    line_b = next(ln for ln in md.splitlines() if ln.startswith("| B |"))
    assert "25.00 ± 7.07 (1 inf)" in line_a and line_b.split("|")[4].strip() == "inf"
    json.dumps(summary, allow_nan=False)  # JSON-safe: no inf / nan left


def test_cli_evaluates_run_dirs(store_url, tmp_path, monkeypatch, capsys):
    """The command resolves runs through cclray.runs.load_synthesizer (faked here) and writes the outputs."""
    def load_synthesizer(run, device):
        spec = _run("x", len(run))
        return spec.model, SimpleNamespace(model=spec.model_cfg, patch=SimpleNamespace(patch_size=16)), {}

    monkeypatch.setitem(sys.modules, "cclray.runs", types.SimpleNamespace(load_synthesizer=load_synthesizer))
    from cclray.cli import main

    out = tmp_path / "ev"
    rc = main(["evaluate", "--store", store_url, "--run", str(tmp_path / "ccl"), "--compare",
               str(tmp_path / "scratch"), "--out", str(out), "--limit", "1", "--device", "cpu"])
    assert rc == 0
    assert (out / "figure.png").exists()
    assert {r["run"] for r in read_metrics_csv(out / "metrics.csv")} == {"ccl", "scratch"}
    assert "published (BraTS 2021)" in capsys.readouterr().out
