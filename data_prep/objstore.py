"""Object storage: one configuration, read from the environment variables AWS tools use, for every
client cclray opens on ``s3://`` (and other fsspec) URLs.

The settings (nothing else is read; no config file of cclray's own):

========================================  =====================================================
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``  an S3-compatible server (MinIO, Ceph, moto); unset = AWS
``AWS_REGION`` / ``AWS_DEFAULT_REGION``       the bucket's region (default ``us-east-1``)
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``  static credentials; unset =
                                              each client's default chain (IRSA, instance role, ...)
========================================  =====================================================

The clients and what each is handed here (each would otherwise apply its own rules, and tensorstore
ignores ``AWS_ENDPOINT_URL`` and then hangs trying to reach AWS):

- zarr-python / fsspec / s3fs (the store, run folders, cohort files): :func:`fsspec_options`;
- tensorstore (the patch reader): :func:`tensorstore_kvstore`;
- pyarrow.fs (Ray Train's ``storage_filesystem``): :func:`pyarrow_filesystem`;
- a path-like view of a location, local or remote: :func:`location` (``pathlib.Path`` for local
  paths, ``upath.UPath`` over fsspec for URLs), used by the run folders and the runtime.

Credentials are never copied into specs or configs that Ray ships to workers: every node reads them
from its own environment (a Kubernetes secret, ``ray up``'s ``env``; see docs/CLUSTER.md).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"
_MANGLED = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")  # "s3:/bucket/x": a URL that went through Path()


class StorageURLError(UserError, ValueError):
    """A store/run/cohort location is not a usable path or URL; the message says the fix."""


@dataclass(frozen=True)
class S3Settings:
    """What the environment says about S3 (see the module docstring)."""

    endpoint: str | None
    region: str
    static_credentials: bool

    @classmethod
    def from_env(cls, env: dict | None = None) -> "S3Settings":
        env = os.environ if env is None else env
        endpoint = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
        region = next((env[v] for v in REGION_VARS if env.get(v)), DEFAULT_REGION)
        return cls(endpoint.rstrip("/") if endpoint else None, region,
                   bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")))


def scheme(url: str | os.PathLike) -> str:
    """``"s3"`` for ``s3://b/k``; ``""`` for local paths (``C:\\x`` included) and ``file://``."""
    s = urlparse(str(url)).scheme
    return "" if len(s) <= 1 or s == "file" else s


def is_remote(url: str | os.PathLike) -> bool:
    """True for URLs that are not local files (``s3://``, ``gs://``, ``memory://``...)."""
    return scheme(url) != ""


def check_location(url: str | os.PathLike, flag: str = "--out") -> str:
    """Refuse a URL that lost a slash (``s3:/bucket/x``, what ``pathlib.Path("s3://bucket/x")``
    makes): writing there would make a local folder named ``s3:``. Returns ``url`` as a string."""
    text = str(url)
    if _MANGLED.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        fixed = re.sub(r":/+", "://", text, count=1)
        raise StorageURLError(f"{flag} {text}: looks like a URL with one slash after the scheme; write "
                              f"{fixed} (a local folder named {text.split('/')[0]!r} would be made otherwise)")
    return text


def local_path(url: str | os.PathLike) -> str:
    """``file:///x`` -> ``/x``; other locations unchanged."""
    url = str(url)
    return url[len("file://"):] if url.startswith("file://") else url


def check_bucket(url: str | os.PathLike) -> None:
    """Before writing to an ``s3://`` URL: raise :class:`StorageURLError` naming the fix when its bucket
    does not exist or cannot be reached (wrong endpoint, no credentials); other locations pass."""
    if scheme(url) not in ("s3", "s3a"):
        return
    import fsspec

    bucket = urlparse(str(url)).netloc
    where = S3Settings.from_env().endpoint or "AWS"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **fsspec_options(url))
    try:
        fs.call_s3("head_bucket", Bucket=bucket)  # one request; unlike exists(), errors are not swallowed
    except FileNotFoundError as e:
        raise StorageURLError(f"{url}: bucket {bucket!r} does not exist at {where} (or these credentials "
                              f"cannot see it): create it first, e.g. `aws s3 mb s3://{bucket}`") from e
    except Exception as e:  # botocore/aiohttp errors of many kinds: the message carries the cause
        raise StorageURLError(f"{url}: cannot reach bucket {bucket!r} at {where} ({type(e).__name__}: {e}); "
                              f"check AWS_ENDPOINT_URL, AWS_REGION and the credentials (docs/CLUSTER.md)") from e


