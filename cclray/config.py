"""Every training config in one torch-free module, in the order of the ``--set`` key tree.

A stage config (``cclray pretrain|finetune --config F.json --set key=value``) is this tree of keys; the
nested groups are :class:`ModelConfig` (``model.*``), :class:`LossConfig` (``loss.*``) and
:class:`PatchConfig` (``patch.*``), then the stage keys themselves (:class:`StageConfig`, with
:class:`PretrainConfig` / :class:`FinetuneConfig` adding their own)::

    store, split                       the Zarr store and its training split
    extra                              more stores to draw training patches from (ExtraSource: store, split, weight)
    model.inputs, model.targets, model.widths, model.groups, model.proj_dim, model.proj_stride,
    model.act, model.down, model.up    the 3D encoder-decoder and its heads
    loss.n_anchors, loss.top_k, loss.temperature, loss.self_positive, loss.l1_weight, loss.ssim_weight
    patch.patch_size, patch.batch_size, patch.fg_fraction, patch.patches_per_volume,
    patch.region_factor, patch.augment, patch.rotate_deg, patch.scale, patch.num_workers,
    patch.samples_per_epoch
    epochs, steps_per_epoch, lr, weight_decay, grad_clip, lr_schedule, plateau_factor,
    plateau_patience, min_lr, amp, cpu_bf16, channels_last, seed, checkpoint_every,
    keep_checkpoints, num_workers, use_gpu, cpus_per_worker
    constraint                         (pretrain) the store's constraint map
    init, val_split, val_every, val_samples, probe    (finetune)

Several stores: ``extra`` lists more (store, split) sources, e.g. a phantom cohort next to the real store's
pretrain split; patches then come from every subject of every source in one shuffled order
(:mod:`cclray.data.sources` opens and cross-checks them before training).

Each stage turns its plain dict (Ray's ``train_loop_config``, a checkpoint's JSON, a Tune trial) into
one of these at once: an unknown key is an error naming the close match (``FrozenConfig``), not a silent
default. Every checkpoint stores its config as JSON.

The two stages are symmetrical: the same optimisation, checkpoint and scaling keys; pretraining adds the
constraint-map name, finetuning adds ``init`` (a pretrain run or checkpoint; None = from scratch, the
baseline) and validation.

Budget: one epoch is ``steps_per_epoch`` optimizer steps on every Ray worker, i.e.
``steps_per_epoch * patch.batch_size * world_size`` patches; ``patch.samples_per_epoch`` is ignored
and replaced by that product (:meth:`StageConfig.patch_for`).

Imports no torch: the CLI builds and checks a config before anything heavy is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_prep.config import FrozenConfig, require
from data_prep.constraint import DEFAULT_SPEC
from data_prep.schema import CONTRAST_ALIASES, CONTRASTS, DEFAULT_INPUTS, DEFAULT_TARGETS

DEFAULT_CONSTRAINT = DEFAULT_SPEC.name  # the constraint map `cclray prep` computes by default
STAGES = ("pretrain", "finetune")
LR_SCHEDULES = ("plateau", "cosine", "constant")


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested dicts are merged key by key (neither input is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------- model.*
def _check_contrasts(key: str, names: tuple[str, ...]) -> None:
    require(len(names) >= 1, f"ModelConfig.{key} is empty: name at least one of {list(CONTRASTS)}")
    for n in names:
        require(
            n in CONTRASTS,
            f"ModelConfig.{key} has {n!r}, not a canonical contrast: use one of {list(CONTRASTS)}"
            + (f" ({n!r} is an alias of {CONTRAST_ALIASES[n.lower()]!r})"
               if n.lower() in CONTRAST_ALIASES else ""),
        )
    require(len(set(names)) == len(names), f"ModelConfig.{key}={list(names)} repeats a contrast")


@dataclass(frozen=True)
class ModelConfig(FrozenConfig):
    """The 3D encoder-decoder shared by both stages, and its heads.

    ``widths[i]`` is the channel width at level ``i`` (spatial stride ``2**i``); the network stride is
    ``2 ** (len(widths) - 1)`` and every input spatial size must be a multiple of it.
    """

    inputs: tuple[str, ...] = DEFAULT_INPUTS  # canonical contrast names = input channels
    targets: tuple[str, ...] = DEFAULT_TARGETS  # synthesized contrasts = output channels
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)
    groups: int = 8  # GroupNorm groups; must divide every width
    proj_dim: int = 64
    proj_stride: int = 4  # decoder level of the projection head: features at 1/proj_stride resolution
    act: Literal["leaky_relu", "relu"] = "leaky_relu"
    down: Literal["conv", "maxpool"] = "conv"  # strided 3x3x3 conv, or 2x2x2 max-pool
    up: Literal["transpose", "trilinear"] = "transpose"  # 2x2x2 transposed conv, or trilinear + 1x1x1

    @property
    def stride(self) -> int:
        """Total downsampling factor of the encoder."""
        return 2 ** (len(self.widths) - 1)

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def out_channels(self) -> int:
        return len(self.targets)

    def width_at(self, stride: int) -> int:
        """Channel width of the decoder features at ``1/stride`` resolution."""
        return self.widths[stride.bit_length() - 1]

    def validate(self) -> None:
        _check_contrasts("inputs", self.inputs)
        _check_contrasts("targets", self.targets)
        both = sorted(set(self.inputs) & set(self.targets))
        require(not both, f"ModelConfig: {both} is both an input and a target; remove it from one")
        require(len(self.widths) >= 2,
                f"ModelConfig.widths={list(self.widths)} needs at least 2 levels (one downsampling)")
        require(self.groups >= 1, f"ModelConfig.groups={self.groups} must be >= 1")
        bad = [w for w in self.widths if w < 1 or w % self.groups]
        require(not bad, f"ModelConfig.widths {bad} not divisible by groups={self.groups}: "
                         f"use multiples of {self.groups} or change groups")
        require(self.proj_dim >= 1, f"ModelConfig.proj_dim={self.proj_dim} must be >= 1")
        s = self.proj_stride
        require(s >= 1 and s & (s - 1) == 0 and s <= self.stride,
                f"ModelConfig.proj_stride={s} must be a power of two between 1 and the network "
                f"stride {self.stride} (= 2 ** (len(widths) - 1))")


# ---------------------------------------------------------------------------------------- loss.*
@dataclass(frozen=True)
class LossConfig(FrozenConfig):
    """CCL loss (stage 1) and synthesis loss (stage 2) settings."""

    # anchors per patch; the authors' 20 is for a 160x160 2D slice, a 3D patch has many more features and the
    # loss is vectorized: 512 anchors cost 1.44x the step time of 20 (256: 1.35x) on the cpu preset's network
    # (docs/METHOD.md, benchmarks/bench_anchors.py)
    n_anchors: int = 512
    top_k: int = 100
    temperature: float = 0.1
    self_positive: bool = True  # the anchor is among its own positives, as the authors' top-k (docs/METHOD.md)
    l1_weight: float = 1.0  # stage 2: masked L1
    ssim_weight: float = 0.0  # stage 2: optional (1 - SSIM) term

    def validate(self) -> None:
        require(self.n_anchors >= 1, f"LossConfig.n_anchors={self.n_anchors} must be >= 1")
        require(self.top_k >= 1, f"LossConfig.top_k={self.top_k} must be >= 1")
        require(self.temperature > 0, f"LossConfig.temperature={self.temperature} must be > 0")
        require(self.l1_weight >= 0 and self.ssim_weight >= 0,
                "LossConfig.l1_weight and ssim_weight must be >= 0")
        require(self.l1_weight + self.ssim_weight > 0,
                "LossConfig: l1_weight + ssim_weight is 0; give one of them a positive weight")


# ---------------------------------------------------------------------------------------- patch.*
@dataclass(frozen=True)
class PatchConfig(FrozenConfig):
    """How patches are sampled and batched."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    fg_fraction: float = 0.67  # share of patches centred on a foreground (brain) voxel; rest uniform
    # patches cut from one loaded region before moving to the next subject; 1 (the default) makes every batch
    # hold patches of batch_size different subjects (docs/METHOD.md); > 1 reads less but correlates a batch
    patches_per_volume: int = 1
    region_factor: float = 1.5  # region edge = patch edge x this (when patches_per_volume > 1), capped at the volume
    # random flips of the 3 axes, a rotation and an isotropic scale: one affine for inputs, targets (linear) and
    # mask, labels (nearest); no intensity change (a synthesis network maps intensities: jittering inputs only
    # would teach the wrong invariance). Off by default: the authors pretrain without augmentation
    # (docs/METHOD.md section 3; cclray/data/augmentation.py)
    augment: bool = False
    rotate_deg: float = 15.0  # with augment: rotation about a random axis by at most this angle (0 = none)
    scale: tuple[float, float] = (0.95, 1.05)  # with augment: isotropic scale range ((1, 1) = none)
    num_workers: int = 1  # DataLoader workers per training process
    samples_per_epoch: int = 64

    def validate(self) -> None:
        require(all(p >= 1 for p in self.patch_size),
                f"PatchConfig.patch_size={list(self.patch_size)}: every edge must be >= 1")
        require(self.batch_size >= 1, f"PatchConfig.batch_size={self.batch_size}: must be >= 1")
        require(0.0 <= self.fg_fraction <= 1.0, f"PatchConfig.fg_fraction={self.fg_fraction}: must be in [0, 1]")
        require(self.patches_per_volume >= 1,
                f"PatchConfig.patches_per_volume={self.patches_per_volume}: must be >= 1")
        require(self.region_factor >= 1.0, f"PatchConfig.region_factor={self.region_factor}: must be >= 1")
        require(0.0 <= self.rotate_deg <= 180.0,
                f"PatchConfig.rotate_deg={self.rotate_deg}: must be in [0, 180] degrees (0 = no rotation)")
        lo, hi = self.scale
        require(0.5 <= lo <= hi <= 2.0, f"PatchConfig.scale={list(self.scale)}: must be [low, high] with "
                                        "0.5 <= low <= high <= 2 ([1, 1] = no scaling)")
        require(self.num_workers >= 0, f"PatchConfig.num_workers={self.num_workers}: must be >= 0")
        require(self.samples_per_epoch >= 1,
                f"PatchConfig.samples_per_epoch={self.samples_per_epoch}: must be >= 1")



