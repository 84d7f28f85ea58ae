"""The bad-input corpus in one table: every case goes through a public entry point (``run_prep``,
``stage_config``/``fit``, ``run_pretrain``, ``load_checkpoint``, ``export_onnx``, ``OnnxSynthesizer``)
and must (a) fail with a message naming the file (or config key) AND the fix, (b) leave nothing
partial behind. docs/RELIABILITY.md lists the same cases; narrower tests of each module live in
tests/data_prep/, tests/cclray/ and tests/export/.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
import test_nifti as broken  # noqa: E402  the NIfTI file breakers
from brats_files import contrast_file, write_subject_dir  # noqa: E402

BAD_SID = "BraTS2021_00001"


@dataclass
class Outcome:
    """What a case produced: the error text and what was left behind (must be empty)."""

    message: str
    leftovers: list


@dataclass(frozen=True)
class Case:
    name: str
    act: Callable[[Path, dict], Outcome]  # (tmp_path, tiny_store) -> Outcome; must not raise
    where: str  # regex: the file or key the message must name ({tmp} = tmp_path)
    fix: str  # regex: the fix the message must give


# ------------------------------------------------------------------------------------------ prep
def _prep(tmp: Path, spoil: Callable[[Path], Path]) -> Outcome:
    """Two BraTS 2021 subjects, subject 1 spoiled; ``run_prep`` must skip and report it, write subject 2."""
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.store import Store

    src = tmp / "src"
    for i in (1, 2):
        write_subject_dir(src, i, "brats2021", seg=False)
    spoil(src / BAD_SID)
    out = tmp / "store.zarr"
    report = run_prep(src, str(out), PrepConfig(constraints=(), splits={"pretrain": 1}))
    store = Store(str(out))
    (fail,) = report.failed
    left = [f"subjects/{fail['sid']}"] if f"subjects/{fail['sid']}" in store.root else []
    assert store.subjects() == ["BraTS2021_00002"], store.subjects()  # the good one still written
    return Outcome(f"file={fail['file']} | {fail['error']}", left)


def _prep_whole(tmp: Path, make: Callable[[Path], None]) -> Outcome:
    """A source folder unusable as a whole: ``run_prep`` raises before creating the store."""
    from data_prep.discover import DiscoveryError
    from data_prep.prep import run_prep

    src = tmp / "src"
    src.mkdir()
    make(src)
    with pytest.raises(DiscoveryError) as e:
        run_prep(src, str(tmp / "store.zarr"))
    return Outcome(str(e.value), [tmp / "store.zarr"] if (tmp / "store.zarr").exists() else [])


def _break(contrast: str, breaker) -> Callable[[Path], Path]:
    def spoil(folder: Path) -> Path:
        path = contrast_file(folder, contrast)
        breaker(path)
        return path
    return spoil


def _inf(path: Path) -> None:
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[2, 3, 4] = -np.inf
    broken.save(path, data)


def _rename_all(folder: Path, old: str, new: str) -> None:
    for p in folder.iterdir():
        p.rename(folder / p.name.replace(old, new))


def _duplicate(src: Path) -> None:
    import shutil

    shutil.copytree(write_subject_dir(src / "site_a", 1, "brats2021"), src / "site_b" / BAD_SID)


def _empty(src: Path) -> None:
    (src / "BraTS2021_00001").mkdir()
    (src / "README.txt").write_text("images not downloaded yet")


# ------------------------------------------------------------------------------------------ training config
TINY = {"model": {"widths": [8, 16, 32], "proj_stride": 2},
        "patch": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
        "loss": {"n_anchors": 8, "top_k": 32}, "steps_per_epoch": 1, "epochs": 1}


def _fit(tmp: Path, store: dict, changes: dict) -> Outcome:
    """``cclray.train.fit`` refuses the config before Ray starts or anything is written."""
    from cclray.train import fit
    from data_prep.config import ConfigError

    cfg = {**TINY, "store": store["url"], **changes}
    with pytest.raises(ConfigError) as e:
        fit("pretrain", cfg, tmp / "run")
    return Outcome(str(e.value), [tmp / "run"] if (tmp / "run").exists() else [])


def _patch_too_large(tmp: Path, store: dict) -> Outcome:
    """The patch exceeds every (24³) subject: refused when the dataset is built, before any step."""
    from cclray.config import stage_config
    from cclray.engine import LocalContext
    from cclray.engine_pretrain import run_pretrain
    from data_prep.config import ConfigError

    cfg = stage_config("pretrain", {**TINY, "store": store["url"],
                                    "patch": {**TINY["patch"], "patch_size": [32, 32, 32]}})
    run = tmp / "run"
    with pytest.raises(ConfigError) as e:
        run_pretrain(cfg, LocalContext(run))
    return Outcome(str(e.value), list(run.iterdir()) if run.exists() else [])


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoint(tmp: Path, stage: str = "pretrain") -> Path:
    import torch

    from cclray.checkpoint import save_checkpoint
    from cclray.config import stage_config
    from cclray.runs import checkpoint_name

    cfg = stage_config(stage, {**TINY, "store": "s.zarr"})
    return save_checkpoint(tmp / "run" / checkpoint_name(1, 1),
                           {"model": {"w": torch.zeros(2)}, "step": 1, "epoch": 1}, cfg, stage)


def _load(tmp: Path, spoil: Callable[[Path], None], stage: str | None = None) -> Outcome:
    from cclray.checkpoint import CheckpointError, load_checkpoint

    d = _checkpoint(tmp)
    spoil(d / "checkpoint.pt")
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d, stage=stage)
    after = sorted(p.name for p in d.iterdir())
    return Outcome(str(e.value), [] if before == after else [f"{d}: {before} -> {after}"])


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:100])


class _Evil:
    """Unpickling this would create a file: a weights_only load must never get that far."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(f: Path) -> None:
    import torch

    torch.save({"model": {}, "stage": "pretrain", "payload": _Evil(f.parent / "PWNED")}, f)
    (f.parent / "meta.json").unlink()  # size check off: the unpickler itself must refuse


