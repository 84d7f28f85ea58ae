"""Multi-node, simulated: ``ray.cluster_utils.Cluster`` with 2 nodes of 1 CPU, a 2-worker run with
``placement_strategy="STRICT_SPREAD"`` (one worker a node), checkpoints in the shared storage_path,
and the second node's worker SIGKILLed after the first checkpoint: the run must finish.

The cluster lives in a subprocess (its own Ray, never the session's ``ray_session``); the script
prints one JSON line that the test checks.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, os, signal, sys, threading, time
from pathlib import Path

import psutil
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
from conftest import make_tiny_store
from cclray.checkpoint import read_meta
from cclray.runs import checkpoint_dirs, find_checkpoint
from cclray.train import fit

EPOCHS, STEPS = 5, 3
out = Path(sys.argv[1])
store = make_tiny_store(out / "store.zarr", splits={"pretrain": 4, "finetune": 1, "val": 1, "test": 1})
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
head_raylet = cluster.head_node.all_processes["raylet"][0].process.pid


def workers():
    """{pid: raylet pid (= node)} of the live Ray Train workers of this cluster."""
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if not p.name().startswith("ray::RayTrainWorker"):
                continue
            q = p.parent()
            while q is not None and q.name() != "raylet":
                q = q.parent()
            found[p.pid] = q.pid if q else None
        except psutil.Error:
            pass
    return found


def wait(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


run = out / "shared" / "mn"  # storage_path = out/shared, reached by both nodes
cfg = {"store": store["url"], "model": {"widths": [8, 16, 32], "proj_stride": 2},
       "patch": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
       "loss": {"n_anchors": 8, "top_k": 32}, "epochs": EPOCHS, "steps_per_epoch": STEPS,
       "keep_checkpoints": 20, "cpus_per_worker": 1}
result, error = {}, []

def train():
    try:
        result.update(fit("pretrain", cfg, run, num_workers=2, max_failures=1,
                          placement_strategy="STRICT_SPREAD"))
    except BaseException as e:
        error.append(repr(e))

t0 = time.time()
thread = threading.Thread(target=train)
thread.start()
wait(lambda: checkpoint_dirs(run), 600, "the first checkpoint")
first = wait(lambda: (lambda w: w if len(w) == 2 else None)(workers()), 120, "two workers")
victim = next(pid for pid, node in first.items() if node != head_raylet)
os.kill(victim, signal.SIGKILL)
second = {}
while thread.is_alive() and not second:  # the restarted group: two new workers
    w = workers()
    if len(w) == 2 and not set(w) & set(first):
        second = w
    time.sleep(0.1)
thread.join()
print(json.dumps({
    "error": error, "step": result.get("metrics", {}).get("step"), "head_raylet": head_raylet,
    "first": sorted(first.values()), "victim_node": first[victim], "second": sorted(second.values()),
    "steps": [read_meta(d)["step"] for d in checkpoint_dirs(run)],
    "latest": str(find_checkpoint(run, "latest")), "seconds": round(time.time() - t0, 1),
    "planned": EPOCHS * STEPS,
}))
ray.shutdown()
cluster.shutdown()
'''


@pytest.mark.ray
@pytest.mark.slow
def test_two_nodes_strict_spread_survive_losing_the_second_nodes_worker(tmp_path):
    script = tmp_path / "multinode.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nmulti-node: {report}")
    assert report["error"] == []
    assert len(set(report["first"])) == 2 and report["head_raylet"] in report["first"]  # one worker a node
    assert report["victim_node"] != report["head_raylet"]  # the second node's worker was killed
    if report["second"]:  # seen while it ran: the restarted group spread over both nodes again
        assert len(set(report["second"])) == 2
    assert report["step"] == report["planned"]
    assert report["steps"] == list(range(3, report["planned"] + 1, 3))  # every epoch checkpointed once
    assert Path(report["latest"]).parent == tmp_path / "shared" / "mn"  # in the shared storage_path
