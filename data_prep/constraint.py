"""Constraint maps: per-voxel cluster labels that summarize a subject's multi-contrast signal (docs/METHOD.md).

Recipe ``RECIPE`` = 2, the authors' public 2D reference code (``Datagen/generate_constraint_maps.py``) made 3D,
per subject and setting:

1. take the chosen contrasts; stretch each to its 0.01–99.9 percentile inside the brain (clip, scale to [0, 1]);
2. stack the brain voxels as ``(N, C)``; PCA with ``C`` components (scikit-learn);
3. min-max all components *together* to [0, 1] inside the brain (one global min and max: the components keep
   their variance ratio, so a noise component stays small);
4. total-variation denoise each component as a 3D volume with the authors' call, scikit-image
   ``denoise_tv_bregman(pc / pc.max(), weight=40)`` (split Bregman; on this scale about Chambolle 0.0125, an
   eighth of recipe 1's Chambolle 0.1: docs/METHOD.md has the measurement); outside the brain each component is
   filled with its nearest brain voxel first, so the brain's edge is not pulled toward a background value;
5. k-means with ``K`` clusters (scikit-learn ``KMeans``, k-means++ init, ``n_init=1``, seeded), fitted on a
   seeded random subsample of at most 200 000 brain voxels, then ``predict`` on every brain voxel (PCA and
   k-means on one BLAS/OpenMP thread, so a map is the same whichever thread count prepared the store);
6. relabel the clusters 1..K in a canonical order (centres sorted by PC1, then PC2, ...); 0 outside the brain.

Deviation kept: the authors cluster the whole volume, background included; we cluster brain voxels only. The
labels explain T1w/T2w variance inside the brain at least as well (R², :func:`label_r2`; docs/METHOD.md).

The labels are a deterministic function of (volumes, mask, K, seed), and invariant to a positive affine change
of any contrast's intensities (the percentile stretch removes it). A store records the recipe of each setting
(``ConstraintSpec.recipe``); a map of another recipe is refused with the fix (recompute it).

:func:`add_constraint` adds a setting to every subject of an existing store, safely under concurrent callers.
"""
from __future__ import annotations

import logging
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import ConfigError, FrozenConfig, require
from .schema import CONTRASTS, canonical_contrast, channel_index, constraint_name

log = logging.getLogger(__name__)

STRETCH_PERCENTILES = (0.01, 99.9)
RECIPE = 2  # 1: per-component min-max, Chambolle 0.1 (before docs/METHOD.md); 2: the authors' (module docstring)
TV_BREGMAN_WEIGHT = 40.0  # the authors' denoise_tv_bregman weight, on components scaled to max 1
FIT_SAMPLES = 200_000  # brain voxels k-means is fitted on (then predicts all)
KMEANS_N_INIT = 1  # n_init=3 lowered inertia by 1% at 3.4x the fit cost
MAX_K = 255  # labels are uint8

#: Named contrast sets a person may type instead of a list.
PRESETS: dict[str, tuple[str, ...]] = {
    "all": CONTRASTS,
    "t1-only": ("t1gd", "t1w"),
    "t2-only": ("t2w", "flair"),
}
_SPEC_HELP = ("write CONTRASTS[:k=K][,seed=S] with CONTRASTS a comma list of t1w,t1gd,t2w,flair (aliases t1, t1ce, "
              "t2, t2f, ...) or one of 'all', 't1-only', 't2-only'; e.g. 't1gd,t1w:k=30' or 'all:k=20,seed=1'")