# ------------------------------------------------------------------------------------ per client
def fsspec_options(url: str | os.PathLike, listings_cache: bool = True) -> dict | None:
    """fsspec ``storage_options`` for ``url`` (s3fs: endpoint and region), None for other URLs.

    ``listings_cache=False`` for locations whose listing must be fresh (run folders: a resume lists
    checkpoints another process just uploaded)."""
    if scheme(url) not in ("s3", "s3a"):
        return None
    s3 = S3Settings.from_env()
    opts: dict = {"client_kwargs": {"region_name": s3.region}}
    if s3.endpoint:
        opts["endpoint_url"] = s3.endpoint
    if not listings_cache:
        opts["use_listings_cache"] = False
    return opts


def tensorstore_kvstore(url: str | os.PathLike) -> dict | None:
    """tensorstore kvstore spec of a store URL/path, or None when tensorstore cannot open it."""
    text = str(url)
    parsed = urlparse(text)
    raw = parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:\\..." is a path, not a scheme
    if raw in ("", "file"):
        path = parsed.path if raw else text
        return {"driver": "file", "path": os.path.abspath(os.path.expanduser(path)).rstrip("/") + "/"}
    if raw in ("gs", "gcs"):
        return {"driver": "gcs", "bucket": parsed.netloc, "path": parsed.path.strip("/") + "/"}
    if raw == "s3":
        s3 = S3Settings.from_env()
        spec = {"driver": "s3", "bucket": parsed.netloc, "path": parsed.path.strip("/") + "/",
                "aws_region": s3.region}
        if s3.endpoint:
            spec["endpoint"] = s3.endpoint
        if s3.static_credentials:  # else tensorstore's default chain (profile files, IMDS)
            spec["aws_credentials"] = {"type": "environment"}
        return spec
    return None


def pyarrow_filesystem(url: str | os.PathLike):
    """``(pyarrow.fs.FileSystem, path inside it)`` for Ray Train's ``storage_filesystem``/``storage_path``.

    S3: ``S3FileSystem`` with the endpoint and region of the environment; credentials stay in the
    environment of each node. Local paths: ``(None, absolute path)`` (Ray's own default)."""
    if not is_remote(url):
        return None, str(Path(local_path(url)).expanduser().resolve())
    import pyarrow.fs as pafs

    parsed = urlparse(str(url))
    if parsed.scheme in ("s3", "s3a"):
        s3 = S3Settings.from_env()
        kwargs: dict = {"region": s3.region}
        if s3.endpoint:
            ep = urlparse(s3.endpoint)
            kwargs.update(endpoint_override=ep.netloc or s3.endpoint, scheme=ep.scheme or "https")
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    fs, path = pafs.FileSystem.from_uri(str(url))  # gs://, hdfs:// ...: pyarrow's own rules
    return fs, path


def location(url: str | os.PathLike):
    """A path-like object for ``url``: ``pathlib.Path`` (as given) for local paths, else an
    ``upath.UPath`` with :func:`fsspec_options` (no listings cache). Both offer ``/``, ``name``,
    ``parent``, ``exists``, ``is_dir``, ``iterdir``, ``glob``, ``open``, ``read_text``, ``stat``."""
    text = check_location(url, flag="location")
    if not is_remote(text):
        return Path(local_path(text)).expanduser()
    try:
        from upath import UPath
    except ImportError as e:
        raise StorageURLError(f"{text}: reading URLs needs universal-pathlib and the fsspec package of "
                              f"the protocol: pip install 'cclray[prep]' (s3fs included)") from e
    return UPath(text, **(fsspec_options(text, listings_cache=False) or {}))


def is_local(path) -> bool:
    """True for what :func:`location` returns on a local path (a plain ``pathlib.Path``)."""
    return isinstance(path, Path) and not getattr(path, "protocol", "")


def remove_tree(path) -> None:
    """Delete a folder and everything under it (local or remote); missing is fine."""
    if is_local(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)