def _pickled_outcome(tmp: Path, store: dict) -> Outcome:
    out = _load(tmp, _pickled)
    marker = next((tmp / "run").glob("*/PWNED"), None)
    return Outcome(out.message, out.leftovers + ([marker] if marker else []))


# ------------------------------------------------------------------------------------------ export
def _export(tmp: Path, source: Callable[[Path], Path]) -> Outcome:
    from export.onnx_export import ExportError, export_onnx

    out = tmp / "model.onnx"
    with pytest.raises(ExportError) as e:
        export_onnx(source(tmp), out)
    return Outcome(str(e.value), [p for p in tmp.glob("*model.onnx*")])


# ------------------------------------------------------------------------------------------ runtime
def _onnx(tmp: Path, card: bool = True, external: str | None = None) -> Path:
    """An ``image (B, 2, X, Y, Z) -> synthesis`` identity-like model (with or without a cclray card)."""
    from onnx import TensorProto, helper, numpy_helper

    from export.card import ModelCard

    w = numpy_helper.from_array(np.ones(1, np.float32), "w")
    if external:
        raw = w.raw_data
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", external), ("offset", "0"), ("length", str(len(raw)))):
            entry = w.external_data.add()
            entry.key, entry.value = k, v
    dims = ["B", 2, "X", "Y", "Z"]
    graph = helper.make_graph([helper.make_node("Mul", ["image", "w"], ["synthesis"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("synthesis", TensorProto.FLOAT, dims)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if card:
        props = ModelCard.new(inputs=("t1gd", "flair"), targets=("t1w", "t2w"), patch_size=16,
                              stride=4).metadata_props()
        for k, v in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    (tmp / "m").mkdir(exist_ok=True)
    path = tmp / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())  # as is: onnx.save_model would rewrite external data
    return path


def _runtime(tmp: Path, make_model: Callable[[Path], Path], inputs: dict | None = None) -> Outcome:
    from export.card import CardError
    from export.runtime import OnnxSynthesizer
    from export.runtime_io import InputError

    path = make_model(tmp)
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises((CardError, InputError)) as e:
        OnnxSynthesizer(path, provider="cpu").synthesize(inputs or {})
    after = sorted(p.name for p in path.parent.iterdir())
    return Outcome(str(e.value), [] if before == after else [f"{path.parent}: {before} -> {after}"])


_VOL = np.pad(np.ones((8, 8, 8), np.float32), 4)

# ------------------------------------------------------------------------------------------ the corpus
F = re.escape(BAD_SID)
CASES = [
    # prep: one subject spoiled -> reported with its file, skipped, nothing of it in the store
    Case("prep-shape-mismatch", lambda t, s: _prep(t, _break("flair", broken._break_shape)),
         rf"{F}_flair\.nii\.gz", "resample all contrasts"),
    Case("prep-affine-mismatch", lambda t, s: _prep(t, _break("t2w", broken._break_affine)),
         rf"{F}_t2\.nii\.gz", "co-register"),
    Case("prep-4d-nifti", lambda t, s: _prep(t, _break("t1gd", broken._break_4d)),
         rf"{F}_t1ce\.nii\.gz", "export one 3D volume per contrast"),
    Case("prep-nan-voxels", lambda t, s: _prep(t, _break("t1w", broken._break_nan)),
         rf"{F}_t1\.nii\.gz", "nan_to_num"),
    Case("prep-inf-voxels", lambda t, s: _prep(t, _break("flair", _inf)),
         rf"{F}_flair\.nii\.gz", "nan_to_num"),
    Case("prep-all-zero", lambda t, s: _prep(t, _break("t2w", broken._break_zero)),
         rf"{F}_t2\.nii\.gz", "replace the file with a valid export"),
    Case("prep-truncated-gz", lambda t, s: _prep(t, _break("flair", broken._break_truncate)),
         rf"{F}_flair\.nii\.gz", "re-download or re-export"),
    Case("prep-not-nifti", lambda t, s: _prep(t, _break("t1gd", broken._break_not_nifti)),
         rf"{F}_t1ce\.nii\.gz", "re-download or re-export"),
    Case("prep-missing-contrast", lambda t, s: _prep(t, _break("t2w", Path.unlink)),
         rf"{F}_t2\.nii\.gz", "add the file"),
    Case("prep-unknown-naming", lambda t, s: _prep(t, lambda f: _rename_all(f, f"{BAD_SID}_", f"{BAD_SID}.")),
         rf"src/{F}\b", "rename the files"),
    Case("prep-unsafe-subject-id", lambda t, s: _prep(t, lambda f: _rename_all(f, BAD_SID, "..")),
         rf"src/{F}\b", "rename the folder"),
    Case("prep-duplicate-subjects", lambda t, s: _prep_whole(t, _duplicate),
         r"src/site_a.*src/site_b", "remove or rename one"),
    Case("prep-empty-folder", lambda t, s: _prep_whole(t, _empty),
         r"/src holds no", "point SRC_DIR at the BraTS folder"),
    # training config: refused naming the key, before Ray starts or the run folder exists
    Case("config-misspelled-key", lambda t, s: _fit(t, s, {"epochz": 3}), r"'epochz'", r"did you mean 'epochs'"),
    Case("config-zero-epochs", lambda t, s: _fit(t, s, {"epochs": 0}), r"PretrainConfig\.epochs=0", "must be >= 1"),
    Case("config-negative-patch", lambda t, s: _fit(t, s, {"patch": {**TINY["patch"], "patch_size": [-16, 16, 16]}}),
         r"PatchConfig\.patch_size=\[-16", "must be >= 1"),
    Case("config-patch-larger-than-volume", _patch_too_large, r"patch\.patch_size=\[32, 32, 32\]",
         r"use a patch_size <= \[24, 24, 24\]"),
    # checkpoints
    Case("checkpoint-other-stage", lambda t, s: _load(t, lambda f: None, stage="finetune"),
         r"checkpoint_e0001_s0000001/checkpoint\.pt is a 'pretrain' checkpoint", "a finetune run takes `--init"),
    Case("checkpoint-truncated", lambda t, s: _load(t, _truncate),
         r"checkpoint_e0001_s0000001/checkpoint\.pt is truncated", "use an earlier checkpoint"),
    Case("checkpoint-pickled-object", _pickled_outcome,
         r"checkpoint_e0001_s0000001/checkpoint\.pt holds pickled Python objects", "Pass a checkpoint written by `cclray"),
    # export
    Case("export-pretrain-checkpoint", lambda t, s: _export(t, _checkpoint),
         r"checkpoint\.pt is a 'pretrain' checkpoint", "export take finetune runs"),
    Case("export-missing-run", lambda t, s: _export(t, lambda d: d / "no_such_run"),
         r"no_such_run does not exist", "pass a run directory"),
    # runtime
    Case("runtime-onnx-without-card", lambda t, s: _runtime(t, lambda d: _onnx(d, card=False)),
         r"m/model\.onnx has no cclray model card", "export it with `cclray export`"),
    Case("runtime-wrong-contrasts", lambda t, s: _runtime(t, _onnx, {"t1w": _VOL, "t2w": _VOL}),
         r"takes \['t1gd', 'flair'\].*got \['t1w', 't2w'\]", "pass exactly the model's input contrasts"),
    Case("runtime-external-data-escape", lambda t, s: _runtime(t, lambda d: _onnx(d, external="../x.bin")),
         r"m/model\.onnx: tensor 'w' reads external data from '\.\./x\.bin'", "Keep the \\.onnx and its data file together"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_naming_where_and_fix(case, tmp_path, tiny_store):
    out = case.act(tmp_path, tiny_store)
    assert re.search(case.where, out.message), f"message does not name {case.where!r}:\n{out.message}"
    assert re.search(case.fix, out.message), f"message does not give the fix {case.fix!r}:\n{out.message}"
    assert out.leftovers == [], f"partial output left behind: {out.leftovers}"


def test_corpus_covers_every_entry_point():
    kinds = {c.name.split("-")[0] for c in CASES}
    assert kinds == {"prep", "config", "checkpoint", "export", "runtime"} and len(CASES) >= 15
