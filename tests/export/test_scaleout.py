"""Scale-out cohort synthesis (export.scaleout, `cclray synthesize --cohort ... --ray`): a failing subject
is reported and the others written; cohorts and outputs on the S3 server; a 2-node Ray cluster
(ray.cluster_utils.Cluster, in a subprocess) spreads the subjects over both nodes without torch, and
a SIGKILLed actor's subject is redone by a new one."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cclray.cli import main as cli
from export import scaleout
from export.runtime import OnnxSynthesizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_runtime import brain, write_subject  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny synthesizer exported to ONNX: ``(path, torch model)``."""
    import torch

    from cclray.config import ModelConfig
    from cclray.models import build_synthesizer
    from export.onnx_export import export_onnx

    torch.manual_seed(0)
    cfg = ModelConfig(widths=(8, 16, 32), groups=4, proj_stride=2)
    model = build_synthesizer(cfg).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx((model, cfg, {"patch_size": 32}), path)
    return path, model


def _cohort(root: Path, n_good: int = 3, bad: bool = True) -> Path:
    for i in range(n_good):
        write_subject(root, f"BraTS-GLI-{i:05d}-000", "brats2023", brain(seed=i))
    if bad:  # NaN voxels: refused by the runtime's input checks
        vols = brain(seed=9)
        vols["flair"][5, 5, 5] = np.nan
        write_subject(root, "BraTS-GLI-00099-000", "brats2023", vols)
    return root


def test_a_bad_subject_is_reported_and_writes_nothing(model_path, tmp_path):
    synth = OnnxSynthesizer(model_path[0], provider="cpu")
    jobs, unusable = scaleout.cohort_jobs(str(_cohort(tmp_path / "cohort", n_good=1)), synth.card.inputs)
    assert [j.sid for j in jobs] == ["BraTS-GLI-00000-000", "BraTS-GLI-00099-000"] and unusable == []
    good, bad = (scaleout.synthesize_subject(synth, j, str(tmp_path / "out")) for j in jobs)
    assert good.ok and len(good.written) == 2 and all(Path(f).is_file() for f in good.written)
    assert not bad.ok and "NaN" in bad.error and bad.written == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(f).name for f in good.written)


def test_cohort_and_outputs_on_s3_match_local(model_path, tmp_path, s3_server, s3_bucket, capsys):
    import s3fs

    from data_prep.objstore import fsspec_options

    local = _cohort(tmp_path / "cohort", n_good=2)
    fs = s3fs.S3FileSystem(**fsspec_options(s3_bucket))
    fs.put(str(local), f"{s3_bucket[5:]}/cohort", recursive=True)
    assert cli(["synthesize", "--model", str(model_path[0]), "--cohort", f"{s3_bucket}/cohort",
                "--out", f"{s3_bucket}/synth", "--provider", "cpu"]) == 1  # the NaN subject fails
    err = capsys.readouterr().err
    assert "BraTS-GLI-00099-000" in err and "NaN" in err and "1 of 3 subject(s) failed" in err
    assert cli(["synthesize", "--model", str(model_path[0]), "--cohort", str(local), "--out",
                str(tmp_path / "out"), "--provider", "cpu"]) == 1
    keys = s3_server.keys(f"{s3_bucket}/synth")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [k.split("/")[-1] for k in keys] == names and len(names) == 4  # 2 subjects x (t1n, t2w)
    for name in names:
        remote = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(fs.cat(f"{s3_bucket[5:]}/synth/{name}")))
        np.testing.assert_allclose(remote.get_fdata(), nib.load(tmp_path / "out" / name).get_fdata(), atol=1e-5)


def test_missing_input_file_in_an_s3_cohort_names_it(model_path, s3_server, s3_bucket, tmp_path, capsys):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket[5:], Key="c/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1c.nii.gz", Body=b"x")
    assert cli(["synthesize", "--model", str(model_path[0]), "--cohort", f"{s3_bucket}/c",
                "--out", str(tmp_path / "o"), "--provider", "cpu"]) == 1  # reported and skipped, as prep does
    err = capsys.readouterr().err
    assert "cclray synthesize: error: BraTS-GLI-00001-000: " in err and "BraTS-GLI-00001-000-t2f.nii.gz" in err


