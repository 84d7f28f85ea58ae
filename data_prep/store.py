"""The Zarr v3 store: one group a subject, written atomically (visible once ``complete``), read by any
Zarr v3 reader. Layout: see :mod:`data_prep.schema`.

Local paths and fsspec URLs (``file://``, ``memory://``, ``s3://``, ``gs://``) both work: zarr-python
writes and reads them; :mod:`data_prep.reader` adds a faster patch reader.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from . import objstore
from .errors import UserError
from .schema import CONTRASTS, SCHEMA_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Chunking/dtype/codec of the arrays (chosen by ``benchmarks/bench_patch_reads.py``)."""

    chunk: int = 32  # spatial chunk edge; image chunks hold all 4 channels: (4, c, c, c)
    dtype: str = "float16"  # normalized z-scores: float16 keeps ~3 significant digits
    codec: str = "blosc-lz4"  # or "none"

    def __post_init__(self) -> None:
        if not (isinstance(self.chunk, int) and 8 <= self.chunk <= 256):
            raise ValueError(f"chunk={self.chunk!r}: use an integer edge in [8, 256] (default 32)")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype={self.dtype!r}: use 'float16' or 'float32'")

    def compressors(self):
        if self.codec == "none":
            return None
        if self.codec.startswith("blosc-"):
            return [BloscCodec(cname=self.codec.split("-", 1)[1], clevel=5, shuffle="shuffle")]
        raise ValueError(f"unknown codec {self.codec!r}: use 'blosc-lz4', 'blosc-zstd' or 'none'")

    def to_dict(self) -> dict:
        return {"chunk": self.chunk, "dtype": self.dtype, "codec": self.codec}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def local_path(url: str) -> str:
    """``file:///x`` -> ``/x`` (zarr then uses its LocalStore, which creates folders); other URLs unchanged.
    Refuses ``s3:/bucket/x`` (a URL that lost a slash), which would become a local folder ``s3:``."""
    return objstore.local_path(objstore.check_location(url, flag="store"))


def _options(url: str, storage_options: dict | None) -> dict | None:
    """The caller's fsspec options, else those of the environment (:mod:`data_prep.objstore`)."""
    return storage_options if storage_options is not None else objstore.fsspec_options(url)


class StoreError(UserError, RuntimeError):
    """The store is missing, of another schema, or a subject in it is incomplete."""


