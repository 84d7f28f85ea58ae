"""The host signature a study records beside each training job: CPU model and torch's CPU kernel level."""
import sys

import torch

from cclray import host


def test_signature_names_the_cpu_and_torchs_kernel_level():
    sig = host.signature("cpu")
    assert sig == f"{host.cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"
    assert host.cpu_model() and host.cpu_model() != "unknown" or sys.platform != "linux"


def test_without_proc_cpuinfo_the_model_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "Path", lambda _: tmp_path / "absent")
    monkeypatch.setattr(host.platform, "processor", lambda: "")
    assert host.cpu_model() == "unknown"


def test_a_cuda_device_without_a_gpu_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert host.signature("cuda") == host.signature("cpu")


def test_importing_the_module_does_not_import_torch():
    import subprocess

    code = "import sys, cclray.host; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
