"""``cclray phantom``: write a phantom BraTS-layout NIfTI cohort (no download needed)."""
from __future__ import annotations

import argparse

from data_prep.phantom import PHANTOM_VERSION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the subject folders into")
    parser.add_argument("--n", type=int, default=10, help="number of subjects (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed; subject i is the same whatever --n")
    parser.add_argument("--naming", choices=["brats2021", "brats2023"], default="brats2021",
                        help="file naming: BraTS2021_00000_t1ce.nii.gz or BraTS-GLI-00000-000-t1c.nii.gz")
    parser.add_argument("--spacing", type=float, default=1.0,
                        help="voxel size in mm: 1.0 gives 240x240x155 (BraTS), 2.0 gives 120x120x78")
    parser.add_argument("--workers", type=int, default=1, help="processes generating subjects in parallel")
    parser.add_argument("--phantom-version", type=int, default=PHANTOM_VERSION, dest="version",
                        help=f"phantom version (default {PHANTOM_VERSION}; 1 rebuilds the first cohort bit for bit, "
                             "see docs/PHANTOM.md)")


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from data_prep.phantom import grid, write_cohort

    shape, _ = grid(args.spacing)
    start = time.perf_counter()
    with tqdm(total=args.n, unit="subject", desc="phantom") as bar:
        paths = write_cohort(args.out, args.n, seed=args.seed, naming=args.naming, spacing=args.spacing,
                             workers=args.workers, progress=lambda _path: bar.update(1), version=args.version)
    seconds = time.perf_counter() - start
    print(f"{len(paths)} phantom subject(s) ({'x'.join(map(str, shape))} at {args.spacing:g} mm, "
          f"{args.naming} naming, phantom v{args.version}) in {args.out} [{seconds:.1f} s]")
    return 0
