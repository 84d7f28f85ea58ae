"""Object storage, against a local S3 API server (moto's server mode on 127.0.0.1: every request is a
real HTTP round trip; tests/s3server.py):

    python benchmarks/bench_s3.py [--smoke | --quick]

1. **Patch reads**: random 64³ boxes of all four contrasts from the cclray store in the bucket, read
   with the project's reader (tensorstore's S3 driver) and with zarr-python + s3fs, against what a user
   without a chunked store does with the ``.nii.gz`` files in the same bucket: fetch the four whole
   files, decompress, slice. Methods interleaved box by box.
2. **Checkpoint save / restore** of the default network (U-Net + Adam state), local folder vs the S3
   server: save = ``save_checkpoint`` to a temporary folder + the upload Ray Train does
   (``pyarrow.fs.copy_files`` into ``storage_path``, through :func:`data_prep.objstore.pyarrow_filesystem`);
   restore = :func:`cclray.runs.find_checkpoint` + :func:`cclray.checkpoint.load_checkpoint` on the run.

The server is a Python process on the same cores: absolute times are those of this server, not of a
cloud bucket (whose per-request latency is higher, which favours the fewer, larger requests of the
chunked store even more). The ratios are the point.

Repetitions (``--repeats``, default 3): patch reads in blocks of fresh random boxes (a repetition's ratio:
the methods' medians over its block); checkpoints round robin (local save, restore, S3 save, restore).
Each ratio is min / median / max over the repetitions.

- ``--quick``: the 2-subject phantom store (made once under --work) uploaded to the server, 3 blocks of 4
  boxes; 3 checkpoint rounds of the default network (45 MB).
- full (no flag): 4 subjects, 3 blocks of 14 boxes. ``--smoke``: 1 synthetic subject, 2 blocks of 2 boxes.
"""
from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402

sys.path.insert(0, str(_common.ROOT / "tests"))
from s3server import S3Server  # noqa: E402


def upload_tree(local: Path, url: str) -> None:
    import s3fs

    from data_prep.objstore import fsspec_options

    fs = s3fs.S3FileSystem(**fsspec_options(url))
    fs.put(str(local), url[len("s3://"):], recursive=True)


def patch_reads(report, work: Path, s3: S3Server, n: int, per_round: int, reps: int, source: str) -> None:
    import nibabel as nib
    import s3fs

    from data_prep.objstore import fsspec_options
    from data_prep.reader import PatchReader
    from data_prep.schema import CONTRASTS
    from data_prep.store import Store

    local = _data.prepared_store(work, n, source=source)
    bucket = s3.bucket("bench")
    url = f"{bucket}/store.zarr"
    upload_tree(Path(local), url)
    store = Store(url)
    sids = store.subjects()
    attrs = {s: store.subject_attrs(s) for s in sids}
    nii = {}
    for s, a in attrs.items():
        nii[s] = []
        for c in CONTRASTS:
            src = Path(a["source_files"][c])
            key = f"{bucket}/nifti/{s}/{src.name}"
            upload_tree(src, key)
            nii[s].append(key)
    fs = s3fs.S3FileSystem(**fsspec_options(bucket))
    reader, zstore = PatchReader(url), Store(url)

    def nifti(s, box):  # fetch + decompress the four whole files, then slice
        crop = attrs[s]["crop"]
        sl = tuple(slice(a + c0, b + c0) for (a, b), (c0, _) in zip(box, crop))
        out = []
        for key in nii[s]:
            img = nib.Nifti1Image.from_bytes(gzip.decompress(fs.cat(key[len("s3://"):])))
            out.append(np.asanyarray(img.dataobj[sl]))
        return np.stack(out)

    methods = {"nibabel .nii.gz from S3": nifti,
               "PatchReader (tensorstore s3)": lambda s, b: reader.read(s, "image", b),
               "zarr-python + s3fs": lambda s, b: zstore.read(s, "image", b)}
    rng = np.random.default_rng(0)
    shapes = {s: tuple(a["shape"]) for s, a in attrs.items()}
    from bench_patch_reads import random_boxes, run_boxes

    boxes = random_boxes(rng, shapes, 64, reps * per_round)
    run_boxes(methods, lambda s: None, boxes[:1])  # connections, imports
    got = {name: fn(*boxes[0]) for name, fn in methods.items()}  # same box: same store values, same shape
    np.testing.assert_array_equal(got["PatchReader (tensorstore s3)"], got["zarr-python + s3fs"])
    assert got["nibabel .nii.gz from S3"].shape == got["zarr-python + s3fs"].shape
    blocks = iter([boxes[i * per_round:(i + 1) * per_round] for i in range(reps)])
    times: dict[str, list[float]] = {k: [] for k in methods}

    def block():  # one repetition: a block of boxes, the methods interleaved box by box
        got = run_boxes(methods, lambda s: None, next(blocks))
        for k, v in got.items():
            times[k] += v
        return {k: _common.median(v) for k, v in got.items()}

    per = _common.rounds({"block": block}, reps)
    for name, ts in times.items():
        report.figure(f"64³ patch from S3: {name}", 1e3 * _common.median(ts), "ms", patches=len(boxes),
                      subjects=len(sids))
    reader = per["PatchReader (tensorstore s3)"]
    report.ratio_runs("S3 64³ patch: nibabel .nii.gz / PatchReader (tensorstore)", per["nibabel .nii.gz from S3"],
                      reader, goal=None, note="whole-file fetch + gunzip per patch vs the chunks a patch touches; "
                                              f"each repetition: the medians over {per_round} boxes")
    report.ratio_runs("S3 64³ patch: zarr-python+s3fs / PatchReader (tensorstore)", per["zarr-python + s3fs"],
                      reader, goal=None, note="> 1: tensorstore is the faster S3 reader")


