"""The one builder of checkpoint payloads for tests and benchmarks that need a model file."""

from __future__ import annotations

import torch

from mnist_classifier.checkpoint import build_payload
from mnist_classifier.config import TrainConfig
from mnist_classifier.model import SimpleCNN


def checkpoint_payload(model=None, optimizer=None, **changes) -> dict:
    """A valid checkpoint dict for `model` (by default an untrained SimpleCNN) and its
    `optimizer` (by default a fresh Adam); `changes` override keys."""
    model = model or SimpleCNN()
    payload = build_payload(
        model=model,
        optimizer=optimizer or torch.optim.Adam(model.parameters()),
        epoch=3,
        validation_loss=0.05,
        validation_accuracy=0.985,
        config=TrainConfig(),
        extra={},
    )
    payload.update(changes)
    return payload
