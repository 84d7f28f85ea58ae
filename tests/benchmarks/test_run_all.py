"""Smoke test of the benchmarks: ``run_all.py --smoke`` runs every benchmark at its tiniest size and
each one reports finite ratios, each over repetitions (min / median / max). No timed assertion: the machine is shared, figures are for people."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = {"patch_reads", "loader", "runtime", "ray", "prep", "train_step", "s3", "cohort"}


@pytest.mark.slow  # starts Ray twice (TorchTrainer with 1 and 2 workers) and exports ONNX: minutes under load
@pytest.mark.ray
def test_run_all_smoke_gives_every_benchmark_a_finite_ratio(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    records = {r["bench"]: r for r in result["benches"]}
    assert set(records) == BENCHES
    for name, rec in records.items():
        assert "error" not in rec, (name, rec.get("error"))
        assert rec["ratios"], f"{name} reported no ratio"
        for r in rec["ratios"]:
            assert math.isfinite(r["value"]) and r["value"] > 0, (name, r)
            assert r["n"] == len(r["runs"]) >= 2, (name, r)  # --smoke: 2 back-to-back repetitions per ratio
            assert r["min"] <= r["median"] == r["value"] <= r["max"], (name, r)
        assert rec["machine"]["cores"] >= 1 and len(rec["machine"]["loadavg"]) == 3
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in BENCHES)
