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
    monkeypatch.setattr(device_module, "kernels_may_use_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize(
    ("aten_level", "onednn_isa", "allowed"),
    [
        ("AVX512", None, True),
        ("AVX512", "ALL", True),
        ("AVX512", "avx512_core_bf16", True),
        ("AVX512", "AVX2", False),  # convolutions held to AVX2
        ("AVX512", "AVX512_CORE", False),  # AVX-512 without its bf16 instructions
        ("AVX2", None, False),  # torch's own kernels held to AVX2
        ("DEFAULT", None, False),
    ],
)
def test_bf16_needs_kernels_that_may_use_it(monkeypatch, aten_level, onednn_isa, allowed):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten_level)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
    assert device_module.kernels_may_use_bf16() is allowed


def test_auto_precision_is_fp32_where_the_kernels_are_held_to_avx2():
    """A bf16 CPU whose kernels are held to AVX2 (as benchmarks/train_speed.py --cpu-isa avx2
    does) would emulate bf16, several times slower: auto must pick fp32 there. In a fresh
    process, since torch reads the variables once."""
    program = (
        "import torch\n"
        "from mnist_classifier import device\n"
        "device.cpu_has_native_bf16 = lambda: True\n"
        "print(device.resolve_precision('auto', torch.device('cpu')))"
    )
    held = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    completed = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, **held},
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.strip() == "fp32"


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


# In a fresh process, so glibc starts from its defaults whatever this one did before: three
# 20 MiB blocks (the size of a batch's activations) with or without reuse_freed_memory(), and
# whether each lies in the heap, where freed memory is reused, or in a mapping of its own.
_PLACEMENT = """
import sys, torch
from mnist_classifier.device import reuse_freed_memory
switched = reuse_freed_memory() if sys.argv[1] == "reuse" else None
blocks = [torch.ones(20 * 2**20 // 4) for _ in range(3)]
heap = next(line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
start, end = (int(part, 16) for part in heap.split("-"))
print(switched, *(start <= block.data_ptr() < end for block in blocks))
"""


def _placement(mode: str) -> list[str]:
    environment = {name: value for name, value in os.environ.items() if "MALLOC" not in name}
    completed = subprocess.run(
        [sys.executable, "-c", _PLACEMENT, mode],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.split()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_reusing_freed_memory_serves_activation_sized_blocks_from_the_heap():
    # By default each block this size gets a fresh mapping from the kernel, faulted in page by
    # page and handed back when freed; after the call they come from the heap and stay.
    assert _placement("default") == ["None", "False", "False", "False"]
    assert _placement("reuse") == ["True", "True", "True", "True"]
