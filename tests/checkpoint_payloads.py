"""The one builder of checkpoint payloads for tests and benchmarks that need a model file."""

from __future__ import annotations

import torch

from mnist_classifier.checkpoint import CheckpointContents
from mnist_classifier.config import TrainConfig
from mnist_classifier.datasets import MNIST
from mnist_classifier.model import SimpleCNN


def checkpoint_payload(
    model=None, optimizer=None, validation_accuracy: float = 0.985, **changes
) -> dict:
    """A valid checkpoint dict for `model` (by default an untrained SimpleCNN) and its
    `optimizer` (by default a fresh Adam), without the state an exact resume needs; `changes`
    override the file's keys."""
    model = model or SimpleCNN()
    payload = CheckpointContents(
        epoch=3,
        model_state_dict=model.state_dict(),
        optimizer_state_dict=(optimizer or torch.optim.Adam(model.parameters())).state_dict(),
        validation_loss=0.05,
        validation_accuracy=validation_accuracy,
        config=TrainConfig(),
        normalization=MNIST.normalization,
    ).to_payload()
    payload.update(changes)
    return payload