def checkpoints(report, s3: S3Server, repeat: int) -> None:
    import pyarrow.fs as pafs
    import torch

    from cclray.checkpoint import load_checkpoint, save_checkpoint
    from cclray.config import FinetuneConfig
    from cclray.models import build_synthesizer
    from cclray.runs import checkpoint_name, find_checkpoint
    from data_prep.objstore import pyarrow_filesystem

    cfg = FinetuneConfig.from_dict({"store": "s.zarr"})
    model = build_synthesizer(cfg.model)
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, len(cfg.model.inputs), 32, 32, 32)).sum().backward()
    opt.step()  # Adam state exists: what a training checkpoint holds
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    bucket = s3.bucket("ckpt")
    local_root = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    targets = {"local": str(local_root / "run"), "S3": f"{bucket}/runs/run"}
    size = {}
    times: dict = {f"{k} {op}": [] for k in targets for op in ("save", "restore")}
    for i in range(repeat):
        for where, run in targets.items():
            name = checkpoint_name(i + 1, i + 1)
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                save_checkpoint(tmp, {**state, "step": i + 1, "epoch": i + 1}, cfg, "finetune")
                fs, path = pyarrow_filesystem(run)
                if fs is None:
                    fs, path = pafs.LocalFileSystem(), path
                fs.create_dir(f"{path}/{name}")
                pafs.copy_files(tmp, f"{path}/{name}", destination_filesystem=fs)
                times[f"{where} save"].append(time.perf_counter() - t)
                size[where] = sum(f.stat().st_size for f in Path(tmp).iterdir())
            t = time.perf_counter()
            ckpt = load_checkpoint(find_checkpoint(run, "latest"), stage="finetune")
            times[f"{where} restore"].append(time.perf_counter() - t)
            assert int(ckpt["step"]) == i + 1
    shutil.rmtree(local_root, ignore_errors=True)
    for k, v in times.items():
        report.figure(f"checkpoint {k}", 1e3 * _common.median(v), "ms", bytes=size[k.split()[0]], repeat=repeat)
    for op in ("save", "restore"):  # round i: local then S3, save then restore
        report.ratio_runs(f"checkpoint {op}: S3 / local", times[f"S3 {op}"], times[f"local {op}"], goal=None,
                          note=f"{size['S3'] / 1e6:.1f} MB checkpoint")


def main() -> int:
    ap = _common.parser(__doc__)
    args = ap.parse_args()
    report = _common.Report("s3", args)
    source, n, per_round = _common.pick(args.size, ("synthetic", 1, 2), ("phantom", 2, 4), ("phantom", 4, 14))
    reps = _common.repeats(args)
    with S3Server() as s3:
        report.note(f"S3 API: moto server at {s3.endpoint} (a local process, HTTP over loopback)")
        patch_reads(report, Path(args.work), s3, n, per_round, reps, source)
        checkpoints(report, s3, reps)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