# ---------------------------------------------------------------------------------------- extra.*
@dataclass(frozen=True)
class ExtraSource(FrozenConfig):
    """One more store to draw training patches from (an entry of a stage config's ``extra``).

    Written as a mapping ``{"store": URL, "split": "a,b", "weight": 1.0}`` or as the string
    ``"URL#SPLIT[,SPLIT]"`` (``--extra-store``, ``--set extra='["URL#SPLIT"]'``). Sampling is per subject:
    each pass over the subjects visits every subject of every source once, in one shuffled order, so with
    ``weight`` 1 a source's share of the patches is its share of the subjects (80 phantom + 7 real subjects:
    92 % phantom). ``weight`` = w visits each subject of this source w times a pass on average (the whole part
    always, the fraction by chance): 80 phantom subjects at w = 7/80 weigh as much as 7 real ones in the main
    store.
    """

    store: str = ""  # URL or path of a cclray Zarr store
    split: str = ""  # its split(s), joined by ","
    weight: float = 1.0  # visits of each of its subjects per pass, relative to the main store's (1 each)

    @classmethod
    def from_dict(cls, data, where: str = "") -> "ExtraSource":
        if isinstance(data, str):
            data = cls.parse(data, where)
        return super().from_dict(data, where)

    @staticmethod
    def parse(text: str, where: str = "") -> dict:
        """``"URL#SPLIT[,SPLIT]"`` -> ``{"store": URL, "split": SPLIT}`` (a ConfigError naming the form)."""
        store, sep, split = str(text).rpartition("#")
        require(bool(sep) and bool(store.strip()) and bool(split.strip()),
                f"{where.rstrip('.') or 'extra'} entry {text!r}: write STORE#SPLIT[,SPLIT], e.g. /data/phantom.zarr#pretrain "
                "(the store and which of its splits to train on)")
        return {"store": store.strip(), "split": split.strip()}

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.split.split(",") if s.strip())

    def validate(self) -> None:
        require(bool(self.store), "ExtraSource.store is empty: give the URL or path of a `cclray prep` store")
        require(bool(self.splits), f"ExtraSource.split is empty: name a split of {self.store}, e.g. 'pretrain'")
        require(self.weight > 0, f"ExtraSource.weight={self.weight} must be > 0 (1 = by size; leave the "
                                 "source out instead of weight 0)")


