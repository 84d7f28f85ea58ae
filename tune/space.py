"""What a sweep searches, and how one sampled point becomes the two stage configs of a trial.

A point is a flat dict (what Optuna samples and the results CSV shows); the reference point
:data:`DEFAULT_POINT` is the stage configs' defaults, e.g.::

    {"pretrain": True, "contrasts": "all", "k": 20, "temperature": 0.1, "top_k": 100,
     "n_anchors": 20, "proj_stride": 4, "pretrain_lr": 1e-3}

``pretrain=False`` is the control arm (finetune from random init, the same finetune budget); the
CCL keys are then unused. ``contrasts`` names a preset of :data:`data_prep.constraint.PRESETS`.
Budgets (:data:`BUDGETS`) fix everything that is not searched: patch size, widths, epochs, steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from cclray.config import LossConfig, ModelConfig, PretrainConfig, deep_merge
from data_prep.config import ConfigError, FrozenConfig, require
from data_prep.constraint import DEFAULT_SPEC, PRESETS, ConstraintSpec

log = logging.getLogger(__name__)


def _reference_point() -> dict:
    """The stage configs' defaults and the constraint map `cclray prep` computes by default."""
    loss, model = LossConfig(), ModelConfig()
    contrasts = next(name for name, cs in PRESETS.items() if cs == DEFAULT_SPEC.contrasts)
    return {"pretrain": True, "contrasts": contrasts, "k": DEFAULT_SPEC.k, "temperature": loss.temperature,
            "top_k": loss.top_k, "n_anchors": loss.n_anchors, "proj_stride": model.proj_stride,
            "pretrain_lr": PretrainConfig.lr}


#: The reference values (the defaults of the method): Optuna evaluates this point first, so "best vs
#: defaults" is measured.
DEFAULT_POINT: dict = _reference_point()
POINT_KEYS = tuple(DEFAULT_POINT)

_TINY_MODEL = {"widths": (8, 16, 32), "groups": 4, "proj_dim": 16}
_PATCH = {"batch_size": 2, "num_workers": 0, "patches_per_volume": 2}
#: name -> {"pretrain": PretrainConfig overrides, "finetune": FinetuneConfig overrides}.
#: "tiny" is for tests (seconds a stage); "small" for 2 mm phantom stores on a CPU; "medium"/"large" for GPUs.
BUDGETS: dict[str, dict[str, dict]] = {
    "tiny": {"pretrain": {"model": _TINY_MODEL, "patch": {**_PATCH, "patch_size": (16, 16, 16)},
                          "epochs": 1, "steps_per_epoch": 2},
             "finetune": {"model": _TINY_MODEL, "patch": {**_PATCH, "patch_size": (16, 16, 16)},
                          "epochs": 2, "steps_per_epoch": 2, "val_samples": 2}},
    "small": {"pretrain": {"model": {"widths": (16, 32, 64, 64)}, "patch": {**_PATCH, "patch_size": (32, 32, 32)},
                           "epochs": 3, "steps_per_epoch": 6},
              "finetune": {"model": {"widths": (16, 32, 64, 64)}, "patch": {**_PATCH, "patch_size": (32, 32, 32)},
                           "epochs": 4, "steps_per_epoch": 6, "val_samples": 8}},
    "medium": {"pretrain": {"patch": {"patch_size": (64, 64, 64)}, "epochs": 20, "steps_per_epoch": 32},
               "finetune": {"patch": {"patch_size": (64, 64, 64)}, "epochs": 20, "steps_per_epoch": 16,
                            "val_samples": 16}},
    "large": {"pretrain": {"patch": {"patch_size": (96, 96, 96)}, "epochs": 100, "steps_per_epoch": 64},
              "finetune": {"patch": {"patch_size": (96, 96, 96)}, "epochs": 50, "steps_per_epoch": 32,
                           "val_samples": 32}},
}


