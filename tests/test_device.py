import os
import platform
import subprocess
import sys

import pytest
import torch

from mnist_classifier import device as device_module
from mnist_classifier.device import DeviceError, resolve_device, resolve_precision

CPU = torch.device("cpu")


def test_auto_precision_is_fp32_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"


def test_auto_precision_is_bf16_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni", False),  # this lab's Xeon
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_tile amx_bf16 amx_int8", True),
        ("fpu avx2 avx512_bf16x", False),  # a whole flag, not a prefix
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(device_module, "Path", lambda _path: cpuinfo)
    assert device_module.cpu_has_native_bf16() is native


def test_no_cpu_flags_file_means_no_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(device_module, "Path", lambda _path: tmp_path / "missing")
    assert device_module.cpu_has_native_bf16() is False


def test_explicit_precision_is_kept_and_fp16_on_cpu_is_refused():
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", CPU)


def test_auto_device_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")


# Training steps of the lab's model at batch 128: warm-up steps, then the page faults of five
# more, before and after reuse_freed_memory(); in a fresh process, so glibc starts at its
# defaults whatever the test process did before.
_FAULTS_OF_STEPS = """
import resource, torch
from mnist_classifier.device import reuse_freed_memory
from mnist_classifier.model import SimpleCNN
torch.manual_seed(0)
model = SimpleCNN().to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), fused=True)
images = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (128,))
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
def faults_of_steps():
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults_of_steps(), reuse_freed_memory(), faults_of_steps())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_cpu_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    environment = {name: value for name, value in os.environ.items() if "MALLOC" not in name}
    completed = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_STEPS],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    default_faults, switched, reused_faults = completed.stdout.split()
    # By default each step's activations are mapped afresh: thousands of 4 KiB pages a step.
    assert int(default_faults) > 5_000
    assert switched == "True"
    assert int(reused_faults) < int(default_faults) / 20
