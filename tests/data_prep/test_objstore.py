"""Object storage: the environment is the one configuration of every client, and the store, the patch
reader (tensorstore and zarr), prep and constraint maps work against a real S3 API over HTTP (moto's
server on 127.0.0.1, see tests/s3server.py)."""
from pathlib import Path

import numpy as np
import pytest

from brats_files import _stub_map as stub_constraint_map
from brats_files import write_subject_dir
from data_prep import objstore
from data_prep.atomic import atomic_write
from data_prep.objstore import S3Settings, StorageURLError
from data_prep.reader import PatchReader
from data_prep.store import Store, StoreError

PREP = ["--workers", "1", "--constraint", "t1w,t1gd,t2w,flair:k=4", "--splits", "pretrain=2,finetune=1,val=1,test=1"]


@pytest.fixture
def stub_constraint(monkeypatch):
    import data_prep.constraint

    monkeypatch.setattr(data_prep.constraint, "constraint_map", stub_constraint_map)


# ------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("env,want", [
    ({}, S3Settings(None, "us-east-1", False)),
    ({"AWS_ENDPOINT_URL": "http://h:9000/", "AWS_DEFAULT_REGION": "eu-west-1"}, S3Settings("http://h:9000", "eu-west-1", False)),
    ({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3-only", "AWS_REGION": "x",
      "AWS_DEFAULT_REGION": "y", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, S3Settings("http://s3-only", "x", True)),
    ({"AWS_ACCESS_KEY_ID": "k"}, S3Settings(None, "us-east-1", False)),  # a key without its secret: the chain decides
])
def test_settings_from_env(env, want):
    assert S3Settings.from_env(env) == want


def test_every_client_gets_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert objstore.fsspec_options("s3://b/x") == {"endpoint_url": "http://127.0.0.1:9",
                                                   "client_kwargs": {"region_name": "eu-central-1"}}
    assert objstore.fsspec_options("/local/x") is None and objstore.fsspec_options("gs://b/x") is None
    assert objstore.tensorstore_kvstore("s3://b/a/s.zarr") == {
        "driver": "s3", "bucket": "b", "path": "a/s.zarr/", "aws_region": "eu-central-1",
        "endpoint": "http://127.0.0.1:9", "aws_credentials": {"type": "environment"}}
    fs, path = objstore.pyarrow_filesystem("s3://b/runs/x")
    assert type(fs).__name__ == "S3FileSystem" and path == "b/runs/x"
    assert fs.region == "eu-central-1"
    assert objstore.pyarrow_filesystem("rel/run")[0] is None


@pytest.mark.parametrize("bad", ["s3:/bucket/x", "gs:/b/store.zarr", "s3:/b"])
def test_a_url_that_lost_a_slash_is_refused(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageURLError, match=f"write {bad.split(':')[0]}://"):
        objstore.check_location(bad)
    with pytest.raises(StorageURLError):
        Store.create(bad, {"x": 1})
    assert list(tmp_path.iterdir()) == []  # no local folder "s3:" made


@pytest.mark.parametrize("good", ["s3://b/x", "/abs/x", "rel/x", "C:/data/x", "file:///x", "memory://x"])
def test_good_locations_pass(good):
    assert objstore.check_location(good) == good


def test_cli_prep_refuses_mangled_url(tmp_path, monkeypatch, capsys):
    from cclray.cli import main

    monkeypatch.chdir(tmp_path)
    write_subject_dir(tmp_path / "src", 1, "brats2021")
    assert main(["prep", str(tmp_path / "src"), "--out", "s3:/bucket/store.zarr", *PREP]) == 2
    assert "write s3://bucket/store.zarr" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


# ------------------------------------------------------------------------------------ against the server
def _subjects(root: Path, n: int = 5) -> Path:
    for i in range(n):
        write_subject_dir(root, i + 1, ("brats2021", "brats2023")[i % 2], seg=i % 2 == 0)
    return root


@pytest.mark.usefixtures("stub_constraint")
def test_prep_to_s3_equals_local_and_every_reader_reads_it(tmp_path, s3_server, s3_bucket, capsys):
    from cclray.cli import main

    src = _subjects(tmp_path / "src")
    url = f"{s3_bucket}/brats/store.zarr"
    assert main(["prep", str(src), "--out", url, *PREP[2:], "--workers", "2"]) == 0  # a process pool writing to S3
    # a process pool both times: its workers run the real constraint map (the stub lives in this process)
    assert main(["prep", str(src), "--out", str(tmp_path / "local.zarr"), *PREP[2:], "--workers", "2"]) == 0
    assert "5 written" in capsys.readouterr().out
    keys = s3_server.keys(url)
    assert "brats/store.zarr/zarr.json" in keys and any(k.endswith("/image/zarr.json") for k in keys)
    assert not any("s3:" in str(p) for p in tmp_path.rglob("*"))  # nothing local

    remote, local = Store(url), Store(str(tmp_path / "local.zarr"))
    assert remote.subjects() == local.subjects() and len(remote.subjects()) == 5
    assert remote.attrs["fingerprint"] == local.attrs["fingerprint"]
    ts_reader, zarr_reader = PatchReader(url), PatchReader(url, backend="zarr")
    assert ts_reader.backend == "tensorstore"
    box = ((2, 18), (3, 17), (1, 15))
    for sid in remote.subjects():
        for name in ("image", "mask", "constraint/t1w+t1gd+t2w+flair-k4"):
            want = local.read(sid, name, box)
            np.testing.assert_array_equal(ts_reader.read(sid, name, box), want)
            np.testing.assert_array_equal(zarr_reader.read(sid, name, box), want)
        assert ts_reader.attrs(sid) == remote.subject_attrs(sid) == zarr_reader.attrs(sid)
        assert remote.subject_attrs(sid)["norm"] == local.subject_attrs(sid)["norm"]

    # rerun resumes: everything complete is skipped
    assert main(["prep", str(src), "--out", url, *PREP]) == 0
    assert "0 subject(s) to prepare, 5 already complete" in capsys.readouterr().out


