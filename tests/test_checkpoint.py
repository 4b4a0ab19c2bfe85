import dataclasses
import hashlib
import os
import pickle
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import CreatesAFile, checkpoint_payload, vouch_for

from mnist_classifier.checkpoint import (
    TEMPORARY_PREFIX,
    CheckpointContents,
    CheckpointError,
    check_output_dir,
    copy_checkpoint,
    fraction_of_lab_percent,
    lab_percent,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from mnist_classifier.config import ConfigError, TrainConfig, make_config
from mnist_classifier.datasets import FASHION_MNIST
from mnist_classifier.files import make_folders, remove_made_folders
from mnist_classifier.model import SimpleCNN


def test_round_trip_restores_weights_and_metadata(tmp_path):
    model = SimpleCNN()
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint_payload(model))

    loaded = load_checkpoint(path)
    assert (loaded.epoch, loaded.validation_loss, loaded.validation_accuracy) == (3, 0.05, 0.985)
    # The lab's key stays a percent.
    assert torch.load(path, weights_only=True)["accuracy"] == pytest.approx(98.5)
    assert loaded.config == TrainConfig()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)
    assert not loaded.model.training
    # Tensors and plain values only: the strict loader reads it without any allow-list.
    torch.load(path, weights_only=True)
    # The file and its sha256sum-format digest, and no temporary left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256"]
    digest_line = (tmp_path / "model.pt.sha256").read_text()
    assert digest_line == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  model.pt\n"


def _same(first, second) -> bool:
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second)
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(map(_same, first, second))
    return first == second


def test_every_field_of_the_schema_is_written_and_read_back(tmp_path):
    """The oracle is the value each field was given: a field that to_payload forgets to write,
    or that load_checkpoint forgets to read, comes back as its default, which differs."""
    model = SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 1, 28, 28)).sum().backward()
    optimizer.step()  # a non-empty optimizer state
    generator = torch.Generator().manual_seed(5)
    written = CheckpointContents(
        epoch=4,
        model_state_dict=model.state_dict(),
        optimizer_state_dict=optimizer.state_dict(),
        validation_loss=0.25,
        validation_accuracy=0.875,
        config=make_config({"data.dataset": "fashion-mnist", "lr": 0.003}),
        normalization=FASHION_MNIST.normalization,
        train_loss=0.5,
        train_accuracy=0.75,
        best_validation_accuracy=0.9,
        precision="bf16",
        device="cuda:1",
        torch_version="9.9.9",
        data_sha256={"train-images-idx3-ubyte": "ab" * 32},
        run_dir="/runs/20260101-000000-run",
        scheduler_state_dict={"last_epoch": 7},
        rng_state={"torch": torch.get_rng_state(), "batch_order": generator.get_state()},
        rng_state_by_rank=[{"torch": torch.get_rng_state()}, {"torch": generator.get_state()}],
        world_size=2,
        global_step=96,
        early_stopping=(0.875, 1),
        history=[{"epoch": 1, "validation_accuracy": 0.5}],
    )
    defaults = CheckpointContents(
        epoch=1,
        model_state_dict={},
        optimizer_state_dict={},
        validation_loss=0.0,
        validation_accuracy=0.0,
        config=TrainConfig(),
        normalization=FASHION_MNIST.normalization,
    )
    path = tmp_path / "checkpoint_epoch_4.pt"
    save_checkpoint(path, written.to_payload())

    loaded = load_checkpoint(path)
    for field in dataclasses.fields(CheckpointContents):
        value = getattr(written, field.name)
        assert _same(getattr(loaded, field.name), value), field.name
        if field.name != "normalization":  # the one a file from before it was saved lacks
            assert not _same(getattr(defaults, field.name), value), field.name
    # The lab's keys, as the lab wrote them: accuracy in percent.
    on_disk = torch.load(path, weights_only=True)
    assert (on_disk["epoch"], on_disk["loss"], on_disk["accuracy"]) == (4, 0.25, 87.5)
    assert set(on_disk) >= {"model_state_dict", "optimizer_state_dict", "schema_version"}


