"""Run folders on object storage (the local S3 API server of tests/s3server.py): config, metrics,
checkpoints found, loaded and pruned through the same functions as on disk; a killed upload never
reads as a good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cclray.checkpoint import CheckpointError, is_complete, load_checkpoint, read_meta, save_checkpoint
from cclray.config import PretrainConfig
from cclray.runs import (
    MetricsLog,
    checkpoint_dirs,
    checkpoint_name,
    find_checkpoint,
    install_checkpoint,
    prune_checkpoints,
    read_run_config,
    write_run_config,
)

ROOT = Path(__file__).resolve().parents[2]
CFG = PretrainConfig.from_dict({"store": "s3://b/store.zarr"})


def _install(tmp_path, run: str, epoch: int, score: float) -> str:
    src = tmp_path / f"ckpt{epoch}"
    state = {"model": {"w": torch.full((100,), float(epoch))}, "step": 3 * epoch, "epoch": epoch}
    save_checkpoint(src, state, CFG, "pretrain", meta={"score": score})
    return str(install_checkpoint(src, run, checkpoint_name(epoch, 3 * epoch)))


def test_run_folder_on_s3(tmp_path, s3_server, s3_bucket):
    run = f"{s3_bucket}/runs/pre"
    write_run_config(run, "pretrain", CFG)
    assert read_run_config(run) == ("pretrain", CFG)
    log = MetricsLog(run)
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "step": 3 * epoch, "loss": 1.0 / epoch})
    log.truncate(2)
    assert [r["epoch"] for r in log.rows()] == ["1", "2"]
    for epoch, score in ((1, 0.5), (2, 0.2), (3, 0.4)):
        _install(tmp_path, run, epoch, score)
    assert [d.name for d in checkpoint_dirs(run)] == [checkpoint_name(e, 3 * e) for e in (1, 2, 3)]
    latest, best = find_checkpoint(run, "latest"), find_checkpoint(run, "best")
    assert str(latest) == f"{run}/{checkpoint_name(3, 9)}" and best.name == checkpoint_name(2, 6)
    assert load_checkpoint(latest, stage="pretrain")["model"]["w"][0] == 3.0
    assert read_meta(best)["score"] == 0.2 and is_complete(best)
    assert prune_checkpoints(run, keep=1)[0].name == checkpoint_name(1, 3)  # best (2) and latest (3) stay
    assert [d.name for d in checkpoint_dirs(run)] == [checkpoint_name(2, 6), checkpoint_name(3, 9)]
    keys = s3_server.keys(run)
    assert f"runs/pre/{checkpoint_name(3, 9)}/checkpoint.pt" in keys and "runs/pre/metrics.csv" in keys
    assert not any(k.startswith("runs/pre/.") for k in keys)  # no temporary objects left
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(f"{s3_bucket}/runs/nothing")


def test_damaged_checkpoints_on_s3_are_skipped(tmp_path, s3_server, s3_bucket):
    run = f"{s3_bucket}/runs/x"
    good = _install(tmp_path, run, 1, 0.5)
    bucket = s3_bucket[len("s3://"):]
    client = s3_server.client()
    # a newer checkpoint whose meta.json never arrived, and one whose checkpoint.pt is short
    client.put_object(Bucket=bucket, Key=f"runs/x/{checkpoint_name(2, 6)}/checkpoint.pt", Body=b"PK" + b"0" * 99)
    third = _install(tmp_path, run, 3, 0.1)
    meta = json.loads(client.get_object(Bucket=bucket, Key=f"runs/x/{checkpoint_name(3, 9)}/meta.json")["Body"].read())
    client.put_object(Bucket=bucket, Key=f"runs/x/{checkpoint_name(3, 9)}/checkpoint.pt", Body=b"PK" + b"0" * 10)
    assert meta["bytes"] > 12
    assert [d.name for d in checkpoint_dirs(run)] == [checkpoint_name(1, 3)]
    assert str(find_checkpoint(run, "latest")) == good == str(find_checkpoint(run, "best"))
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(third)


KILLED_UPLOAD = r'''
import os, signal, sys, tempfile, torch
import pyarrow as pa
import pyarrow.fs as pafs
from cclray.checkpoint import save_checkpoint
from cclray.runs import checkpoint_name
from cclray.config import PretrainConfig
from data_prep.objstore import pyarrow_filesystem

run, how = sys.argv[1], sys.argv[2]
cfg = PretrainConfig.from_dict({"store": "s.zarr"})
fs, path = pyarrow_filesystem(run)


class DieMidUpload(pafs.FileSystemHandler):
    """pyarrow's S3 filesystem, except that the upload of checkpoint.pt is SIGKILLed halfway."""

    def __init__(self, fs): self.fs = fs
    def __eq__(self, other): return isinstance(other, DieMidUpload)
    def __ne__(self, other): return not self == other
    def get_type_name(self): return "die-mid-upload"
    def normalize_path(self, p): return self.fs.normalize_path(p)
    def get_file_info(self, paths): return self.fs.get_file_info(paths)
    def get_file_info_selector(self, sel): return self.fs.get_file_info(sel)
    def create_dir(self, p, recursive): return self.fs.create_dir(p, recursive=recursive)
    def delete_dir(self, p): return self.fs.delete_dir(p)
    def delete_dir_contents(self, p, missing_dir_ok=False): return self.fs.delete_dir_contents(p, missing_dir_ok=missing_dir_ok)
    def delete_root_dir_contents(self): return self.fs.delete_dir_contents("/", accept_root_dir=True)
    def delete_file(self, p): return self.fs.delete_file(p)
    def move(self, a, b): return self.fs.move(a, b)
    def copy_file(self, a, b): return self.fs.copy_file(a, b)
    def open_input_stream(self, p): return self.fs.open_input_stream(p)
    def open_input_file(self, p): return self.fs.open_input_file(p)
    def open_append_stream(self, p, metadata): return self.fs.open_append_stream(p, metadata=metadata)

    def open_output_stream(self, p, metadata):
        stream = self.fs.open_output_stream(p, metadata=metadata)
        if not p.endswith("checkpoint.pt"):
            return stream

        class Half:  # writes half of the first block, then the process dies
            closed = False
            def write(self, data):
                stream.write(bytes(data)[: len(data) // 2])
                stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            def flush(self): stream.flush()
            def tell(self): return stream.tell()
            def close(self): stream.close()
        return pa.PythonFile(Half(), mode="w")


for epoch in (1, 2):
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": {"w": torch.full((300_000,), float(epoch))}, "step": 3 * epoch, "epoch": epoch}
        save_checkpoint(tmp, state, cfg, "pretrain")
        dest = f"{path}/{checkpoint_name(epoch, 3 * epoch)}"
        if epoch == 2 and how == "ray":  # Ray Train's upload: pyarrow.fs.copy_files into storage_path
            pafs.copy_files(tmp, dest, destination_filesystem=pafs.PyFileSystem(DieMidUpload(fs)))
        elif epoch == 2:  # LocalContext's upload: meta.json last
            from cclray import runs
            real = runs.Path.read_bytes
            def read_then_die(self):
                if self.name == "meta.json":
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(self)
            runs.Path.read_bytes = read_then_die
            runs.install_checkpoint(tmp, run, checkpoint_name(epoch, 3 * epoch))
        else:
            pafs.copy_files(tmp, dest, destination_filesystem=fs)
'''


@pytest.mark.parametrize("how", ["ray", "install"])
def test_killed_upload_never_reads_as_a_good_checkpoint(tmp_path, s3_server, s3_bucket, how):
    run = f"{s3_bucket}/runs/killed"
    script = tmp_path / "upload.py"
    script.write_text(textwrap.dedent(KILLED_UPLOAD))
    proc = subprocess.run([sys.executable, str(script), run, how], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    keys = s3_server.keys(run)
    second = checkpoint_name(2, 6)
    assert f"runs/killed/{checkpoint_name(1, 3)}/checkpoint.pt" in keys
    if how == "ray":  # killed while writing checkpoint.pt: an object is published whole or not at all
        assert f"runs/killed/{second}/checkpoint.pt" not in keys
    else:  # killed between checkpoint.pt and the marker meta.json
        assert f"runs/killed/{second}/checkpoint.pt" in keys and f"runs/killed/{second}/meta.json" not in keys
    assert [d.name for d in checkpoint_dirs(run)] == [checkpoint_name(1, 3)]
    latest = find_checkpoint(run, "latest")
    assert latest.name == checkpoint_name(1, 3) and load_checkpoint(latest)["model"]["w"][0] == 1.0