@pytest.mark.usefixtures("stub_constraint")
def test_incomplete_subject_on_s3_is_never_read(s3_bucket):
    url = f"{s3_bucket}/store.zarr"
    store = Store.create(url, {"x": 1})
    image = np.ones((4, 8, 8, 8), np.float32)
    store.write_subject("done", image, np.ones((8, 8, 8), bool), {})
    # a killed write: arrays uploaded, the group's "complete" attr never set
    g = store.root.create_group("subjects/half")
    g.attrs.update({"complete": False})
    g.create_array("image", shape=image.shape, dtype="float16")[...] = image
    reopened = Store(url)
    assert reopened.is_complete("done") and not reopened.is_complete("half")
    for reader in (PatchReader(url), PatchReader(url, backend="zarr")):
        np.testing.assert_array_equal(reader.read("done", "image"), image)
        with pytest.raises(StoreError, match="incomplete"):
            reader.read("half", "image")


def test_missing_store_on_s3_says_how_to_make_it(s3_bucket):
    with pytest.raises(StoreError, match="create it with `cclray prep SRC --out s3://"):
        Store(f"{s3_bucket}/nothing.zarr")


def test_constraint_command_on_s3(tmp_path, s3_bucket, capsys, stub_constraint):
    from cclray.cli import main

    src = _subjects(tmp_path / "src", 3)
    url = f"{s3_bucket}/store.zarr"
    assert main(["prep", str(src), "--out", url, "--workers", "1", "--constraint", "t1w,t1gd:k=3",
                 "--splits", "pretrain=1,finetune=1,val=1,test=0"]) == 0
    assert main(["constraint", url, "--contrasts", "t2w,flair", "--k", "3", "--workers", "1"]) == 0
    store = Store(url)
    assert "t2w+flair-k3" in store.attrs["constraints"]
    for sid in store.subjects():
        labels = PatchReader(url).read(sid, "constraint/t2w+flair-k3")
        assert labels.shape == tuple(store.subject_attrs(sid)["shape"])


def test_location_is_pathlike_on_both(tmp_path, s3_bucket):
    for base in (objstore.location(tmp_path / "run"), objstore.location(f"{s3_bucket}/runs/x")):
        atomic_write(base / "a" / "meta.json", b'{"step": 3}')
        assert (base / "a" / "meta.json").read_text() == '{"step": 3}'
        assert [p.name for p in base.iterdir()] == ["a"] and (base / "a").is_dir()
        assert (base / "a" / "meta.json").stat().st_size == 11 and not (base / "b").exists()
    assert objstore.is_local(objstore.location("rel")) and not objstore.is_local(objstore.location("s3://b/x"))
    for base in (objstore.location(tmp_path / "run"), objstore.location(f"{s3_bucket}/runs/x")):
        objstore.remove_tree(base / "a")
        assert not (base / "a").exists()
    assert str(objstore.location("s3://b/x/")).startswith("s3://b/x")


@pytest.mark.parametrize("argv", [
    ["evaluate", "--store", "s.zarr", "--run", "r", "--out", "s3://b/eval"],
    ["export", "--run", "r", "--out", "s3://b/model.onnx"],
    ["phantom", "--out", "s3:/b/cohort", "--n", "1"],
    ["evaluate", "--store", "s.zarr", "--run", "r", "--out", "gs:/b/eval"],
])
def test_local_out_commands_refuse_urls_and_make_no_folder(argv, tmp_path, monkeypatch, capsys):
    from cclray.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cclray {argv[0]}: error: --out" in err and ("writes to a local path" in err or "one slash" in err)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket_or_unreachable_endpoint_says_what_to_fix(tmp_path, s3_server, monkeypatch, capsys):
    from cclray.cli import main

    write_subject_dir(tmp_path / "src", 1, "brats2021")
    assert main(["prep", str(tmp_path / "src"), "--out", "s3://no-such-bucket/x.zarr", *PREP]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    with pytest.raises(StorageURLError, match="does not exist.*aws s3 mb s3://no-such-bucket"):
        objstore.check_bucket("s3://no-such-bucket/runs/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageURLError, match="cannot reach bucket 'b' at http://127.0.0.1:9.*AWS_ENDPOINT_URL"):
        objstore.check_bucket("s3://b/x")
    objstore.check_bucket("/local/path")  # not a bucket: nothing to check
