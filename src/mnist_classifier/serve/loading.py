"""Load the one model a server answers with: a checkpoint, a registry stage, or an ONNX export.

Everything here happens once, at start; no endpoint loads a model. A registry stage NAME is the
folder `<models_dir>/<NAME>/<dataset>/` (e.g. `production/mnist/`) holding `best_model.pt` and,
when the registry wrote one, `model_card.json` (whose test metrics `GET /model` shows, and
nothing else of it; none when the card records another model's digest). A model trained on
another data set than the one asked for is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from mnist_classifier import registry
from mnist_classifier.checkpoint import (
    ARCHITECTURE,
    CheckpointError,
    load_checkpoint,
    require_dataset,
)
from mnist_classifier.files import sha256_of
from mnist_classifier.predict import (
    Backend,
    ModelFileError,
    TorchBackend,
    load_onnx_backend,
    softmax,
)
from mnist_classifier.serve.schemas import ModelInfo, ModelMetrics

MODEL_CARD_NAME = registry.MODEL_CARD_NAME


class ServeError(RuntimeError):
    """The model to serve cannot be found or loaded; one line naming what."""


class BackendPredictor:
    """uint8 (B, 28, 28) images -> float64 (B, 10) probabilities, through a predict backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return softmax(self.backend.logits(images))


@dataclass(frozen=True)
class ServedModel:
    predictor: BackendPredictor
    info: ModelInfo


def stage_checkpoint(models_dir: Path, stage: str, dataset: str = "mnist") -> Path:
    try:
        return registry.stage_checkpoint(models_dir, stage, dataset)
    except registry.RegistryError as error:
        raise ServeError(str(error)) from None


def load_checkpoint_model(
    checkpoint: Path, dataset: str = "mnist", stage: str | None = None
) -> ServedModel:
    """The torch backend on a checkpoint read by the safe loader; the model card if beside it."""
    try:
        loaded = load_checkpoint(checkpoint)
        require_dataset(loaded, dataset, "serve")
    except CheckpointError as error:
        raise ServeError(str(error)) from None
    card_path = checkpoint.parent / MODEL_CARD_NAME
    digest = loaded.sha256  # the digest the loader verified: the file is hashed once
    try:
        card = registry.read_model_card(card_path)  # a regular file, capped
    except registry.RegistryError as error:
        raise ServeError(str(error)) from None
    # A card written for the model this one replaced holds none of this model's metrics.
    metrics = card.get("metrics") if registry.is_card_of(card, digest) else None
    try:
        # The card's paths and git commit are this machine's business: only metrics go out.
        served_metrics = ModelMetrics.model_validate(metrics) if metrics is not None else None
    except ValidationError as error:
        raise ServeError(f"{card_path}: metrics are not valid: {_first_problem(error)}") from None
    info = ModelInfo(
        digest=digest,
        stage=stage,
        backend="torch",
        file_name=checkpoint.name,
        architecture=ARCHITECTURE,
        epoch=loaded.epoch,
        validation_accuracy=loaded.validation_accuracy,
        metrics=served_metrics,
        dataset=loaded.dataset.name,
        class_names=list(loaded.dataset.class_names),
    )
    return ServedModel(BackendPredictor(TorchBackend.from_checkpoint(loaded)), info)


def load_onnx_model(model_path: Path, dataset: str = "mnist") -> ServedModel:
    """onnxruntime on a file written by `mnist export` (it carries the normalisation)."""
    try:
        backend = load_onnx_backend(model_path, dataset, action="serve")
    except ModelFileError as error:
        raise ServeError(str(error)) from None
    info = ModelInfo(
        digest=sha256_of(model_path),
        stage=None,
        backend="onnxruntime",
        file_name=model_path.name,
        architecture=ARCHITECTURE,
        dataset=backend.dataset.name,
        class_names=list(backend.dataset.class_names),
    )
    return ServedModel(BackendPredictor(backend), info)


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(part) for part in problem['loc']) or 'metrics'}: {problem['msg']}"
