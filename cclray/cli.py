"""``cclray`` console entry point: a thin argparse front over one module per subcommand.

Each ``cclray/commands/<name>.py`` defines ``add_arguments(parser)`` and ``run(args) -> int`` and
imports heavy modules (torch, ray, zarr) only inside ``run``; the one-line help of every command is
:data:`COMMANDS`, so ``cclray --help`` imports no command module and is instant.

One error contract: a command raises; it never prints its own errors. An error a person fixes
(:class:`data_prep.errors.UserError`: a bad flag, config key, file, folder, store, checkpoint or model)
is printed here as ``cclray <command>: error: <message>`` on stderr, exit status 2 (argparse's own
usage errors look and exit the same); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help (kept here so `--help` imports no command module)
COMMANDS: dict[str, str] = {
    "phantom": "write a phantom BraTS-layout NIfTI cohort (no download)",
    "prep": "ingest a BraTS NIfTI folder into a Zarr v3 store (masks, normalization, constraint maps, splits)",
    "constraint": "add a constraint-map setting to a store, or draw one as PNG",
    "pretrain": "stage 1: CCL pretraining (Ray Train)",
    "finetune": "stage 2: T1w+T2w synthesis, from a pretrain run or from scratch (Ray Train)",
    "regressor": "the floor: fit a voxelwise gradient-boosted regressor (inputs + blurs -> T1w, T2w) on a split",
    "evaluate": "sliding-window evaluation of runs on a split: CSV, table, figure",
    "export": "export a synthesizer to ONNX with its model card",
    "synthesize": "run an ONNX synthesizer on NIfTI inputs (no torch needed)",
    "tune": "Ray Tune search over constraint and loss settings",
    "demo": "the end-to-end demo on the phantom cohort",
    "reproduce": "the paper's table: floor, scratch, CCL, ceiling over seeds on a phantom cohort, with CIs",
    "study": "does CCL pretraining help? every arm at finetune sizes n over seeds/folds, phantom or --src, with CIs",
    "study-pool": "one report of several study folders (e.g. seeds run apart): tables, figure, paired CIs",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from cclray import __version__

    parser = argparse.ArgumentParser(prog="cclray", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cclray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything: every library's INFO lines, Ray's worker logs, the project's debug lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    # only the chosen command's module is imported (all of them when none is chosen, e.g. for docs)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_command=name)
        if name == wanted or (wanted is None and not argv):
            _module(name).add_arguments(p)
    return parser


# commands whose --out is a local path (the others also take s3:// and other fsspec URLs)
LOCAL_OUT = ("phantom", "regressor", "evaluate", "export", "tune", "demo", "reproduce", "study", "study-pool")


def check_out(command: str, out) -> str | None:
    """The error message for an unusable ``--out`` (a URL that lost a slash, or a URL where the command
    writes local files), else None: ``Path("s3://b/x")`` would silently make a local folder ``s3:``."""
    from data_prep.objstore import StorageURLError, check_location, is_remote

    try:
        check_location(out)
    except StorageURLError as e:
        return str(e)
    if command in LOCAL_OUT and is_remote(out):
        return (f"--out {out}: `cclray {command}` writes to a local path; pass one and copy the result to "
                f"object storage afterwards (prep, pretrain, finetune and synthesize write to URLs)")
    return None


def _module(name: str):
    return importlib.import_module(f"cclray.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from cclray import console

    console.setup(verbose=args.verbose)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 0
    from data_prep.config import ConfigError
    from data_prep.errors import UserError

    try:
        problem = check_out(args._command, args.out) if getattr(args, "out", None) is not None else None
        if problem:
            raise ConfigError(problem)
        return int(_module(args._command).run(args) or 0)
    except UserError as e:
        print(f"cclray {args._command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
