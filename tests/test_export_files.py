"""What an export leaves on disk: one ONNX file, the checkpoints' file mode, nothing on failure,
and no file replaced that is not an earlier export."""

import stat
import warnings

import pytest
import torch
from conftest import checkpoint_payload
from typer.testing import CliRunner

from mnist_classifier import export
from mnist_classifier.checkpoint import digest_path, save_checkpoint
from mnist_classifier.cli import app
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


@pytest.mark.parametrize(
    ("export_format", "name"),
    [("onnx", "model.onnx"), ("torchscript", "model.pt"), ("safetensors", "model.safetensors")],
)
def test_an_earlier_export_of_any_format_may_be_replaced(
    model, parity_images, tmp_path, export_format, name
):
    checkpoint = tmp_path / "best_model.pt"
    save_checkpoint(checkpoint, checkpoint_payload(model))
    output = tmp_path / name
    export.export_model(model, export_format, output, parity_images)

    assert export.is_our_export(output)
    export.check_export_output(export_format, output, checkpoint)  # no refusal
    export.export_model(model, export_format, output, parity_images)  # the same name again


def test_an_onnx_export_under_any_name_is_known_as_ours(model, parity_images, tmp_path):
    output = tmp_path / "model.bin"  # no .onnx suffix: the file's own bytes must tell
    export.export_model(model, "onnx", output, parity_images)
    assert export.is_our_export(output)


def _foreign_onnx(path):
    """A valid ONNX model that `mnist export` did not write: no metadata of ours."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(path))


def _foreign_safetensors(path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(path), metadata={"architecture": "SimpleCNN"})


def _foreign_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(torch.jit.trace(torch.nn.ReLU(), torch.zeros(1)), str(path))


@pytest.mark.parametrize(
    "write_foreign",
    [
        _foreign_onnx,
        _foreign_safetensors,
        _foreign_torchscript,
        lambda path: save_checkpoint(path, checkpoint_payload()),  # another checkpoint: a zip
        lambda path: path.write_bytes(b"my notes"),
    ],
)
def test_files_mnist_export_did_not_write_are_not_taken_for_exports(tmp_path, write_foreign):
    path = tmp_path / "model.bin"
    write_foreign(path)
    assert not export.is_our_export(path)


runner = CliRunner()


@pytest.fixture
def checkpoint(model, tmp_path):
    path = tmp_path / "checkpoints" / "best_model.pt"
    path.parent.mkdir()
    save_checkpoint(path, checkpoint_payload(model))
    return path


def _export(checkpoint, export_format, output):
    # A data folder that does not exist: a refusal must come before any data is read.
    no_data = checkpoint.parent / "no-data"
    arguments = ["export", "--checkpoint", str(checkpoint), "--format", export_format]
    return runner.invoke(app, [*arguments, "--output", str(output), "--data-dir", str(no_data)])


def _refused(result, message):
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and message in result.output


@pytest.mark.parametrize("export_format", ["onnx", "torchscript", "safetensors"])
def test_export_never_writes_over_the_checkpoint_or_its_digest(checkpoint, export_format):
    digest = digest_path(checkpoint)
    before = checkpoint.read_bytes(), digest.read_bytes()

    _refused(_export(checkpoint, export_format, checkpoint), "is the checkpoint being exported")
    _refused(_export(checkpoint, export_format, digest), "is the digest file of the checkpoint")
    assert (checkpoint.read_bytes(), digest.read_bytes()) == before
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == [
        "best_model.pt",
        "best_model.pt.sha256",
    ]


@pytest.mark.parametrize(
    ("export_format", "name", "refused"),
    [
        ("onnx", "notes.txt", "notes.txt"),
        ("torchscript", "model.pt", "model.pt"),
        ("safetensors", "model.safetensors", "model.safetensors"),
        ("safetensors", "model.safetensors.json", "model.safetensors.json"),  # the sidecar
    ],
)
def test_export_refuses_to_replace_a_file_it_did_not_write(
    checkpoint, tmp_path, export_format, name, refused
):
    users_file = tmp_path / name
    users_file.write_bytes(b"the user's own file")
    output = users_file.with_name(name.removesuffix(".json"))

    result = _export(checkpoint, export_format, output)

    _refused(result, f"{tmp_path / refused} exists and is not ")
    assert "choose another --output" in result.output
    assert users_file.read_bytes() == b"the user's own file"


def test_export_to_a_folder_is_a_usage_error(checkpoint, tmp_path):
    _refused(_export(checkpoint, "onnx", tmp_path), "is a folder; --output names the file")


def test_export_under_a_file_says_it_is_no_folder_before_any_data_is_read(checkpoint, tmp_path):
    users_file = tmp_path / "notes"
    users_file.write_bytes(b"the user's own file")
    _refused(
        _export(checkpoint, "onnx", users_file / "model.onnx"),
        f"cannot write {users_file / 'model.onnx'}: {users_file} is not a folder",
    )
    assert users_file.read_bytes() == b"the user's own file"


@pytest.mark.parametrize(
    ("export_format", "name", "message"),
    [
        (
            "onnx",
            "model.ts",
            "--output {out}/model.ts is named as a TorchScript file, but --format is onnx: "
            "name it {out}/model.onnx, or give --format torchscript",
        ),
        ("torchscript", "model.ONNX", "is named as an ONNX file, but --format is torchscript"),
        ("onnx", "model.safetensors", "name it {out}/model.onnx, or give --format safetensors"),
    ],
)
def test_an_output_named_for_another_format_is_refused(
    checkpoint, tmp_path, export_format, name, message
):
    """An ONNX file named model.ts would later be handed to torch.jit.load."""
    out = tmp_path / "exports"
    _refused(_export(checkpoint, export_format, out / name), message.format(out=out))
    assert not out.exists()
