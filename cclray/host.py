"""What a job ran on: the CPU model and the vector instructions torch's CPU kernels use, or the GPU.

Training on CPU is bit-identical for a seed only with the same thread count *and* the same kernels: torch picks
its kernels by the host's instruction set (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...), and
floating-point sums in another order grow, over 2000 steps, into networks a few hundredths of SSIM apart
(docs/RESULTS.md). :func:`signature` names that, so a study can record it and say when a rerun is elsewhere.
Importing this module does not import torch.
"""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """``/proc/cpuinfo``'s first ``model name`` (``platform.processor()`` elsewhere; ``unknown`` if neither)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def signature(device: str = "cpu") -> str:
    """``"<CPU model> (<torch CPU capability>)"``, or ``"<GPU name> (CUDA <version>)"`` for a ``cuda`` device."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"
