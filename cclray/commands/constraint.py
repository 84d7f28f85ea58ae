"""``cclray constraint STORE``: add a constraint-map setting to a store, or draw one as PNG.

    cclray constraint STORE --contrasts t1gd,t1w --k 20 [--seed S] [--workers N]
    cclray constraint STORE --png OUT.png [--subject SID] [--name NAME] [--axis 2] [--slice I]
"""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from data_prep.constraint import DEFAULT_SPEC

    parser.add_argument("store", metavar="STORE", help="a store written by `cclray prep` (path or fsspec URL)")
    parser.add_argument("--contrasts", default=None, metavar="LIST",
                        help="contrasts of the setting: comma list of t1w,t1gd,t2w,flair (aliases t1, t1ce, t2, "
                             "t2f, ...) or 'all', 't1-only', 't2-only'; default 'all' when adding")
    parser.add_argument("--k", type=int, default=DEFAULT_SPEC.k, help="clusters (default %(default)s; 20-30 work)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPEC.seed,
                        help="k-means / subsample seed (default %(default)s)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes, one subject each (default %(default)s)")
    parser.add_argument("--png", default=None, metavar="OUT.png",
                        help="draw one slice (four contrasts beside the map) instead of adding a setting; "
                             "with --contrasts, add that setting first and draw it")
    parser.add_argument("--subject", default=None, metavar="SID", help="subject to draw (default: the first)")
    parser.add_argument("--name", default=None,
                        help="setting to draw, e.g. t1w+t1gd+t2w+flair-k20 (default: the first the store records)")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis (default %(default)s)")
    parser.add_argument("--slice", type=int, default=None, dest="slice_index",
                        help="slice index (default: most tumour if seg exists, else mid-brain)")


def _add(args, spec) -> str:
    from tqdm import tqdm

    from data_prep.constraint import add_constraint
    from data_prep.store import Store

    total = len(Store(args.store).subjects())
    with tqdm(total=total, unit="subject", desc=spec.name, disable=total == 0) as bar:
        counts = {"computed": 0, "present": 0}

        def progress(sid: str, computed: bool) -> None:
            counts["computed" if computed else "present"] += 1
            bar.update(1)

        name = add_constraint(args.store, spec, workers=args.workers, progress=progress)
    print(f"{name}: computed for {counts['computed']} subject(s), {counts['present']} already had it; "
          f"recorded in {args.store}")
    print(_r2_line(args.store, name))
    return name


R2_SUBJECTS = 8  # subjects the R² line reads (whole volumes: a few seconds at 1 mm)


def _r2_line(store_url: str, name: str) -> str:
    """How much of T1w/T2w variance inside the brain the labels explain (docs/METHOD.md), over the first
    subjects of the store."""
    import statistics

    from data_prep.constraint import store_label_r2
    from data_prep.store import Store

    store = Store(store_url)
    sids = store.subjects()[:R2_SUBJECTS]
    r2 = store_label_r2(store, name, sids)
    parts = [f"{c[:2].upper()}w {statistics.fmean(v):.3f} (min {min(v):.3f})" for c, v in r2.items() if v]
    return (f"{name}: R² of the contrast explained by the cluster labels, inside the brain, over {len(sids)} "
            f"subject(s): " + ", ".join(parts))


def run(args: argparse.Namespace) -> int:
    from data_prep.constraint import ConstraintSpec
    from data_prep.store import Store, StoreError

    name = args.name
    if args.png is None or args.contrasts is not None:
        spec = ConstraintSpec.parse(f"{args.contrasts or 'all'}:k={args.k},seed={args.seed}")
        name = _add(args, spec)
    if args.png is None:
        return 0
    from data_prep.figures import constraint_figure

    store = Store(args.store)
    subjects = store.subjects()
    if not subjects:
        raise StoreError(f"{args.store} holds no complete subject; run `cclray prep` first")
    sid = args.subject or subjects[0]
    recorded = list(store.attrs.get("constraints") or {})
    if name is None:
        if not recorded:
            raise StoreError(f"{args.store} records no constraint setting; add one with "
                             f"`cclray constraint {args.store} --contrasts all --k 20`")
        name = recorded[0]
    elif name not in recorded and not store.has_array(sid, f"constraint/{name}"):
        raise StoreError(f"no constraint {name!r} in {args.store}; it has {recorded}: pick one with --name")
    out = constraint_figure(args.store, sid, name, args.png, axis=args.axis, slice_index=args.slice_index)
    print(f"wrote {out} ({sid}, {name})")
    return 0
