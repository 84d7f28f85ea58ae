"""Run every benchmark (each in its own process) and write their figures as JSON and markdown.

    python benchmarks/run_all.py --quick [--out DIR] [--work DIR] [--only patch_reads runtime ...] [--repeats N]
    python benchmarks/run_all.py --smoke          # tiniest sizes: the smoke test

Writes ``DIR/results.json`` (every benchmark's record: machine, figures, ratios, notes, load
averages) and ``DIR/results.md`` (the ratio table: min / median / max over the repetitions, goal
judged on the median, met). Every ratio is taken over ``--repeats`` back-to-back repetitions (default 3;
2 with --smoke). A benchmark that fails or times out is recorded with its error and the run goes on; the
exit code is 1 if any failed. Each benchmark's docstring says what its --quick measures.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BENCHES = ("patch_reads", "loader", "runtime", "ray", "prep", "train_step", "s3", "cohort")
TIMEOUT_S = {"smoke": 300, "quick": 900, "full": 3600}


def run_one(name: str, args) -> dict:
    out = Path(args.out) / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).parent / f"bench_{name}.py"), f"--{args.size}", "--json", str(out),
           "--work", args.work, "--device", args.device] + (["--repeats", str(args.repeats)] if args.repeats else [])
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t, cpu = time.perf_counter(), _children_cpu_s()
    try:
        proc = subprocess.run(cmd, cwd=_common.ROOT, timeout=TIMEOUT_S[args.size], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    wall, cpu = time.perf_counter() - t, _children_cpu_s() - cpu
    (Path(args.out) / f"{name}.log").write_text(log)
    print("\n".join(line for line in log.splitlines() if not line.startswith("RESULT ")), flush=True)
    if rc == 0 and out.is_file():
        rec = json.loads(out.read_text())
    else:
        rec = {"bench": name, "error": f"exit {rc}; see {out.with_suffix('.log')}", "ratios": [], "figures": []}
    rec["wall_s"], rec["cpu_s"] = round(wall, 1), round(cpu, 1)
    return rec


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (and theirs, as far as waited for): less
    sensitive to other processes' load than wall time; Ray's workers are only partly counted."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def markdown(records: list[dict], argv: list[str]) -> str:
    m = _common.machine()
    lines = [f"command: `python benchmarks/run_all.py {' '.join(argv)}`", "",
             f"machine: {m['cores']} cores, {m['cpu']}, {m.get('memory_gb')} GB; Python {m['python']}, "
             f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, ray {m.get('ray')}, "
             f"tensorstore {m.get('tensorstore')}; CUDA: {m.get('cuda')}", "",
             "Each ratio over n back-to-back repetitions: min / median / max; the goal is judged on the median.", "",
             "| benchmark | ratio | min | median | max | n | goal | met | load (1/5/15 min) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        if rec.get("error"):
            lines.append(f"| {rec['bench']} | FAILED | | | | | | | | {rec['error']} |")
        for r in rec.get("ratios", []):
            met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
            lines.append(f"| {rec['bench']} | {r['name']} | {r['min']:.3g} | **{r['median']:.3g}** | {r['max']:.3g} | "
                         f"{r['n']} | {r['goal']} | {met} | {' / '.join(map(str, r['load']))} | {r.get('note', '')} |")
        for n in rec.get("notes", []):
            lines.append(f"| {rec['bench']} | note | | | | | | | | {n} |")
    lines += ["", "| benchmark | figure | value | unit | load (1 min) |", "|---|---|---|---|---|"]
    for rec in records:
        for f in rec.get("figures", []):
            lines.append(f"| {rec['bench']} | {f['name']} | {f['value']:.4g} | {f['unit']} | {f['load'][0]} |")
        lines.append(f"| {rec['bench']} | benchmark wall time | {rec['wall_s']} | s | |")
        lines.append(f"| {rec['bench']} | benchmark CPU time (user + sys, child processes) | {rec.get('cpu_s')} | s | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--out", default=str(_common.DEFAULT_WORK / "results"), help="where results.{json,md} go")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    records = [run_one(name, args) for name in args.only]
    total = time.perf_counter() - t
    result = {"size": args.size, "argv": sys.argv[1:], "wall_s": round(total, 1), "machine": _common.machine(),
              "benches": records}
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=1))
    (Path(args.out) / "results.md").write_text(markdown(records, sys.argv[1:]))
    print("\n".join(f"  {r['bench']:12s} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} s CPU" for r in records))
    print(f"\nall benchmarks: {total:.0f} s; wrote {args.out}/results.json and results.md")
    return 1 if any(r.get("error") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
