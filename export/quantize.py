"""Static int8 quantization of an exported synthesizer (``cclray export --quantize int8``) and its quality cost.

``onnxruntime.quantization.quantize_static`` in QDQ format: the 3-D convolutions' weights int8 per
output channel, their activations uint8, scales calibrated (MinMax) on real patches of the run's store.
Only ``Conv`` nodes are quantized: quantizing every op failed on the exported graph ("quantization
parameter shared mode is not supported for weight"), and the convolutions are ~82 % of the kernel time.

The quality cost is measured with the evaluation's primary metric (``masked`` SSIM and PSNR of the brain,
:func:`cclray.evaluation.metrics.masked_metrics`) against the acquired targets, on centre patches of the
store's test (else val) subjects, fp32 and int8 through the same patches; the variant is accepted when
it loses at most :data:`MAX_SSIM_LOSS` SSIM and :data:`MAX_PSNR_LOSS` dB PSNR (issue 19's bound).
Needs ``onnx`` (the train extra), not torch.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .card import INPUT_NAME, OUTPUT_NAME, CardError, ModelCard, card_from_metadata

log = logging.getLogger(__name__)

MAX_SSIM_LOSS = 0.002
MAX_PSNR_LOSS = 0.2  # dB


def store_patches(url: str, card: ModelCard, splits: tuple[str, ...], n: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``n`` ``(image (1, Cin, p...), targets (T, p...), mask (p...))`` patches of the store's
    subjects in the first non-empty of ``splits``: one centre patch a subject, then random ones."""
    from data_prep.schema import channel_index
    from data_prep.store import Store

    store = Store(url)
    split_map = store.attrs.get("splits", {})
    sids = next((split_map[s] for s in splits if split_map.get(s)), None) or store.subjects()
    rng = np.random.default_rng(seed)
    out = []
    patch = card.patch_size
    for i in range(n):
        sid = sids[i % len(sids)]
        shape = store.subject_attrs(sid)["shape"]
        starts = [max(0, s // 2 - p // 2) if i < len(sids) else int(rng.integers(0, max(1, s - p + 1)))
                  for s, p in zip(shape, patch)]
        box = [(a, min(a + p, s)) for a, p, s in zip(starts, patch, shape)]
        image = store.read(sid, "image", box).astype(np.float32)
        mask = store.read(sid, "mask", box).astype(bool)
        pad = [(0, p - (b - a)) for (a, b), p in zip(box, patch)]
        x = np.pad(image[[channel_index(c) for c in card.inputs]], [(0, 0)] + pad)[None]
        y = np.pad(image[[channel_index(c) for c in card.targets]], [(0, 0)] + pad)
        out.append((x, y, np.pad(mask, pad)))
    return out


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of input batches."""

    def __init__(self, batches):
        self._it = iter([{INPUT_NAME: b} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax calibration
        raise NotImplementedError


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: list[np.ndarray]) -> None:
    """Write the static-QDQ int8 model of ``fp32_path`` to ``out_path``, calibrated on ``calibration``
    batches ``(1, Cin, p, p, p)``. The fp32 model's metadata is kept, its card with ``precision: int8``
    (whichever entry point calls this); a model whose card is not fp32 is refused (:class:`CardError`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    card = card_from_metadata(src, str(fp32_path))
    if card.precision != "fp32":
        raise CardError(f"{fp32_path} is a {card.precision} model: int8 quantization starts from the fp32 "
                        f"export (`cclray export` without --fp16)")
    src.update(card.replace(precision="int8").metadata_props())
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calibration)
    quantize_static(str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"])
    q = onnx.load(str(out_path))
    del q.metadata_props[:]
    for k, v in src.items():
        entry = q.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save_model(q, str(out_path))


def quality_cost(fp32_session, int8_session, patches) -> dict:
    """Mean masked brain SSIM and PSNR of the first target for fp32 and int8 over ``patches``, and the
    losses (fp32 - int8); ``accepted`` when both losses are within the bounds."""
    from cclray.evaluation.metrics import masked_metrics

    scores = {"fp32": [], "int8": []}
    for x, y, mask in patches:
        if mask.sum() < 8:
            continue
        for name, sess in (("fp32", fp32_session), ("int8", int8_session)):
            pred = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0, 0]
            s = masked_metrics(pred, y[0], mask)["brain"]
            scores[name].append((s.ssim, s.psnr))
    if not scores["fp32"]:
        return {"patches": 0, "accepted": False, "reason": "no brain voxels in the store's patches"}
    mean = {k: np.mean(np.asarray(v), axis=0) for k, v in scores.items()}
    ssim_loss = float(mean["fp32"][0] - mean["int8"][0])
    psnr_loss = float(mean["fp32"][1] - mean["int8"][1])
    return {"patches": len(scores["fp32"]), "ssim_fp32": float(mean["fp32"][0]), "ssim_int8": float(mean["int8"][0]),
            "psnr_fp32": float(mean["fp32"][1]), "psnr_int8": float(mean["int8"][1]),
            "ssim_loss": ssim_loss, "psnr_loss": psnr_loss,
            "accepted": bool(ssim_loss <= MAX_SSIM_LOSS and psnr_loss <= MAX_PSNR_LOSS)}
