"""The floor: a voxelwise gradient-boosted regressor from the input contrasts to each target contrast.

Features per voxel: the input contrasts (z-scored, as stored) and Gaussian-blurred copies of each
(σ = 1 and 2.5 voxels; the blur is normalised by the blurred brain mask so the background's zeros do
not bleed into the brain's edge). One scikit-learn ``HistGradientBoostingRegressor`` per target,
fitted on voxels inside the brain of the finetune split (a random subsample, ``max_voxels``). A network
that does not beat it has learned nothing spatial beyond a few voxels of context.

Saved as ``DIR/regressor.joblib`` (the fitted models; a pickle: load only folders you made) and
``DIR/regressor.json`` (what it is); :func:`is_regressor_run` tells ``cclray evaluate`` such a folder
from a training run.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep.schema import canonical_contrast, channel_index

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE = "regressor.joblib", "regressor.json"


@dataclass(frozen=True)
class RegressorSpec:
    """What the floor is fitted on; read by ``cclray evaluate`` as its ``model_cfg`` (inputs, targets)."""

    inputs: tuple[str, ...] = ("t1gd", "flair")
    targets: tuple[str, ...] = ("t1w", "t2w")
    sigmas: tuple[float, ...] = (1.0, 2.5)
    split: str = "finetune"
    max_voxels: int = 200_000
    max_iter: int = 200
    seed: int = 0
    stride: int = 1  # no network stride (evaluation reads it)
    patch_size: tuple[int, ...] = field(default=(0, 0, 0))


def features(image: np.ndarray, mask: np.ndarray, inputs: Sequence[str], sigmas: Sequence[float]) -> np.ndarray:
    """``(N_brain, len(inputs) * (1 + len(sigmas)))`` float32 features of the brain voxels of a
    ``(4, X, Y, Z)`` stored image."""
    from scipy.ndimage import gaussian_filter

    brain = np.asarray(mask, bool)
    m = brain.astype(np.float32)
    cols = []
    for c in inputs:
        v = np.where(brain, np.asarray(image[channel_index(c)], np.float32), 0.0)
        cols.append(v[brain])
        for s in sigmas:
            num, den = gaussian_filter(v, s), gaussian_filter(m, s)
            cols.append((num[brain] / np.maximum(den[brain], 1e-6)).astype(np.float32))
    return np.stack(cols, axis=1)


class VoxelRegressor:
    """The fitted floor: ``predict_volume(image, mask) -> (T, X, Y, Z)`` float32, 0 outside the brain."""

    def __init__(self, spec: RegressorSpec, models: list):
        self.spec, self.models = spec, models

    def predict_volume(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        brain = np.asarray(mask, bool)
        x = features(image, brain, self.spec.inputs, self.spec.sigmas)
        out = np.zeros((len(self.models), *brain.shape), np.float32)
        for t, model in enumerate(self.models):
            out[t][brain] = model.predict(x)
        return out

    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        import joblib

        from data_prep.atomic import atomic_path, atomic_write

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / MODEL_FILE) as tmp:
            joblib.dump(self.models, tmp)
        atomic_write(out / META_FILE, json.dumps({"kind": "regressor", "spec": asdict(self.spec), **(extra or {})},
                                                 indent=2))
        return out

    @classmethod
    def load(cls, run_dir: str | Path) -> "VoxelRegressor":
        import joblib

        run = Path(run_dir)
        meta = json.loads((run / META_FILE).read_text())
        spec = RegressorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["spec"].items()})
        return cls(spec, joblib.load(run / MODEL_FILE))


def is_regressor_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / META_FILE).is_file() and (p / MODEL_FILE).is_file()


def fit_regressor(store_url: str, spec: RegressorSpec = RegressorSpec()) -> tuple[VoxelRegressor, dict]:
    """Fit one ``HistGradientBoostingRegressor`` per target on ``spec.split`` -> (regressor, info)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from data_prep.store import Store

    spec = RegressorSpec(**{**asdict(spec), "inputs": tuple(canonical_contrast(c) for c in spec.inputs),
                            "targets": tuple(canonical_contrast(c) for c in spec.targets)})
    store = Store(store_url)
    sids = store.subjects(spec.split)
    if not sids:
        raise ValueError(f"split {spec.split!r} of {store.url} is empty: nothing to fit the regressor on")
    rng = np.random.default_rng(spec.seed)
    per_subject = max(1, spec.max_voxels // len(sids))
    xs, ys = [], []
    t0 = time.perf_counter()
    for sid in sids:
        image = np.asarray(store.read(sid, "image"), np.float32)  # (4, X, Y, Z)
        brain = store.read(sid, "mask").astype(bool)
        x = features(image, brain, spec.inputs, spec.sigmas)
        y = np.stack([image[channel_index(c)][brain] for c in spec.targets], axis=1)
        pick = rng.choice(len(x), size=min(per_subject, len(x)), replace=False)
        xs.append(x[pick])
        ys.append(y[pick])
    x, y = np.concatenate(xs), np.concatenate(ys)
    models = []
    for t in range(y.shape[1]):
        m = HistGradientBoostingRegressor(max_iter=spec.max_iter, random_state=spec.seed)
        models.append(m.fit(x, y[:, t]))
    info = {"subjects": len(sids), "voxels": int(len(x)), "seconds": round(time.perf_counter() - t0, 1),
            "train_r2": [float(m.score(x, y[:, t])) for t, m in enumerate(models)]}
    log.info("regressor fitted on %d voxels of %d subjects in %.1f s", info["voxels"], len(sids), info["seconds"])
    return VoxelRegressor(spec, models), info
