"""Export a trained synthesizer to ONNX, with its model card, checked against torch before it is written.

``torch.onnx.export(dynamo=True)`` with a dynamic batch and dynamic spatial dims (any multiple of
the network stride), only the ``Synthesizer`` (no projection head), ``onnx.checker`` on the result,
the :class:`export.card.ModelCard` in ``metadata_props``, then **parity** against torch eager on a
random batch (and, when the run's store is reachable, on a real brain patch). The file appears only
when everything passed (written to a temp file and renamed, :mod:`data_prep.atomic`), so a failed export
leaves nothing.

Parity tolerances (``numpy.testing.assert_allclose`` semantics, ``|onnx - torch| <= atol + rtol*|torch|``):
fp32 ``rtol=1e-3, atol=1e-4``; fp16 ``rtol=1e-2, atol=2e-2``.

``fp16=True`` stores the weights as float16 (half the file) with a ``Cast`` to float32 in front of
each, so inputs, outputs and compute stay float32. This runs on every execution provider: the
onnxruntime CPU provider has no float16 Conv3d/GroupNorm kernels, so a fully fp16 graph (e.g.
onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``) would not load on the
CPU-only inference hosts this runtime targets.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import atomic_path
from data_prep.errors import UserError

from .card import INPUT_NAME, OUTPUT_NAME, ModelCard

log = logging.getLogger(__name__)

# int8: the fp32 graph (fp32 card) is parity-checked before it is quantized; the quantized one by its quality cost
TOLERANCES = {"fp32": {"rtol": 1e-3, "atol": 1e-4}, "fp16": {"rtol": 1e-2, "atol": 2e-2}}


class ExportError(UserError, RuntimeError):
    """Export failed (parity, checker, or an unusable source); nothing was written."""


def _resolve(source: Any) -> tuple[Any, dict, str | None]:
    """``source`` -> (torch model in eval mode, card fields, store url or None).

    ``source`` is a finetune run folder / checkpoint path, loaded with :func:`cclray.runs.load_synthesizer`
    (the card is the :class:`~cclray.config.FinetuneConfig`'s fields: ``model``, ``patch.patch_size``,
    ``store``), or an in-memory ``(model, model_cfg, extra_card)``: a synthesizer, its
    :class:`~cclray.config.ModelConfig` and a dict of further card fields (``patch_size`` at least;
    ``store`` to read the normalization recipe from).
    """
    if isinstance(source, tuple):
        model, model_cfg, extra = source
        fields = {"config_hash": model_cfg.hash(), "source_run": "in-memory", **(extra or {})}
        store = fields.pop("store", None)
    else:
        from cclray.runs import load_synthesizer

        try:
            model, cfg, meta = load_synthesizer(source, device="cpu")
        except Exception as e:  # CheckpointError, ConfigError, ... already carry the fix
            raise ExportError(f"cannot load a synthesizer from {source}: {e}") from e
        model_cfg, store = cfg.model, cfg.store
        fields = {"patch_size": list(cfg.patch.patch_size), "config_hash": cfg.hash(),
                  "source_run": run_name(meta)}
    fields.setdefault("inputs", tuple(model_cfg.inputs))
    fields.setdefault("targets", tuple(model_cfg.targets))
    fields.setdefault("stride", int(model_cfg.stride))
    if store:
        fields.update(_store_recipe(str(store)))
    return model.eval(), fields, (str(store) if store else None)


def run_name(meta: dict) -> str:
    """``RUN_NAME/CHECKPOINT`` of a loaded checkpoint (its last two path parts): where the model came
    from, without the training machine's absolute path."""
    parts = [p for p in str(meta["checkpoint"]).replace("\\", "/").rstrip("/").split("/") if p]
    return "/".join(parts[-2:])


