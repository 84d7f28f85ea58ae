"""Evaluation of synthesizers on a store split (re-exports only).

:mod:`~cclray.evaluation.evaluate` predicts and scores runs and writes the outputs;
:mod:`~cclray.evaluation.predict` is the torch sliding-window prediction, :mod:`~cclray.evaluation.metrics`
the scores, :mod:`~cclray.evaluation.report` the tables and files, :mod:`~cclray.evaluation.figure` the figure.
"""
from .evaluate import RunSpec, evaluate_run_dirs, evaluate_runs

__all__ = ["RunSpec", "evaluate_runs", "evaluate_run_dirs"]
