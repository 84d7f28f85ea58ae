"""``cclray regressor --store S --out DIR``: fit the floor (:mod:`cclray.evaluation.regressor`) on a split;
``cclray evaluate --store S --run DIR`` then scores it like any run."""
from __future__ import annotations


def add_arguments(parser) -> None:
    from cclray.evaluation.regressor import RegressorSpec

    d = RegressorSpec()
    parser.add_argument("--store", required=True, help="Zarr store written by `cclray prep`")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for regressor.joblib and regressor.json")
    parser.add_argument("--split", default=d.split, help=f"split to fit on (default {d.split})")
    parser.add_argument("--max-voxels", type=int, default=d.max_voxels,
                        help=f"brain voxels sampled for fitting, spread over the subjects (default {d.max_voxels})")
    parser.add_argument("--seed", type=int, default=d.seed, help="sampling and boosting seed (default 0)")


def run(args) -> int:
    from pathlib import Path

    from cclray.evaluation.regressor import META_FILE, RegressorSpec, fit_regressor
    from data_prep.config import ConfigError
    from data_prep.store import Store

    if args.max_voxels < 1000:
        raise ConfigError(f"--max-voxels {args.max_voxels}: use at least 1000 voxels")
    if (Path(args.out) / META_FILE).exists():
        raise ConfigError(f"--out {args.out} already holds a regressor; pass another folder or delete it")
    if not Store(args.store).subjects(args.split):
        raise ConfigError(f"split {args.split!r} of {args.store} is empty; pass --split naming a split with subjects")
    reg, info = fit_regressor(args.store, RegressorSpec(split=args.split, max_voxels=args.max_voxels, seed=args.seed))
    reg.save(args.out, {"store": args.store, **info})
    print(f"regressor fitted on {info['voxels']} voxels of {info['subjects']} subject(s) in {info['seconds']} s "
          f"(train R² {', '.join(f'{r:.3f}' for r in info['train_r2'])}) -> {args.out}")
    print(f"score it: cclray evaluate --store {args.store} --run {args.out} --out EVAL_DIR")
    return 0
