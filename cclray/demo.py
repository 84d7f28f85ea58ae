"""The end-to-end demo on the phantom cohort: phantom → prep → CCL pretrain → finetune from CCL and from
scratch → evaluate both → ONNX export → runtime synthesis of one test subject (in a process without torch).

Each step calls the same functions the individual ``cclray`` commands call; a finished step is not redone when
the demo is run again on the same ``--out`` (each step's output is its own checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cclray.config import LR_SCHEDULES
from data_prep.config import FrozenConfig, require
from data_prep.splits import PAPER_SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig(FrozenConfig):
    """Sizes of one demo run (see :data:`PRESETS`)."""

    n_subjects: int = 24
    spacing: float = 2.0  # mm; 1.0 = BraTS's 240x240x155
    splits: dict | None = None  # subject counts per split
    widths: tuple[int, ...] = (16, 32, 64, 128)
    proj_stride: int = 4  # decoder level of the CCL projection head (feature voxel = proj_stride x spacing)
    patch: int = 32
    batch: int = 2
    pretrain_epochs: int = 8
    finetune_epochs: int = 10
    steps_per_epoch: int = 12
    finetune_schedule: str = "cosine"  # FinetuneConfig.lr_schedule of every finetuned network
    workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    loader_workers: int = 0  # DataLoader workers per rank
    prep_workers: int = 2
    eval_limit: int = 0  # 0 = the whole test split
    seed: int = 0

    def validate(self) -> None:
        require(self.n_subjects >= 4, f"DemoConfig.n_subjects={self.n_subjects}: need >= 4 (one per split)")
        require(self.splits is not None and sum(self.splits.values()) <= self.n_subjects,
                f"DemoConfig.splits={self.splits} need at most n_subjects={self.n_subjects} subjects")
        require(self.finetune_schedule in LR_SCHEDULES, f"DemoConfig.finetune_schedule={self.finetune_schedule!r}: "
                                                        f"use one of {', '.join(LR_SCHEDULES)}")
        stride = 2 ** (len(self.widths) - 1)
        require(self.patch % stride == 0, f"DemoConfig.patch={self.patch} must be a multiple of the stride {stride}")


PRESETS: dict[str, DemoConfig] = {
    # 2 CPU cores, under 10 minutes: 2 mm volumes (120x120x78), a 4-level net, 32³ patches, 2 DDP workers
    # of batch 2, 1000 pretraining and 200 finetuning steps.
    "cpu-small": DemoConfig(splits={"pretrain": 14, "finetune": 4, "val": 2, "test": 4}, proj_stride=2,
                            pretrain_epochs=50, finetune_epochs=10, steps_per_epoch=20),
    # the paper's sizes (pretrain n=80, finetune n=10), 1 mm, 128³ patches: a GPU cluster job.
    "paper": DemoConfig(n_subjects=105, spacing=1.0, splits=dict(PAPER_SPLITS),
                        widths=(16, 32, 64, 128, 128), patch=128, batch=2, pretrain_epochs=100,
                        finetune_epochs=100, steps_per_epoch=50, workers=4, use_gpu=True, loader_workers=4,
                        prep_workers=8),
    # CI smoke: seconds of training on tiny 4 mm volumes; checks the plumbing, not the science.
    "smoke": DemoConfig(n_subjects=6, spacing=4.0, splits={"pretrain": 2, "finetune": 2, "val": 1, "test": 1},
                        widths=(8, 16, 32), patch=16, pretrain_epochs=1, finetune_epochs=1, steps_per_epoch=2,
                        workers=1, prep_workers=1),
}


def stage_dict(cfg: DemoConfig, store: str, stage: str, epochs: int) -> dict:
    """The stage config (PretrainConfig/FinetuneConfig dict) the demo trains with."""
    spec = {
        "store": store,
        "model": {"widths": list(cfg.widths), "groups": min(8, cfg.widths[0]), "proj_stride": cfg.proj_stride},
        "patch": {"patch_size": [cfg.patch] * 3, "batch_size": cfg.batch, "num_workers": cfg.loader_workers},
        "epochs": epochs, "steps_per_epoch": cfg.steps_per_epoch, "seed": cfg.seed,
        "num_workers": cfg.workers, "use_gpu": cfg.use_gpu,
    }
    if stage == "finetune":
        spec["lr_schedule"] = cfg.finetune_schedule
    return spec


class Steps:
    """Runs named steps in order, timing them and telling the person what happens."""

    def __init__(self, say: Callable[[str], None]):
        self.say, self.times = say, {}

    def __call__(self, n: int, total: int, title: str, fn: Callable, done: bool = False):
        if done:
            self.say(f"[{n}/{total}] {title}: already done, kept")
            return None
        self.say(f"[{n}/{total}] {title} ...")
        t0 = time.perf_counter()
        out = fn()
        self.times[title] = time.perf_counter() - t0
        self.say(f"[{n}/{total}] {title}: done in {self.times[title]:.0f} s")
        return out


_NO_TORCH = ("import sys, importlib.abc\n"
             "class _Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('torch', 'ray'):\n"
             "            raise ImportError(name + ' is blocked: the runtime must not need it')\n"
             "sys.meta_path.insert(0, _Block())\n"
             "from cclray.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def run_demo(out: str | os.PathLike, preset: str = "cpu-small", overrides: dict | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Run the whole demo into ``out``; returns the paths of what it made and the summary table."""
    from data_prep.store import Store

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    cfg = PRESETS[preset].replace(**(overrides or {}))
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps({"preset": preset, **cfg.to_dict()}, indent=2))
    nifti, store = out / "phantom", str(out / "store.zarr")
    eval_dir, model = out / "evaluation", out / "model.onnx"
    say(f"cclray demo, preset {preset!r}: {cfg.n_subjects} phantom subjects at {cfg.spacing:g} mm, "
        f"splits {cfg.splits}, net widths {list(cfg.widths)}, {cfg.patch}³ patches, batch {cfg.batch}, "
        f"{cfg.pretrain_epochs}/{cfg.finetune_epochs} epochs x {cfg.steps_per_epoch} steps (pretrain/finetune), "
        f"{cfg.workers} Ray worker(s){' on GPU' if cfg.use_gpu else ' on CPU'}.")
    if preset != "paper":
        say("  (reduced from the paper's n=80/10, 1 mm and 128³ patches so it runs on a laptop-sized CPU; "
            "`--preset paper` has the paper's sizes)")
    step, total = Steps(say), 8

    prepare_cohort(cfg, nifti, store, step, first=1, total=total)
    runs = train_and_evaluate(cfg, store, out / "runs", eval_dir, step, first=3, total=total)

    def export():
        from export.onnx_export import export_onnx

        return export_onnx(runs["ccl"], model)
    step(7, total, f"export the CCL synthesizer to ONNX -> {model}", export, done=model.exists())

    test_sid = Store(store).subjects("test")[0]
    synth_dir = out / "synthesized"

    def synthesize():
        cmd = [sys.executable, "-c", _NO_TORCH, "synthesize", "--model", str(model),
               "--subject", str(nifti / test_sid), "--out", str(synth_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"runtime synthesis failed ({' '.join(cmd[3:])}):\n{proc.stdout}\n{proc.stderr}")
        for line in proc.stdout.strip().splitlines()[-4:]:
            say(f"    {line}")
    step(8, total, f"synthesize test subject {test_sid} with onnxruntime in a process where torch cannot be "
                   f"imported -> {synth_dir}", synthesize)

    summary = (eval_dir / "summary.md").read_text()
    say("\n" + summary)
    result = {"out": str(out), "store": store, "runs": {k: str(v) for k, v in runs.items()},
              "summary": str(eval_dir / "summary.md"), "metrics_csv": str(eval_dir / "metrics.csv"),
              "figure": str(eval_dir / "figure.png"), "model": str(model), "synthesized": str(synth_dir),
              "step_seconds": step.times}
    say("outputs:\n" + "\n".join(f"  {k:12s} {v}" for k, v in result.items() if k != "step_seconds"))
    (out / "demo_result.json").write_text(json.dumps(result, indent=2))
    return result


def prepare_cohort(cfg: DemoConfig, nifti: Path, store: str, step: "Steps", first: int, total: int) -> None:
    """Steps ``first``, ``first + 1``: the phantom cohort as BraTS NIfTI, then its store (kept when done)."""
    from data_prep.phantom import write_cohort
    from data_prep.prep import PrepConfig, run_prep

    step(first, total, f"phantom cohort -> {nifti}", lambda: write_cohort(
        nifti, cfg.n_subjects, seed=cfg.seed, spacing=cfg.spacing, workers=cfg.prep_workers),
        done=_store_done(store, cfg.n_subjects))

    def prep():
        report = run_prep(nifti, store, PrepConfig(splits=dict(cfg.splits), seed=cfg.seed), workers=cfg.prep_workers)
        step.say(f"    {report.summary()}")
    step(first + 1, total, f"prep -> {store}", prep, done=_store_done(store, cfg.n_subjects))


def trained(run: Path) -> bool:
    """Whether ``run`` holds a finished-or-resumable training run with a checkpoint."""
    from cclray.runs import CONFIG_FILE, latest_intact_checkpoint

    return (run / CONFIG_FILE).exists() and latest_intact_checkpoint(run) is not None


def train_and_evaluate(cfg: DemoConfig, store: str, run_root: Path, eval_dir: Path, step: "Steps",
                       first: int, total: int, seed: int | None = None, floor_and_ceiling: bool = False
                       ) -> dict[str, Path]:
    """Steps ``first`` .. ``first + 3``: CCL pretrain, finetune from it, finetune from scratch with the same
    budget, evaluate both on the test split. ``seed`` (default ``cfg.seed``) seeds the training only.

    ``floor_and_ceiling`` (``first`` .. ``first + 5``): also fit the regressor floor on the finetune split
    and train the supervised-all ceiling (scratch on pretrain + finetune, same budget), and evaluate all four.
    """
    from cclray.console import epoch_progress
    from cclray.train import fit
    from data_prep.store import Store

    def train(stage: str, config: dict, run: Path, label: str):
        with epoch_progress(run, label, int(config["epochs"])):
            return fit(stage, config, run, resume=run.exists())

    cfg = cfg if seed is None else cfg.replace(seed=seed)
    runs = {k: run_root / k for k in ("pretrain", "ccl", "scratch")}
    step(first, total, f"CCL pretraining (Ray Train, {cfg.workers} worker(s)) -> {runs['pretrain']}",
         lambda: train("pretrain", stage_dict(cfg, store, "pretrain", cfg.pretrain_epochs), runs["pretrain"],
                       "pretrain"),
         done=trained(runs["pretrain"]))
    ccl = {**stage_dict(cfg, store, "finetune", cfg.finetune_epochs), "init": str(runs["pretrain"])}
    step(first + 1, total, f"finetune from CCL -> {runs['ccl']}",
         lambda: train("finetune", ccl, runs["ccl"], "finetune CCL"), done=trained(runs["ccl"]))
    scratch = stage_dict(cfg, store, "finetune", cfg.finetune_epochs)
    step(first + 2, total, f"finetune from scratch (baseline, same budget) -> {runs['scratch']}",
         lambda: train("finetune", scratch, runs["scratch"], "finetune scratch"),
         done=trained(runs["scratch"]))
    arms = {"Baseline": runs["scratch"], "CCL": runs["ccl"]}
    n = first + 3
    if floor_and_ceiling:
        from cclray.evaluation.regressor import RegressorSpec, fit_regressor, is_regressor_run

        runs["regressor"], runs["ceiling"] = run_root / "regressor", run_root / "supervised_all"

        def floor():
            reg, info = fit_regressor(store, RegressorSpec(seed=cfg.seed))
            reg.save(runs["regressor"], {"store": store, **info})

        step(n, total, f"fit the regressor floor on the finetune split -> {runs['regressor']}", floor,
             done=is_regressor_run(runs["regressor"]))
        ceiling = {**scratch, "split": "pretrain,finetune"}
        step(n + 1, total, f"supervised-all ceiling (scratch on pretrain + finetune, same budget) -> "
             f"{runs['ceiling']}", lambda: train("finetune", ceiling, runs["ceiling"], "finetune supervised-all"),
             done=trained(runs["ceiling"]))
        arms = {"Regressor": runs["regressor"], **arms, "Supervised-all": runs["ceiling"]}
        n += 2

    def evaluate():
        from cclray.evaluation import evaluate_run_dirs

        subjects = Store(store).subjects("test")[:cfg.eval_limit] if cfg.eval_limit else None
        return evaluate_run_dirs(store, list(arms.values()), labels=list(arms), split="test",
                                 out_dir=eval_dir, device="cuda" if cfg.use_gpu else "cpu",
                                 **({"subjects": subjects} if subjects else {}))
    step(n, total, f"evaluate {', '.join(arms)} on the test split -> {eval_dir}", evaluate,
         done=(eval_dir / "summary.md").exists())
    return runs


def _store_done(url: str, n: int) -> bool:
    from data_prep.store import Store, StoreError

    try:
        s = Store(url)
        return len(s.subjects()) + len(s.attrs.get("failed", [])) >= n and bool(s.attrs.get("splits"))
    except (StoreError, Exception):
        return False
