"""Security: checkpoints load with ``weights_only=True``; subject ids taken from file names cannot
leave the store or the output folder. Pickled checkpoints and ONNX external data that
leaves the model's folder are cases of tests/reliability/test_bad_inputs.py (see also
tests/export/test_runtime.py::test_external_data_outside_the_model_folder_is_refused)."""
from __future__ import annotations

import pytest
import torch

from cclray.checkpoint import load_checkpoint, save_checkpoint
from cclray.config import PretrainConfig

UNSAFE = ["..", "a..b", ".hidden", "a b", "-rf", "a\\b", "a:b"]  # as a file-name prefix or a folder name


def test_checkpoints_are_loaded_weights_only(tmp_path, monkeypatch):
    d = save_checkpoint(tmp_path / "c", {"model": {"w": torch.ones(2)}, "step": 1, "epoch": 1},
                        PretrainConfig.from_dict({"store": "s.zarr"}), "pretrain")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert load_checkpoint(d)["step"] == 1
    assert calls and all(kw.get("weights_only") is True for kw in calls)


@pytest.mark.parametrize("prefix", UNSAFE)
def test_unsafe_ids_from_file_names_never_reach_the_store(tmp_path, prefix):
    from data_prep.discover import find_subjects

    folder = tmp_path / "src" / "subject"
    folder.mkdir(parents=True)
    for suffix in ("t1", "t1ce", "t2", "flair"):
        (folder / f"{prefix}_{suffix}.nii.gz").write_bytes(b"")
    found = find_subjects(tmp_path / "src")
    assert found.subjects == [] and len(found.failed) == 1
    assert "not a safe store name" in str(found.failed[0]) and str(folder) in str(found.failed[0])


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_ids_never_name_a_runtime_output(tmp_path, name):
    """The runtime finds subjects as prep does (data_prep.discover): the id is the files' prefix, an unsafe
    one is refused, and a folder's own name never names an output."""
    from export.runtime_io import subject_inputs

    bad = tmp_path / "bad"
    bad.mkdir()
    for suffix in ("t1c", "t2f"):
        (bad / f"{name}-{suffix}.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="not a safe store name"):
        subject_inputs(bad, ["t1gd", "flair"])
    folder = tmp_path / f"x{name}"  # an unsafe folder name around safely named files
    folder.mkdir()
    for suffix in ("t1c", "t2f"):
        (folder / f"BraTS-GLI-00001-000-{suffix}.nii.gz").write_bytes(b"")
    assert subject_inputs(folder, ["t1gd", "flair"]).sid == "BraTS-GLI-00001-000"


@pytest.mark.parametrize("sid", ["..", "../evil", "a/../../evil"])
def test_the_store_itself_refuses_dot_dot_paths(tmp_path, sid):
    import numpy as np

    from data_prep.store import Store

    store = Store.create(str(tmp_path / "s.zarr"), {"t": 1})
    with pytest.raises(ValueError):
        store.write_subject(sid, np.zeros((4, 2, 2, 2), np.float32), np.ones((2, 2, 2), bool), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
