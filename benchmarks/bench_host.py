"""The inference host with several subjects: one onnxruntime session per core (P processes of 1 thread,
the cohort split between them) vs one session using all cores (1 process of P threads), and each
process's peak RSS.

    python benchmarks/bench_host.py [--smoke | --quick] [--subjects N] [--provider auto|cpu|openvino] [--int8]

Every process is a torch-free ``cclray synthesize --cohort`` (it reads and writes NIfTI, as a user's run
does), started from a small launcher that reports its own peak RSS (``VmHWM``: ``ru_maxrss`` would keep
the benchmark's own peak across fork + exec) and checks that torch was never imported. The two layouts
run round robin over ``--repeats`` rounds; the ratio is subjects/s of per-core over all-cores, min /
median / max. The model is the default network (random weights: timing only) exported at patch 128;
the cohort is synthetic 240×240×155 volumes (bench_cohort's) written once under --work.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_cohort import write_cohort  # noqa: E402

LAUNCHER = """
import sys
from cclray.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules, "the runtime imported torch"
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"VMHWM_KB {hwm}", file=sys.stderr)
sys.exit(rc)
"""


def start(model: Path, cohort: Path, out: Path, threads: int, provider: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", LAUNCHER, "synthesize", "--model", str(model), "--cohort", str(cohort),
           "--out", str(out), "--threads", str(threads), "--provider", provider]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(_common.ROOT)})


def finish(proc: subprocess.Popen) -> float:
    """Wait for ``proc``; its peak RSS in MB (raises with its stderr when it failed)."""
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"synthesize failed (rc {proc.returncode}): {err[-2000:]}")
    return int(next(line.split()[1] for line in err.splitlines() if line.startswith("VMHWM_KB"))) / 1024


def split(cohort: Path, parts: int, root: Path) -> list[Path]:
    """``parts`` folders of symlinks dealing ``cohort``'s subjects out round robin."""
    subjects = sorted(p for p in cohort.iterdir() if p.is_dir())
    folders = [root / f"part{i}" for i in range(parts)]
    for i, s in enumerate(subjects):
        folders[i % parts].mkdir(parents=True, exist_ok=True)
        link = folders[i % parts] / s.name
        if not link.exists():
            link.symlink_to(s)
    return folders


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--subjects", type=int, default=None, help="cohort size (default 4; 2 with --smoke)")
    ap.add_argument("--provider", default="auto", help="onnxruntime provider of every session (default auto)")
    ap.add_argument("--int8", action="store_true", help="the int8 (QDQ) variant of the model")
    args = ap.parse_args()
    report = _common.Report("host", args)
    shape, patch, widths = _common.pick(args.size, ((48, 48, 40), 32, [8, 16, 32]), ((240, 240, 155), 128, None),
                                        ((240, 240, 155), 128, None))
    n = args.subjects or _common.pick(args.size, 2, 4, 4)
    repeats = _common.repeats(args)  # rounds of both layouts
    procs = _common.cores()

    import logging

    import torch

    from cclray.config import ModelConfig
    from cclray.models import build_synthesizer
    from export.onnx_export import export_onnx

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    cfg = ModelConfig(**({"widths": tuple(widths)} if widths else {}))
    tmp = Path(tempfile.mkdtemp(prefix="bench_host_"))
    model = tmp / "model.onnx"
    export_onnx((build_synthesizer(cfg).eval(), cfg, {"patch_size": patch}), model)
    cohort = write_cohort(Path(args.work) / f"host-cohort-{'x'.join(map(str, shape))}-{n}", n, shape)
    if args.int8:  # calibrated on the first windows the runtime feeds the fp32 model (bench_runtime's)
        from bench_runtime import brain, int8_synth

        from export.runtime import OnnxSynthesizer

        model = Path(int8_synth(OnnxSynthesizer(model, provider="cpu"), brain(shape), tmp, report, "cpu", procs).path)
    parts = split(cohort, procs, tmp / "parts")
    print(f"{n} subjects {shape}, patch {patch}, {procs} cores, provider {args.provider}, "
          f"{'int8' if args.int8 else 'fp32'}", flush=True)

    times: dict[str, list[float]] = {"one session, all cores": [], "one session per core": []}
    for r in range(repeats):
        t = time.perf_counter()
        rss = finish(start(model, cohort, tmp / f"out-all-{r}", procs, args.provider))
        times["one session, all cores"].append(report.figure(
            f"one session x {procs} threads, {n} subjects (round {r + 1})", time.perf_counter() - t, "s"))
        report.figure(f"peak RSS, one process of {procs} threads (round {r + 1})", rss, "MB")
        t = time.perf_counter()
        running = [start(model, part, tmp / f"out-part-{r}-{i}", 1, args.provider) for i, part in enumerate(parts)]
        rss = [finish(p) for p in running]
        times["one session per core"].append(report.figure(
            f"{procs} sessions x 1 thread, {n} subjects (round {r + 1})", time.perf_counter() - t, "s"))
        report.figure(f"peak RSS, max of the {procs} processes of 1 thread (round {r + 1})", max(rss), "MB")
    report.ratio_runs("one session per core / one session with all cores (subjects/s)",
                      times["one session, all cores"], times["one session per core"], goal=None,
                      note=f"{procs} cores; > 1: a session per core is faster")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
