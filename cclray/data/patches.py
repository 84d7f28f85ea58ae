"""Streaming random 3D patches from a cclray Zarr store: a torch ``IterableDataset`` and its loader.

Several stores (a stage config's ``extra``, resolved by :func:`cclray.data.sources.training_sources`): the
subjects of every store form one list of ``(store, subject)`` items, sharded and shuffled as one cohort; each
pass visits every item once (``weight`` w of a store: w times on average), so with weight 1 a store's share of
the patches is its share of the subjects.

Sharding: subjects (not patches) are split across ranks (:func:`shard_subjects`), then across the
DataLoader workers of a rank; each rank yields ``samples_per_epoch // world_size`` samples an epoch,
dealt to its workers in whole batches, so every rank takes the same number of optimizer steps.
Everything is deterministic given ``(seed, epoch, rank, worker)``.

Sampling: a *visit* picks a subject, a region centre (foreground with probability ``fg_fraction``)
and reads a region of ``patch_size * region_factor`` voxels once (image, mask, constraint), then
cuts ``patches_per_volume`` patches from it, each centred on a region foreground voxel with
probability ``fg_fraction``, else uniform; boxes are clamped inside the volume and padded (zeros,
mask 0) only where the volume is smaller than the patch. With ``patch.augment`` and a rotation or scale, region
and box grow by the margin the affine needs on each side (:mod:`cclray.data.augmentation`).

No store handle is opened in ``__init__``: the reader opens lazily in the process that iterates
(each DataLoader worker; forkserver start, zarr/fsspec/tensorstore are not fork-safe).
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context

import numpy as np
import torch

from cclray.config import PatchConfig
from cclray.data.sources import Source
from data_prep.config import ConfigError
from data_prep.schema import canonical_contrast, channel_index

from .augmentation import affine_margin, augment
from .sampling import (
    box_around,
    choose_centre,
    cut,
    foreground_sample,
    pass_visits,
    region_size,
    shard_subjects,
    subject_seed,
    worker_count,
)

log = logging.getLogger(__name__)


class PatchDataset(torch.utils.data.IterableDataset):
    """Random patches of ``subjects`` of the store at ``store_url`` (and of the ``extra`` sources), this
    rank's share of them.

    Yields one dict a sample (the DataLoader batches them):
      ``"input"``  float32 ``(len(inputs), px, py, pz)`` — the ``inputs`` contrasts, normalized;
      ``"target"`` float32 ``(len(targets), px, py, pz)`` — only when ``targets`` are given;
      ``"mask"``   bool ``(px, py, pz)`` — brain mask (False in padding);
      ``"constraint"`` int64 ``(px, py, pz)`` — cluster labels of store array
      ``constraint/<constraint>`` (only when ``constraint`` is given);
      ``"sid"``    str — the subject id (``extra<i>/<id>`` for a subject of ``extra[i - 1]``: ids are unique
      only within a store).
    """

    def __init__(self, store_url: str, subjects: list[str], cfg: PatchConfig, inputs: tuple[str, ...],
                 targets: tuple[str, ...] = (), constraint: str | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0, extra: tuple[Source, ...] = ()):
        super().__init__()
        if not inputs:
            raise ConfigError("PatchDataset needs at least one input contrast, e.g. inputs=('t1gd', 'flair')")
        self.store_url = str(store_url)
        self.urls = [self.store_url, *(str(x.url) for x in extra)]  # store i of the (i, sid) items
        self.weights = [1.0, *(float(x.weight) for x in extra)]
        self.inputs = tuple(canonical_contrast(c) for c in inputs)
        self.targets = tuple(canonical_contrast(c) for c in targets)
        self.constraint = constraint
        self.cfg = cfg
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        items = [(0, sid) for sid in subjects] + [(i, sid) for i, x in enumerate(extra, 1) for sid in x.subjects]
        self.items = shard_subjects(items, self.rank, self.world_size)  # validates rank/world
        self.n_rank = cfg.samples_per_epoch // self.world_size
        if self.n_rank < 1:
            raise ConfigError(f"PatchConfig.samples_per_epoch={cfg.samples_per_epoch} < world_size="
                              f"{self.world_size}: raise samples_per_epoch to at least the number of workers")
        self._in_idx = [channel_index(c) for c in self.inputs]
        self._tgt_idx = [channel_index(c) for c in self.targets]
        # voxels read on each side of a patch for the rotation/scale (0 without them)
        self._margin = affine_margin(cfg.patch_size, cfg.rotate_deg, cfg.scale) if cfg.augment else (0, 0, 0)
        # The epoch lives in shared memory so persistent DataLoader workers see set_epoch().
        self._epoch = int(epoch)
        self._shared_epoch = multiprocessing.get_context("spawn").RawValue("q", int(epoch))
        self._readers: dict = {}  # store index -> PatchReader, opened lazily where iterated
        self._fg: dict[tuple[int, str], tuple[tuple[int, ...], np.ndarray]] = {}  # item -> (shape, fg flat idx)

    @property
    def subjects(self) -> list[str]:
        """This rank's subjects, as the samples' ``"sid"`` names them."""
        return [self.label(item) for item in self.items]

    @staticmethod
    def label(item: tuple[int, str]) -> str:
        return item[1] if item[0] == 0 else f"extra{item[0]}/{item[1]}"

    # ---------------------------------------------------------------- epoch and pickling
    @property
    def epoch(self) -> int:
        return int(self._shared_epoch.value) if self._shared_epoch is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (changes every random draw); seen by already-running persistent workers."""
        self._epoch = int(epoch)
        if self._shared_epoch is not None:
            self._shared_epoch.value = int(epoch)

    def __len__(self) -> int:
        """Samples this rank yields an epoch (all its workers together)."""
        return self.n_rank

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"], state["_fg"] = {}, {}  # never ship open handles to another process
        if multiprocessing.context.get_spawning_popen() is None:  # plain pickle, not a worker start
            state["_epoch"], state["_shared_epoch"] = self.epoch, None
        return state

    # ---------------------------------------------------------------- reading
    def _open(self, store: int = 0):
        if store not in self._readers:
            from data_prep.reader import PatchReader

            self._readers[store] = PatchReader(self.urls[store])
        return self._readers[store]

    def _subject(self, item: tuple[int, str]) -> tuple[tuple[int, ...], np.ndarray]:
        """Cropped shape and a foreground sample of ``item`` = (store, sid) (whole mask read once per process)."""
        if item not in self._fg:
            store, sid = item
            mask = self._open(store).read(sid, "mask")
            fg = foreground_sample(mask, subject_seed(self.seed, sid))
            if fg.size == 0:
                log.warning("subject %s of %s has an empty brain mask: its patches are uniform", sid,
                            self.urls[store])
            self._fg[item] = (tuple(int(s) for s in mask.shape), fg)
        return self._fg[item]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        items = shard_subjects(self.items, wid, n_workers)  # then across this rank's workers
        count = worker_count(self.n_rank, n_workers, wid, self.cfg.batch_size)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        return self._samples(rng, items, count)

    def _samples(self, rng: np.random.Generator, items: list[tuple[int, str]], count: int):
        cfg = self.cfg
        order: list[int] = []
        visits: list[tuple[int, str]] = []
        emitted = 0
        while emitted < count:
            if not order:  # visit every subject of the shard once (its store's weight times) before repeating any
                visits = pass_visits(rng, items, [self.weights[i] for i, _ in items])
                order = list(rng.permutation(len(visits)))
            item = visits[order.pop()]
            store, sid = item
            reader = self._open(store)
            shape, fg = self._subject(item)
            centre = choose_centre(rng, shape, fg, cfg.fg_fraction)
            rbox = box_around(centre, shape, region_size(cfg.patch_size, shape, cfg.patches_per_volume,
                                                         cfg.region_factor, self._margin))
            image = reader.read(sid, "image", rbox)  # (4, rx, ry, rz), as stored (float16)
            mask = reader.read(sid, "mask", rbox).astype(bool)  # (rx, ry, rz)
            labels = reader.read(sid, f"constraint/{self.constraint}", rbox) if self.constraint else None
            rfg = np.flatnonzero(mask)
            source = tuple(p + 2 * g for p, g in zip(cfg.patch_size, self._margin))  # patch + margin
            for _ in range(min(cfg.patches_per_volume, count - emitted)):
                local = choose_centre(rng, mask.shape, rfg, cfg.fg_fraction)
                pbox = box_around(local, mask.shape, source)
                yield self._sample(rng, self.label(item), image, mask, labels, pbox)
                emitted += 1

    def _sample(self, rng, sid, image, mask, labels, pbox) -> dict:
        cfg = self.cfg
        p = tuple(q + 2 * g for q, g in zip(cfg.patch_size, self._margin))  # the patch, or its source box
        img = cut(image, pbox, p).astype(np.float32)  # (4, px, py, pz)
        m = cut(mask, pbox, p, fill=False)
        x = img[self._in_idx]
        y = img[self._tgt_idx] if self.targets else None
        k = cut(labels, pbox, p).astype(np.int64) if labels is not None else None
        if cfg.augment:
            valid = None  # where the volume is smaller than the source box: its real voxels, not the padding
            if any(b - a < q for (a, b), q in zip(pbox, p)):
                valid = cut(np.ones([b - a for a, b in pbox], bool), tuple((0, b - a) for a, b in pbox), p, fill=False)
            x, y, m, k = augment(rng, x, y, m, k, cfg.rotate_deg, cfg.scale, cfg.patch_size, valid)
        out = {"input": torch.from_numpy(np.ascontiguousarray(x)), "mask": torch.from_numpy(np.ascontiguousarray(m))}
        if y is not None:
            out["target"] = torch.from_numpy(np.ascontiguousarray(y))
        if k is not None:
            out["constraint"] = torch.from_numpy(np.ascontiguousarray(k))
        out["sid"] = sid
        return out


def make_loader(dataset: PatchDataset, cfg: PatchConfig) -> torch.utils.data.DataLoader:
    """DataLoader over ``dataset``: ``cfg.batch_size``, ``cfg.num_workers`` persistent forkserver
    workers (none: the main process reads), pinned memory only with CUDA.

    Batches: ``"input"`` ``(B, C, px, py, pz)``, ``"mask"`` ``(B, px, py, pz)``, ``"sid"`` a list of B str.
    """
    workers = cfg.num_workers
    kwargs = {}
    if workers > 0:
        kwargs = {"multiprocessing_context": "forkserver", "persistent_workers": True, "prefetch_factor": 2}
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), **kwargs)