# ---------------------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class StageConfig(FrozenConfig):
    """Keys shared by both stages (use :class:`PretrainConfig` or :class:`FinetuneConfig`)."""

    store: str = ""  # URL or path of the cclray Zarr store (`cclray prep ... --out STORE`)
    split: str = ""  # training split of the store; several joined by "," ("pretrain,finetune": their union)
    extra: tuple[ExtraSource, ...] = ()  # more (store, split) sources of training patches, e.g. a phantom cohort
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
    # "constant": no decay. Both stages default to cosine. Pretraining: its only score is the training loss
    # of a random patch stream, too noisy for plateau detection (measured: plateau took the lr from 1e-3 to
    # 1e-6 within 1400 of 2000 steps while the CCL loss was still falling at 1e-3). Finetuning: plateau on
    # the validation L1 of 64 patches read their noise as plateaus (the ceiling's lr 6e-5 by step 1080 of
    # 2000, still under-fitted); cosine over the same steps raised the phantom ceiling's T1w SSIM from 0.805
    # to 0.825 and scratch's at n = 10 from 0.797 to 0.804 (docs/RESULTS.md section 3).
    lr_schedule: str = "cosine"  # finetuning's default was plateau until 2026-12-06
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
    def splits(self) -> tuple[str, ...]:
        """The training splits named by ``split`` (``"pretrain,finetune"`` -> both)."""
        return tuple(s.strip() for s in self.split.split(",") if s.strip())

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
    val_split: str | None = "val"  # None = no validation (a plateau schedule and "best" then use train loss)
    val_every: int = 1  # epochs; checkpoint epochs are always validated
    # fixed validation patches (same seed every time: comparable across epochs). They pick the plateau lr steps
    # and the "best" checkpoint, so not few: 8 patches were one or two subjects' noise (docs/EVALUATION.md)
    val_samples: int = 64
    # a linear probe: the backbone frozen, a 1x1x1 head on its proj_stride features (models/heads.py Synthesizer)
    probe: bool = False

    @property
    def stage(self) -> str:
        return "finetune"

    def validate(self) -> None:
        super().validate()
        require(self.val_every >= 1, f"FinetuneConfig.val_every={self.val_every} must be >= 1")
        require(self.val_samples >= 1, f"FinetuneConfig.val_samples={self.val_samples} must be >= 1")
        require(self.val_split not in self.splits,
                f"FinetuneConfig.val_split={self.val_split!r} is a training split ({self.split!r}): validate "
                "on held-out subjects")


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
