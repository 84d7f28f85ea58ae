"""What every benchmark shares: sizes and flags, timing, machine description, the result record.

A benchmark is a program: ``python benchmarks/bench_X.py [--smoke | --quick] [--json OUT]``. It prints
its figures as it goes, each with the load average beside it (the machine is shared: absolute numbers
are inflated; ratios measured back to back in one run are the point), and ends with one
``RESULT {json}`` line: ``{"bench", "size", "machine", "figures": [...], "ratios": [...]}`` where a
ratio is ``{"name", "value", "min", "median", "max", "n", "runs", "goal", "met"}``: every ratio is taken
over ``n`` repetitions measured back to back (``--repeats``; default 3, 2 with ``--smoke``), ``value`` is
their median, and ``met`` (None when the goal is "documented") is judged on the median.
``run_all.py`` collects those records.

Repetitions: :func:`rounds` runs the variants a benchmark compares round robin (A B C, A B C, ...), so a
load drift hits every side alike, and :meth:`Report.ratio` / :meth:`Report.ratio_runs` turn the
per-round figures into one ratio with its min / median / max.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cclray.host import cpu_model  # noqa: E402  (after the path: a checkout need not be installed)

SIZES = ("smoke", "quick", "full")
DEFAULT_WORK = Path(os.environ.get("CCLRAY_BENCH_WORK", "/tmp/cclray_bench"))


# ------------------------------------------------------------------------------------ flags
def parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared flags: --smoke/--quick (size), --json, --work, --device."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_const", dest="size", const="smoke",
                      help="tiniest sizes (seconds; for the smoke test)")
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      help="reduced sizes (run_all --quick)")
    ap.set_defaults(size="full")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the result record to OUT")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder, reused across runs (default %(default)s)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: the GPU variant (skips cleanly when CUDA is unavailable)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="back-to-back repetitions behind every ratio (default 3; 2 with --smoke); "
                         "each ratio is reported as min / median / max over them")
    return ap


def repeats(args: argparse.Namespace) -> int:
    """Repetitions behind every ratio: ``--repeats`` or the size's default (smoke 2, quick 3, full 3)."""
    n = args.repeats or pick(args.size, 2, 3, 3)
    if n < 1:
        raise SystemExit(f"--repeats {n}: need at least 1")
    return n


def pick(size: str, smoke, quick, full):
    """The value for this size."""
    return {"smoke": smoke, "quick": quick, "full": full}[size]


# ------------------------------------------------------------------------------------ machine
def loadavg() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _has_dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return bool(version(name))
    except PackageNotFoundError:
        return False


