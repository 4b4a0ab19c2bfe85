"""What an export leaves on disk: one ONNX file, the checkpoints' file mode, nothing on failure."""

import stat

import pytest
import torch
from conftest import checkpoint_payload

from mnist_classifier import export
from mnist_classifier.checkpoint import save_checkpoint
from mnist_classifier.model import SimpleCNN


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SimpleCNN().eval()


@pytest.fixture
def parity_images():
    return torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=torch.Generator())


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("export_format", "name", "written"),
    [
        ("onnx", "model.onnx", ["model.onnx"]),
        ("torchscript", "model.pt", ["model.pt"]),
        ("safetensors", "model.safetensors", ["model.safetensors", "model.safetensors.json"]),
    ],
)
def test_an_export_writes_only_its_files_with_the_checkpoints_mode(
    model, parity_images, tmp_path, export_format, name, written
):
    checkpoint = tmp_path / "checkpoint" / "best_model.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, checkpoint_payload(model))
    output_dir = tmp_path / "exported"

    result = export.export_model(model, export_format, output_dir / name, parity_images)

    assert sorted(path.name for path in output_dir.iterdir()) == written  # no .onnx.data
    assert [path.name for path in result.files] == written
    assert all(_mode(path) == _mode(checkpoint) for path in result.files)


def test_a_failed_parity_check_leaves_nothing_and_keeps_an_earlier_export(
    model, parity_images, tmp_path, monkeypatch
):
    earlier = tmp_path / "model.safetensors"
    earlier.write_bytes(b"an earlier export")
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no export can pass

    with pytest.raises(export.ExportError, match="does not match the eager model"):
        export.export_model(model, "safetensors", earlier, parity_images)

    assert [path.name for path in tmp_path.iterdir()] == ["model.safetensors"]
    assert earlier.read_bytes() == b"an earlier export"


def test_an_exporter_that_fails_half_way_leaves_nothing(
    model, parity_images, tmp_path, monkeypatch
):
    def write_then_fail(model, output, inputs, normalization, dataset):
        output.write_bytes(b"half")
        output.with_name(output.name + ".data").write_bytes(b"half")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(export, "_onnx", write_then_fail)
    with pytest.raises(export.ExportError, match="onnx export to .* failed: the exporter crashed"):
        export.export_model(model, "onnx", tmp_path / "model.onnx", parity_images)
    assert list(tmp_path.iterdir()) == []
