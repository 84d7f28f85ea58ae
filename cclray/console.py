"""What a person sees on the console: the project's progress lines and bars, warnings that matter, the
rest behind ``cclray -v``.

:func:`setup` (called once by ``cclray.cli.main``): the project's loggers (:data:`PROJECT_LOGGERS`) at INFO,
every other library at WARNING; known noise that a user cannot act on (:data:`QUIET`: the ONNX exporter's
"torchvision is not installed" lines, the ONNX rewriter's INFO lines; torch's own deprecation warnings) is
hidden. With ``-v`` everything is shown, the project at DEBUG. Ray workers follow the driver
(:func:`is_verbose`, see ``cclray.train``). :func:`epoch_progress` shows a training run's epochs in the
driver as a progress bar (a line an epoch when stderr is not a terminal), read from the run's
``metrics.csv`` while Ray trains. Library code never calls :func:`setup`: it only logs.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator

PROJECT_LOGGERS = ("cclray", "data_prep", "export", "tune")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: logger -> level it is held at without -v (noise a user cannot act on).
QUIET = {
    "torch.onnx._internal.exporter._registration": logging.ERROR,  # "torchvision is not installed. Skipping ..."
    "onnxscript": logging.WARNING,  # the rewriter's and optimizer's INFO lines, dozens an export
    "onnx_ir": logging.WARNING,  # its passes log every deduplicated initializer
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "token authentication is enabled"
}
#: (message regex, category) of Python warnings hidden without -v.
QUIET_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)", FutureWarning),  # torch's pytree, raised inside torch.export
)


def setup(verbose: bool = False) -> None:
    """Configure logging and warnings for a command-line run (see the module docstring)."""
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S")  # a handler, unless the root logger has one
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    if not verbose:
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)


def is_verbose() -> bool:
    """Whether the person asked for everything (``cclray -v``): the project's logger is at DEBUG."""
    return logging.getLogger("cclray").isEnabledFor(logging.DEBUG)


def _describe(row: dict) -> str:
    keys = ("loss", "val_l1", "val_ssim", "lr")
    return "  ".join(f"{k} {float(row[k]):.4g}" for k in keys if row.get(k) not in (None, ""))


@contextlib.contextmanager
def epoch_progress(run_dir: str | Path, stage: str, epochs: int, poll_s: float = 1.0) -> Iterator[None]:
    """While the block trains ``run_dir``, show its finished epochs (rows of ``RUN/metrics.csv``, which rank 0
    writes) as a bar on a terminal, else as one INFO line an epoch. Rows already there count as done."""
    from tqdm import tqdm

    from cclray.runs import MetricsLog

    log = logging.getLogger("cclray.progress")
    metrics = MetricsLog(run_dir)
    bar = tqdm(total=epochs, desc=stage, unit="epoch", file=sys.stderr, disable=None, dynamic_ncols=True)
    stop = threading.Event()
    shown = {"epoch": max((int(r["epoch"]) for r in metrics.rows()), default=0)}  # a resumed run's
    bar.update(shown["epoch"])

    def show() -> None:
        try:
            rows = metrics.rows()
        except (OSError, ValueError):  # the file is being rewritten (a resumed run truncates it)
            return
        for row in rows:
            if not row.get("time"):  # the last column: a row rank 0 is still writing
                continue
            epoch = int(row["epoch"])
            if epoch <= shown["epoch"]:
                continue
            shown["epoch"] = epoch
            if bar.disable:
                log.info("%s epoch %d/%d  %s", stage, epoch, epochs, _describe(row))
            else:
                bar.n = epoch
                bar.set_postfix_str(_describe(row), refresh=False)
                bar.refresh()

    def watch() -> None:
        while not stop.wait(poll_s):
            show()

    thread = threading.Thread(target=watch, name="epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        show()
        bar.close()
