"""export.runtime + export.runtime_io + `cclray synthesize`: the torch-free inference path."""
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cclray.cli import main as cli
from cclray.config import ModelConfig
from cclray.models import build_synthesizer
from data_prep.schema import NAMINGS
from export.onnx_export import export_onnx
from export.runtime import OnnxSynthesizer, RuntimeSetupError
from export.runtime_io import InputError, check_external_data, load_inputs

ROOT = Path(__file__).resolve().parents[2]
AFFINE = np.array([[-1.2, 0, 0, 90], [0, 1.1, 0, -120], [0, 0, 1.0, -70], [0, 0, 0, 1]])
TOL = {"rtol": 1e-3, "atol": 2e-4}  # ORT vs torch through the same windows, z-scored outputs
BLOCKER = '''
import sys
class _Block:
    """Make `import torch` / `import ray` (and zarr, scipy) fail, as on an inference host."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "ray", "zarr", "scipy"}:
            raise ImportError(f"{name} is blocked in this test (inference host without it)")
        return None
sys.meta_path.insert(0, _Block())
'''


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(widths=(8, 16, 32), groups=4, proj_stride=2)
    model = build_synthesizer(cfg).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx((model, cfg, {"patch_size": 32}), path)
    return path, model


def brain(shape=(48, 44, 40), seed=0):
    """{contrast: (X, Y, Z)} skull-stripped-looking volumes: noisy ellipsoid, background exactly 0."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.6
    vols = {}
    for c, scale in (("t1gd", 300.0), ("flair", 120.0)):
        v = scale * (1.5 + grid[0] + rng.random(shape))
        vols[c] = np.where(inside, v, 0).astype(np.float32)
    return vols


def write_subject(root, sid, naming, vols, affine=AFFINE):
    folder = Path(root) / sid
    folder.mkdir(parents=True)
    for c, v in vols.items():
        nib.save(nib.Nifti1Image(v, affine), str(folder / NAMINGS[naming].filename(sid, c)))
    return folder


def torch_reference(model_path, vols):
    """Same pipeline and windows as the runtime, but torch eager as the predictor."""
    path, model = model_path
    synth = OnnxSynthesizer(path, provider="cpu")

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    synth.predict = predict
    return synth.synthesize(vols)


def test_cli_in_a_process_without_torch(model_path, tmp_path):
    path, _ = model_path
    cohort = tmp_path / "cohort"
    subjects = {"BraTS-GLI-00001-000": ("brats2023", brain(seed=1)),
                "BraTS2021_00002": ("brats2021", brain((40, 48, 36), seed=2))}
    for sid, (naming, vols) in subjects.items():
        write_subject(cohort, sid, naming, vols)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cclray.cli", "synthesize", "--model", str(path),
                           "--cohort", str(cohort), "--out", str(out), "--batch", "2"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import onnxruntime as ort

    auto = "OpenVINOExecutionProvider" if "OpenVINOExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"  # auto: the onnxruntime-openvino build takes OpenVINO (no GPU here)
    assert f"on {auto}" in proc.stdout
    for sid, (naming, vols) in subjects.items():
        ref = torch_reference(model_path, vols)
        for target in ("t1w", "t2w"):
            img = nib.load(str(out / NAMINGS[naming].filename(sid, target, synth=True)))
            np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
            assert img.get_data_dtype() == np.float32
            data = img.get_fdata(dtype=np.float32)
            assert data.shape == vols["t1gd"].shape
            assert np.all(data[vols["t1gd"] == 0] == 0)  # background stays 0
            assert np.abs(data).max() > 0
            np.testing.assert_allclose(data, ref[target], **TOL)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        NAMINGS[n].filename(s, t, synth=True) for s, (n, _) in subjects.items() for t in ("t1w", "t2w"))


def test_files_mode_names_outputs_like_brats(model_path, tmp_path, capsys):
    folder = write_subject(tmp_path, "BraTS-GLI-00007-001", "brats2023", brain())
    out = tmp_path / "out"
    rc = cli(["synthesize", "--model", str(model_path[0]), "--t1c", str(folder / "BraTS-GLI-00007-001-t1c.nii.gz"),
              "--flair", str(folder / "BraTS-GLI-00007-001-t2f.nii.gz"), "--out", str(out), "--provider", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00007-001-t1n-synth.nii.gz",
                                                     "BraTS-GLI-00007-001-t2w-synth.nii.gz"]
    assert "on CPUExecutionProvider" in capsys.readouterr().out


def _nan(vols):
    v = vols["flair"].copy()
    v[20, 20, 20] = np.nan
    return {**vols, "flair": v}


# case: (name, how to spoil the subject {contrast: (array, affine)}, what the message must say)
BAD = [
    ("shapes", lambda v: {**v, "flair": (v["flair"][0][:, :, :-2], AFFINE)}, r"t2f\.nii\.gz.*shape.*resample"),
    ("affines", lambda v: {**v, "flair": (v["flair"][0], AFFINE + np.diag([0, 0, 0.5, 0]))},
     r"t2f\.nii\.gz.*affine differs.*co-register"),
    ("4d", lambda v: {**v, "t1gd": (np.stack([v["t1gd"][0]] * 2, -1), AFFINE)}, r"t1c\.nii\.gz.*not a 3D volume.*4D"),
    ("nan", lambda v: {**v, "flair": (_nan({"flair": v["flair"][0]})["flair"], AFFINE)},
     r"t2f\.nii\.gz.*NaN.*nan_to_num"),
    ("empty", lambda v: {c: (np.zeros_like(a), aff) for c, (a, aff) in v.items()}, r"t1c\.nii\.gz.*every voxel is 0"),
    ("missing", lambda v: {"t1gd": v["t1gd"]}, r"t2f\.nii\.gz.*missing|missing.*t2f\.nii\.gz"),
]


@pytest.mark.parametrize("name, spoil, match", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_refused_and_nothing_is_written(model_path, tmp_path, capsys, name, spoil, match):
    import re

    sid = "BraTS-GLI-00003-000"
    folder = tmp_path / sid
    folder.mkdir()
    for c, (arr, aff) in spoil({c: (v, AFFINE) for c, v in brain().items()}).items():
        nib.save(nib.Nifti1Image(arr, aff), str(folder / NAMINGS["brats2023"].filename(sid, c)))
    out = tmp_path / "out"
    rc = cli(["synthesize", "--model", str(model_path[0]), "--subject", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(match, err), err
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_file_in_files_mode(model_path, tmp_path, capsys):
    rc = cli(["synthesize", "--model", str(model_path[0]), "--t1c", str(tmp_path / "nope-t1c.nii.gz"),
              "--flair", str(tmp_path / "nope-t2f.nii.gz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope-t1c.nii.gz: no such file; check the path" in err
    assert not (tmp_path / "out").exists()


def test_cohort_accepts_what_prep_accepts(tmp_path):
    """`synthesize --cohort` finds subjects with data_prep.discover, as `cclray prep` does: nested folders,
    both namings, ids from the file names; a subject without a model input is reported, the rest kept."""
    from data_prep.discover import find_subjects
    from export.runtime_io import cohort_inputs

    vols = brain((16, 16, 16))
    write_subject(tmp_path / "site-a" / "train", "BraTS2021_00001", "brats2021", {**vols, "t1w": vols["t1gd"],
                                                                                  "t2w": vols["flair"]})
    write_subject(tmp_path / "site-b", "BraTS-GLI-00002-000", "brats2023", {**vols, "t1w": vols["t1gd"],
                                                                           "t2w": vols["flair"]})
    write_subject(tmp_path, "BraTS-GLI-00003-000", "brats2023", {"t1gd": vols["t1gd"]})  # no FLAIR
    subjects, failed = cohort_inputs(tmp_path, ["t1c", "flair"])
    assert [s.sid for s in subjects] == [s.sid for s in find_subjects(tmp_path).subjects] \
        == ["BraTS-GLI-00002-000", "BraTS2021_00001"]
    assert [s.naming.name for s in subjects] == ["brats2023", "brats2021"]
    assert set(subjects[0].files) == {"t1gd", "flair"}
    assert len(failed) == 1 and "BraTS-GLI-00003-000-t2f.nii.gz" in str(failed[0])


def test_array_api_and_providers(model_path):
    path, _ = model_path
    synth = OnnxSynthesizer(path, provider="auto", threads=1)
    assert synth.provider in synth.session.get_providers()[:1]
    vols = brain()
    out = synth.synthesize({"T1ce": vols["t1gd"], "FLAIR": vols["flair"]}, AFFINE, overlap=0.25, batch_size=3)
    assert set(out) == {"t1w", "t2w"} and out["t1w"].shape == vols["t1gd"].shape
    assert np.all(out["t2w"][vols["t1gd"] == 0] == 0)
    with pytest.raises(InputError, match="different affines|affines differ"):
        synth.synthesize(vols, {"t1gd": AFFINE, "flair": AFFINE * 2})
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeSetupError, match="onnxruntime-gpu"):
            OnnxSynthesizer(path, provider="cuda")


@pytest.mark.parametrize("location", ["../outside.bin", "/tmp/abs.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    raw = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(InputError, match="outside the model's folder"):
        check_external_data(path)
    with pytest.raises(InputError, match="outside the model's folder"):
        OnnxSynthesizer(path)


def test_external_data_inside_the_folder_is_fine(model_path, tmp_path):
    proto = onnx.load(str(model_path[0]))
    path = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="ext.data", size_threshold=1024)
    assert (tmp_path / "ext.data").stat().st_size > 0
    assert OnnxSynthesizer(path).card.inputs == ("t1gd", "flair")


def test_load_inputs_reports_mismatch_with_file_names(tmp_path):
    vols = brain()
    a, b = tmp_path / "a-t1c.nii.gz", tmp_path / "b-t2f.nii.gz"
    nib.save(nib.Nifti1Image(vols["t1gd"], AFFINE), str(a))
    nib.save(nib.Nifti1Image(vols["flair"][:-1], AFFINE), str(b))
    with pytest.raises(InputError, match=r"b-t2f\.nii\.gz: shape .* differs from a-t1c\.nii\.gz"):
        load_inputs({"t1c": a, "flair": b})


def test_provider_chains():
    """auto takes the accelerated providers this build has, in order; a named one that is missing says
    which package brings it."""
    from export.runtime import _resolve_providers

    cpu, ov, cuda = "CPUExecutionProvider", "OpenVINOExecutionProvider", "CUDAExecutionProvider"
    assert _resolve_providers("auto", [cpu]) == [cpu]
    assert _resolve_providers("auto", [ov, cpu]) == [ov, cpu]
    assert _resolve_providers("auto", [cuda, ov, cpu]) == [cuda, ov, cpu]
    assert _resolve_providers("openvino", [ov, cpu]) == [ov, cpu]
    assert _resolve_providers("cpu", [cuda, cpu]) == [cpu]
    with pytest.raises(RuntimeSetupError, match=r"onnxruntime-openvino.*cclray\[runtime-openvino\]"):
        _resolve_providers("openvino", [cpu])
    with pytest.raises(RuntimeSetupError, match=r"onnxruntime-gpu"):
        _resolve_providers("cuda", [cpu])
    with pytest.raises(RuntimeSetupError, match="unknown provider 'rocm'"):
        _resolve_providers("rocm", [cpu])


@pytest.fixture(scope="module")
def model_2mm(tmp_path_factory, model_path):
    """The tiny model again, its card saying it was trained on a 2 mm grid."""
    _, model = model_path
    path = tmp_path_factory.mktemp("model2mm") / "tiny_2mm.onnx"
    export_onnx((model, ModelConfig(widths=(8, 16, 32), groups=4, proj_stride=2),
                 {"patch_size": 32, "spacing": 2.0}), path)
    return path


def test_inputs_on_another_grid_are_resampled_to_the_cards_spacing(model_2mm):
    """A 2 mm model given 1 mm inputs runs on the inputs resampled to 2 mm (data_prep.resample, as prep
    does) and writes back onto the 1 mm grid; given 2 mm inputs it runs them as they are."""
    from data_prep.resample import resample_subject, to_grid

    synth = OnnxSynthesizer(model_2mm, provider="cpu", threads=1)
    assert synth.card.spacing == (2.0, 2.0, 2.0)
    vols = brain((64, 60, 48))
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    timings = {}
    out = synth.synthesize(vols, fine, timings=timings)
    assert set(timings) == {"preprocess", "inference", "blend", "postprocess"}
    assert all(v >= 0 for v in timings.values()) and timings["inference"] > 0
    assert out["t1w"].shape == vols["t1gd"].shape
    assert np.all(out["t1w"][vols["t1gd"] == 0] == 0) and np.abs(out["t1w"]).max() > 0
    # the same synthesis done by hand at 2 mm agrees with the runtime's 2 mm pass, brought to 1 mm
    r = resample_subject(np.stack([vols["t1gd"], vols["flair"]]), fine, 2.0)
    coarse = synth.synthesize({"t1gd": r.volumes[0], "flair": r.volumes[1]}, r.grid.affine)
    assert coarse["t1w"].shape == r.grid.shape  # on the card's grid already: not resampled
    back = to_grid(coarse["t1w"], r.grid.affine, vols["t1gd"].shape, fine, mask=r.mask) * (vols["t1gd"] > 0)
    np.testing.assert_allclose(out["t1w"], back, atol=1e-5)
    # a model that knew no better (no spacing on its card) would have run the 1 mm grid as it is: it differs
    plain = synth.synthesize(vols)  # no affine: taken to be on the training grid
    assert not np.allclose(plain["t1w"], out["t1w"], atol=1e-3)


def test_no_resample_refuses_and_names_both_spacings(model_2mm, tmp_path, capsys):
    folder = write_subject(tmp_path, "BraTS-GLI-00009-000", "brats2023", brain())  # AFFINE: 1.2 x 1.1 x 1 mm
    out = tmp_path / "out"
    rc = cli(["synthesize", "--model", str(model_2mm), "--subject", str(folder), "--out", str(out),
              "--provider", "cpu", "--no-resample"])
    err = capsys.readouterr().err
    assert rc == 2 and "1.2x1.1x1 mm" in err and "trained on 2x2x2 mm" in err and "--no-resample" in err, err
    assert not out.exists() or list(out.iterdir()) == []
    rc = cli(["synthesize", "--model", str(model_2mm), "--subject", str(folder), "--out", str(out),
              "--provider", "cpu", "--timings"])
    text = capsys.readouterr().out
    assert rc == 0 and "timings: read" in text and "inference" in text and "write" in text, text
    img = nib.load(str(out / "BraTS-GLI-00009-000-t1n-synth.nii.gz"))
    assert img.shape == brain()["t1gd"].shape
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)


def test_two_onnxruntime_builds_are_reported(caplog):
    """onnxruntime and onnxruntime-openvino are one module: having both installed is warned about, with the fix."""
    import importlib.metadata as md

    from export.runtime import check_single_build, installed_builds

    def version(name):
        if name in ("onnxruntime", "onnxruntime-openvino"):
            return "1.0"
        raise md.PackageNotFoundError(name)

    builds = installed_builds(version)
    assert builds == ["onnxruntime", "onnxruntime-openvino"]
    with caplog.at_level("WARNING", logger="export.runtime"):
        check_single_build(builds)
        check_single_build(["onnxruntime"])
    assert len(caplog.records) == 1
    assert "pip uninstall -y onnxruntime onnxruntime-openvino" in caplog.text
    assert installed_builds()  # this test environment has one


def test_outputs_are_gzip_any_reader_opens(tmp_path):
    """save_nifti gzips with ISA-L when installed: the file is a plain .nii.gz (nibabel and gzip read it)."""
    import gzip

    from export.runtime_io import save_nifti

    data = brain((20, 18, 16))["t1gd"]
    path = tmp_path / "x.nii.gz"
    save_nifti(nib.Nifti1Image(data, AFFINE), path)
    assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"  # a gzip stream of a NIfTI-1 file
    img = nib.load(str(path))
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(img.affine, AFFINE)