def machine() -> dict:
    """Cores, CPU model, memory, library versions, GPU (if any), load average now."""
    info = {"cores": cores(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": loadavg()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("numpy", "torch", "onnxruntime", "ray", "zarr", "tensorstore", "nibabel"):
        try:
            dist = mod
            if mod == "onnxruntime":  # the GPU and OpenVINO builds install the same module
                dist = next((d for d in ("onnxruntime-gpu", "onnxruntime-openvino") if _has_dist(d)), mod)
            info[mod] = version(dist) + ("" if dist == mod else f" ({dist})")
        except PackageNotFoundError:  # not installed: say so rather than fail the benchmark
            info[mod] = None
    if info.get("torch"):
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rounds(variants: dict[str, Callable[[], object]], repeat: int, warmup: int = 0,
           report: "Report | None" = None, unit: str = "s") -> dict[str, list[float]]:
    """Run every variant ``repeat`` times round robin (A B C, A B C, ...) so load drifts hit all alike;
    ``warmup`` untimed rounds first. Returns ``{name: [one figure per round]}``.

    A variant's figure for a round is what it returns: a number, or a dict ``{name: number}`` (several
    figures from one call, e.g. every method of a block of interleaved reads); ``None``: its wall seconds.
    With ``report``, each figure is also recorded, tagged with its round (``unit`` for the wall seconds
    and plain numbers).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out: dict[str, list[float]] = {}
    for r in range(repeat):
        for name, fn in variants.items():
            t = time.perf_counter()
            got = fn()
            dt = time.perf_counter() - t
            figures = got if isinstance(got, dict) else {name: dt if got is None else got}
            for key, value in figures.items():
                out.setdefault(key, []).append(float(value))
                if report is not None:
                    report.figure(f"{key} (round {r + 1})", value, unit)
    return out


def median(values) -> float:
    return float(statistics.median(values)) if len(values) else float("nan")


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def evict(paths) -> None:
    """Drop files (folders: every file under them) from the page cache: ``posix_fadvise(DONTNEED)``
    needs no privileges and makes the next read come from disk (a cold read)."""
    for p in paths:
        p = Path(p)
        for f in (p.rglob("*") if p.is_dir() else [p]):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)  # dirty pages cannot be dropped
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


# ------------------------------------------------------------------------------------ the record
class Report:
    """Figures and ratios of one benchmark run; ``finish()`` prints them and the ``RESULT`` line."""

    def __init__(self, bench: str, args: argparse.Namespace):
        self.bench, self.args = bench, args
        self.figures: list[dict] = []
        self.ratios: list[dict] = []
        self.notes: list[str] = []
        self.machine = machine()
        print(f"{bench} ({args.size}) on {self.machine['cores']} cores, {self.machine['cpu']}; "
              f"torch {self.machine.get('torch')}, onnxruntime {self.machine.get('onnxruntime')}; "
              f"load {self.machine['loadavg']}", flush=True)

    def figure(self, name: str, value: float, unit: str, **extra) -> float:
        """Record (and print) one measured figure, with the load average now."""
        row = {"name": name, "value": float(value), "unit": unit, "load": loadavg(), **extra}
        self.figures.append(row)
        more = "".join(f" {k}={v}" for k, v in extra.items())
        print(f"  {name:48s} {value:12.4g} {unit:10s} load {row['load']}{more}", flush=True)
        return float(value)

    def ratio(self, name: str, runs, goal: float | None = None, higher_is_better: bool = True,
              note: str = "") -> float:
        """Record a ratio against what a user would otherwise do, one value per back-to-back repetition
        (``runs``): min / median / max and the count go into the record, the median is its ``value`` and
        what the goal is judged on, so one run's noise cannot pass for a result. ``goal`` None =
        documented only."""
        runs = [float(v) for v in runs]  # a list: one value per repetition, in round order
        if not runs:
            raise ValueError(f"ratio {name!r}: no repetitions")
        value, lo, hi = float(statistics.median(runs)), min(runs), max(runs)
        met = None
        if goal is not None and math.isfinite(value):
            met = value >= goal if higher_is_better else value <= goal
        goal_text = "documented" if goal is None else f"{'>=' if higher_is_better else '<='} {goal:g}"
        self.ratios.append({"name": name, "value": value, "min": lo, "median": value, "max": hi,
                            "n": len(runs), "runs": runs, "goal": goal_text, "met": met, "note": note,
                            "load": loadavg()})
        verdict = {True: "MET", False: "MISSED", None: ""}[met]
        print(f"RATIO {name}: {lo:.3g} / {value:.3g} / {hi:.3g} (min / median / max of {len(runs)}) "
              f"(goal {goal_text}) {verdict} {note}".rstrip(), flush=True)
        return value

    def ratio_runs(self, name: str, numerators, denominators, goal: float | None = None,
                   higher_is_better: bool = True, note: str = "") -> float:
        """:meth:`ratio` of ``numerators[i] / denominators[i]``, each pair taken in the same round."""
        if len(numerators) != len(denominators):
            raise ValueError(f"ratio {name!r}: {len(numerators)} numerators, {len(denominators)} denominators")
        return self.ratio(name, [a / b for a, b in zip(numerators, denominators)], goal, higher_is_better, note)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def record(self) -> dict:
        return {"bench": self.bench, "size": self.args.size, "device": self.args.device,
                "machine": self.machine, "load_end": loadavg(), "figures": self.figures,
                "ratios": self.ratios, "notes": self.notes}

    def finish(self) -> int:
        rec = self.record()
        if self.args.json:
            Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.json).write_text(json.dumps(rec, indent=1))
        print("RESULT " + json.dumps(rec), flush=True)
        return 0


def skip_without_cuda(report: Report) -> bool:
    """True (and a note) when ``--device cuda`` was asked for but CUDA is unavailable."""
    if report.args.device == "cuda" and not cuda_available():
        report.note("skipped: --device cuda but torch sees no CUDA device (not measured: no GPU)")
        return True
    return False
