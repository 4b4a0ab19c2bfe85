"""Which device and numeric precision to run on, decided once from the config and the hardware."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from pathlib import Path

import torch


class DeviceError(RuntimeError):
    """The requested device or precision is not available on this machine."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' was requested but no CUDA GPU is available; use --device cpu"
        )
    if requested == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was requested but MPS is not available; use --device cpu")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


# oneDNN's instruction sets below those with bf16 arithmetic, as ONEDNN_MAX_CPU_ISA names them.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
# torch's own kernel levels below AVX-512, as torch.backends.cpu.get_cpu_capability() names them.
_ATEN_LEVELS_WITHOUT_BF16 = {"DEFAULT", "NO AVX", "AVX2"}


def kernels_may_use_bf16() -> bool:
    """False where torch's kernels are held below AVX-512 (ATEN_CPU_CAPABILITY) or oneDNN's
    convolutions below its bf16 instructions (ONEDNN_MAX_CPU_ISA, or its older name
    DNNL_MAX_CPU_ISA): bf16 is then emulated, several times slower than fp32, whatever the
    CPU itself could do."""
    if torch.backends.cpu.get_cpu_capability() in _ATEN_LEVELS_WITHOUT_BF16:
        return False
    held = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return held.strip().upper() not in _ONEDNN_ISAS_WITHOUT_BF16


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' -> bf16 on CPUs that multiply bf16 natively (where torch's kernels may), else fp32."""
    if requested == "auto":
        # Measured on an H100 (benchmarks/accuracy.py, fast preset): bf16 autocast trained this
        # small model at 0.88x the speed of fp32, because its steps are bound by kernel launches,
        # not arithmetic, and autocast adds casts. Replayed as a CUDA graph (one process) bf16
        # is 1.26x fp32 on an H200 (benchmarks/gpu_speed.py), but several processes under DDP
        # launch every kernel, so CUDA stays fp32 unless asked.
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() and kernels_may_use_bf16() else "fp32"
        return "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise DeviceError("precision fp16 is not supported on the CPU; use bf16 or fp32")
    return requested


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """Mixed precision for the forward pass; a no-op for fp32. A step recorded as a CUDA graph
    needs `cache_enabled=False`: torch's cast-weight cache must not outlive the recording."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


def memory_format_for(device: torch.device) -> torch.memory_format:
    """Channels-last lets oneDNN (CPU) and cuDNN (CUDA) pick their fast convolution kernels.

    Measured on a 2-core AVX2 CPU, lab settings: about 1.5x the images/s of NCHW.
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


# mallopt's parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit: blocks up to this size come from the heap.
_LARGEST_HEAP_BLOCK = 32 * 1024 * 1024
# Freed memory at the heap's top is kept up to this much (a step's activations are far less).
_KEPT_FREE_MEMORY = 1024 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Let each CPU training step reuse the memory the last one freed; False where not glibc.

    A step allocates and frees the same few tens of MiB of activations and gradients each time.
    By default glibc maps large blocks fresh from the kernel and hands freed memory at the top
    of its heap back, so every step faulted its tensors in page by page again: about a quarter
    of the fast preset's training time on a 2-core Xeon (benchmarks/train_speed.py). Here
    blocks up to 32 MiB come from the heap and freed memory stays in the process; its peak size
    is unchanged, but it is returned only when the process ends. Both settings count: the
    threshold alone left a third of the faults. Process-wide: the training process calls it.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_HEAP_BLOCK)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_FREE_MEMORY)
    )


def available_memory_bytes() -> int | None:
    """The memory this process can still be given without swapping: Linux's MemAvailable, or
    less where the process's cgroup (a container's -m limit, say) leaves less; None where
    unknown (not Linux)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(meminfo.split("MemAvailable:", 1)[1].split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    headroom = _cgroup_headroom()
    return available if headroom is None else min(available, headroom)


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, or v1 as a container sees it);
    None without such a limit."""
    try:
        relative = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].splitlines()[0]
    except (OSError, IndexError):
        relative = "/"
    v2 = Path("/sys/fs/cgroup") / relative.lstrip("/")
    v1 = Path("/sys/fs/cgroup/memory")
    for limit_file, usage_file in (
        (v2 / "memory.max", v2 / "memory.current"),
        (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes"),
    ):
        try:
            limit = int(limit_file.read_text())  # ValueError for v2's "max": no limit
            if limit < 2**60:  # v1 writes "no limit" as a number near 2**63
                return limit - int(usage_file.read_text())
        except (OSError, ValueError):
            continue
    return None
