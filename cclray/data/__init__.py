"""Torch-side data: streaming random 3D patches from the cclray Zarr store (no Ray here).

Their settings are :class:`cclray.config.PatchConfig` (the ``patch.*`` keys of a stage config)."""
from .augmentation import augment
from .patches import PatchDataset, make_loader
from .sampling import shard_subjects, worker_count

__all__ = ["PatchDataset", "augment", "make_loader", "shard_subjects", "worker_count"]
