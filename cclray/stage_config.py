"""Typed, frozen configs of the two training stages: ``PretrainConfig`` and ``FinetuneConfig``.

They are symmetrical: the same optimisation, checkpoint and scaling keys; pretraining adds the
constraint-map name, finetuning adds ``init`` (a pretrain run or checkpoint; None = from scratch,
the baseline) and validation. Nested dicts (``model``, ``loss``, ``patch``) are accepted; an unknown
key is an error naming the close match (``FrozenConfig``). Every checkpoint stores its config as JSON.

Budget: one epoch is ``steps_per_epoch`` optimizer steps on every Ray worker, i.e.
``steps_per_epoch * patch.batch_size * world_size`` patches; ``patch.samples_per_epoch`` is ignored
and replaced by that product (:meth:`StageConfig.patch_for`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cclray.config import LossConfig, ModelConfig
from cclray.data.patches import PatchConfig
from data_prep.config import FrozenConfig, require
from data_prep.schema import CONTRASTS, constraint_name

DEFAULT_CONSTRAINT = constraint_name(CONTRASTS, 20)
STAGES = ("pretrain", "finetune")
LR_SCHEDULES = ("plateau", "cosine", "constant")


@dataclass(frozen=True)
class StageConfig(FrozenConfig):
    """Keys shared by both stages (use :class:`PretrainConfig` or :class:`FinetuneConfig`)."""

    store: str = ""  # URL or path of the cclray Zarr store (`cclray prep ... --out STORE`)
    split: str = ""  # training split of the store
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    epochs: int = 10
    steps_per_epoch: int = 16  # optimizer steps per epoch on every worker
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # "plateau": ReduceLROnPlateau on the epoch's score (finetune: val L1); patience 3 epochs, so short
    # runs (tens of epochs) still decay a few times. "cosine": cosine decay over the epochs to min_lr.
    # "constant": no decay. Pretraining defaults to cosine: its only score is the training loss of a
    # random patch stream, too noisy for plateau detection (measured: plateau took the lr from 1e-3 to
    # 1e-6 within 1400 of 2000 steps while the CCL loss was still falling at 1e-3).
    lr_schedule: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    amp: bool = True  # mixed precision (float16 autocast + GradScaler); effective on CUDA only
    # bfloat16 autocast on CPU devices. Measured 2.2x faster training step on 2 AMD EPYC cores
    # (docs/BENCHMARKS.md); off by default because every figure in docs/RESULTS.md is fp32.
    cpu_bf16: bool = False
    # Model weights (and so activations) in channels_last_3d memory format: same numbers, measured
    # 1.4x faster CPU training step (oneDNN's NDHWC convolutions); also the fast layout of cuDNN AMP.
    channels_last: bool = True
    seed: int = 0
    checkpoint_every: int = 1  # epochs; the last epoch is always checkpointed
    keep_checkpoints: int = 2  # best ones kept (by score), plus always the latest
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # Ray CPUs per worker; 0 = the cluster's CPUs / num_workers

    def validate(self) -> None:
        name = type(self).__name__
        require(bool(self.store), f"{name}.store is empty: pass --store STORE (a `cclray prep` output)")
        require(bool(self.split), f"{name}.split is empty: name a split of the store, e.g. 'pretrain'")
        for key in ("epochs", "steps_per_epoch", "checkpoint_every", "keep_checkpoints", "num_workers"):
            require(getattr(self, key) >= 1, f"{name}.{key}={getattr(self, key)} must be >= 1")
        require(self.lr > 0, f"{name}.lr={self.lr} must be > 0")
        require(self.weight_decay >= 0, f"{name}.weight_decay={self.weight_decay} must be >= 0")
        require(self.grad_clip >= 0, f"{name}.grad_clip={self.grad_clip} must be >= 0 (0 = no clipping)")
        require(self.lr_schedule in LR_SCHEDULES, f"{name}.lr_schedule={self.lr_schedule!r}: use one of "
                                                   f"{list(LR_SCHEDULES)}")
        require(0 < self.plateau_factor < 1, f"{name}.plateau_factor={self.plateau_factor} must be in (0, 1)")
        require(self.plateau_patience >= 0, f"{name}.plateau_patience={self.plateau_patience} must be >= 0")
        require(0 <= self.min_lr <= self.lr, f"{name}.min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        require(self.cpus_per_worker >= 0, f"{name}.cpus_per_worker={self.cpus_per_worker} must be >= 0")
        s = self.model.stride
        bad = [p for p in self.patch.patch_size if p % s]
        require(not bad, f"{name}: patch.patch_size={list(self.patch.patch_size)} is not a multiple of "
                         f"the network stride {s} (= 2 ** (len(model.widths) - 1)): use multiples of {s} "
                         f"or fewer model.widths")

    @property
    def stage(self) -> str:
        raise NotImplementedError

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Training patch size (read by export and evaluation)."""
        return self.patch.patch_size

    def patch_for(self, world_size: int) -> PatchConfig:
        """The PatchConfig a rank uses: ``samples_per_epoch = steps_per_epoch * batch_size * world_size``."""
        return self.patch.replace(
            samples_per_epoch=self.steps_per_epoch * self.patch.batch_size * int(world_size))


