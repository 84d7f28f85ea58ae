"""``cclray evaluate``: sliding-window evaluation of runs on a store split (``--store S --run RUN``), or
scoring folders of synthesized NIfTIs against a BraTS folder (``--pred DIR --truth DIR``)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--store", default=None, help="Zarr store written by `cclray prep` (with --run)")
    parser.add_argument("--run", default=None,
                        help="run directory (or checkpoint, or a `cclray regressor` folder) to evaluate on --store")
    parser.add_argument("--compare", nargs="+", default=[], metavar="RUN",
                        help="more runs evaluated beside it (e.g. the baseline)")
    parser.add_argument("--pred", nargs="+", default=None, metavar="DIR",
                        help="instead of --store/--run: folder(s) of synthesized NIfTIs (cclray synthesize's "
                             "<id>_t1-synth.nii.gz, or BraSyn's <id>-t1n-inference.nii.gz), scored against --truth")
    parser.add_argument("--truth", default=None, metavar="DIR",
                        help="BraTS 2021/2023 folder with the acquired contrasts (and seg) of the --pred subjects")
    parser.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                        help="one name per run, --run first then each --compare, or per --pred folder "
                             "(default: directory names)")
    parser.add_argument("--split", default="test", help="store split to evaluate (default: test)")
    parser.add_argument("--out", required=True, help="output folder for metrics.csv, summary.md/.json, figure.png")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N subjects of the split")
    parser.add_argument("--figure-subject", default=None,
                        help="subject shown in figure.png (default: the largest tumour in the split)")
    parser.add_argument("--save-nifti", action="store_true",
                        help="also write each synthesis (z-scored, float32) on the source grid under OUT/nifti/")


def _print(result: dict) -> None:
    print(open(result["paths"]["summary"]).read())
    for name, path in result["paths"].items():
        print(f"{name}: {path}")


def run(args) -> int:
    from data_prep.config import ConfigError

    if args.pred is not None or args.truth is not None:
        if args.pred is None or args.truth is None or args.store or args.run:
            raise ConfigError("score NIfTI folders with --pred DIR [DIR ...] --truth DIR (without --store/--run), "
                              "or runs on a store with --store S --run RUN")
        from cclray.evaluation.folders import evaluate_folders

        result = evaluate_folders(args.pred, args.truth, args.out, args.labels)
        _print(result)
        if result["unscored_truth_subjects"]:
            print(f"({result['unscored_truth_subjects']} truth subject(s) had no prediction and were not scored)")
        return 0
    if not args.store or not args.run:
        raise ConfigError("pass --store S --run RUN (runs on a store split) or --pred DIR --truth DIR (NIfTI folders)")
    import torch
    from tqdm import tqdm

    from cclray.evaluation import evaluate_run_dirs
    from data_prep.store import Store

    runs = [args.run, *args.compare]
    if args.labels is not None and len(args.labels) != len(runs):
        raise ConfigError(f"{len(args.labels)} --labels for {len(runs)} run(s); give one per run "
                          f"(--run first, then each --compare)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    subjects = Store(args.store).subjects(args.split)
    if args.limit is not None:
        subjects = subjects[:args.limit]
    bar = tqdm(total=len(subjects) * len(runs), unit="pred", desc=f"evaluate {args.split}")

    def on_subject(label: str, sid: str, seconds: float) -> None:
        bar.set_postfix_str(f"{label} {sid} {seconds:.1f}s")
        bar.update(1)

    try:
        result = evaluate_run_dirs(args.store, runs, args.labels, args.split, args.out, device=device,
                                   overlap=args.overlap, batch=args.batch, save_nifti=args.save_nifti,
                                   subjects=subjects, figure_subject=args.figure_subject,
                                   on_subject=on_subject)
    finally:
        bar.close()
    _print(result)
    return 0
