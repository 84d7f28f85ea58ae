"""export.onnx_export + export.card: dynamo export, parity vs torch, fp16 weights, the model card."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from cclray.cli import main as cli
from cclray.config import ModelConfig
from cclray.models import build_synthesizer
from export import onnx_export
from export.card import CARD_KEY, CardError, ModelCard, card_from_metadata, read_card
from export.onnx_export import ExportError, export_onnx

FP32 = {"rtol": 1e-3, "atol": 1e-4}  # the export's own fp32 parity tolerance
FP16 = {"rtol": 1e-2, "atol": 2e-2}


def tiny_model(seed=0):
    """Random-init Synthesizer, widths (8, 16, 32): stride 4, (B, 2, D, H, W) -> (B, 2, D, H, W)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(widths=(8, 16, 32), groups=4, proj_stride=2)
    return build_synthesizer(cfg).eval(), cfg


def tiny_store(url):
    """A one-subject cclray store prepared with non-default percentiles and margin."""
    from data_prep.store import Store

    store = Store.create(str(url), {"percentiles": [1.0, 99.0], "margin": 3})
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40, 40), bool)
    mask[4:36, 4:36, 4:36] = True
    image = np.where(mask, rng.standard_normal((4, 40, 40, 40)), 0).astype(np.float32)
    store.write_subject("S1", image, mask, {"affine": np.eye(4).tolist()})
    store.update_attrs(subjects=["S1"], splits={"val": ["S1"]}, spacing=[2.0, 2.0, 2.0])
    return str(url)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{precision: (path, report)}: fp32 through a finetune checkpoint + `cclray export` (the user's
    path; its store gives the real parity patch and the percentiles), fp16 from the model in memory."""
    from cclray.checkpoint import save_checkpoint
    from cclray.config import FinetuneConfig

    model, cfg = tiny_model()
    root = tmp_path_factory.mktemp("onnx")
    ft = FinetuneConfig.from_dict({"store": tiny_store(root / "store.zarr"), "split": "val", "val_split": "x",
                                   "model": cfg.to_dict(), "patch": {"patch_size": [32, 32, 32]}})
    ckpt = save_checkpoint(root / "run" / "ckpt_e0001_s0000001", {"model": model.state_dict()}, ft, "finetune")
    out = {}
    path = root / "tiny_fp32.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert cli(["export", "--checkpoint", str(ckpt), "--out", str(path)]) == 0
    out["fp32"] = (path, {"bytes": path.stat().st_size, "card": read_card(path).to_dict(), "ft_hash": ft.hash(),
                          "stdout": stdout.getvalue()})
    path = root / "tiny_fp16.onnx"
    out["fp16"] = (path, export_onnx((model, cfg, {"patch_size": 32, "source_run": "test"}), path, fp16=True))
    return model, out


def _torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("precision, tol", [("fp32", FP32), ("fp16", FP16)])
@pytest.mark.parametrize("shape", [
    (1, 2, 32, 32, 32),  # the training patch
    (3, 2, 48, 32, 16),  # another batch and non-cubic spatial size through the same model
])
def test_parity_and_dynamic_shapes(exported, precision, tol, shape):
    model, out = exported
    path, report = out[precision]
    if "parity" in report:
        assert report["parity"]["random"] <= tol["atol"] + tol["rtol"] * 10
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = sess.run(["synthesis"], {"image": x})[0]
    assert got.shape == (shape[0], 2, *shape[2:])
    np.testing.assert_allclose(got, _torch(model, x), **tol)


def test_fp16_halves_the_file_and_keeps_float32_io(exported):
    _, out = exported
    fp32, fp16 = out["fp32"][1]["bytes"], out["fp16"][1]["bytes"]
    assert fp16 < 0.7 * fp32  # tiny model: graph overhead; default widths reach ~0.5
    sess = ort.InferenceSession(str(out["fp16"][0]), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == sess.get_outputs()[0].type == "tensor(float)"
    assert read_card(sess).precision == "fp16"


def test_card_round_trip(exported):
    _, out = exported
    path, report = out["fp32"]
    card = read_card(path)
    assert card.to_dict() == report["card"]
    assert card == read_card(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert card == read_card(onnx.load(str(path)))
    assert (card.inputs, card.targets, card.stride, card.patch_size) == (("t1gd", "flair"), ("t1w", "t2w"), 4, (32, 32, 32))
    assert card.percentiles == (1.0, 99.0) and card.crop_margin == 3  # from the store's prep config
    assert card.config_hash == report["ft_hash"]
    assert card.source_run == "run/ckpt_e0001_s0000001"  # run name and checkpoint, not the training host's path
    assert card.spacing == (2.0, 2.0, 2.0) and card.card_version == 2  # the store's grid
    assert card.cclray_version and card.export_date and card.precision == "fp32"
    onnx.checker.check_model(str(path))


def test_export_cli_checks_parity_on_a_real_patch(exported):
    """`cclray export` of the checkpoint ran parity on random data and on a patch of the run's store."""
    stdout = exported[1]["fp32"][1]["stdout"]
    assert "wrote " in stdout and '"random"' in stdout and '"real"' in stdout, stdout