@dataclass(frozen=True)
class PretrainConfig(StageConfig):
    """Stage 1: CCL pretraining of ``model`` on ``split`` with constraint map ``constraint``."""

    split: str = "pretrain"
    lr_schedule: str = "cosine"  # see StageConfig.lr_schedule
    constraint: str = DEFAULT_CONSTRAINT  # store array constraint/<name> (`cclray constraint` adds others)

    @property
    def stage(self) -> str:
        return "pretrain"

    def validate(self) -> None:
        super().validate()
        require(bool(self.constraint), "PretrainConfig.constraint is empty: name a constraint map of the "
                                       f"store, e.g. {DEFAULT_CONSTRAINT!r}")
        require(min(self.patch.patch_size) // self.model.proj_stride >= 1,
                f"PretrainConfig: patch.patch_size={list(self.patch.patch_size)} is smaller than "
                f"model.proj_stride={self.model.proj_stride}")


@dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    """Stage 2: T1w/T2w synthesis on ``split``; ``init`` = pretrain run/checkpoint or None (scratch).

    ``loss.l1_weight`` / ``loss.ssim_weight`` weigh the synthesis loss; validation on ``val_split``
    every ``val_every`` epochs over ``val_samples`` fixed patches (mean masked L1 and SSIM).
    """

    split: str = "finetune"
    init: str | None = None  # pretrain run dir or checkpoint; None = random init (the baseline)
    val_split: str | None = "val"  # None = no validation (plateau and "best" then use train loss)
    val_every: int = 1  # epochs; checkpoint epochs are always validated
    val_samples: int = 8  # fixed validation patches (same seed every time: comparable across epochs)

    @property
    def stage(self) -> str:
        return "finetune"

    def validate(self) -> None:
        super().validate()
        require(self.val_every >= 1, f"FinetuneConfig.val_every={self.val_every} must be >= 1")
        require(self.val_samples >= 1, f"FinetuneConfig.val_samples={self.val_samples} must be >= 1")
        require(self.val_split != self.split,
                f"FinetuneConfig.val_split={self.val_split!r} equals split: validate on held-out subjects")


CONFIGS: dict[str, type[StageConfig]] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def stage_config(stage: str, data: dict | StageConfig) -> StageConfig:
    """The typed config of ``stage`` from a plain dict (or a config, checked to be of that stage)."""
    if stage not in CONFIGS:
        raise ValueError(f"unknown stage {stage!r}: use one of {list(STAGES)}")
    cls = CONFIGS[stage]
    if isinstance(data, StageConfig):
        if not isinstance(data, cls):
            raise ValueError(f"a {type(data).__name__} was given for stage {stage!r}: pass a {cls.__name__}")
        return data
    return cls.from_dict(data)
