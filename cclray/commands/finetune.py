"""``cclray finetune --store S --out RUN (--init PRETRAIN_RUN | --scratch)``: stage 2, T1w+T2w synthesis
under Ray Train, from a CCL pretrain run or from random weights (the baseline, same budget).

Options and config precedence are shared with ``cclray pretrain`` (:mod:`cclray.commands.training`).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cclray.commands.training import add_stage_arguments

    add_stage_arguments(parser, "finetune")


def run(args: argparse.Namespace) -> int:
    from cclray.commands.training import run_stage_command

    return run_stage_command(args, "finetune")
