"""The end-to-end demo: presets are valid, and its smoke version runs every step and can be rerun."""
import json

import numpy as np
import pytest

from cclray.demo import PRESETS, DemoConfig
from data_prep.config import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    cfg = PRESETS[name]
    DemoConfig.from_dict(cfg.to_dict())  # validated round trip
    assert sum(cfg.splits.values()) <= cfg.n_subjects


def test_paper_preset_has_the_papers_sizes():
    p = PRESETS["paper"]
    assert (p.splits["pretrain"], p.splits["finetune"], p.spacing, p.patch) == (80, 10, 1.0, 128)


@pytest.mark.parametrize("changes, match", [
    ({"n_subjects": 3}, "n_subjects"),
    ({"patch": 18}, "stride"),
    ({"splits": {"pretrain": 9, "finetune": 1, "val": 1, "test": 1}, "n_subjects": 6}, "splits"),
    ({"finetune_schedule": "step"}, "finetune_schedule"),
])
def test_bad_demo_config(changes, match):
    with pytest.raises(ConfigError, match=match):
        PRESETS["smoke"].replace(**changes)


def test_finetuning_schedule_reaches_the_finetune_stages_only():
    """The demo finetunes on the stage default (cosine); the reproduction's CPU presets keep the plateau schedule
    of their recorded runs; pretraining is never given the finetuning schedule."""
    from cclray.config import stage_config
    from cclray.demo import stage_dict
    from cclray.reproduce import PRESETS as REPRO

    for cfg, want in ((PRESETS["cpu-small"], "cosine"), (REPRO["cpu"], "plateau"), (REPRO["cpu-quick"], "plateau")):
        assert stage_config("finetune", stage_dict(cfg, "s.zarr", "finetune", 3)).lr_schedule == want
        assert "lr_schedule" not in stage_dict(cfg, "s.zarr", "pretrain", 3)


@pytest.mark.ray
def test_smoke_demo_end_to_end(ray_session, tmp_path):
    import nibabel as nib

    from cclray.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "demo", "smoke", say=lines.append)
    summary = open(result["summary"]).read()
    assert "| Baseline |" in summary and "| CCL |" in summary
    for key in ("metrics_csv", "figure", "model"):
        assert open(result[key], "rb").read(8), key
    synth = sorted((tmp_path / "demo" / "synthesized").glob("*-synth.nii.gz"))
    assert [p.name.split("_")[-1] for p in synth] == ["t1-synth.nii.gz", "t2-synth.nii.gz"]
    sid = synth[0].name.rsplit("_", 1)[0]
    source = nib.load(str(tmp_path / "demo" / "phantom" / sid / f"{sid}_t1ce.nii.gz"))
    out = nib.load(str(synth[0]))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    assert np.isfinite(out.get_fdata()).all()
    assert json.loads((tmp_path / "demo" / "demo_result.json").read_text())["model"] == result["model"]

    # a rerun keeps every finished step (nothing retrained) and only synthesizes again
    again = []
    run_demo(tmp_path / "demo", "smoke", say=again.append)
    assert sum("already done, kept" in line for line in again) == 7, again
