"""Cohort synthesis on Ray (export.scaleout, `cclray synthesize --cohort ... --ray`): subjects/s with
2 workers vs 1 on the same cohort, and the actor pool (one onnxruntime session per worker) vs one Ray
task per subject (a session built per subject).

    python benchmarks/bench_cohort.py [--smoke | --quick]

One local Ray with 2 CPUs; each worker has 1 CPU and 1 onnxruntime thread, so 2 workers use both
cores (1 worker: one core). The cohort is synthetic BraTS-2023-named NIfTI (T1Gd, FLAIR) written once
under --work; the model is the default network (or a narrower one for --smoke) exported to ONNX.
Repetitions (``--repeats``, default 3): the runs are interleaved (1, 2, tasks, 1, 2, tasks ...), one Ray
start-up serving them all; each figure is the median, each ratio min / median / max over the rounds. On
a shared machine the 2-worker speed-up is capped by what the other processes leave free: read it with the
load.

- ``--quick``: 4 synthetic subjects of 96x96x64, the default network exported at patch 64.
- full (no flag): 8 subjects of 240x240x155 at patch 128. ``--smoke``: 4 of 48x48x40, widths 8-16-32, patch 32.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_runtime import brain  # noqa: E402


def write_cohort(root: Path, n: int, shape) -> Path:
    import nibabel as nib
    import numpy as np

    from data_prep.schema import NAMINGS

    naming = NAMINGS["brats2023"]
    for i in range(n):
        sid = f"BraTS-GLI-{i:05d}-000"
        folder = root / sid
        if folder.is_dir():
            continue
        folder.mkdir(parents=True)
        for c, v in brain(shape, seed=i).items():
            nib.save(nib.Nifti1Image(v, np.eye(4)), str(folder / naming.filename(sid, c)))
    return root


def main() -> int:
    ap = _common.parser(__doc__)
    args = ap.parse_args()
    report = _common.Report("cohort", args)
    n, shape, patch, widths = _common.pick(
        args.size, (4, (48, 48, 40), 32, [8, 16, 32]), (4, (96, 96, 64), 64, None), (8, (240, 240, 155), 128, None))
    repeat = _common.repeats(args)

    import logging

    import ray
    import torch

    from cclray.config import ModelConfig
    from cclray.models import build_synthesizer
    from export import scaleout
    from export.onnx_export import export_onnx
    from export.runtime import OnnxSynthesizer

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    cfg = ModelConfig(**({"widths": tuple(widths)} if widths else {}))
    tmp = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    model = tmp / "model.onnx"
    export_onnx((build_synthesizer(cfg).eval(), cfg, {"patch_size": patch}), model, parity_patch=cfg.stride * 2)
    cohort = write_cohort(Path(args.work) / f"cohort-{'x'.join(map(str, shape))}", n, shape)
    card = OnnxSynthesizer(model, provider="cpu").card
    jobs, _ = scaleout.cohort_jobs(str(cohort), card.inputs)
    report.figure("cohort", len(jobs), "subjects", shape=list(shape), patch=patch)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a private instance
    setups = {"1 worker (actor)": dict(workers=1, mode="actors"),
              "2 workers (actors)": dict(workers=2, mode="actors"),
              "2 workers (tasks)": dict(workers=2, mode="tasks")}
    rnd = [0]

    def setup(name: str, kw: dict):
        def run():
            r = rnd[0] // len(setups)
            rnd[0] += 1
            out = tmp / f"out-{r}-{name.split()[0]}-{kw['mode']}"
            t = time.perf_counter()
            results = scaleout.run_cohort(str(model), jobs, str(out), threads=1, provider="cpu", **kw)
            dt = time.perf_counter() - t
            print(f"  run {r + 1}/{repeat} {name}: {dt:.1f} s (load {_common.loadavg()})", flush=True)
            bad = [x.error for x in results if not x.ok]
            if bad:
                raise RuntimeError(f"{name}: {bad}")
            return dt
        return run

    times = _common.rounds({name: setup(name, kw) for name, kw in setups.items()}, repeat)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: _common.median(v) for k, v in times.items()}
    for name, t in med.items():
        report.figure(f"cohort {name}", len(jobs) / t, "subjects/s", seconds=round(t, 2), repeat=repeat)
    report.ratio_runs("cohort synthesis: 2 workers / 1 worker (subjects/s)", times["1 worker (actor)"],
                      times["2 workers (actors)"], goal=1.6, note="2 cores: ideal 2.0")
    report.ratio_runs("cohort synthesis: actor pool / task per subject (subjects/s)", times["2 workers (tasks)"],
                      times["2 workers (actors)"], goal=None, note="> 1: the actor pool (the default) is faster")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
