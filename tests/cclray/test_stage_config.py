"""Stage configs: defaults, nesting, JSON round trip, refusals with the key and the fix."""
import pytest

from cclray.config import FinetuneConfig, PretrainConfig, stage_config
from data_prep.config import ConfigError

BASE = {"store": "s.zarr"}


@pytest.mark.parametrize("cls, split", [(PretrainConfig, "pretrain"), (FinetuneConfig, "finetune")])
def test_defaults_are_the_method(cls, split):
    cfg = cls.from_dict(BASE)
    assert cfg.split == split and cfg.stage == split
    assert cfg.lr == 1e-3 and cfg.grad_clip == 1.0 and cfg.plateau_factor == 0.5
    assert cfg.model.inputs == ("t1gd", "flair") and cfg.model.targets == ("t1w", "t2w")


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig])
def test_nested_dicts_and_json_round_trip(cls):
    cfg = cls.from_dict({**BASE, "model": {"widths": [8, 16, 32]}, "patch": {"patch_size": [16, 16, 32]},
                         "loss": {"temperature": 0.2}, "epochs": 3})
    assert cfg.model.widths == (8, 16, 32) and cfg.patch.patch_size == (16, 16, 32)
    assert cfg.loss.temperature == 0.2 and cfg.patch_size == (16, 16, 32)
    again = cls.from_json(cfg.to_json())
    assert again == cfg and again.hash() == cfg.hash()
    assert stage_config(cfg.stage, cfg.to_dict()) == cfg


def test_samples_per_epoch_follow_steps_batch_and_world():
    cfg = PretrainConfig.from_dict({**BASE, "steps_per_epoch": 5, "patch": {"batch_size": 3}})
    assert cfg.patch_for(1).samples_per_epoch == 15 and cfg.patch_for(4).samples_per_epoch == 60


@pytest.mark.parametrize("data, match", [
    ({"lrr": 0.1}, "did you mean 'lr'"),  # unknown key, top level
    ({"model": {"widht": [8, 16]}}, "did you mean 'widths'"),  # unknown key, nested
    ({"patch": {"batch_size": 0}}, "batch_size=0"),
    ({"patch": {"patch_size": [0, 16, 16]}}, "patch_size"),
    ({"epochs": 0}, "epochs=0"),
    ({"steps_per_epoch": -1}, "steps_per_epoch=-1"),
    ({"num_workers": 0}, "num_workers=0"),
    ({"lr": 0}, "lr=0"),
    ({"grad_clip": -1}, "grad_clip"),
    ({"plateau_factor": 1.5}, "plateau_factor"),
    ({"patch": {"patch_size": [24, 24, 24]}}, "multiple of the network stride 16"),
    ({"store": ""}, "--store"),
    ({"epochs": "ten"}, "integer"),
])
def test_bad_values_are_refused_naming_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        PretrainConfig.from_dict({**BASE, **data})


@pytest.mark.parametrize("data, match", [
    ({"val_every": 0}, "val_every"),
    ({"val_split": "finetune"}, "held-out"),
    ({"constraint": "x"}, "unknown FinetuneConfig key"),  # a pretrain key in a finetune config
])
def test_finetune_refusals(data, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict({**BASE, **data})


def test_stage_config_refuses_the_other_stage():
    with pytest.raises(ValueError, match="FinetuneConfig"):
        stage_config("finetune", PretrainConfig.from_dict(BASE))
    with pytest.raises(ValueError, match="unknown stage"):
        stage_config("train", BASE)
