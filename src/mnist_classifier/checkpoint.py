"""Checkpoint files: what goes in them, and the one safe way to read them back.

A checkpoint is a dict of tensors and plain values only (schema below), so that
`torch.load(..., weights_only=True)` reads it and no file can run code on load.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnist_classifier.config import ConfigError, TrainConfig, config_from_dict
from mnist_classifier.model import SimpleCNN

SCHEMA_VERSION = 1
ARCHITECTURE = "SimpleCNN"
# The lab's keys first; the rest are ours.
REQUIRED_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "epoch",
    "loss",
    "accuracy",
    "schema_version",
    "architecture",
    "config",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, not ours, or of another architecture; names the file."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    model: SimpleCNN  # on the CPU, in eval mode
    config: TrainConfig
    epoch: int
    validation_loss: float
    validation_accuracy: float  # percent, as the lab prints it
    raw: dict[str, Any]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader, or a crash, sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_payload(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    validation_loss: float,
    validation_accuracy: float,
    config: TrainConfig,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "epoch": epoch,
        "loss": validation_loss,
        "accuracy": validation_accuracy,
        "schema_version": SCHEMA_VERSION,
        "architecture": ARCHITECTURE,
        "config": config.to_dict(),
        **extra,
    }


def load_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """Read, check and rebuild a checkpoint; any failure is one CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}. Train a model first: python train_mnist.py "
            "(or mnist train), then check it exists: ls -lh ./models/staging/mnist/"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"{path} was refused: it holds an object that is not a tensor or plain value{what}, "
            "and loading it could run code"
        ) from None
    except Exception as error:  # a malformed file can fail anywhere in the unpickler
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file): "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
        ) from None
    if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_KEYS):
        missing = [key for key in REQUIRED_KEYS if not isinstance(raw, dict) or key not in raw]
        raise CheckpointError(
            f"{path} is not a mnist-classifier checkpoint (missing {', '.join(missing)})"
        )
    if raw["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint schema version {raw['schema_version']!r}; "
            f"this version of mnist-classifier reads version {SCHEMA_VERSION}"
        )
    if raw["architecture"] != ARCHITECTURE:
        raise CheckpointError(f"{path} holds a {raw['architecture']!r}, not a {ARCHITECTURE}")
    try:
        config = config_from_dict(raw["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} carries an invalid config: {error}") from None
    model = SimpleCNN()
    try:
        model.load_state_dict(raw["model_state_dict"])
    except RuntimeError as error:
        detail = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path} holds weights of another architecture: "
            f"{detail[1].strip() if len(detail) > 1 else detail[0]}"
        ) from None
    model.eval()
    return LoadedCheckpoint(
        path=path,
        model=model,
        config=config,
        epoch=int(raw["epoch"]),
        validation_loss=float(raw["loss"]),
        validation_accuracy=float(raw["accuracy"]),
        raw=raw,
    )


def check_output_dir(path: Path | str) -> None:
    """Fail before training, not after the first epoch, when checkpoints could not be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"output_dir {str(path)!r} cannot be written ({error.strerror or error}); "
            "choose another with --output-dir"
        ) from None