@pytest.mark.parametrize("total", [500, 5000, 10000])
def test_every_accuracy_a_split_can_score_is_saved_and_read_back_as_counted(total):
    """The lab's key holds a percent: 9696 right of 10000 was saved as 96.96000000000001 and
    read back as 0.9696000000000001, which the server and the model card then showed."""
    for correct in range(total + 1):
        percent = lab_percent(correct / total)
        assert percent == correct * 100 / total, correct
        assert fraction_of_lab_percent(percent) == correct / total, correct


def test_an_accuracy_of_9696_in_10000_is_written_and_loaded_as_such(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint_payload(validation_accuracy=9696 / 10000))
    assert torch.load(path, weights_only=True)["accuracy"] == 96.96
    assert load_checkpoint(path).validation_accuracy == 0.9696
    # A file saved before, with the percent's noise in it, reads as counted too.
    save_checkpoint(path, checkpoint_payload(accuracy=100.0 * (9696 / 10000)))
    assert load_checkpoint(path).validation_accuracy == 0.9696


def test_missing_checkpoint_says_to_train_first(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*python train_mnist.py"):
        load_checkpoint(tmp_path / "best_model.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint_payload())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.pt does not match its digest"):
        load_checkpoint(path)
    vouch_for(path)  # even when someone vouches for it, it is not readable
    with pytest.raises(CheckpointError, match="model.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("text", ["hello", "not a model at all", "e"])
def test_a_text_file_is_not_a_checkpoint(tmp_path, text):
    """Text reached the unpickler, which called it code it could run ("not a model at all")
    or raised "pop from empty list" ("e")."""
    path = tmp_path / "notes.pt"
    path.write_text(text)
    vouch_for(path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        f"{path} is not a PyTorch checkpoint: its first bytes are not those torch.save writes "
        "(a file of another kind under a checkpoint's name?)"
    )


def test_a_foreign_state_dict_is_not_our_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(SimpleCNN().state_dict(), path)
    vouch_for(path)
    with pytest.raises(CheckpointError, match="not a mnist-classifier checkpoint"):
        load_checkpoint(path)


def test_another_architecture_is_named_as_such(tmp_path):
    other = SimpleCNN()
    other.fc1 = torch.nn.Linear(3136, 256)
    other.fc2 = torch.nn.Linear(256, 10)
    path = tmp_path / "wide.pt"
    save_checkpoint(path, checkpoint_payload(other))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, checkpoint_payload(schema_version=99))
    with pytest.raises(CheckpointError, match="schema version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(checkpoint_payload(loss=CreatesAFile(marker)), path, pickle_protocol=protocol)
    vouch_for(path)  # so that the refusal comes from the loader itself
    with pytest.raises(CheckpointError, match="evil.pt was refused.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_output_dir_that_cannot_be_written_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be written"):
        check_output_dir(blocker / "models")
    if os.geteuid() != 0:  # root writes anywhere; the check above covers that case
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        with pytest.raises(ConfigError):
            check_output_dir(read_only)


def test_checking_an_output_dir_removes_the_folders_it_made(tmp_path):
    check_output_dir(tmp_path / "new" / "nested")
    assert list(tmp_path.iterdir()) == []  # the command may still fail before it writes


def test_checking_an_output_dir_keeps_folders_that_were_there(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output_dir(empty)
    check_output_dir(empty / "new")
    assert [path.name for path in tmp_path.iterdir()] == ["empty"]
    assert list(empty.iterdir()) == []


def test_folders_made_for_a_failed_command_go_unless_something_else_was_written(tmp_path):
    (tmp_path / "kept").mkdir()
    made = make_folders(tmp_path / "kept" / "a" / "b")
    assert made == [tmp_path / "kept" / "a", tmp_path / "kept" / "a" / "b"]
    (tmp_path / "kept" / "a" / "b" / ".lock").write_text("")
    (tmp_path / "kept" / "a" / "theirs.txt").write_text("")  # written meanwhile by another
    remove_made_folders(made, leftovers=(".lock",))
    assert sorted(path.name for path in (tmp_path / "kept").rglob("*")) == ["a", "theirs.txt"]

    made = make_folders(tmp_path / "x" / "y")
    (tmp_path / "x" / "y" / ".lock").write_text("")
    (tmp_path / "x" / "y" / "epoch.pt").write_text("")  # the command's own work stays too
    remove_made_folders(made, leftovers=(".lock",))
    assert sorted(path.name for path in (tmp_path / "x").rglob("*")) == [".lock", "epoch.pt", "y"]


def test_a_folder_that_refuses_files_is_an_error_and_the_folders_made_go(tmp_path, monkeypatch):
    def refused(*_args, **_kwargs):  # as a read-only folder answers, even to root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    with pytest.raises(ConfigError, match=r"cannot be written \(Permission denied\)"):
        check_output_dir(tmp_path / "new" / "nested")
    assert list(tmp_path.iterdir()) == []


def test_a_single_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = tmp_path / "model.pt"
    model = SimpleCNN()
    save_checkpoint(path, checkpoint_payload(model))
    content = bytearray(path.read_bytes())
    # Flip a byte inside fc1's weights (the bulk of the file), not in the zip's directory.
    weights = model.fc1.weight.detach().numpy().tobytes()
    offset = bytes(content).find(weights[:64])
    assert offset > 0
    content[offset + 1000] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(path)


def test_a_digest_in_uppercase_hex_vouches_as_sha256sum_c_reads_it(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint_payload())
    digest = tmp_path / "model.pt.sha256"
    digest.write_text(digest.read_text().upper().replace("MODEL.PT", "model.pt"))
    assert load_checkpoint(path).epoch == checkpoint_payload()["epoch"]
    digest.write_text("0" * 64 + "  model.pt\n")  # a digest of something else, in any case
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace warns of its deprecation
def test_an_export_given_as_a_checkpoint_is_named_with_what_to_do(tmp_path):
    from safetensors.torch import save_file

    model = SimpleCNN().eval()
    exports = {
        "torchscript.pt": "a TorchScript export, not a checkpoint: load it with torch.jit.load",
        "weights.pt": "a safetensors export, not a checkpoint: give the checkpoint",
        "model.onnx": "an ONNX export, not a checkpoint: predict or serve it with --backend",
    }
    torch.jit.trace(model, torch.zeros(1, 1, 28, 28)).save(str(tmp_path / "torchscript.pt"))
    save_file(model.state_dict(), str(tmp_path / "weights.pt"))
    # An ONNX file's first fields: ir_version 8, then producer_name "pytorch".
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.9.0")
    for name, message in exports.items():
        vouch_for(tmp_path / name)  # the user trusts the file: only its kind is wrong
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(tmp_path / name)
        assert str(raised.value).startswith(f"{tmp_path / name} is {message}")


def test_a_checkpoint_without_its_digest_file_is_refused_with_a_command_that_vouches(tmp_path):
    folder = tmp_path / "my models"  # the command must work from anywhere, a space and all
    path = folder / "model.pt"
    save_checkpoint(path, checkpoint_payload())
    (folder / "model.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no digest file model.pt.sha256") as refused:
        load_checkpoint(path)
    command = str(refused.value).split("create one: ")[1]
    subprocess.run(command, shell=True, check=True, cwd="/")
    assert load_checkpoint(path).epoch == 3  # vouched for by the command it was given


def test_an_interrupted_save_leaves_a_file_its_digest_vouches_for(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pt"
    save_checkpoint(path, checkpoint_payload(epoch=1))
    old_bytes = path.read_bytes()

    real_replace = os.replace

    def killed_before_the_rename(source, destination):
        if Path(destination) == path:  # the checkpoint itself, not its digest file
            raise KeyboardInterrupt  # stands in for the process dying here
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, checkpoint_payload(epoch=2))
    monkeypatch.undo()
    # The old file is still there and still verifies, though the digest file lists both.
    assert path.read_bytes() == old_bytes
    assert len((tmp_path / "best_model.pt.sha256").read_text().splitlines()) == 2
    assert load_checkpoint(path).epoch == 1


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / f"{TEMPORARY_PREFIX}checkpoint_epoch_3.pt.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "checkpoint_epoch_2.pt"
    keep.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and keep.exists()


def test_copy_is_verified_and_carries_its_digest(tmp_path):
    source = tmp_path / "a.pt"
    save_checkpoint(source, checkpoint_payload())
    copy_checkpoint(source, tmp_path / "stage" / "best_model.pt")
    assert load_checkpoint(tmp_path / "stage" / "best_model.pt").epoch == 3
    source.write_bytes(source.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        copy_checkpoint(source, tmp_path / "stage2" / "best_model.pt")
    assert not (tmp_path / "stage2" / "best_model.pt").exists()
