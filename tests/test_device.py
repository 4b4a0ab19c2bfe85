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


def test_auto_precision_on_this_machine_follows_its_cpu_flags():
    expected = "bf16" if device_module.cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", CPU) == expected


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