@dataclass(frozen=True)
class ConstraintSpec(FrozenConfig):
    """One constraint-map setting. ``contrasts`` are canonicalized and kept in the store's channel order."""

    contrasts: tuple[str, ...] = CONTRASTS
    k: int = 20
    seed: int = 0
    recipe: int = RECIPE  # how the map is made (module docstring); only the current one is computed

    def validate(self) -> None:
        try:
            canon = [canonical_contrast(c) for c in self.contrasts]
        except ValueError as e:
            raise ConfigError(f"ConstraintSpec.contrasts: {e}") from None
        require(len(canon) > 0, f"ConstraintSpec.contrasts is empty: {_SPEC_HELP}")
        require(len(set(canon)) == len(canon),
                f"ConstraintSpec.contrasts {list(self.contrasts)} names a contrast twice: give each once")
        require(2 <= self.k <= MAX_K,
                f"ConstraintSpec.k={self.k} is out of range: use 2 <= k <= {MAX_K} (20-30 work well)")
        require(self.seed >= 0, f"ConstraintSpec.seed={self.seed} must be >= 0")
        require(self.recipe == RECIPE, f"ConstraintSpec.recipe={self.recipe}: this cclray computes recipe {RECIPE} "
                                       f"only (docs/METHOD.md); leave recipe out")
        object.__setattr__(self, "contrasts", tuple(c for c in CONTRASTS if c in canon))

    @property
    def name(self) -> str:
        """Store name, e.g. ``t1w+t1gd-k30`` (the seed is recorded in root attrs, not in the name)."""
        return constraint_name(self.contrasts, self.k)

    @classmethod
    def parse(cls, text: str) -> "ConstraintSpec":
        """Parse the CLI form: ``"all:k=20"``, ``"t1gd,t1w:k=30,seed=1"``, ``"t2w,flair"``, ``"t1-only"``,
        or a store name such as ``"t1w+t1gd-k20"``."""
        raw = text.strip()
        m = re.fullmatch(r"([A-Za-z0-9+]+)-k(\d+)", raw)  # a store name
        if m:
            raw = f"{m.group(1).replace('+', ',')}:k={m.group(2)}"
        head, _, tail = raw.partition(":")
        head = head.strip().lower()
        values: dict = {}
        if head:
            values["contrasts"] = PRESETS.get(head) or tuple(c for c in re.split(r"[,+]", head) if c.strip())
        for item in filter(None, (s.strip() for s in tail.split(","))):
            key, eq, val = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in ("k", "seed") or not val.strip().lstrip("-").isdigit():
                raise ConfigError(f"bad constraint spec {text!r} (at {item!r}): {_SPEC_HELP}")
            values[key] = int(val)
        if not values:
            raise ConfigError(f"empty constraint spec {text!r}: {_SPEC_HELP}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"bad constraint spec {text!r}: {e}") from None

    def channel_indices(self) -> list[int]:
        """Indices of ``contrasts`` in the store's ``image`` array."""
        return [channel_index(c) for c in self.contrasts]


#: The setting ``cclray prep`` computes unless told otherwise (all four contrasts, K=20, seed 0); the
#: stage configs' default ``constraint`` and the sweep's reference point are its name and values.
DEFAULT_SPEC = ConstraintSpec()


def check_constraint(store, name: str, subjects: list[str], key: str = "PretrainConfig.constraint") -> None:
    """Refuse a constraint map ``name`` that ``store`` (a :class:`data_prep.store.Store`) neither records
    in its attrs nor holds for the first of ``subjects``; the message names the maps it has and the fix."""
    have = store.attrs.get("constraints") or {}
    if name in have:
        recipe = int(have[name].get("recipe", 1))
        if recipe != RECIPE:
            spec = have[name]
            raise ConfigError(
                f"{key}={name!r}: the map in {store.url} was made with constraint recipe {recipe}, this cclray "
                f"uses recipe {RECIPE} (the authors' TV strength and PC scaling, docs/METHOD.md): recompute it "
                f"with `cclray constraint {store.url} --contrasts {','.join(spec.get('contrasts', []))} "
                f"--k {spec.get('k')} --seed {spec.get('seed', 0)}`")
        return
    if not subjects or store.has_array(subjects[0], f"constraint/{name}"):
        return
    raise ConfigError(f"{key}={name!r}: constraint map not in {store.url} (it has {sorted(have)}): pass "
                      f"--constraint with one of those, or add it with `cclray constraint`")


# ------------------------------------------------------------------------------------------ the map
def tv_denoise(volume: np.ndarray, weight: float = TV_BREGMAN_WEIGHT) -> np.ndarray:
    """The authors' TV step: ``denoise_tv_bregman(v / v.max(), weight) * v.max()`` (scikit-image split Bregman;
    a larger ``weight`` denoises less). ``volume`` (X, Y, Z) float, max > 0 -> the same shape, float32."""
    from skimage.restoration import denoise_tv_bregman

    top = float(volume.max())
    if top <= 0:
        return volume.astype(np.float32, copy=True)
    return (denoise_tv_bregman(volume / top, weight=weight) * top).astype(np.float32)


def label_r2(labels: np.ndarray, values: np.ndarray, mask: np.ndarray) -> float:
    """How much of ``values``' variance inside ``mask`` the cluster ``labels`` explain: R² of the predictor
    "mean of the voxel's cluster" (= between-cluster / total sum of squares). All arrays (X, Y, Z); 1.0 when
    every cluster is constant, 0.0 when the cluster means are all equal (nan for a constant ``values``)."""
    lab = np.asarray(labels)[mask].astype(np.int64)
    v = np.asarray(values, dtype=np.float64)[mask]
    counts = np.bincount(lab)
    means = np.bincount(lab, weights=v) / np.maximum(counts, 1)
    total = float(((v - v.mean()) ** 2).sum())
    resid = float(((v - means[lab]) ** 2).sum())
    return 1.0 - resid / total if total > 0 else float("nan")


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def stretch(values: np.ndarray, percentiles=STRETCH_PERCENTILES) -> np.ndarray:
    """``(N, C)`` brain voxels -> ``(N, C)`` float64, each column clipped to its percentiles and scaled to [0, 1]
    (a constant column becomes 0)."""
    values = values.astype(np.float64, copy=False)
    lo, hi = np.percentile(values, percentiles, axis=0)  # (C,), (C,)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((values - lo) / span, 0.0, 1.0) * (hi > lo)


def constraint_map(volumes: np.ndarray, mask: np.ndarray, k: int = 20, seed: int = 0, *,
                   fit_samples: int = FIT_SAMPLES, denoise: Callable | None = None,
                   pc_scale: str = "global") -> np.ndarray:
    """volumes (C, X, Y, Z) float (any intensity scale), mask (X, Y, Z) bool -> (X, Y, Z) uint8 labels.

    Labels are 1..K inside ``mask`` (fewer, with a warning, only when the brain has fewer than K distinct
    feature vectors), 0 outside; deterministic for a given ``seed``. See the module docstring for the recipe.
    ``denoise``: the TV step on one component volume (default :func:`tv_denoise`, the authors' Bregman call);
    a measurement may swap in another. ``pc_scale``: ``"global"`` (one min-max for all components, the
    authors') or ``"each"`` (recipe 1: each component to [0, 1]; kept to measure against).
    """
    from scipy import ndimage
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    volumes = np.asarray(volumes)
    mask = np.asarray(mask, dtype=bool)
    if volumes.ndim != 4 or volumes.shape[1:] != mask.shape:
        raise ValueError(f"constraint_map needs volumes (C, X, Y, Z) and mask (X, Y, Z) of the same grid; "
                         f"got {volumes.shape} and {mask.shape}")
    if not 2 <= k <= MAX_K:
        raise ValueError(f"constraint_map: k={k} is out of range; use 2 <= k <= {MAX_K}")
    n_brain = int(mask.sum())
    if n_brain < k:
        raise ValueError(f"constraint_map: the brain mask has {n_brain} voxels, fewer than k={k}; "
                         f"check the mask or lower k")
    box = _bbox(mask)
    m = mask[box]  # (x, y, z) bool, tight box
    n_ch = volumes.shape[0]

    denoise = denoise or tv_denoise
    # 1-3: stretch, PCA, one min-max for all components (brain voxels only)
    x = stretch(volumes[(slice(None), *box)][:, m].T)  # (N, C) in [0, 1]
    with threadpool_limits(limits=1):  # one BLAS/OpenMP thread: the same map whatever the caller's thread count
        pcs = PCA(n_components=n_ch, random_state=seed).fit_transform(x)  # (N, C)
    if pc_scale not in ("global", "each"):
        raise ValueError(f"constraint_map: pc_scale={pc_scale!r}; use 'global' or 'each'")
    lo, hi = (pcs.min(), pcs.max()) if pc_scale == "global" else (pcs.min(axis=0), pcs.max(axis=0))
    pcs = ((pcs - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)

    # 4: TV denoise each component on the box; outside the brain = nearest brain voxel's value
    nearest = None
    if not m.all():
        nearest = ndimage.distance_transform_edt(~m, return_distances=False, return_indices=True)  # (3, x, y, z)
    feats = np.empty_like(pcs)  # (N, C)
    vol = np.zeros(m.shape, np.float32)
    for c in range(n_ch):
        vol[m] = pcs[:, c]
        filled = vol if nearest is None else vol[tuple(nearest)]
        feats[:, c] = denoise(filled)[m]

    # 5: k-means on a seeded subsample, predict all
    rng = np.random.default_rng(seed)
    fit = feats if len(feats) <= fit_samples else feats[np.sort(rng.choice(len(feats), fit_samples, replace=False))]
    with threadpool_limits(limits=1):  # k-means' float sums follow its OpenMP chunks: 1 vs 2 threads differed (ARI 0.99997)
        km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(fit)
        pred = km.predict(feats)  # (N,) in 0..k-1

    # 6: canonical order: centres sorted by PC1, then PC2, ...; only used clusters get labels
    order = np.lexsort(km.cluster_centers_.T[::-1])  # cluster ids, ascending PC1
    used = np.bincount(pred, minlength=k) > 0
    order = order[used[order]]
    if len(order) < k:
        log.warning("constraint_map: only %d of k=%d clusters are non-empty (too few distinct voxels)", len(order), k)
    relabel = np.zeros(k, np.uint8)
    relabel[order] = np.arange(1, len(order) + 1, dtype=np.uint8)
    labels = np.zeros(mask.shape, np.uint8)
    labels_box = np.zeros(m.shape, np.uint8)
    labels_box[m] = relabel[pred]
    labels[box] = labels_box
    return labels


# ------------------------------------------------------------------------------------------ a store
def store_label_r2(store, name: str, subjects: list[str], contrasts=("t1w", "t2w")) -> dict[str, list[float]]:
    """Per contrast, the R² (:func:`label_r2`) of constraint map ``name`` for each of ``subjects`` of ``store``
    (a :class:`data_prep.store.Store`): ``{"t1w": [r2, ...], "t2w": [...]}``."""
    from .schema import channel_index

    out: dict[str, list[float]] = {c: [] for c in contrasts}
    for sid in subjects:
        image = store.read(sid, "image")
        mask = store.read(sid, "mask").astype(bool)
        labels = store.read(sid, f"constraint/{name}")
        for c in contrasts:
            out[c].append(label_r2(labels, image[channel_index(c)], mask))
    return out


def _has_valid(store, sid: str, name: str, mask: np.ndarray | None = None) -> bool:
    """True when ``constraint/<name>`` exists, reads back, and is > 0 exactly inside the brain (a write killed
    midway leaves missing chunks that read as 0, or an undecodable chunk: both count as absent)."""
    if not store.has_array(sid, f"constraint/{name}"):
        return False
    try:
        labels = store.read(sid, f"constraint/{name}")
        mask = store.read(sid, "mask").astype(bool) if mask is None else mask
    except Exception:  # noqa: BLE001 - a torn chunk: recompute
        log.debug("constraint %s of %s unreadable: recomputing", name, sid, exc_info=True)
        return False
    return labels.shape == mask.shape and np.array_equal(labels > 0, mask)


def _compute_one(url: str, spec: dict, sid: str, storage_options: dict | None = None,
                 threads: int | None = None, force: bool = False) -> tuple[str, bool, float]:
    """Compute and write ``spec`` for ``sid`` unless already there (``force``: even then, e.g. a map of an
    older recipe). Returns (sid, computed, seconds).
    ``threads`` caps BLAS/OpenMP threads (1 in pool workers, so N workers use N cores)."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    from .store import Store

    t0 = time.perf_counter()
    spec = ConstraintSpec.from_dict(spec)
    store = Store(url, mode="a", storage_options=storage_options)
    mask = store.read(sid, "mask").astype(bool)
    if not force and _has_valid(store, sid, spec.name, mask):
        return sid, False, 0.0
    image = store.read(sid, "image")  # (4, X, Y, Z) float16, normalized
    vols = image[spec.channel_indices()].astype(np.float32)  # (C, X, Y, Z)
    try:
        labels = constraint_map(vols, mask, k=spec.k, seed=spec.seed)
    except ValueError as e:
        raise ValueError(f"constraint {spec.name} of subject {sid} in {url}: {e}") from e
    store.write_constraint(sid, spec.name, labels)
    return sid, True, time.perf_counter() - t0


def _lock_for(url: str):
    """A ``filelock.FileLock`` next to a local store (``<store>.constraint.lock``); a no-op for fsspec URLs."""
    import contextlib
    import os

    if "://" in url:
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(os.path.abspath(url.rstrip("/")) + ".constraint.lock")


def add_constraint(store_url: str, spec: ConstraintSpec, workers: int = 1, progress=None) -> str:
    """Compute `spec` for every complete subject of an existing store that lacks it; record spec in root attrs
    "constraints"; return spec.name. Safe under concurrent callers (Ray Tune trials asking for the same new setting):
    use a `filelock.FileLock` next to local stores (and idempotent deterministic writes + per-subject existence checks
    so a race only repeats work, never corrupts); computed once when two callers race (test it with two processes).

    ``progress``: optional ``callable(sid, computed: bool)`` called after each subject. ``workers > 1`` uses a
    forkserver/spawn process pool (one subject a task); remote/in-memory stores take no lock (``memory://``
    always runs in-process).
    """
    from .store import Store

    spec = spec if isinstance(spec, ConstraintSpec) else ConstraintSpec.from_dict(spec)
    url, opts = Store(store_url, mode="r").url, None
    report: Callable = progress or (lambda sid, computed: None)
    with _lock_for(url):
        store = Store(url, mode="a")  # opened under the lock: attrs as the last holder left them
        subjects = [s for s in store.subjects() if store.is_complete(s)]
        recorded = store.attrs.get("constraints", {}) or {}
        old = dict(recorded.get(spec.name) or {})
        force = bool(old) and int(old.pop("recipe", 1)) != RECIPE
        if force and old == {k: v for k, v in spec.to_dict().items() if k != "recipe"}:
            log.warning("constraint %s in %s was made with an older recipe: recomputing it for every subject",
                        spec.name, url)
        elif spec.name in recorded and recorded[spec.name] != spec.to_dict():
            raise ConfigError(f"{url} already holds constraint {spec.name!r} with another setting "
                              f"{recorded[spec.name]} (asked: {spec.to_dict()}); its name ignores the seed, so "
                              f"reuse that seed or delete constraint/{spec.name} from every subject first")
        t0, computed = time.perf_counter(), 0
        if workers > 1 and url.startswith("memory://"):
            log.warning("memory:// stores are per-process: computing in-process (workers=1)")
            workers = 1
        if workers <= 1 or len(subjects) <= 1:
            for sid in subjects:
                _, did, _ = _compute_one(url, spec.to_dict(), sid, opts, force=force)
                computed += did
                report(sid, did)
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(subjects)), mp_context=ctx) as pool:
                futures = [pool.submit(_compute_one, url, spec.to_dict(), sid, opts, 1, force) for sid in subjects]
                for fut in as_completed(futures):
                    sid, did, _ = fut.result()
                    computed += did
                    report(sid, did)
        store = Store(url, mode="a")  # re-read attrs: a prep run may have updated them meanwhile
        store.update_attrs(constraints={**(store.attrs.get("constraints") or {}), spec.name: spec.to_dict()})
    log.info("constraint %s: computed for %d subject(s), %d already had it (%.1f s)",
             spec.name, computed, len(subjects) - computed, time.perf_counter() - t0)
    return spec.name
