"""Whole-volume synthesis: onnxruntime (the cclray runtime, export.runtime) vs torch eager, same weights,
same Gaussian-blended sliding windows, measured back to back in one run.

    python benchmarks/bench_runtime.py [--smoke | --quick] [--device cuda]
    python benchmarks/bench_runtime.py --volume 96 96 96 --patch 64 --batches 1 2 4

What a user would otherwise do is run the torch model eagerly over the same windows: the torch
side is the very same ``OnnxSynthesizer.synthesize`` pipeline with its ``predict`` swapped for the
torch model, so only the network execution differs. On CPU the torch model is also timed in
channels_last_3d (what ``cclray evaluate`` uses). Also printed: model file sizes (fp32 / fp16
weights) and, at full size, the peak RSS of a torch-free runtime process. Goal: ORT >= 2x faster.
``--device cuda`` runs torch on CUDA and onnxruntime with the CUDA provider. Where onnxruntime is the
onnxruntime-openvino build, its OpenVINO execution provider is timed too (CPU).

Repetitions (``--repeats``, default 3; 2 with ``--smoke``): every variant synthesizes the volume once a
round, round robin; each ratio is min / median / max over the rounds.

- full (no flag): the whole 240x240x155 volume (8 windows of 128³ after the brain crop), window batch
  1, 2 and 4 for onnxruntime, fp16 export too, and the peak RSS of a torch-free runtime process.
- ``--quick``: the same default network, patch 128 and window batch 2 on a 192x192x128 volume, which the
  brain crop leaves at 2 windows (one batch): the same network executions per window at a quarter of the
  whole volume's cost (the whole-volume figure: run without ``--quick``, or ``--quick --volume 240 240 155``).
- ``--smoke``: 48x48x40, patch 32, widths 8-16-32.

``--int8`` also times the static-QDQ int8 variant (:func:`export.quantize.quantize_int8`, calibrated on the
first windows the runtime feeds the fp32 model) on the OpenVINO provider where the build has it, else on
the CPU provider. ``--run RUN`` benchmarks a trained finetune run's network (its card's patch) instead of
a random-weight one.
"""
from __future__ import annotations

