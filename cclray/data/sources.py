"""Where a stage's training patches come from: its store's split(s) and the ``extra`` stores of its config,
opened and checked together before any training (no torch; :class:`~cclray.data.patches.PatchDataset`
reads what :func:`training_sources` returns).

Every check names the store (and the config key) and the fix:

- each store opens and holds its splits, none of them empty;
- the stores share the channel order (``channels`` attr: the dataset picks inputs and targets by it) and,
  where both record it, the voxel spacing (a patch must cover the same millimetres in every store);
- no subject is drawn twice from one store (a split listed twice, or the main store again under ``extra``);
- the patch fits some subject of each store (:func:`check_patch_fits`);
- pretraining: each store holds the constraint map ``cfg.constraint`` made with this cclray's recipe
  (:func:`data_prep.constraint.check_constraint`, the one-store check), and the stores that record its
  setting agree on its contrasts and its k (the label count).
"""
from __future__ import annotations

from dataclasses import dataclass

from data_prep.config import ConfigError

SPACING_RTOL = 1e-3  # voxel sizes equal within 0.1 %


@dataclass(frozen=True)
class Source:
    """One store's training subjects; ``weight``: visits of each per pass (1 = by size, see ExtraSource)."""

    url: str
    subjects: tuple[str, ...]
    weight: float = 1.0


def open_source(url: str, splits, key: str = "store"):
    """``(Store, subjects)`` of the union of ``splits`` of the store at ``url``; StoreError / ConfigError
    prefixed with ``key`` (the config key that named it) when the store, a split or its channels are wrong."""
    from data_prep.schema import CONTRASTS
    from data_prep.store import Store, StoreError

    try:
        store = Store(url)
    except StoreError as e:
        raise StoreError(f"{key}: {e}") from None
    subjects: list[str] = []
    for split in splits:
        try:
            got = store.subjects(split)
        except StoreError as e:
            raise StoreError(f"{key}: {e}") from None
        if not got:
            raise ConfigError(f"{key}: split {split!r} of {store.url} is empty: re-run `cclray prep` with --splits "
                              f"giving it subjects, or name another split")
        subjects += got
    channels = list(store.attrs.get("channels") or [])
    if channels != list(CONTRASTS):
        raise StoreError(f"{key}: {store.url} stores channels {channels}, this cclray reads {list(CONTRASTS)}: "
                         f"re-create it with `cclray prep`")
    return store, subjects


def _spacing(store) -> tuple[float, ...] | None:
    sp = store.attrs.get("spacing")
    return tuple(float(s) for s in sp) if sp else None


def _same_spacing(a, b) -> bool:
    return all(abs(x - y) <= SPACING_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b))


def check_patch_fits(store, subjects: list[str], patch_size, key: str = "patch.patch_size") -> None:
    """Refuse a patch larger than *every* subject of ``subjects`` along some axis (every patch would
    then be mostly padding: the config was written for another resolution). Patches larger than
    only some subjects are fine; those are padded (see :mod:`cclray.data.patches`). ``store``: a
    :class:`data_prep.store.Store`; subject shapes come from its attrs (no array read)."""
    shapes = [tuple(store.subject_attrs(sid)["shape"]) for sid in subjects]
    if not shapes:
        return
    largest = tuple(max(s[a] for s in shapes) for a in range(3))
    if any(p > m for p, m in zip(patch_size, largest)):
        raise ConfigError(f"{key}={list(patch_size)} is larger than every subject of {store.url} along some "
                          f"axis (largest cropped shape {list(largest)}): use a patch_size <= {list(largest)} "
                          f"(multiples of the network stride), or prepare the store at a finer spacing")


def training_sources(cfg, check_patches: bool = True) -> list[Source]:
    """The training sources of stage config ``cfg``: ``cfg.store``'s ``cfg.split`` first, then each of
    ``cfg.extra``, opened and cross-checked (see the module docstring). ``check_patches=False`` skips the
    per-subject shape reads (the CLI's preflight)."""
    from data_prep.constraint import check_constraint

    entries = [("store", cfg.store, cfg.splits, 1.0)]
    entries += [(f"extra[{i}]", e.store, e.splits, e.weight) for i, e in enumerate(cfg.extra)]
    constraint = getattr(cfg, "constraint", None)  # pretraining only
    name = type(cfg).__name__
    sources: list[Source] = []
    drawn: dict[str, set[str]] = {}
    first_spacing: tuple | None = None  # (spacing, url) of the first store that records it
    first_spec: tuple | None = None
    for key, url, splits, weight in entries:
        store, subjects = open_source(url, splits, f"{name}.{key}")
        seen = drawn.setdefault(store.url, set())
        twice = sorted(seen & set(subjects)) or sorted({s for s in subjects if subjects.count(s) > 1})
        if twice:
            raise ConfigError(f"{name}.{key}: {len(twice)} subject(s) of {store.url} (e.g. {twice[0]!r}) are drawn "
                              f"twice (a split listed twice, or overlapping splits): name each subject's split once")
        seen.update(subjects)
        spacing = _spacing(store)
        if spacing and first_spacing and not _same_spacing(spacing, first_spacing[0]):
            raise ConfigError(f"{name}.{key}: {store.url} is on a {list(spacing)} mm grid, {first_spacing[1]} on "
                              f"{list(first_spacing[0])} mm: prepare both with the same `cclray prep --spacing`")
        first_spacing = first_spacing or ((spacing, store.url) if spacing else None)
        if constraint:
            check_constraint(store, constraint, subjects,
                             key=f"{name}.constraint" + (f" (in {name}.{key})" if key != "store" else ""))
            rec = (store.attrs.get("constraints") or {}).get(constraint)
            spec = (tuple(rec.get("contrasts", ())), int(rec.get("k", 0))) if rec else None
            if spec and first_spec and spec != first_spec:
                raise ConfigError(
                    f"{name}.constraint (in {name}.{key}): map {constraint!r} of {store.url} has contrasts {list(spec[0])}, "
                    f"k={spec[1]}; an earlier store's has {list(first_spec[0])}, k={first_spec[1]}: recompute one "
                    f"with `cclray constraint STORE --contrasts {','.join(first_spec[0])} --k {first_spec[1]}`")
            first_spec = first_spec or spec
        if check_patches:
            check_patch_fits(store, subjects, cfg.patch.patch_size, key=f"{name}.patch.patch_size")
        sources.append(Source(str(url), tuple(subjects), float(weight)))
    return sources
