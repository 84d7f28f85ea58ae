"""``cclray pretrain --store S --out RUN``: stage 1, CCL pretraining under Ray Train.

Options and config precedence are shared with ``cclray finetune`` (:mod:`cclray.commands.training`).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cclray.commands.training import add_stage_arguments

    add_stage_arguments(parser, "pretrain")


def run(args: argparse.Namespace) -> int:
    from cclray.commands.training import run_stage_command

    return run_stage_command(args, "pretrain")