import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def brain(shape, seed=0) -> dict:
    """{contrast: (X, Y, Z)} skull-stripped-like volumes: a noisy ellipsoid about BraTS's brain size."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = ((grid / np.array([0.6, 0.75, 0.9])[:, None, None, None]) ** 2).sum(0) < 1.0
    return {c: np.where(inside, s * (1.5 + grid[0] + rng.random(shape)), 0).astype(np.float32)
            for c, s in (("t1gd", 300.0), ("flair", 120.0))}


RSS_PROBE = """
import resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from bench_runtime import brain
from export.runtime import OnnxSynthesizer
s = OnnxSynthesizer({model!r}, provider="cpu", threads={threads})
vols = brain({shape!r})
t = time.perf_counter(); s.synthesize(vols, batch_size={batch}); dt = time.perf_counter() - t
assert "torch" not in sys.modules
try:  # VmHWM: this process's own peak; ru_maxrss keeps the parent's peak across fork + exec on Linux
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(hwm / 1024, dt)
"""


class _Enough(Exception):
    pass


def int8_synth(synth, vols, tmp: Path, report, provider: str, threads: int, n: int = 8):
    """An OnnxSynthesizer on the int8 variant of ``synth``'s model, calibrated on the first ``n`` windows
    ``synth`` is fed for ``vols`` (normalized exactly as the runtime does)."""
    from export.quantize import quantize_int8
    from export.runtime import OnnxSynthesizer

    seen, predict = [], synth.predict

    def capture(x):
        seen.extend(x[i:i + 1].copy() for i in range(len(x)))
        if len(seen) >= n:
            raise _Enough
        return predict(x)

    synth.predict = capture
    try:
        synth.synthesize(vols, batch_size=1)
    except _Enough:
        pass
    finally:
        synth.predict = predict
    t = time.perf_counter()
    quantize_int8(synth.path, tmp / "m_int8.onnx", seen[:n])
    report.figure("int8 quantization (calibration on 8 windows)", time.perf_counter() - t, "s")
    report.figure("model file int8", (tmp / "m_int8.onnx").stat().st_size / 1e6, "MB")
    return OnnxSynthesizer(tmp / "m_int8.onnx", provider=provider, threads=threads)


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--volume", type=int, nargs=3, default=None, help="volume shape (default 240 240 155)")
    ap.add_argument("--patch", type=int, default=None, help="training patch size in the card (default 128)")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="default: ModelConfig's")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="ORT window batch sizes to try")
    ap.add_argument("--torch-batch", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also time the int8 (QDQ) variant")
    ap.add_argument("--run", default=None, help="a finetune run (or checkpoint) to benchmark instead of a random net")
    args = ap.parse_args()
    report = _common.Report("runtime", args)
    if _common.skip_without_cuda(report):
        return report.finish()
    size = tuple(args.volume or _common.pick(args.size, (48, 48, 40), (192, 192, 128), (240, 240, 155)))
    patch = args.patch or _common.pick(args.size, 32, 128, 128)
    widths = args.widths or _common.pick(args.size, [8, 16, 32], None, None)
    batches = args.batches or _common.pick(args.size, [2], [2], [1, 2, 4])
    full = args.size == "full"

    import logging

    import torch

    from cclray.config import ModelConfig
    from cclray.models import build_synthesizer
    from export.onnx_export import export_onnx
    from export.runtime import OnnxSynthesizer

    logging.basicConfig(level=logging.WARNING)
    threads = args.threads or _common.cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if args.run:
        from cclray.runs import load_synthesizer

        model, run_cfg, _ = load_synthesizer(args.run, device="cpu")
        cfg, patch = run_cfg.model, args.patch or max(run_cfg.patch.patch_size)
    else:
        cfg = ModelConfig(**({"widths": tuple(widths)} if widths else {}))
        model = build_synthesizer(cfg).eval()
    model = model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    for fp16 in ((False, True) if full else (False,)):
        t = time.perf_counter()
        rep = export_onnx((model, cfg, {"patch_size": patch}), tmp / f"m_{fp16}.onnx", fp16=fp16,
                          parity_patch=cfg.stride * 2)
        report.figure(f"export {rep['precision']} (dynamo, incl. parity)", time.perf_counter() - t, "s")
        report.figure(f"model file {rep['precision']}", rep["bytes"] / 1e6, "MB")
    path = tmp / "m_False.onnx"
    device = torch.device(args.device)
    model = model.to(device)
    provider = "cuda" if args.device == "cuda" else "cpu"
    ort_synth = OnnxSynthesizer(path, provider=provider, threads=threads)
    ref_synth = OnnxSynthesizer(path, provider="cpu", threads=threads)  # same pipeline, torch predictor

    def torch_predict(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).cpu().numpy()

    ref_synth.predict = torch_predict
    print(f"widths {cfg.widths}, stride {cfg.stride}, patch {patch}, volume {size}, {threads} threads, "
          f"ORT provider {ort_synth.provider}; windows <= {ort_synth.windows(size)} (before the brain crop)", flush=True)
    vols = brain(size)
    warm = np.zeros((1, 2, patch, patch, patch), np.float32)
    ort_synth.predict(warm), torch_predict(warm)  # first-call allocations out of the timing

    import onnxruntime as ort

    from cclray.models import to_channels_last

    ov_synth = None
    if args.device == "cpu" and "OpenVINOExecutionProvider" in ort.get_available_providers():
        ov_synth = OnnxSynthesizer(path, provider="openvino", threads=threads)  # onnxruntime-openvino
        t = time.perf_counter()
        ov_synth.predict(np.zeros((batches[0], 2, patch, patch, patch), np.float32))
        report.figure("onnxruntime OpenVINO EP first call (compile)", time.perf_counter() - t, "s")
    cl_model = to_channels_last(copy.deepcopy(model)) if args.device == "cpu" else None

    def cl_predict(x):  # what `cclray evaluate` runs on CPU: the same model in channels_last_3d
        with torch.inference_mode():
            return cl_model(torch.from_numpy(x)).numpy()

    variants = {f"ort b{b}": (ort_synth.synthesize, b) for b in batches}
    if ov_synth is not None:
        variants["openvino"] = (ov_synth.synthesize, batches[0])
    if args.int8:
        q_provider = "openvino" if ov_synth is not None else "cpu"
        q_synth = int8_synth(ort_synth, vols, tmp, report, q_provider, threads)
        variants["openvino int8" if ov_synth is not None else "ort int8"] = (q_synth.synthesize, batches[0])
    variants["torch"] = (ref_synth.synthesize, args.torch_batch)
    if cl_model is not None:
        cl_synth = OnnxSynthesizer(path, provider="cpu", threads=threads)
        cl_synth.predict = cl_predict
        cl_predict(warm)
        variants["torch channels_last_3d"] = (cl_synth.synthesize, args.torch_batch)
    outs = {}

    def run(k, fn, b):
        def go():
            outs[k] = fn(vols, batch_size=b)
        return go

    print("window batch: " + ", ".join(f"{k} {b}" for k, (_, b) in variants.items()), flush=True)
    # round robin: every variant once per round, so load drifts hit them alike
    times = _common.rounds({k: run(k, fn, b) for k, (fn, b) in variants.items()}, _common.repeats(args), report=report)
    diff = max(float(np.abs(outs[f"ort b{batches[0]}"][c] - outs["torch"][c]).max()) for c in outs["torch"])
    report.figure("max |ORT - torch| over the volume", diff, "z")
    what = "whole volume" if size == (240, 240, 155) else f"volume {'x'.join(map(str, size))}"
    best_b = min((k for k in times if k.startswith("ort")), key=lambda k: statistics.median(times[k]))
    report.ratio_runs(f"torch eager / onnxruntime CPU EP ({what})", times["torch"], times[best_b], goal=2,
                      note=f"best batch: {best_b}")
    if "torch channels_last_3d" in times:
        report.ratio_runs(f"torch channels_last_3d / onnxruntime CPU EP ({what})",
                          times["torch channels_last_3d"], times[best_b], goal=None,
                          note="oneDNN's blocked 3D convolutions; onnxruntime's CPU Conv3D has none")
    if "openvino" in times:
        report.figure("max |OpenVINO EP - torch| over the volume",
                      max(float(np.abs(outs["openvino"][c] - outs["torch"][c]).max()) for c in outs["torch"]), "z")
        report.ratio_runs(f"torch eager / onnxruntime OpenVINO EP ({what})", times["torch"], times["openvino"],
                          goal=2, note="onnxruntime-openvino build (cclray[runtime] on x86-64 Linux)")
        if "torch channels_last_3d" in times:
            report.ratio_runs(f"torch channels_last_3d / onnxruntime OpenVINO EP ({what})",
                              times["torch channels_last_3d"], times["openvino"], goal=1.5,
                              note="issue 19's goal: the runtime >= 1.5x the best torch CPU path")

    for k in (k for k in times if k.endswith(" int8")):
        fp32 = "openvino" if k == "openvino int8" else best_b
        report.figure(f"max |{k} - fp32| over the volume",
                      max(float(np.abs(outs[k][c] - outs[fp32][c]).max()) for c in outs[fp32]), "z")
        report.ratio_runs(f"onnxruntime {fp32} fp32 / {k} ({what})", times[fp32], times[k], goal=None)
        if "torch channels_last_3d" in times:
            report.ratio_runs(f"torch channels_last_3d / {k} ({what})", times["torch channels_last_3d"],
                              times[k], goal=1.5, note="issue 19's goal, int8 (quality: `cclray export --quantize`)")

    if full and args.device == "cpu":
        code = RSS_PROBE.format(root=str(_common.ROOT), bench=str(Path(__file__).parent), model=str(path),
                                threads=threads, shape=size, batch=batches[0])
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(_common.ROOT)}).stdout.split()
        report.figure("torch-free runtime process: peak RSS", float(out[0]), "MB")
        report.figure("torch-free runtime process: synthesis", float(out[1]), "s")
    shutil.rmtree(tmp, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
