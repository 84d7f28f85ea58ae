"""cclray.console: what a person sees. Project lines at INFO, library noise hidden unless -v, epochs of a
training run shown from its metrics.csv while it trains."""
import logging
import time
import warnings

import pytest

from cclray import console
from cclray.runs import MetricsLog


@pytest.fixture
def restore_logging():
    names = ["", *console.PROJECT_LOGGERS, *console.QUIET]
    levels = {n: logging.getLogger(n).level for n in names}
    filters = list(warnings.filters)
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    warnings.filters[:] = filters


@pytest.mark.parametrize("verbose", [False, True])
def test_setup_shows_the_project_and_hides_noise_unless_verbose(restore_logging, verbose):
    console.setup(verbose=verbose)
    assert logging.getLogger("cclray.train").isEnabledFor(logging.INFO)
    assert logging.getLogger("export.onnx_export").isEnabledFor(logging.INFO)
    assert logging.getLogger("onnxscript.rewriter").isEnabledFor(logging.INFO) is verbose
    assert logging.getLogger("torch.onnx._internal.exporter._registration").isEnabledFor(logging.WARNING) is verbose
    assert console.is_verbose() is verbose
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        console.setup(verbose=verbose)  # its filters go in front again
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
        warnings.warn("a warning that matters", UserWarning)
    assert [str(w.message) for w in seen][-1] == "a warning that matters"
    assert (len(seen) == 2) is verbose


def test_epoch_progress_reports_each_epoch_once(tmp_path, caplog):
    """Without a terminal (pytest), one INFO line an epoch, in order, read while the block runs."""
    metrics = MetricsLog(tmp_path)
    metrics.append({"epoch": 1, "step": 2, "loss": 0.5, "time": 1.0})  # a resumed run's first epoch: done
    with caplog.at_level(logging.INFO, logger="cclray.progress"):
        with console.epoch_progress(tmp_path, "finetune", 3, poll_s=0.05):
            for epoch in (2, 3):
                time.sleep(0.2)
                metrics.append({"epoch": epoch, "step": 2 * epoch, "loss": 0.5 / epoch, "val_ssim": 0.1 * epoch,
                                "time": 1.0})
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "cclray.progress"]
    assert lines == ["finetune epoch 2/3  loss 0.25  val_ssim 0.2", "finetune epoch 3/3  loss 0.1667  val_ssim 0.3"]
