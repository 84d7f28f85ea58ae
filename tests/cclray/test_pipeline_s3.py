"""The pipeline with the store and the run folders in a bucket of the local S3 API server: pretrain,
finetune --init s3://, --resume from s3://, evaluate and export reading the run from s3:// (Ray Train
persists through a pyarrow S3FileSystem with the environment's endpoint). Nothing is written locally
except the evaluation folder and the ONNX file asked for."""
import json
import sys
from pathlib import Path

import pytest

from cclray.checkpoint import read_meta
from cclray.cli import main
from cclray.runs import MetricsLog, checkpoint_dirs, find_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_cli import TINY_SET  # noqa: E402


@pytest.mark.ray
@pytest.mark.slow
def test_pipeline_with_store_and_runs_on_s3(ray_session, s3_server, s3_bucket, tmp_path, capsys, monkeypatch):
    from conftest import make_tiny_store

    monkeypatch.chdir(tmp_path)
    store = make_tiny_store(f"{s3_bucket}/tiny.zarr")["url"]
    pre, ft = f"{s3_bucket}/runs/pre", f"{s3_bucket}/runs/ft"
    small = ["--workers", "1", "--epochs", "1", "--steps", "2", *TINY_SET]
    assert main(["pretrain", "--store", store, "--out", pre, *small]) == 0
    out = capsys.readouterr().out
    assert f"latest: {pre}/checkpoint_e0001_s0000002" in out and "final:  epoch 1  step 2" in out
    keys = s3_server.keys(pre)
    assert {"runs/pre/config.json", "runs/pre/metrics.csv", "runs/pre/curves.png",
            "runs/pre/checkpoint_e0001_s0000002/checkpoint.pt"} <= set(keys)

    assert main(["finetune", "--store", store, "--out", ft, "--init", pre, *small, "--set", "val_samples=2"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--store", store, "--out", ft, "--init", pre, *small]) == 2  # exists: refused
    assert "--resume" in capsys.readouterr().err
    assert main(["finetune", "--store", store, "--out", ft, "--init", pre, *small, "--epochs", "2",
                 "--resume"]) == 0  # continues from the bucket's checkpoint
    capsys.readouterr()
    assert [read_meta(d)["step"] for d in checkpoint_dirs(ft)] == [2, 4]
    assert [int(r["epoch"]) for r in MetricsLog(ft).rows()] == [1, 2]
    assert json.loads((find_checkpoint(ft) / "meta.json").read_text())["stage"] == "finetune"

    assert main(["evaluate", "--store", store, "--run", ft, "--out", str(tmp_path / "eval"), "--limit", "1"]) == 0
    assert (tmp_path / "eval" / "metrics.csv").is_file()
    assert main(["export", "--run", ft, "--out", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").stat().st_size > 10_000
    assert not any("s3:" in p.name for p in tmp_path.rglob("*"))  # no local folder named like the URL


def test_run_folder_url_that_lost_a_slash_is_refused(tmp_path, capsys, monkeypatch, tiny_store):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--store", tiny_store["url"], "--out", "s3:/bucket/runs/pre", *TINY_SET]) == 2
    assert "write s3://bucket/runs/pre" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
