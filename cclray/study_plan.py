"""The study's design as data: its config, presets, subject splits and the job graph (no torch, no Ray).

The question (docs/STUDY.md; results in docs/RESULTS.md): does CCL pretraining make a better T1w/T2w synthesizer than training from
scratch, at finetune sizes n = 2, 5, 10? :func:`plan` turns a :class:`StudyConfig` into :class:`Job` s —
pretraining runs, finetuning runs, regressor fits and evaluations — each with the jobs it waits for, so
that :mod:`cclray.study` can run them in order (or several at once) and skip the finished ones.

Arms (labels as they appear in the tables):

- ``Regressor`` — floor: the voxelwise gradient-boosted regressor fitted on the same n finetune subjects;
- ``Baseline`` — finetuning from random weights (``finetune_steps``);
- ``CCL`` — finetuning from CCL pretraining with the constraint map of all four contrasts (the paper);
- ``CCL-inputs`` — the same with a constraint map of the inputs only (T1Gd + FLAIR): does the T1w/T2w
  information in the map matter?
- ``Baseline-matched`` — from scratch with ``pretrain_steps + finetune_steps`` steps (compute-matched);
- ``Supervised-all`` — ceiling: from scratch on the pretrain + finetune subjects' real targets;
- ``Probe-CCL`` / ``Probe-random`` — a linear probe: the backbone frozen (CCL-pretrained / random), only a
  1x1x1 head on its ``proj_stride`` features trains (how much of T1w/T2w the features hold);
- ``CCL-external`` — finetuning from a pretraining run made elsewhere (``external_pretrain``: e.g. another
  study's phantom pretraining, for a real cohort; ``{seed}`` in the path is replaced by the seed);
- ``CCL-mixed`` — finetuning from a CCL pretraining on this study's pretrain subjects *and* split ``mix_split``
  of another store ``mix_store`` (e.g. a phantom study's ``store.zarr`` and its ``s.f0.pretrain``, the subjects
  CCL-external pretrained on): one shuffled cohort of both stores, sampled per subject (the stage config's
  ``extra``, :mod:`cclray.data.sources`). With CCL (real only) and CCL-external (phantom only) it answers
  whether the phantom helps as a pretraining source for real scans.

Splits are written into the store's attributes under the study's own names (``s.f<fold>.<split>``;
``s.f0.finetune_n2`` holds the first 2 of ``s.f0.finetune``), so every cclray tool reads them as ordinary
splits. ``folds > 1`` rotates disjoint test blocks through a small cohort (every subject tested once).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from cclray.config import LR_SCHEDULES
from data_prep.config import FrozenConfig, require
from data_prep.splits import PAPER_SPLITS, make_splits

ARMS = ("Regressor", "Baseline", "CCL", "CCL-inputs", "Baseline-matched", "Supervised-all", "CCL-external",
        "Probe-CCL", "Probe-random", "CCL-mixed")  # the order of the tables; the index is the figure's colour
INPUTS_CONSTRAINT = {"contrasts": ["t1gd", "flair"], "k": 20}  # ConstraintSpec of the CCL-inputs arm


@dataclass(frozen=True)
class StudyConfig(FrozenConfig):
    """Sizes of one study (see :data:`PRESETS`). Training sizes are those of every arm alike."""

    n_subjects: int = 105  # phantom cohort size (ignored with a source folder)
    phantom_version: int = 2
    spacing: float = 2.0  # mm of the store (real scans are resampled to it)
    splits: dict = field(default_factory=lambda: dict(PAPER_SPLITS))  # pretrain/finetune/val/test counts
    folds: int = 1  # > 1: the test block rotates (splits' test count = cohort / folds)
    finetune_sizes: tuple[int, ...] = (2, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ("Regressor", "Baseline", "CCL", "CCL-inputs", "Baseline-matched", "Supervised-all")
    widths: tuple[int, ...] = (16, 32, 64, 128)
    proj_stride: int = 2
    patch: int = 32
    batch: int = 4
    pretrain_steps: int = 3000
    finetune_steps: int = 600
    steps_per_epoch: int = 20
    # finetuning's learning-rate schedule (every finetuned arm alike): "plateau" (halve on a flat validation L1,
    # patience 3 epochs; the protocol declared in docs/STUDY.md, kept so recorded studies resume as they ran) or
    # "cosine" over the run (the stage default since 2026-12-06); measured on phantom v2, plateau on a noisy
    # 5-subject validation set had taken the ceiling's rate from 1e-3 to 1e-5 by step 1300 of 2000 (RESULTS.md)
    finetune_schedule: str = "plateau"
    augment: bool = False  # finetuning patches flipped, rotated and scaled (PatchConfig.augment), every arm alike
    external_pretrain: str = ""  # CCL-external: a pretrain run folder ("{seed}" is replaced by the seed)
    mix_store: str = ""  # CCL-mixed: the other store pretrained on with this study's pretrain split
    mix_split: str = "s.f0.pretrain"  # its split(s) (default: a study store's fold-0 pretrain subjects)
    workers: int = 1  # Ray Train workers per job (backend ray)
    loader_workers: int = 0

    def validate(self) -> None:
        require(self.folds >= 1, f"StudyConfig.folds={self.folds} must be >= 1")
        require(bool(self.seeds), "StudyConfig.seeds is empty: give at least one seed")
        unknown = [a for a in self.arms if a not in ARMS]
        require(not unknown, f"StudyConfig.arms: unknown {unknown}; use some of {list(ARMS)}")
        require("Baseline" in self.arms, "StudyConfig.arms must hold 'Baseline' (every difference is against it)")
        require("Probe-CCL" not in self.arms or "CCL" in self.arms,
                "StudyConfig.arms has 'Probe-CCL' but not 'CCL' (whose pretraining it probes): add 'CCL'")
        require("CCL-external" not in self.arms or bool(self.external_pretrain),
                "StudyConfig.arms has 'CCL-external' but external_pretrain is empty: pass --external-pretrain RUN")
        require("CCL-mixed" not in self.arms or bool(self.mix_store),
                "StudyConfig.arms has 'CCL-mixed' but mix_store is empty: pass --mix-store STORE[#SPLIT] (e.g. a "
                "phantom study's store.zarr)")
        fin = self.splits.get("finetune", 0)
        big = [n for n in self.finetune_sizes if not 1 <= n <= fin]
        require(not big, f"StudyConfig.finetune_sizes {big} must lie in 1..splits['finetune']={fin}")
        for k in ("pretrain_steps", "finetune_steps", "steps_per_epoch"):
            v = getattr(self, k)
            require(v >= 1 and (v % self.steps_per_epoch == 0),
                    f"StudyConfig.{k}={v} must be a positive multiple of steps_per_epoch={self.steps_per_epoch}")
        require(self.finetune_schedule in LR_SCHEDULES,
                f"StudyConfig.finetune_schedule={self.finetune_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        stride = 2 ** (len(self.widths) - 1)
        require(self.patch % stride == 0, f"StudyConfig.patch={self.patch} must be a multiple of the stride {stride}")

    @property
    def pretrain_epochs(self) -> int:
        return self.pretrain_steps // self.steps_per_epoch

    @property
    def finetune_epochs(self) -> int:
        return self.finetune_steps // self.steps_per_epoch


_SMALL = dict(widths=(16, 32, 64, 128), proj_stride=2, patch=32, batch=4)
PRESETS: dict[str, StudyConfig] = {
    # the phantom study: the paper's split (80/10/5/10) at 2 mm, n = 2, 5, 10, 3 seeds, every arm: 6
    # pretrainings of 3000 steps, 30 finetunings of 600 and 9 compute-matched of 3600 steps. Sized for one GPU
    # (`--local --parallel 10 --device cuda`; measured on one H200 shared with 9 other jobs: a 3000-step
    # pretraining took 300-350 s, a 600-step finetuning 40-70 s, so about 20-25 min for the study); days on 2 CPU cores.
    "phantom": StudyConfig(**_SMALL, arms=ARMS[:6] + ("Probe-CCL", "Probe-random")),
    # the same design with 1 seed, 400 pretraining and 200 finetuning steps: the CPU look (2 cores: ~1 h)
    "pilot": StudyConfig(**_SMALL, seeds=(0,), pretrain_steps=400, finetune_steps=200),
    # a small real cohort (15 BraTS cases): 3 folds of 5 test subjects (each tested once), pretrain 7,
    # finetune 2, val 1 per fold; add CCL-external with --external-pretrain (a phantom study's pretraining)
    "real": StudyConfig(**_SMALL, splits={"pretrain": 7, "finetune": 2, "val": 1, "test": 5}, folds=3,
                        seeds=(0, 1), finetune_sizes=(2,),
                        arms=("Regressor", "Baseline", "CCL", "Supervised-all")),
    # CI smoke: 4 mm, tiny nets, a few steps; checks the plumbing, not the science
    "smoke": StudyConfig(n_subjects=8, spacing=4.0, splits={"pretrain": 3, "finetune": 2, "val": 1, "test": 2},
                         finetune_sizes=(1, 2), seeds=(0,), widths=(8, 16, 32), proj_stride=2, patch=16, batch=2,
                         pretrain_steps=4, finetune_steps=4, steps_per_epoch=2),
}


# ------------------------------------------------------------------------------------------------ splits
def split_name(fold: int, name: str) -> str:
    return f"s.f{fold}.{name}"


def study_splits(sids: list[str], cfg: StudyConfig, split_seed: int = 0) -> dict[str, list[str]]:
    """Every split the study trains or tests on, by store split name.

    One fold: :func:`~data_prep.splits.make_splits` with ``cfg.splits``. Several: the shuffled cohort is cut
    into ``folds`` disjoint test blocks of ``splits['test']``; the rest of each fold is dealt to pretrain,
    finetune and val. ``finetune_n<N>`` = the first N of that fold's finetune split.
    """
    sids = sorted(sids)
    out: dict[str, list[str]] = {}
    if cfg.folds == 1:
        folds = [make_splits(sids, cfg.splits, split_seed)]
    else:
        n_test = cfg.splits.get("test", 0)
        need = cfg.folds * n_test
        require(n_test >= 1 and need <= len(sids),
                f"{cfg.folds} folds of {n_test} test subjects need {need} subjects; the cohort has {len(sids)}")
        order = list(sids)
        random.Random(split_seed).shuffle(order)
        folds = []
        for f in range(cfg.folds):
            test = sorted(order[f * n_test:(f + 1) * n_test])
            rest = [s for s in sids if s not in test]
            folds.append({**make_splits(rest, {k: v for k, v in cfg.splits.items() if k != "test"},
                                        split_seed + f), "test": test})
    for f, sp in enumerate(folds):
        for name in ("pretrain", "finetune", "val", "test"):
            out[split_name(f, name)] = list(sp.get(name, []))
        for n in cfg.finetune_sizes:
            out[split_name(f, f"finetune_n{n}")] = list(sp.get("finetune", []))[:n]
    return out


# ------------------------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` is pretrain | finetune | regressor | evaluate; ``path`` its folder
    (relative to the study folder); ``spec`` what it needs; ``deps`` the paths it waits for."""

    kind: str
    path: str
    spec: dict
    deps: tuple[str, ...] = ()


