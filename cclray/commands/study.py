"""``cclray study``: does CCL pretraining help? Every arm at finetune sizes n, seeds and folds, with paired CIs
(see :mod:`cclray.study`)."""
from __future__ import annotations


def add_arguments(p) -> None:
    from cclray.study_plan import PRESETS

    p.add_argument("--out", default="study", help="output folder (default study); a rerun continues")
    p.add_argument("--preset", default="pilot", choices=sorted(PRESETS),
                   help="phantom: the full phantom study (3 seeds, n = 2, 5, 10, every arm); pilot: a tenth of its "
                        "steps and one seed; real: 3 folds on a small real cohort (--src); smoke: seconds")
    p.add_argument("--src", help="a BraTS NIfTI folder (2021 or 2023+ naming) to study instead of the phantom")
    p.add_argument("--test-src", help="a held-out BraTS folder: every model is evaluated on all its subjects")
    p.add_argument("--external-pretrain", help="the CCL-external arm's pretrain run ({seed} = the seed), e.g. "
                                               "another study's PHANTOM_STUDY/f0/seed{seed}/pretrain")
    p.add_argument("--mix-store", metavar="STORE[#SPLIT]",
                   help="the CCL-mixed arm's other store, pretrained on together with each fold's pretrain subjects "
                        "(SPLIT default s.f0.pretrain: e.g. PHANTOM_STUDY/store.zarr, whose fold-0 pretrain "
                        "subjects CCL-external's pretraining used)")
    p.add_argument("--subjects", type=int, dest="n_subjects", help="phantom cohort size (default: the preset's)")
    p.add_argument("--splits", help="subject counts NAME=COUNT,... of pretrain, finetune, val, test (default: the "
                                    "preset's, e.g. pretrain=80,finetune=10,val=5,test=10)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the preset's)")
    p.add_argument("--sizes", type=int, nargs="+", help="finetune sizes n (default: the preset's)")
    p.add_argument("--arms", nargs="+", help="arms to run (default: the preset's); see `cclray study --dry-run`")
    p.add_argument("--phantom-version", type=int, choices=[1, 2], help="phantom version (default 2)")
    p.add_argument("--spacing", type=float, help="mm of the store (default: the preset's, 2)")
    p.add_argument("--pretrain-steps", type=int, help="override the preset's pretraining steps")
    p.add_argument("--finetune-steps", type=int, help="override the preset's finetuning steps")
    p.add_argument("--finetune-schedule", choices=["plateau", "cosine", "constant"],
                   help="finetuning's learning-rate schedule, every arm alike (default plateau, the declared protocol; the stage default is cosine)")
    p.add_argument("--augment", action="store_true", default=None,
                   help="flip, rotate and scale the finetuning patches, every arm alike (PatchConfig.augment)")
    p.add_argument("--local", action="store_true",
                   help="train in this machine's processes without Ray (world size 1); with --parallel N jobs at once")
    p.add_argument("--parallel", type=int, default=1, help="jobs at once with --local (default 1)")
    p.add_argument("--threads", type=int,
                   help="torch threads per job with --local (default: this machine's cores // --parallel); on CPU "
                        "the count changes the numbers' last digits, so pin it to rerun a recorded study bit for bit "
                        "on the same machine (results.json's torch_threads says what it used)")
    p.add_argument("--device", default="auto", help="--local: cpu, cuda or auto (cuda when there is a GPU)")
    p.add_argument("--workers", type=int, help="Ray Train workers per job (Ray backend)")
    p.add_argument("--reuse", nargs="+", default=(), metavar="STUDY",
                   help="other study folders to share finished work with: their store when the cohort is the same, "
                        "and each pretraining or finetuning whose recorded config is one of this study's jobs "
                        "(linked, not trained again; e.g. a longer finetuning beside a finished study reuses its "
                        "pretrainings and its Baseline-matched)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and exit")


def run(args) -> int:
    import logging

    from cclray.study import run_study
    from cclray.study_plan import PRESETS

    logging.basicConfig(level=logging.WARNING)
    over = {k: getattr(args, a) for k, a in (("n_subjects", "n_subjects"), ("seeds", "seeds"), ("finetune_sizes", "sizes"), ("arms", "arms"),
                                             ("phantom_version", "phantom_version"), ("spacing", "spacing"),
                                             ("pretrain_steps", "pretrain_steps"),
                                             ("finetune_steps", "finetune_steps"), ("workers", "workers"),
                                             ("external_pretrain", "external_pretrain"),
                                             ("finetune_schedule", "finetune_schedule"), ("augment", "augment"))
            if getattr(args, a) is not None}
    if args.mix_store:
        from pathlib import Path

        store, sep, split = args.mix_store.rpartition("#") if "#" in args.mix_store else (args.mix_store, "", "")
        over["mix_store"] = store if "://" in store else str(Path(store).expanduser().resolve())
        if split:
            over["mix_split"] = split
    if args.splits:
        from data_prep.splits import parse_splits

        over["splits"] = parse_splits(args.splits)
    for k in ("seeds", "finetune_sizes", "arms"):
        if k in over:
            over[k] = tuple(over[k])
    cfg = PRESETS[args.preset].replace(**over)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    run_study(args.out, cfg, src=args.src, test_src=args.test_src, backend="local" if args.local else "ray",
              device=device, parallel=args.parallel, dry_run=args.dry_run, threads=args.threads,
              reuse=tuple(args.reuse))
    return 0
