"""Torch-side data: streaming random 3D patches from the cclray Zarr store (no Ray here)."""
from .patches import PatchConfig, PatchDataset, augment, make_loader
from .sampling import shard_subjects, worker_count

__all__ = ["PatchConfig", "PatchDataset", "augment", "make_loader", "shard_subjects", "worker_count"]
