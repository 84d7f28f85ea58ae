"""deploy/: the KubeRay RayJob and the `ray up` cluster yaml parse, pass Ray's own schema, and every
`cclray ...` command they run exists here (its `--help` works with these very flags)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _cclray_commands(text: str) -> list[list[str]]:
    """Every ``cclray SUB ...`` command in a shell line (split on ``&&``, ``;``, ``|``)."""
    out = []
    for part in re.split(r"&&|;|\|\|?", text):
        argv = shlex.split(part.split("#")[0].replace(">", " > "))
        if argv and argv[0] == "cclray":
            out.append(argv[: argv.index(">")] if ">" in argv else argv)
    return out


def _check_flags(argv: list[str]) -> None:
    """``cclray SUB --help`` runs and lists every ``--flag`` the deploy command uses."""
    sub = [a for a in argv[1:2] if not a.startswith("-")]
    proc = subprocess.run([sys.executable, "-m", "cclray.cli", *sub, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag.split("=")[0] in proc.stdout, f"`cclray {' '.join(sub)}` has no {flag}"


def test_kuberay_rayjob_parses_and_its_entrypoint_runs_here():
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"][0]
    gpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    commands = _cclray_commands(spec["entrypoint"])
    assert [c[1] for c in commands] == ["pretrain", "finetune", "export", "synthesize"]
    for argv in commands:
        if argv[1] in ("pretrain", "finetune"):
            assert int(argv[argv.index("--workers") + 1]) == workers["replicas"] * gpus  # one worker a GPU
            assert "--gpus" in argv and argv[argv.index("--out") + 1].startswith("s3://")  # run folder in the bucket
        _check_flags(argv)
    assert "--ray" in commands[-1] and commands[-1][commands[-1].index("--cohort") + 1].startswith("s3://")
    for group in (cluster["headGroupSpec"], workers):  # no shared filesystem: no PVC, the S3 secret on every pod
        pod = group["template"]["spec"]
        assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
        assert {"secretRef": {"name": "cclray-s3"}} in pod["containers"][0]["envFrom"]


def test_ray_up_cluster_yaml_passes_rays_schema_and_its_commands_run_here():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's own validator (raises on an unknown or bad key)
    lines = config["setup_commands"] + config["head_setup_commands"]
    assert any("cclray[train]" in line for line in lines) and not any("mount" in line for line in lines)
    commands = [c for line in lines for c in _cclray_commands(line)]
    header = (DEPLOY / "ray-cluster.yaml").read_text().split("cluster_name:")[0]
    commands += _cclray_commands(" ".join(ln.lstrip("# ").rstrip("\\") for ln in header.splitlines()
                                          if "cclray pretrain" in ln))
    assert commands and any(c[1:2] == ["pretrain"] for c in commands)
    for argv in commands:
        _check_flags(argv)


@pytest.mark.parametrize("name", ["kuberay-rayjob.yaml", "ray-cluster.yaml"])
def test_documented_in_cluster_md(name):
    assert f"deploy/{name}" in (ROOT / "docs" / "CLUSTER.md").read_text()