def stage_dict(cfg: StudyConfig, store: str, split: str, steps: int, seed: int, finetune: bool = False) -> dict:
    """A PretrainConfig (or, with ``finetune``, FinetuneConfig) dict with the study's sizes. The finetuning
    schedule is always written (the study's, not the stage default, which changed); augmentation only when on."""
    spec = {"store": store, "split": split, "seed": seed,
            "model": {"widths": list(cfg.widths), "groups": min(8, cfg.widths[0]), "proj_stride": cfg.proj_stride},
            "patch": {"patch_size": [cfg.patch] * 3, "batch_size": cfg.batch, "num_workers": cfg.loader_workers},
            "epochs": steps // cfg.steps_per_epoch, "steps_per_epoch": cfg.steps_per_epoch,
            "num_workers": cfg.workers}
    if finetune:
        spec["lr_schedule"] = cfg.finetune_schedule
    if finetune and cfg.augment:
        spec["patch"]["augment"] = True
    return spec


def plan(cfg: StudyConfig, store: str, test_store: str | None = None, inputs_constraint: str = "") -> list[Job]:
    """Every job of the study in a valid order. ``test_store``: evaluate on all its subjects (split
    ``s.test``) instead of each fold's test split. ``inputs_constraint``: the store's constraint name of
    the CCL-inputs arm (required when that arm is asked for)."""
    jobs: list[Job] = []
    arms = set(cfg.arms)
    for f in range(cfg.folds):
        sp = lambda name: split_name(f, name)  # noqa: E731
        for seed in cfg.seeds:
            root = f"f{f}/seed{seed}"
            pre = {"CCL": f"{root}/pretrain"}
            if "CCL-inputs" in arms:
                require(bool(inputs_constraint), "the CCL-inputs arm needs the store's inputs-only constraint name")
                pre["CCL-inputs"] = f"{root}/pretrain_inputs"
            if "CCL-mixed" in arms:
                pre["CCL-mixed"] = f"{root}/pretrain_mixed"
            for arm, path in pre.items():
                if arm in arms:
                    spec = stage_dict(cfg, store, sp("pretrain"), cfg.pretrain_steps, seed)
                    if arm == "CCL-inputs":
                        spec["constraint"] = inputs_constraint
                    if arm == "CCL-mixed":
                        spec["extra"] = [{"store": cfg.mix_store, "split": cfg.mix_split}]
                    jobs.append(Job("pretrain", path, spec))
            if "Supervised-all" in arms:
                spec = stage_dict(cfg, store, f"{sp('pretrain')},{sp('finetune')}", cfg.finetune_steps, seed, True)
                jobs.append(Job("finetune", f"{root}/supervised_all", {**spec, "val_split": sp("val")}))
            for n in cfg.finetune_sizes:
                jobs += _size_jobs(cfg, store, test_store, f, seed, n, pre)
    return jobs


