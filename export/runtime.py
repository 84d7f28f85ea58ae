"""The torch-free synthesizer: an exported ``.onnx`` + onnxruntime + numpy.

Imports only numpy, onnxruntime and numpy-only modules of this project (``data_prep.schema``,
``data_prep.preprocess``, ``export.windows``, ``export.card``): an inference host needs
``pip install cclray[runtime]`` (or ``[runtime-gpu]``, ``[runtime-openvino]``), never torch or Ray.

Pipeline (the training-time recipe, read from the model card): brain mask = voxels where any input
contrast is non-zero -> crop to its bounding box plus the card's margin -> per contrast clip to the
card's percentiles and z-score inside the mask (:mod:`data_prep.preprocess`) -> Gaussian-blended
sliding windows of the training patch size (:mod:`export.windows`) -> mask, uncrop onto the
original grid (background 0). Outputs are in the **z-scored units of the training targets**
(per-subject z-score inside the brain), not scanner intensities: the targets' own scaling is
unknown at inference. (Training masks are the union over all four contrasts; here only the inputs
exist; on skull-stripped BraTS data the two agree.)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep import preprocess
from data_prep.errors import UserError
from data_prep.resample import SAME_SPACING_ATOL, resample_subject, to_grid, zooms
from data_prep.schema import canonical_contrast

from .card import ModelCard, card_from_metadata
from .runtime_io import InputError, check_external_data
from .windows import sliding_window

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    # onnxruntime-openvino's CPU path: oneDNN-style blocked 3-D convolutions, which the default CPU
    # provider lacks (measured 1.4x faster than it a 128³ window batch, docs/BENCHMARKS.md)
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "openvino")  # then cpu
INSTALL_HINT = {
    "tensorrt": "install onnxruntime-gpu with TensorRT (pip install cclray[runtime-gpu])",
    "cuda": "install onnxruntime-gpu (pip install cclray[runtime-gpu])",
    "openvino": "install onnxruntime-openvino instead of onnxruntime (pip install cclray[runtime-openvino])",
}
DEFAULT_BATCH = 2  # windows per run on CPU (bench_runtime.py: 1, 2, 4 within noise; 2 bounds memory)


# the onnxruntime builds on PyPI: each installs the one `onnxruntime` module, so two of them overwrite each other
BUILDS = ("onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml")


def installed_builds(version: Callable[[str], str] | None = None) -> list[str]:
    """The onnxruntime distributions installed here (more than one is a broken install)."""
    import importlib.metadata as md

    found = []
    for name in BUILDS:
        try:
            (version or md.version)(name)
        except md.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_single_build(builds: list[str]) -> None:
    """Warn when several onnxruntime builds share the ``onnxruntime`` module (the last installed won)."""
    if len(builds) > 1:
        log.warning("several onnxruntime builds are installed (%s): they are one module and overwrite each other's "
                    "files; keep one: `pip uninstall -y %s`, then `pip install 'cclray[runtime]'` (or the one build "
                    "you want)", ", ".join(builds), " ".join(builds))


class RuntimeSetupError(UserError, RuntimeError):
    """The model file or the requested execution provider cannot be used; the message says the fix."""


def _resolve_providers(provider: str, available: list[str]) -> list[str]:
    if provider == "auto":
        chain = [PROVIDERS[k] for k in AUTO_ORDER if PROVIDERS[k] in available]
        return chain + [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise RuntimeSetupError(f"unknown provider {provider!r}: use one of auto, {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise RuntimeSetupError(
            f"provider {provider!r} ({wanted}) is not in this onnxruntime build (it has {available}): "
            f"{INSTALL_HINT[provider]} or use --provider cpu"
        )
    return [wanted] if wanted == PROVIDERS["cpu"] else [wanted, PROVIDERS["cpu"]]


class OnnxSynthesizer:
    """An exported cclray synthesizer, ready to run. The onnxruntime session is created once.

    Args:
        model_path: ``.onnx`` written by ``cclray export`` (carries the model card).
        provider: ``auto`` (TensorRT -> CUDA -> CPU, the first that really runs), ``cpu``, ``cuda``
            or ``tensorrt``. ``.provider`` tells which one the session actually uses: onnxruntime-gpu
            lists CUDA even on hosts without a GPU and then silently falls back to CPU.
        threads: intra-op threads (default: the cores this process may use).
    """

    def __init__(self, model_path: str | os.PathLike, provider: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise RuntimeSetupError(f"{path}: no such model file; export one with `cclray export --out {path}`")
        check_external_data(path)
        check_single_build(installed_builds())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        opts.intra_op_num_threads = int(threads or cores)
        opts.inter_op_num_threads = 1
        chain = _resolve_providers(provider, ort.get_available_providers())
        options = {PROVIDERS["openvino"]: {"device_type": "CPU", "num_of_threads": str(opts.intra_op_num_threads)}}
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=[(p, options.get(p, {})) for p in chain])
        except Exception as e:
            raise RuntimeSetupError(f"{path}: onnxruntime could not load the model ({e}); "
                                    f"re-export it with `cclray export`") from e
        self.path = str(path)
        self.card: ModelCard = card_from_metadata(dict(self.session.get_modelmeta().custom_metadata_map), str(path))
        active = self.session.get_providers()
        self.provider: str = active[0]
        if provider != "auto" and self.provider != chain[0]:
            raise RuntimeSetupError(
                f"provider {provider!r} was requested but onnxruntime runs {self.provider} "
                f"(no usable GPU / driver?); use --provider cpu or auto"
            )
        if chain[0] != self.provider:
            log.warning("%s listed as available but the session runs on %s", chain[0], self.provider)
        log.info("loaded %s on %s (%s -> %s)", path, self.provider, "+".join(self.card.inputs),
                 "+".join(self.card.targets))
        if self.card.precision == "int8" and self.provider == PROVIDERS["cpu"]:
            # measured (docs/BENCHMARKS.md): QDQ int8 runs at 0.5-0.8x the fp32 speed on the plain CPU provider
            log.warning("%s is int8 (QDQ), which the plain CPU provider runs slower than the fp32 model; "
                        "int8 pays on the OpenVINO provider (`pip install cclray[runtime]` on x86-64 Linux)", path)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(B, Cin, X, Y, Z)`` float32 normalized windows -> ``(B, T, X, Y, Z)`` float32."""
        return self.session.run([self.card.output_name], {self.card.input_name: x.astype(np.float32, copy=False)})[0]

    def synthesize(self, inputs: dict[str, np.ndarray], affine=None, overlap: float | None = None,
                   batch_size: int = DEFAULT_BATCH, progress: Callable[[int], object] | None = None,
                   resample: bool = True, timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """``{input contrast: (X, Y, Z)}`` raw volumes -> ``{target contrast: (X, Y, Z)}`` float32.

        ``affine`` is one 4x4 array or ``{contrast: 4x4}`` (then they must agree). Outputs are on the
        input grid, background 0, in the z-scored units of the training targets. When the card records
        the training grid's ``spacing`` and the inputs' voxels differ from it, the inputs are resampled
        to it (:mod:`data_prep.resample`, the recipe of ``cclray prep --spacing``) and the outputs put
        back onto the input grid; ``resample=False`` refuses such inputs instead. Without ``affine`` the
        inputs are taken to be on the training grid. ``timings``, when given, receives seconds per stage
        (``preprocess``, ``inference``, ``blend``, ``postprocess``).
        """
        card = self.card
        t0 = time.perf_counter()
        inputs = {canonical_contrast(c): v for c, v in inputs.items()}
        card.require_inputs(inputs)
        arrays = [np.asarray(inputs[c], dtype=np.float32) for c in card.inputs]
        for c, a in zip(card.inputs, arrays):
            if a.ndim != 3:
                raise InputError(f"input {c} has shape {a.shape}: pass one 3D (X, Y, Z) volume per contrast")
            if a.shape != arrays[0].shape:
                raise InputError(f"input {c} has shape {a.shape} but {card.inputs[0]} has {arrays[0].shape}: "
                                 f"inputs must share one grid (resample first)")
            if not np.all(np.isfinite(a)):
                raise InputError(f"input {c} has NaN or infinite voxels: replace them (numpy.nan_to_num) first")
        if isinstance(affine, dict):
            affs = [np.asarray(affine[c], dtype=np.float64) for c in card.inputs if c in affine]
            if any(not np.allclose(a, affs[0], atol=1e-3) for a in affs[1:]):
                raise InputError("input affines differ: inputs must be co-registered on one grid")
            affine = affs[0] if affs else None
        image = np.stack(arrays)  # (Cin, X, Y, Z) in the card's channel order
        src_mask = preprocess.brain_mask(image)
        if not src_mask.any():
            raise InputError("every input voxel is 0 (empty brain): pass skull-stripped volumes, brain non-zero")
        regrid = self._regrid(image, affine, resample)
        net_in = image if regrid is None else regrid.volumes
        mask = src_mask if regrid is None else regrid.mask
        box = preprocess.crop_box(mask, card.crop_margin)
        cropped, mask_c = preprocess.crop(net_in, box), preprocess.crop(mask, box)
        norm = np.stack([preprocess.normalize(v, mask_c, card.percentiles)[0] for v in cropped])
        t1 = time.perf_counter()
        infer = [0.0]

        def timed_predict(x):
            t = time.perf_counter()
            try:
                return self.predict(x)
            finally:
                infer[0] += time.perf_counter() - t

        out = sliding_window(norm, timed_predict, card.patch_size,
                             overlap=card.overlap if overlap is None else overlap,
                             batch_size=batch_size, stride_multiple=card.stride, progress=progress)
        t2 = time.perf_counter()
        out *= mask_c  # (T, x, y, z), background 0
        full = preprocess.uncrop(out, box, net_in.shape[1:])  # (T, X', Y', Z') on the network's grid
        if regrid is not None:  # back onto the input grid, from the brain voxels only, 0 outside its brain
            full = np.stack([to_grid(v, regrid.grid.affine, image.shape[1:], affine, mask=regrid.mask)
                             for v in full]) * src_mask
        if timings is not None:
            timings.update(preprocess=t1 - t0, inference=infer[0], blend=t2 - t1 - infer[0],
                           postprocess=time.perf_counter() - t2)
        return {t: full[i] for i, t in enumerate(card.targets)}

    def _regrid(self, image: np.ndarray, affine, resample: bool):
        """The inputs resampled to the card's training spacing (a :class:`data_prep.resample.Resampled`),
        or None when they are on it already (or nothing says otherwise: no affine, no card spacing)."""
        spacing = self.card.spacing
        if affine is None or spacing is None:
            return None
        have = zooms(affine)
        if np.allclose(have, spacing, atol=SAME_SPACING_ATOL):
            return None
        fmt = "x".join(f"{v:g}" for v in spacing)
        got = "x".join(f"{v:.3g}" for v in have)
        if not resample:
            raise InputError(f"the inputs have {got} mm voxels but this model was trained on {fmt} mm: drop "
                             f"--no-resample (the inputs are then resampled to {fmt} mm and the outputs put back "
                             f"on the input grid), or resample the inputs to {fmt} mm yourself")
        if max(spacing) - min(spacing) > SAME_SPACING_ATOL:
            raise InputError(f"the inputs have {got} mm voxels but this model was trained on anisotropic {fmt} mm "
                             f"voxels, which the runtime cannot resample to: resample the inputs to {fmt} mm first")
        log.info("resampling the inputs from %s mm to the model's %s mm (outputs back on the input grid)", got, fmt)
        return resample_subject(image, affine, float(spacing[0]))

    def windows(self, shape, overlap: float | None = None) -> int:
        """Number of windows a volume of raw ``shape`` (upper bound: before cropping) needs."""
        from .windows import count_windows

        ov = self.card.overlap if overlap is None else overlap
        return count_windows(shape, self.card.patch_size, ov, self.card.stride)
