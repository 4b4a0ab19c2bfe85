import os
import pickle
from pathlib import Path

import pytest
import torch

from mnist_classifier.checkpoint import (
    CheckpointError,
    build_payload,
    check_output_dir,
    load_checkpoint,
    save_checkpoint,
)
from mnist_classifier.config import ConfigError, TrainConfig
from mnist_classifier.model import SimpleCNN


def _payload(model=None, **changes):
    model = model or SimpleCNN()
    payload = build_payload(
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        epoch=3,
        validation_loss=0.05,
        validation_accuracy=98.5,
        config=TrainConfig(),
        extra={},
    )
    payload.update(changes)
    return payload


def test_round_trip_restores_weights_and_metadata(tmp_path):
    model = SimpleCNN()
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload(model))

    loaded = load_checkpoint(path)
    assert (loaded.epoch, loaded.validation_loss, loaded.validation_accuracy) == (3, 0.05, 98.5)
    assert loaded.config == TrainConfig()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)
    assert not loaded.model.training
    # Tensors and plain values only: the strict loader reads it without any allow-list.
    torch.load(path, weights_only=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind


def test_missing_checkpoint_says_to_train_first(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*python train_mnist.py"):
        load_checkpoint(tmp_path / "best_model.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_foreign_state_dict_is_not_our_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(SimpleCNN().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a mnist-classifier checkpoint"):
        load_checkpoint(path)


def test_another_architecture_is_named_as_such(tmp_path):
    other = SimpleCNN()
    other.fc1 = torch.nn.Linear(3136, 256)
    other.fc2 = torch.nn.Linear(256, 10)
    path = tmp_path / "wide.pt"
    save_checkpoint(path, _payload(other))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, _payload(schema_version=99))
    with pytest.raises(CheckpointError, match="schema version 99"):
        load_checkpoint(path)


class _CreatesAFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_payload(loss=_CreatesAFile(marker)), path, pickle_protocol=protocol)
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
