"""Shared fixtures: one Ray instance per test session, a tiny cclray store, a local S3 API server."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from s3server import S3Server  # noqa: E402

TINY_SPLITS = {"pretrain": 4, "finetune": 2, "val": 1, "test": 1}


def make_tiny_store(path, shape=(24, 24, 24), splits=None, seed=0) -> dict:
    """A store of small phantom-like subjects: 4 tissue classes (constraint labels 1..4) from a smooth random field, each with
    its own (t1w, t1gd, t2w, flair) intensities + noise, so targets are learnable from inputs; the
    constraint map ``constraint_name(CONTRASTS, 20)`` = the tissue class (1..4) inside the mask.
    Returns ``{"url", "splits", "constraint", "shape"}``."""
    from scipy.ndimage import gaussian_filter

    from data_prep.constraint import RECIPE
    from data_prep.schema import CONTRASTS, constraint_name
    from data_prep.store import Store

    splits = dict(splits or TINY_SPLITS)
    rng = np.random.default_rng(seed)
    name = constraint_name(CONTRASTS, 20)
    store = Store.create(str(path), {"tiny": True})
    means = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, -0.5, 1.5, 0.5],  # per class: t1w, t1gd, t2w, flair
                      [-1.0, 0.8, -0.7, -1.2], [0.3, 1.5, -1.5, 1.4], [1.6, 0.4, 0.6, -0.4]], np.float32)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.8  # a ball
    order, sids = {}, []
    for split, n in splits.items():
        order[split] = [f"S{len(sids) + i:02d}" for i in range(n)]
        sids += order[split]
    for sid in sids:
        field = gaussian_filter(rng.normal(size=shape), 2.5)
        cls = np.digitize(field, np.quantile(field[mask], [0.25, 0.5, 0.75])).astype(np.uint8)  # 0..3
        cls = np.where(mask, cls + 1, 0).astype(np.uint8)  # 1..4 inside, 0 outside
        image = means[cls].transpose(3, 0, 1, 2) + 0.05 * rng.normal(size=(4, *shape)).astype(np.float32)
        image = (image * mask).astype(np.float32)
        store.write_subject(sid, image, mask, {"affine": np.eye(4).tolist()}, constraints={name: cls})
    store.update_attrs(subjects=sids, splits=order, constraints={name: {"contrasts": list(CONTRASTS), "k": 20, "seed": 0, "recipe": RECIPE}})
    return {"url": str(path), "splits": order, "constraint": name, "shape": shape}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> dict:
    """A session-wide tiny store (8 subjects of 24³; splits pretrain 4 / finetune 2 / val 1 / test 1)."""
    return make_tiny_store(tmp_path_factory.mktemp("tiny") / "store.zarr")


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 API server (moto, 127.0.0.1, free port) for the session; ``AWS_ENDPOINT_URL`` and
    test credentials are in ``os.environ`` while it runs (see tests/s3server.py)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh empty bucket on the session's S3 server: ``s3://<name>``."""
    return s3_server.bucket()


@pytest.fixture(scope="session")
def ray_session(request):
    """``ray.init(num_cpus=2)`` once per session (a Ray start costs ~5 s), shut down at the end.
    Started after the S3 server so its workers inherit the S3 environment (when moto is installed:
    a venv made before moto[server] joined the dev extra still runs the Ray tests)."""
    try:
        request.getfixturevalue("s3_server")
    except RuntimeError as e:  # moto missing: the S3 tests fail on their own, naming the install
        import warnings

        warnings.warn(f"Ray started without the S3 test server: {e}")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    if started:
        ray.shutdown()
