"""Prep throughput: subjects/min of ``cclray prep`` (mask, crop, normalize, default constraint map,
Zarr write), 1 vs 2 worker processes, on phantom subjects at 1 mm (240x240x155).

    python benchmarks/bench_prep.py [--smoke | --quick]

The command is run as a user runs it (``python -m cclray.cli prep SRC --out STORE --workers N``),
into a fresh store each time, so interpreter start, imports and the process pool are included.
The NIfTI cohort is made once beforehand (untimed) and reused. Goal: >= 6 subjects/min with 2 workers.

Repetitions (``--repeats``, default 3): 1 worker then 2 workers, round robin; each ratio is min / median /
max over the rounds.

- ``--quick``: 2 phantom subjects at 1 mm (the 2 the other benchmarks' store is made of), so each of the 2
  workers preps one; interpreter start-up weighs more than with 8 subjects, so the rate is a low estimate.
- full (no flag): 8 phantom subjects. ``--smoke``: 2 synthetic 96x96x64 subjects.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--subjects", type=int, default=None)
    args = ap.parse_args()
    report = _common.Report("prep", args)
    work = Path(args.work)
    source, spacing = _common.pick(args.size, ("synthetic", 1.0), ("phantom", 1.0), ("phantom", 1.0))
    n = args.subjects or _common.pick(args.size, 2, 2, 8)
    src = _data.subset(_data.cohort(work, n, source, spacing), n, work / f"prep-bench-src-{source}-{n}")

    def prep(workers: int):
        def run() -> float:
            out = work / f"prep-bench-w{workers}.zarr"
            _common.fresh_dir(out)
            cmd = [sys.executable, "-m", "cclray.cli", "prep", str(src), "--out", str(out), "--workers",
                   str(workers), "--splits", f"pretrain={n}"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_common.ROOT)
            dt = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            report.figure(f"cclray prep, {workers} worker(s), {n} subjects", dt, "s")
            return 60 * n / dt
        return run

    rates = _common.rounds({f"throughput, {w} worker(s)": prep(w) for w in (1, 2)}, _common.repeats(args))
    for name, values in rates.items():
        report.figure(name, _common.median(values), "subjects/min", runs=[round(v, 2) for v in values])
    one, two = rates["throughput, 1 worker(s)"], rates["throughput, 2 worker(s)"]
    report.ratio("prep subjects/min with 2 workers", two, goal=6,
                 note="" if source == "phantom" else f"({source} smoke volumes, not 1 mm)")
    report.ratio_runs("prep speed-up 2 workers / 1 worker", two, one)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