def _store_recipe(url: str) -> dict:
    """Percentiles and crop margin from the store's prep config (the normalization the model saw), and
    the voxel size of its grid (``spacing``: the grid the model learned on)."""
    try:
        from data_prep.store import Store

        attrs = Store(url).attrs
    except Exception as e:  # store unreachable from this host: card keeps the preprocess defaults
        log.warning("store %s not readable (%s): card uses data_prep.preprocess defaults and no spacing", url, e)
        return {}
    prep = attrs.get("prep_config", {})
    out = {}
    if attrs.get("spacing") is not None:
        out["spacing"] = tuple(float(v) for v in attrs["spacing"])
    else:
        log.warning("store %s records no single grid spacing: the card has none (synthesize will not resample)", url)
    if "percentiles" in prep:
        out["percentiles"] = tuple(float(p) for p in prep["percentiles"])
    if "margin" in prep:
        out["crop_margin"] = int(prep["margin"])
    return out


def _real_patch(url: str, card: ModelCard, patch: int) -> np.ndarray | None:
    """``(1, Cin, p, p, p)`` centre patch of the first val/test subject of the store, or None."""
    try:
        from data_prep.schema import channel_index
        from data_prep.store import Store

        store = Store(url)
        splits = store.attrs.get("splits", {})
        sids = next((splits[s] for s in ("val", "test", "finetune") if splits.get(s)), None) or store.subjects()
        sid = sids[0]
        shape = store.subject_attrs(sid)["shape"]
        box = [(max(0, s // 2 - patch // 2), max(0, s // 2 - patch // 2) + min(patch, s)) for s in shape]
        image = store.read(sid, "image", box).astype(np.float32)  # (4, x, y, z)
    except Exception as e:
        log.warning("no real patch from store %s (%s): parity on random data only", url, e)
        return None
    x = image[[channel_index(c) for c in card.inputs]]
    pad = [(0, 0)] + [(0, patch - s) for s in x.shape[1:]]
    return np.pad(x, pad)[None]


def _fp16_weights(proto):
    """Store float32 initializers as float16, each followed by a ``Cast`` back to float32."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + "_cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return proto


def _parity(session, model, x: np.ndarray, tol: dict, what: str) -> float:
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.max(np.abs(got - ref)))
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=tol["rtol"], atol=tol["atol"]):
        raise ExportError(
            f"ONNX vs torch parity failed on {what} {x.shape}: max |diff| {diff:.3g} "
            f"(rtol {tol['rtol']}, atol {tol['atol']}); output shapes {got.shape} vs {ref.shape}. "
            f"Nothing was written; try another --opset or report the model config"
        )
    log.info("parity on %s %s: max |diff| %.3g", what, x.shape, diff)
    return diff


def _to_onnx(model, in_channels: int, stride: int, opset: int):
    """Dynamo export: ``image (B, Cin, X, Y, Z)`` -> ``synthesis (B, T, X, Y, Z)``, B and X/Y/Z dynamic
    (X/Y/Z any multiple of ``stride``). Returns the ``onnx.ModelProto``."""
    import inspect

    import torch

    example = torch.zeros(1, in_channels, 2 * stride, 2 * stride, 2 * stride)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch, **{ax: torch.export.Dim(f"n{ax}", min=1, max=4096 // stride) * stride for ax in (2, 3, 4)}}
    arg_name = next(iter(inspect.signature(model.forward).parameters))
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={arg_name: dims},
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=opset, verbose=False)
        return program.model_proto
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed ({type(e).__name__}: {e}); nothing was written") from e


def export_onnx(source: Any, out_path: str | os.PathLike, fp16: bool = False, opset: int = 18,
                parity_patch: int | None = None, seed: int = 0, quantize: str | None = None) -> dict:
    """Export ``source`` (run folder, checkpoint, or ``(model, model_cfg, extra_card)``) to ``out_path``.

    The graph takes ``image (B, Cin, X, Y, Z)`` float32, X/Y/Z any multiples of the stride, and
    returns ``synthesis (B, T, X, Y, Z)`` float32 in z-scored target units. ``parity_patch`` is the
    edge of the random parity batch (default: the card's training patch size).

    ``quantize="int8"``: static QDQ int8 (:mod:`export.quantize`), calibrated on patches of the run's
    store and written only when its quality cost on the store's test patches is within bounds.

    Returns ``{"path", "bytes", "precision", "export_s", "parity": {what: max_abs_diff}, "card"}``
    (and ``"quantization"``: the quality cost, with ``quantize``).
    Raises :class:`ExportError` (writing nothing) when the checker, parity or the int8 quality bound fails.
    """
    import onnx
    import onnxruntime as ort

    out_path = Path(out_path)
    model, fields, store = _resolve(source)
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: only int8 is supported")
    if quantize and fp16:
        raise ExportError("--quantize int8 and --fp16 exclude each other: choose one")
    if quantize and not store:
        raise ExportError("--quantize int8 calibrates on the run's store, and this source has none: export a run "
                          "whose store is reachable from this host")
    precision = quantize or ("fp16" if fp16 else "fp32")
    card = ModelCard.new(**{**fields, "precision": precision, "opset": int(opset)})
    stride = card.stride
    p = int(parity_patch or max(card.patch_size))
    if p % stride:
        raise ExportError(f"parity_patch {p} must be a multiple of the model stride {stride}")

    t0 = time.perf_counter()
    proto = _to_onnx(model, len(card.inputs), stride, opset)
    if fp16:
        proto = _fp16_weights(proto)
    graph_card = card.replace(precision="fp32") if quantize else card  # quantize_int8 stamps int8
    for k, v in graph_card.metadata_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = f"cclray synthesizer {'+'.join(card.inputs)} -> {'+'.join(card.targets)}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the exported model: {e}; nothing was written") from e
    export_s = time.perf_counter() - t0

    with atomic_path(out_path, suffix=".tmp.onnx") as tmp:  # renamed onto out_path only if parity holds
        onnx.save_model(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        tol = TOLERANCES[graph_card.precision]
        rng = np.random.default_rng(seed)
        # non-cubic on purpose: exercises the dynamic spatial dims
        x = rng.standard_normal((2, len(card.inputs), p, p, p + stride)).astype(np.float32)
        parity = {"random": _parity(session, model, x, tol, "random batch")}
        if store:
            real = _real_patch(store, card, p)
            if real is not None:
                parity["real"] = _parity(session, model, real, tol, f"real patch of {store}")
        quantization = _quantize(tmp, session, store, card) if quantize else None
        del session
    nbytes = out_path.stat().st_size
    log.info("wrote %s (%s, %.1f MB, export %.1f s)", out_path, precision, nbytes / 1e6, export_s)
    out = {"path": str(out_path), "bytes": nbytes, "precision": precision, "export_s": export_s,
           "parity": parity, "card": card.to_dict()}
    if quantization is not None:
        out["quantization"] = quantization
    return out


def _quantize(tmp: Path, fp32_session, store: str, card: ModelCard) -> dict:
    """Replace the fp32 model at ``tmp`` by its int8 variant, or raise :class:`ExportError` when its quality
    cost on the store's test patches exceeds the bounds (the numbers are in the message either way)."""
    import onnxruntime as ort

    from . import quantize as q

    calib = [x for x, _, _ in q.store_patches(store, card, ("finetune", "train"), n=8)]
    test = q.store_patches(store, card, ("test", "val"), n=4, seed=1)
    fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
    os.replace(tmp, fp32)
    try:
        q.quantize_int8(fp32, tmp, calib)
    finally:
        fp32.unlink(missing_ok=True)
    cost = q.quality_cost(fp32_session, ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]), test)
    log.info("int8 quality cost: %s", cost)
    if not cost["accepted"]:
        raise ExportError(f"the int8 variant loses too much quality on the store's test patches ({cost}; bound: "
                          f"<= {q.MAX_SSIM_LOSS} SSIM and <= {q.MAX_PSNR_LOSS} dB PSNR): nothing was written; "
                          f"export fp32 (or --fp16) instead")
    return cost
