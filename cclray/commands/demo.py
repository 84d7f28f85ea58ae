"""``cclray demo``: the whole system on the phantom cohort (see :mod:`cclray.demo`)."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out); a rerun keeps finished steps")
    p.add_argument("--preset", default="cpu-small", choices=["cpu-small", "paper", "smoke"],
                   help="cpu-small: about 6 min on 2 CPU cores (2 mm, 24 subjects, 1000/200 steps); paper: the paper's "
                        "sizes for a GPU cluster; smoke: a one-minute plumbing check")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the preset's)")
    p.add_argument("--gpus", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--n", type=int, dest="n_subjects", help="phantom subjects (default: the preset's)")


def run(args) -> int:
    from cclray.demo import run_demo

    overrides = {k: v for k, v in {"workers": args.workers, "n_subjects": args.n_subjects}.items() if v is not None}
    if args.gpus:
        overrides["use_gpu"] = True
    run_demo(args.out, args.preset, overrides)
    return 0
