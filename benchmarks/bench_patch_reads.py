"""Patch reads: the project's reader (data_prep.reader.PatchReader on the cclray store) vs nibabel on the
BraTS .nii.gz files, same subjects, same random boxes, cold and warm.

    python benchmarks/bench_patch_reads.py [--smoke | --quick] [--layouts]

What a user would otherwise do is slice the ``.nii.gz`` files with nibabel (``img.dataobj[box]``,
four contrasts). Random 64³ and 128³ boxes of all four contrasts, methods interleaved box by box
so load drifts hit them alike:

- **warm**: handles kept open (``nib.load`` images, one PatchReader), files in the page cache;
- **cold**: every file of the subject dropped from the page cache (``posix_fadvise(DONTNEED)``)
  and fresh handles (a new ``nib.load``, a new PatchReader) before each box.

zarr-python (``Store.read``) on the same store is shown for reference. ``--layouts`` adds a sweep of
store layouts (chunk 32/64, float16/32, blosc-lz4/none) read both ways: how the default was chosen.
Goal: the store read >= 50x faster than nibabel.

Repetitions (``--repeats``, default 3): each is a block of fresh random boxes, every method read on each
box in turn; a repetition's ratio is nibabel's median / PatchReader's median over its block, and each
ratio is min / median / max over the blocks.

- ``--quick``: 2 phantom subjects (240x240x155 at 1 mm, made once under --work), 3 blocks of 5 boxes for
  each of 64³ / 128³ x warm / cold (15 boxes each).
- full (no flag): 4 phantom subjects, 3 blocks of 14 boxes. ``--smoke``: 1 synthetic subject, 32³ / 64³,
  2 blocks of 2 boxes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def random_boxes(rng, shapes: dict, patch: int, n: int) -> list:
    """``n`` (sid, box) pairs; boxes clamped inside each cropped volume."""
    sids = sorted(shapes)
    out = []
    for _ in range(n):
        s = sids[rng.integers(len(sids))]
        start = [int(rng.integers(0, max(d - patch, 0) + 1)) for d in shapes[s]]
        out.append((s, tuple((a, min(a + patch, d)) for a, d in zip(start, shapes[s]))))
    return out


def methods_for(url: str, attrs: dict, cold: bool) -> tuple[dict, dict]:
    """{name: read(sid, box)} and {name: prepare(sid)} (the untimed cold-start step) for one store."""
    import nibabel as nib

    from data_prep.reader import PatchReader
    from data_prep.schema import CONTRASTS
    from data_prep.store import Store

    files = {s: [a["source_files"][c] for c in CONTRASTS] for s, a in attrs.items()}
    state = {"nib": {s: [nib.load(f) for f in fs] for s, fs in files.items()},
             "reader": PatchReader(url), "zarr": Store(url)}

    def nifti(s, box):
        crop = attrs[s]["crop"]  # store boxes are in the cropped grid
        sl = tuple(slice(a + c0, b + c0) for (a, b), (c0, _) in zip(box, crop))
        imgs = [nib.load(f) for f in files[s]] if cold else state["nib"][s]
        return np.stack([np.asanyarray(img.dataobj[sl]) for img in imgs])

    def reader(s, box):
        r = PatchReader(url) if cold else state["reader"]
        return r.read(s, "image", box)

    def zarr_python(s, box):
        st = Store(url) if cold else state["zarr"]
        return st.read(s, "image", box)

    def prepare(s):  # outside the timing
        if cold:
            _common.evict([*files[s], Path(url) / "subjects" / s, Path(url) / "zarr.json"])

    return {"nibabel .nii.gz": nifti, "cclray PatchReader (tensorstore)": reader,
            "zarr-python Store.read": zarr_python}, prepare


def run_boxes(methods: dict, prepare, boxes: list) -> dict[str, list[float]]:
    import time

    times = {k: [] for k in methods}
    for s, box in boxes:
        for name, fn in methods.items():
            prepare(s)
            t = time.perf_counter()
            out = fn(s, box)
            times[name].append(time.perf_counter() - t)
            assert out.shape[0] == 4, out.shape
    return times


def layout_sweep(report, store, sids, boxes) -> None:
    """Every layout read with PatchReader and zarr-python vs nibabel (warm), 64³ boxes."""
    from data_prep.reader import PatchReader
    from data_prep.store import Layout, Store

    work = Path(report.args.work)
    ref_methods, _ = methods_for(store.url, {s: store.subject_attrs(s) for s in sids}, cold=False)
    nifti = ref_methods["nibabel .nii.gz"]
    methods = {"nibabel": nifti}
    for lay in [Layout(c, d, k) for c in (32, 64) for d in ("float16", "float32") for k in ("blosc-lz4", "none")]:
        url = str(work / f"layout-c{lay.chunk}-{lay.dtype}-{lay.codec}.zarr")
        _common.fresh_dir(Path(url))
        st = Store.create(url, {"bench": True}, lay)
        for s in sids:
            st.write_subject(s, store.read(s, "image").astype(np.float32), store.read(s, "mask"), {})
        key = f"c{lay.chunk} {lay.dtype} {lay.codec} ({du(Path(url)) / len(sids) / 1e6:.0f} MB/subj)"
        methods[f"tensorstore {key}"] = (lambda r: lambda s, b: r.read(s, "image", b))(PatchReader(url))
        methods[f"zarr-python {key}"] = (lambda z: lambda s, b: z.read(s, "image", b))(Store(url))
    times = run_boxes(methods, lambda s: None, boxes)
    ref = _common.median(times["nibabel"])
    for name, ts in sorted(times.items(), key=lambda kv: _common.median(kv[1])):
        report.figure(f"layout {name}", 1e3 * _common.median(ts), "ms", x_nibabel=round(ref / _common.median(ts), 1))


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--layouts", action="store_true", help="also sweep store layouts (slow)")
    args = ap.parse_args()
    report = _common.Report("patch_reads", args)
    work = Path(args.work)
    source, n, per_round, sizes = _common.pick(args.size, ("synthetic", 1, 2, (32, 64)), ("phantom", 2, 5, (64, 128)),
                                               ("phantom", 4, 14, (64, 128)))
    from data_prep.store import Store

    url = _data.prepared_store(work, n, source=source)
    store = Store(url)
    sids = store.subjects()
    attrs = {s: store.subject_attrs(s) for s in sids}
    nii = _common.median([du(Path(a["source_files"]["t1w"]).parent) for a in attrs.values()])
    report.figure("size .nii.gz per subject (4 contrasts + seg)", nii / 1e6, "MB")
    report.figure("size store per subject (image, mask, seg, constraint)",
                  _common.median([du(Path(url) / "subjects" / s) for s in sids]) / 1e6, "MB", layout=store.layout.to_dict())
    rng = np.random.default_rng(0)
    shapes = {s: tuple(a["shape"]) for s, a in attrs.items()}
    reps = _common.repeats(args)
    for patch in sizes:
        for mode in ("warm", "cold"):
            methods, prepare = methods_for(url, attrs, cold=mode == "cold")
            boxes = random_boxes(rng, shapes, patch, reps * per_round)
            run_boxes(methods, lambda s: None, boxes[:1])  # imports, first allocations
            blocks = iter([boxes[i * per_round:(i + 1) * per_round] for i in range(reps)])
            times: dict[str, list[float]] = {k: [] for k in methods}

            def block():  # one repetition: a block of boxes, the methods interleaved box by box
                got = run_boxes(methods, prepare, next(blocks))
                for k, v in got.items():
                    times[k] += v
                return {k: _common.median(v) for k, v in got.items()}

            per = _common.rounds({"block": block}, reps)
            med = {k: _common.median(v) for k, v in times.items()}
            for name, t in med.items():
                report.figure(f"{patch}³ {mode} {name}", 1e3 * t, "ms", patches=len(boxes), subjects=len(sids))
            report.ratio_runs(f"patch {patch}³ {mode}: nibabel / PatchReader", per["nibabel .nii.gz"],
                              per["cclray PatchReader (tensorstore)"], goal=50,
                              note=f"each repetition: the medians over {per_round} boxes")
            report.figure(f"{patch}³ {mode} zarr-python / PatchReader", med["zarr-python Store.read"]
                          / med["cclray PatchReader (tensorstore)"], "x")
    if args.layouts:
        layout_sweep(report, store, sids, random_boxes(rng, shapes, 64, reps * per_round))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