class Store:
    """A cclray Zarr v3 store. ``Store.create`` makes a new one; ``Store(url)`` opens an existing one."""

    def __init__(self, url: str, mode: str = "r", storage_options: dict | None = None):
        self.url = local_path(url)
        self.storage_options = storage_options
        try:
            self.root = zarr.open_group(store=self.url, mode=mode, zarr_format=3,
                                        storage_options=_options(self.url, storage_options))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"no cclray store at {self.url}: create it with `cclray prep SRC --out {self.url}`") from e
        version = self.root.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} is not a cclray store of schema {SCHEMA_VERSION} (found {version!r}): "
                f"re-create it with `cclray prep`"
            )

    # ---------------------------------------------------------------- creation and root attrs
    @classmethod
    def create(cls, url: str, prep_config: dict, layout: Layout | None = None,
               storage_options: dict | None = None) -> "Store":
        """Create (or reopen, when it holds the same prep config) the store at ``url``."""
        layout = layout or Layout()
        url = local_path(url)
        if storage_options is None:
            objstore.check_bucket(url)  # else a traceback from deep inside s3fs
        root = zarr.open_group(store=url, mode="a", zarr_format=3, storage_options=_options(url, storage_options))
        existing = root.attrs.get("prep_config")
        if existing is not None:  # a key added to PrepConfig since, left at its default None, is no difference
            existing = {**{k: None for k, v in _jsonable(prep_config).items() if v is None}, **existing}
        if existing is not None and existing != _jsonable(prep_config):
            raise StoreError(
                f"{url} was prepared with another config; use a new --out or delete the store "
                f"(differences: {sorted(k for k in set(existing) | set(prep_config) if existing.get(k) != _jsonable(prep_config).get(k))})"
            )
        if existing is None:
            root.attrs.update({
                "schema_version": SCHEMA_VERSION,
                "channels": list(CONTRASTS),
                "prep_config": _jsonable(prep_config),
                "layout": layout.to_dict(),
                "subjects": [],
                "splits": {},
                "failed": [],
                "constraints": {},
            })
        return cls(url, mode="a", storage_options=storage_options)

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def layout(self) -> Layout:
        return Layout(**self.root.attrs["layout"])

    def update_attrs(self, **values) -> None:
        self.root.attrs.update(_jsonable(values))

    def subjects(self, split: str | None = None) -> list[str]:
        """Complete subjects (of ``split`` when given), in the recorded order."""
        if split is None:
            return list(self.root.attrs.get("subjects", []))
        splits = self.root.attrs.get("splits", {})
        if split not in splits:
            raise StoreError(f"{self.url} has no split {split!r}; it has {sorted(splits)}")
        return list(splits[split])

    # ---------------------------------------------------------------- subjects
    def _group_path(self, sid: str) -> str:
        return f"subjects/{sid}"

    def is_complete(self, sid: str) -> bool:
        try:
            g = self.root[self._group_path(sid)]
        except KeyError:
            return False
        return bool(g.attrs.get("complete", False))

    def subject_group(self, sid: str):
        if not self.is_complete(sid):
            raise StoreError(f"subject {sid!r} is missing or incomplete in {self.url}; re-run `cclray prep`")
        return self.root[self._group_path(sid)]

    def subject_attrs(self, sid: str) -> dict:
        return dict(self.subject_group(sid).attrs)

    def write_subject(self, sid: str, image: np.ndarray, mask: np.ndarray, attrs: dict,
                      seg: np.ndarray | None = None, constraints: dict | None = None) -> None:
        """Write one subject; it becomes visible (``complete``) only after every array is written.

        image: ``(4, X, Y, Z)`` float, channel order :data:`CONTRASTS`; mask/seg/constraints ``(X, Y, Z)``.
        """
        if image.ndim != 4 or image.shape[0] != len(CONTRASTS) or image.shape[1:] != mask.shape:
            raise ValueError(f"{sid}: image {image.shape} / mask {mask.shape} do not match (4, X, Y, Z)")
        path = self._group_path(sid)
        if path in self.root:  # an incomplete (killed) or older write: start over
            del self.root[path]
        g = self.root.create_group(path)
        g.attrs.update({"complete": False})
        lay = self.layout
        c = lay.chunk
        spatial = tuple(min(c, s) for s in mask.shape)
        g.create_array("image", shape=image.shape, chunks=(len(CONTRASTS), *spatial), dtype=lay.dtype,
                       compressors=lay.compressors(), fill_value=0)[...] = image.astype(lay.dtype)
        self._write_label(g, "mask", mask.astype(np.uint8))
        if seg is not None:
            self._write_label(g, "seg", seg.astype(np.uint8))
        for name, labels in (constraints or {}).items():
            self._write_label(g, f"constraint/{name}", labels.astype(np.uint8))
        g.attrs.update(_jsonable({**attrs, "shape": list(mask.shape)}))
        g.attrs.update({"complete": True})  # the commit point

    def _write_label(self, g, name: str, labels: np.ndarray) -> None:
        c = self.layout.chunk
        arr = g.create_array(name, shape=labels.shape, chunks=tuple(min(c * 2, s) for s in labels.shape),
                             dtype="uint8", compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
                             fill_value=0, overwrite=True)
        arr[...] = labels

    def write_constraint(self, sid: str, name: str, labels: np.ndarray) -> None:
        """Add or replace constraint map ``name`` of a complete subject (idempotent)."""
        self._write_label(self.subject_group(sid), f"constraint/{name}", labels)

    def has_array(self, sid: str, name: str) -> bool:
        try:
            self.root[f"{self._group_path(sid)}/{name}"]
            return True
        except KeyError:
            return False

    def read(self, sid: str, name: str, box=None) -> np.ndarray:
        """Read array ``name`` ("image", "mask", "seg", "constraint/<setting>") of ``sid``,
        optionally only the spatial ``box`` ``((x0, x1), (y0, y1), (z0, z1))``."""
        g = self.subject_group(sid)
        try:
            arr = g[name]
        except KeyError as e:
            have = sorted(k for k in g.array_keys())
            raise StoreError(f"subject {sid!r} in {self.url} has no array {name!r} (has {have})") from e
        if box is None:
            return arr[...]
        sl = tuple(slice(a, b) for a, b in box)
        return arr[(Ellipsis, *sl)]