@dataclass(frozen=True)
class SearchSpace(FrozenConfig):
    """The choices of each searched key (categorical) or its ``(low, high)`` range (log-uniform)."""

    k: tuple[int, ...] = (10, 20, 30)
    contrasts: tuple[str, ...] = ("all", "t1-only", "t2-only")
    temperature: tuple[float, float] = (0.05, 0.5)
    top_k: tuple[int, ...] = (50, 100, 200)
    n_anchors: tuple[int, ...] = (64, 256, 512)
    proj_stride: tuple[int, ...] = (2, 4, 8)
    pretrain_lr: tuple[float, float] = (1e-4, 3e-3)
    pretrain_arm: bool = True  # also sample "no pretraining" (the control arm)

    def validate(self) -> None:
        for key in ("k", "contrasts", "top_k", "n_anchors", "proj_stride"):
            require(len(getattr(self, key)) >= 1, f"SearchSpace.{key} is empty: give at least one choice")
        bad = [c for c in self.contrasts if c not in PRESETS]
        require(not bad, f"SearchSpace.contrasts {bad} unknown: use presets {list(PRESETS)}")
        for key in ("temperature", "pretrain_lr"):
            lo, hi = getattr(self, key)
            require(0 < lo <= hi, f"SearchSpace.{key}=({lo}, {hi}) must satisfy 0 < low <= high")

    def param_space(self, network_stride: int) -> dict:
        """Ray Tune domains. ``proj_stride`` choices above ``network_stride`` (the budget's model) are
        dropped with a warning; none left is a :class:`ConfigError`."""
        from ray import tune

        strides = [s for s in self.proj_stride if s <= network_stride]
        if len(strides) < len(self.proj_stride):
            log.warning("proj_stride %s dropped: the budget's network stride is %d",
                        sorted(set(self.proj_stride) - set(strides)), network_stride)
        if not strides:
            raise ConfigError(f"SearchSpace.proj_stride={list(self.proj_stride)}: all above the network stride "
                              f"{network_stride}; choose from powers of two <= {network_stride}")

        def pick(values):
            return tune.choice(list(values))

        def rng(lo_hi):
            lo, hi = lo_hi
            return tune.loguniform(lo, hi) if hi > lo else lo

        return {"pretrain": pick([True, False] if self.pretrain_arm else [True]),
                "contrasts": pick(self.contrasts), "k": pick(self.k), "temperature": rng(self.temperature),
                "top_k": pick(self.top_k), "n_anchors": pick(self.n_anchors), "proj_stride": pick(strides),
                "pretrain_lr": rng(self.pretrain_lr)}

    def default_point(self, network_stride: int) -> dict | None:
        """:data:`DEFAULT_POINT` when it lies inside this space (else None: nothing to compare with)."""
        p = dict(DEFAULT_POINT)
        inside = (p["k"] in self.k and p["contrasts"] in self.contrasts and p["top_k"] in self.top_k
                  and p["n_anchors"] in self.n_anchors and p["proj_stride"] in self.proj_stride
                  and p["proj_stride"] <= network_stride
                  and self.temperature[0] <= p["temperature"] <= self.temperature[1]
                  and self.pretrain_lr[0] <= p["pretrain_lr"] <= self.pretrain_lr[1])
        return p if inside else None


def budget(name: str) -> dict[str, dict]:
    """Overrides of a named budget (a copy)."""
    if name not in BUDGETS:
        raise ConfigError(f"unknown budget {name!r}: use one of {list(BUDGETS)}")
    return {stage: dict(v) for stage, v in BUDGETS[name].items()}


def constraint_spec(point: dict, seed: int = 0) -> ConstraintSpec:
    """The constraint-map setting a point asks for."""
    contrasts = point["contrasts"]
    if contrasts not in PRESETS:
        raise ConfigError(f"point contrasts={contrasts!r} is not a preset: use one of {list(PRESETS)}")
    return ConstraintSpec(contrasts=PRESETS[contrasts], k=int(point["k"]), seed=seed)


def stage_dicts(point: dict, store: str, budget_name: str, base: dict | None = None) -> tuple[dict, dict]:
    """``(pretrain dict, finetune dict)`` of one point (plain dicts; the constraint name and ``init``
    are filled in by the trial). ``base``: extra ``{"pretrain": {...}, "finetune": {...}}`` overrides
    applied after the budget (e.g. ``num_workers``, ``use_gpu``)."""
    missing = [k for k in POINT_KEYS if k not in point]
    if missing:
        raise ConfigError(f"search point lacks {missing}: a point needs {list(POINT_KEYS)}")
    b = budget(budget_name)
    base = base or {}
    common = {"store": store}
    pre = deep_merge(deep_merge(common, b["pretrain"]), base.get("pretrain", {}))
    fine = deep_merge(deep_merge(common, b["finetune"]), base.get("finetune", {}))
    stride = int(point["proj_stride"])
    pre = deep_merge(pre, {"model": {"proj_stride": stride}, "lr": float(point["pretrain_lr"]),
                       "loss": {"n_anchors": int(point["n_anchors"]), "top_k": int(point["top_k"]),
                                "temperature": float(point["temperature"])}})
    fine = deep_merge(fine, {"model": {"proj_stride": stride}})  # same architecture key as the pretrain checkpoint
    return pre, fine
