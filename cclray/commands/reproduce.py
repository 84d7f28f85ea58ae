"""``cclray reproduce``: the paper's table over seeds (see :mod:`cclray.reproduce`)."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--out", default="reproduction", help="output folder (default reproduction); a rerun continues")
    p.add_argument("--preset", default="cpu", choices=["cpu", "cpu-quick", "paper"],
                   help="cpu: 2 mm, 32³ patches, 15-26 min a seed on 2 cores; cpu-quick: a tenth of its pretraining, "
                        "~30 min; paper: the paper's sizes (GPU cluster)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the preset's)")
    p.add_argument("--gpus", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--pretrain-epochs", type=int, help="override the preset's pretrain epochs")
    p.add_argument("--finetune-epochs", type=int, help="override the preset's finetune epochs")
    p.add_argument("--steps", type=int, dest="steps_per_epoch", help="override the preset's steps per epoch")


def run(args) -> int:
    import logging

    from cclray.reproduce import run_reproduction

    logging.basicConfig(level=logging.WARNING)
    overrides = {k: getattr(args, k) for k in ("workers", "pretrain_epochs", "finetune_epochs", "steps_per_epoch")
                 if getattr(args, k) is not None}
    if args.gpus:
        overrides["use_gpu"] = True
    run_reproduction(args.out, args.preset, args.seeds, overrides)
    return 0