def _size_jobs(cfg: StudyConfig, store: str, test_store: str | None, f: int, seed: int, n: int,
               pre: dict[str, str]) -> list[Job]:
    """The finetunings, the floor and the evaluation of one (fold, seed, n)."""
    root, arms = f"f{f}/seed{seed}", set(cfg.arms)
    split = split_name(f, f"finetune_n{n}")
    base = {**stage_dict(cfg, store, split, cfg.finetune_steps, seed, True), "val_split": split_name(f, "val")}
    runs: dict[str, str] = {}
    jobs = []
    if "Regressor" in arms:
        runs["Regressor"] = f"{root}/n{n}/regressor"
        jobs.append(Job("regressor", runs["Regressor"], {"store": store, "split": split, "seed": seed}))
    runs["Baseline"] = f"{root}/n{n}/scratch"
    jobs.append(Job("finetune", runs["Baseline"], base))
    external = cfg.external_pretrain.replace("{seed}", str(seed))
    for arm, pre_path in [*pre.items(), ("CCL-external", external)]:
        if arm in arms:
            runs[arm] = f"{root}/n{n}/{arm.lower()}"
            jobs.append(Job("finetune", runs[arm], {**base, "init": pre_path}, (pre_path,)))
    if "Probe-CCL" in arms:
        runs["Probe-CCL"] = f"{root}/n{n}/probe_ccl"
        jobs.append(Job("finetune", runs["Probe-CCL"], {**base, "init": pre["CCL"], "probe": True}, (pre["CCL"],)))
    if "Probe-random" in arms:
        runs["Probe-random"] = f"{root}/n{n}/probe_random"
        jobs.append(Job("finetune", runs["Probe-random"], {**base, "probe": True}))
    if "Baseline-matched" in arms:
        runs["Baseline-matched"] = f"{root}/n{n}/scratch_matched"
        steps = cfg.pretrain_steps + cfg.finetune_steps
        jobs.append(Job("finetune", runs["Baseline-matched"],
                        {**base, "epochs": steps // cfg.steps_per_epoch}))
    if "Supervised-all" in arms:
        runs["Supervised-all"] = f"{root}/supervised_all"
    order = [a for a in ARMS if a in runs]
    jobs.append(Job("evaluate", f"{root}/n{n}/evaluation",
                    {"store": test_store or store, "split": "s.test" if test_store else split_name(f, "test"),
                     "runs": [runs[a] for a in order], "labels": order},
                    tuple(runs[a] for a in order)))
    return jobs
