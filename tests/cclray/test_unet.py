"""The encoder-decoder, its stage wrappers, the checked hand-off, and ModelConfig validation."""
from __future__ import annotations

import pytest
import torch

from cclray.config import ModelConfig
from cclray.losses import CCLLoss, SynthesisLoss
from cclray.models import EncoderDecoder, build_ccl_net, build_synthesizer, transfer_pretrained
from data_prep.config import ConfigError

torch.set_num_threads(2)
TINY = dict(widths=(8, 16, 32), groups=4, proj_dim=16, proj_stride=4)


# (config overrides, input (D, H, W), stop_stride, expected channels)
BACKBONE_CASES = [
    ({}, (16, 16, 16), 1, 8),
    ({}, (16, 24, 32), 2, 16),
    ({}, (16, 24, 32), 4, 32),  # bottleneck
    ({"down": "maxpool", "up": "trilinear", "act": "relu"}, (8, 16, 24), 1, 8),
    ({"widths": (8, 8, 16, 16), "proj_stride": 8}, (16, 32, 16), 2, 8),
    ({"widths": (8, 8, 16, 16), "proj_stride": 8, "inputs": ("t1gd",)}, (8, 16, 24), 8, 16),
]


@pytest.mark.parametrize("over, size, stop, channels", BACKBONE_CASES)
def test_backbone_shapes(over, size, stop, channels):
    cfg = ModelConfig(**{**TINY, **over})
    x = torch.randn(2, cfg.in_channels, *size)  # (B, C_in, D, H, W)
    y = EncoderDecoder(cfg)(x, stop_stride=stop)
    assert y.shape == (2, channels, *(s // stop for s in size))
    assert channels == cfg.width_at(stop)


@pytest.mark.parametrize("proj_stride, size", [(1, (8, 8, 16)), (2, (16, 8, 24)), (4, (16, 16, 16))])
def test_ccl_net_shape_and_unit_norm(proj_stride, size):
    cfg = ModelConfig(**{**TINY, "proj_stride": proj_stride})
    z = build_ccl_net(cfg)(torch.randn(2, 2, *size))
    assert z.shape == (2, cfg.proj_dim, *(s // proj_stride for s in size))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, *(s // proj_stride for s in size)))


@pytest.mark.parametrize("targets", [("t1w", "t2w"), ("t2w",)])
def test_synthesizer_shape(targets):
    cfg = ModelConfig(**TINY, targets=targets)
    assert build_synthesizer(cfg)(torch.randn(1, 2, 16, 8, 24)).shape == (1, len(targets), 16, 8, 24)


def test_bad_stop_stride_raises():
    with pytest.raises(ValueError, match="stop_stride"):
        EncoderDecoder(ModelConfig(**TINY))(torch.randn(1, 2, 8, 8, 8), stop_stride=3)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_transfer_pretrained_reports_exact_keys(prefix):
    cfg = ModelConfig(**TINY)
    ccl, synth = build_ccl_net(cfg), build_synthesizer(cfg)
    head_before = {k: v.clone() for k, v in synth.synth_head.state_dict().items()}
    rep = transfer_pretrained(synth, {prefix + k: v for k, v in ccl.state_dict().items()})
    assert rep["new"] == ["synth_head.bias", "synth_head.weight"]
    assert rep["dropped"] == sorted(k for k in ccl.state_dict() if k.startswith("proj_head."))
    assert rep["loaded"] == sorted(k for k in ccl.state_dict() if k.startswith("backbone."))
    for k, v in ccl.backbone.state_dict().items():
        torch.testing.assert_close(synth.backbone.state_dict()[k], v)
    for k, v in synth.synth_head.state_dict().items():
        torch.testing.assert_close(v, head_before[k])


def _ccl_state(**over):
    return build_ccl_net(ModelConfig(**{**TINY, **over})).state_dict()


# (what the checkpoint is, message fragment the error must contain)
BAD_CHECKPOINTS = [
    (lambda: _ccl_state(widths=(8, 16, 16)), "shape mismatch"),
    (lambda: _ccl_state(inputs=("t1gd", "flair", "t2w"), targets=("t1w",)), "backbone.stem.0.weight"),
    (lambda: {k: v for k, v in _ccl_state().items() if "up.0" not in k}, "backbone.up.0"),
    (lambda: {**_ccl_state(), "extra.weight": torch.zeros(1)}, "extra.weight"),
    (lambda: build_synthesizer(ModelConfig(**TINY)).state_dict(), "synth_head.weight"),
]


@pytest.mark.parametrize("make, fragment", BAD_CHECKPOINTS)
def test_transfer_pretrained_rejects_wrong_checkpoint(make, fragment):
    synth = build_synthesizer(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="transfer_pretrained") as err:
        transfer_pretrained(synth, make())
    assert fragment in str(err.value)


# (bad overrides, fragment naming the key)
BAD_CONFIGS = [
    ({"widths": (8,)}, "widths"),
    ({"widths": (8, 10), "proj_stride": 2}, "groups"),
    ({"proj_stride": 3}, "proj_stride"),
    ({"proj_stride": 8}, "proj_stride"),  # > stride 4
    ({"inputs": ("t1ce", "flair")}, "alias"),
    ({"inputs": ("t1gd", "t1w")}, "both an input and a target"),
    ({"targets": ()}, "targets"),
]


@pytest.mark.parametrize("over, fragment", BAD_CONFIGS)
def test_model_config_rejects(over, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig(**{**TINY, **over})


def test_model_config_json_round_trip_and_defaults():
    cfg = ModelConfig()
    assert cfg.stride == 16 and cfg.in_channels == 2 and cfg.width_at(4) == 64
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="did you mean 'widths'"):
        ModelConfig.from_dict({"width": [8, 16]})


def _structured_batch(size=32, seed=0):
    """Inputs whose intensity bins define the constraint: (x (1, 2, S, S, S), labels, mask)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 2, size // 8, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear")
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    mask = torch.zeros(1, size, size, size, dtype=torch.bool)
    mask[:, 2:-2, 2:-2, 2:-2] = True
    labels = (torch.bucketize(x[:, 0], torch.tensor([-0.5, 0.0, 0.5])) * 2
              + (x[:, 1] > 0).long() + 1) * mask  # 8 clusters
    return x, labels, mask


@pytest.mark.slow  # 2 x 30 steps at 32^3: ~20 s alone, minutes under shared load
def test_overfit_one_batch_reduces_both_losses():
    torch.manual_seed(0)
    x, labels, mask = _structured_batch()
    cfg = ModelConfig(**TINY)
    net, loss_fn = build_ccl_net(cfg), CCLLoss(n_anchors=20, top_k=100)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    eval_loss = lambda: loss_fn(net(x), labels, mask, torch.Generator().manual_seed(1)).item()  # noqa: E731
    ccl_start = eval_loss()
    for step in range(30):
        opt.zero_grad()
        loss_fn(net(x), labels, mask, torch.Generator().manual_seed(100 + step)).backward()
        opt.step()
    ccl_end = eval_loss()

    synth, syn_loss = build_synthesizer(cfg), SynthesisLoss()
    target = torch.cat([x[:, :1] * 2 - x[:, 1:], x[:, 1:].abs()], dim=1)  # (1, 2, S, S, S)
    opt = torch.optim.Adam(synth.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = syn_loss(synth(x), target, mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"\nCCL loss {ccl_start:.3f} -> {ccl_end:.3f}; L1 {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert ccl_end < 0.8 * ccl_start
    assert losses[-1] < 0.6 * losses[0]


def test_probe_trains_only_its_head_on_the_proj_stride_features_and_keeps_the_input_grid():
    cfg = ModelConfig(**{**TINY, "proj_stride": 2})
    probe = build_synthesizer(cfg, probe=True)
    x = torch.randn(1, 2, 16, 8, 24)
    assert probe(x).shape == (1, len(cfg.targets), 16, 8, 24)
    trainable = sorted(k for k, p in probe.named_parameters() if p.requires_grad)
    assert trainable == ["synth_head.bias", "synth_head.weight"]
    assert probe.synth_head.in_channels == cfg.width_at(2)
    # a CCL checkpoint loads into it like into the full synthesizer
    info = transfer_pretrained(probe, build_ccl_net(cfg).state_dict())
    assert info["new"] == ["synth_head.bias", "synth_head.weight"]
