"""``cclray study-pool``: one report (tables, figure, results.json) of several study folders' finished evaluations,
e.g. seeds run in separate folders (see :mod:`cclray.study_pool`)."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("folders", nargs="+", metavar="STUDY_DIR",
                   help="folders of `cclray study` runs with the same cohort, splits and recipe (seeds, finetune sizes "
                        "and arms may differ; a seed at a finetune size may come from one folder only)")
    p.add_argument("--out", required=True, help="folder for the pooled table.md, study.png, results.json and pool.json")


def run(args) -> int:
    from cclray.study_pool import pool_studies

    pool_studies(args.folders, args.out)
    return 0