def test_export_cli_missing_checkpoint(tmp_path, capsys):
    assert cli(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cclray export: error: ") and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_model_without_card_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CardError, match=r"no cclray model card.*cclray export"):
        read_card(path)
    with pytest.raises(CardError, match="no ONNX model"):
        read_card(tmp_path / "missing.onnx")


GOOD = {"inputs": ["t1gd", "flair"], "targets": ["t1w", "t2w"], "patch_size": 32, "stride": 4}


def test_version_1_card_reads_without_spacing():
    """A card written before card v2 (no spacing) still loads: spacing None, the runtime does not resample."""
    import json

    from export.card import CARD_KEY, card_from_metadata

    card = card_from_metadata({CARD_KEY: json.dumps({**GOOD, "card_version": 1, "source_run": "/abs/run/ckpt"})})
    assert card.spacing is None and card.card_version == 1
    assert card_from_metadata({CARD_KEY: json.dumps({**GOOD, "spacing": 2})}).spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("card, match", [
    ({k: v for k, v in GOOD.items() if k != "inputs"}, "inputs"),  # no input contrasts at all
    ({**GOOD, "inputs": []}, "inputs is empty"),
    ({**GOOD, "targets": ["t1w", "pd"]}, "unknown contrast 'pd'"),
    ({**GOOD, "patch_size": 30}, "multiples of stride"),
    ({**GOOD, "spacing": [1.0, 1.0]}, "spacing"),
    ({**GOOD, "precision": "int4"}, "precision"),
])
def test_bad_card_is_refused(card, match):
    with pytest.raises(CardError, match=match):
        card_from_metadata({CARD_KEY: json.dumps(card)})


@pytest.mark.parametrize("given, match", [
    (["t1gd"], r"missing \['flair'\]"),
    (["t1gd", "flair", "t2w"], r"not used by the model: \['t2w'\]"),
    (["t1w", "t2w"], r"missing \['t1gd', 'flair'\]"),
])
def test_card_lacking_the_given_contrasts(given, match):
    card = ModelCard.from_dict(GOOD)
    with pytest.raises(CardError, match=match):
        card.require_inputs(given)
    card.require_inputs(["T1ce", "t2f"])  # aliases are fine


def test_failed_parity_writes_nothing(exported, tmp_path, monkeypatch):
    """torch and ONNX disagree (the graph holds another model's weights): ExportError, no file left."""
    _, out = exported
    graph = onnx.load(str(out["fp32"][0]))
    del graph.metadata_props[:]
    monkeypatch.setattr(onnx_export, "_to_onnx", lambda *a, **k: graph)  # skip the slow re-trace
    other, cfg = tiny_model(seed=1)
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="parity failed.*Nothing was written"):
        export_onnx((other, cfg, {"patch_size": 16}), target)
    assert list(tmp_path.iterdir()) == []


def test_int8_is_written_only_within_the_quality_bound(exported, tmp_path, monkeypatch):
    """--quantize int8: static QDQ calibrated on the store; the quality cost (masked SSIM, PSNR vs the targets)
    is reported, and a variant past the bound is refused with the numbers and nothing written."""
    from export import quantize as q

    ckpt = Path(exported[1]["fp32"][1]["card"]["source_run"])  # run/ckpt name: rebuild the path below
    ckpt = Path(exported[1]["fp32"][0]).parent / ckpt
    monkeypatch.setattr(q, "MAX_SSIM_LOSS", 1.0)
    monkeypatch.setattr(q, "MAX_PSNR_LOSS", 100.0)
    path = tmp_path / "int8.onnx"
    report = export_onnx(str(ckpt), path, quantize="int8")
    cost = report["quantization"]
    assert cost["accepted"] and cost["patches"] >= 1 and 0 < cost["ssim_int8"] <= 1
    assert abs(cost["ssim_loss"] - (cost["ssim_fp32"] - cost["ssim_int8"])) < 1e-9
    assert read_card(path).precision == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(["synthesis"], {"image": np.zeros((1, 2, 32, 32, 32), np.float32)})[0].shape == (1, 2, 32, 32, 32)
    monkeypatch.setattr(q, "MAX_SSIM_LOSS", -1.0)
    refused = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match=r"int8 variant loses too much.*ssim_loss"):
        export_onnx(str(ckpt), refused, quantize="int8")
    assert not refused.exists() and not list(tmp_path.glob("*.tmp*"))


def test_quantize_int8_called_alone_stamps_the_int8_card(exported, tmp_path, caplog):
    """export.quantize.quantize_int8 outside `cclray export`: the card of the file it writes says int8 (every
    other field as the fp32 card's); an fp16 file is refused, naming the fp32 export as the fix. The runtime
    warns when the int8 file runs on the plain CPU provider (slower than fp32 there), not for fp32."""
    from export.quantize import quantize_int8
    from export.runtime import OnnxSynthesizer

    fp32_path, report = exported[1]["fp32"]
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 2, 32, 32, 32)).astype(np.float32) for _ in range(2)]
    out = tmp_path / "int8.onnx"
    quantize_int8(fp32_path, out, calib)
    card = read_card(out)
    assert card.precision == "int8"
    assert {**card.to_dict(), "precision": "fp32"} == report["card"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[CARD_KEY])["precision"] == "int8" and meta["cclray.inputs"] == ",".join(card.inputs)
    with caplog.at_level("WARNING", logger="export.runtime"):
        OnnxSynthesizer(fp32_path, provider="cpu")
        assert not [r for r in caplog.records if "int8" in r.getMessage()]
        OnnxSynthesizer(out, provider="cpu")
    assert [r for r in caplog.records if "int8 (QDQ)" in r.getMessage() and "OpenVINO" in r.getMessage()]
    with pytest.raises(CardError, match=r"fp16 model.*without --fp16"):
        quantize_int8(exported[1]["fp16"][0], tmp_path / "bad.onnx", calib)
    assert not (tmp_path / "bad.onnx").exists()