def test_scaled_path_has_no_resample_and_timings(model_path, tmp_path, s3_server, s3_bucket, capsys):
    """The scale-out path (a cohort to object storage, as with --ray) honours --no-resample (each subject off
    the card's 2 mm grid refused, naming both spacings, nothing written) and prints --timings per subject."""
    import onnx

    from export.card import read_card

    proto = onnx.load(str(model_path[0]))
    meta = read_card(proto).replace(spacing=(2.0, 2.0, 2.0)).metadata_props()
    for p in proto.metadata_props:
        p.value = meta.get(p.key, p.value)
    model = tmp_path / "tiny_2mm.onnx"
    onnx.save_model(proto, str(model))
    cohort = _cohort(tmp_path / "cohort", n_good=2, bad=False)  # test_runtime's AFFINE: 1.2 x 1.1 x 1 mm
    args = ["synthesize", "--model", str(model), "--cohort", str(cohort), "--provider", "cpu"]
    assert cli(args + ["--out", f"{s3_bucket}/refused", "--no-resample"]) == 1
    err = capsys.readouterr().err
    assert err.count("trained on 2x2x2 mm") == 2 and "1.2x1.1x1 mm" in err and "2 of 2 subject(s) failed" in err
    assert s3_server.keys(f"{s3_bucket}/refused") == []
    assert cli(args + ["--out", f"{s3_bucket}/synth", "--timings"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " timings: " in ln]
    assert len(lines) == 2 and all(f"{k} " in lines[0] for k in ("read", "preprocess", "inference", "write"))
    assert len(s3_server.keys(f"{s3_bucket}/synth")) == 4


CLUSTER = r'''
import json, os, signal, sys, threading, time
import psutil
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, sys.argv[4])
from export import scaleout
from export.runtime import OnnxSynthesizer

model, cohort, out = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
card = OnnxSynthesizer(model, provider="cpu").card
jobs, _ = scaleout.cohort_jobs(cohort, card.inputs)
first = threading.Event()
results = []


def run():  # the kill below: one actor SIGKILLed after the first subject is written
    results.extend(scaleout.run_cohort(model, jobs, out, workers=2, threads=1, provider="cpu",
                                       on_result=lambda r: first.set() if r.ok else None))


thread = threading.Thread(target=run)
thread.start()
first.wait(600)
actors = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("ray::SynthWorker")]
killed = actors[0].pid if actors else None
if actors:
    os.kill(killed, signal.SIGKILL)
thread.join()


@ray.remote(num_cpus=1)
def heavy_modules_after_a_subject(model_bytes, job, out):
    w = scaleout.SynthWorker(model_bytes, "cpu", 1)
    w.synth.synthesize  # noqa
    scaleout.synthesize_subject(w.synth, job, out)
    return sorted({m.split(".")[0] for m in sys.modules} & {"torch", "zarr", "tensorstore"})


heavy = ray.get(heavy_modules_after_a_subject.remote(open(model, "rb").read(), jobs[0], out + "-probe"))
print(json.dumps({"results": [r.__dict__ for r in results], "heavy": heavy, "killed": killed,
                  "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]]}))
ray.shutdown()
cluster.shutdown()
'''


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_spreads_the_cohort(model_path, tmp_path):
    cohort = _cohort(tmp_path / "cohort", n_good=6)
    script = tmp_path / "cluster.py"
    script.write_text(textwrap.dedent(CLUSTER))
    proc = subprocess.run([sys.executable, str(script), str(model_path[0]), str(cohort), str(tmp_path / "out"),
                           str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {r["sid"]: r for r in report["results"]}
    assert len(results) == 7 and len(report["results"]) == 7  # one result a subject, the retried one included
    assert not results["BraTS-GLI-00099-000"]["ok"] and "NaN" in results["BraTS-GLI-00099-000"]["error"]
    good = [r for r in results.values() if r["ok"]]
    assert report["killed"] is not None  # an actor was SIGKILLed mid-run: its subject went to a new actor
    assert len(good) == 6 and all(len(r["written"]) == 2 for r in good)
    assert {r["node"] for r in good} == set(report["nodes"]) and len(report["nodes"]) == 2  # both nodes worked
    assert len(list((tmp_path / "out").iterdir())) == 12 and report["heavy"] == []  # no torch on the workers
    print(f"\n2-node cohort, actor {report['killed']} killed: "
          f"{[(r['sid'], r['node'][:8], round(r['seconds'], 2)) for r in good]}")
