"""Predict the class in user image files with a checkpoint (torch) or an exported ONNX model.

Each file is prepared by the recipe of the model's data set (`preprocess.preprocess_image` for
digits, `preprocess.preprocess_clothing` for clothing), then run through a backend that maps
uint8 (B, 28, 28) images to (B, 10) logits; softmax lives here, not in the model. A file that
fails becomes a `Prediction` with `error` set, and the others go on.
Never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mnist_classifier.datasets import MNIST, DatasetSpec, Normalization, dataset_spec
from mnist_classifier.files import sha256_of
from mnist_classifier.messages import first_line
from mnist_classifier.preprocess import (
    IMAGE_SUFFIXES,
    UNSUPPORTED_IMAGE_SUFFIXES,
    ImageError,
    preprocessing_for,
    read_image_file,
)

TOP_K = 3
ONNX_MEAN_KEY = "mnist_classifier.mean"  # metadata that `mnist export` writes into the .onnx
ONNX_STD_KEY = "mnist_classifier.std"
ONNX_DATASET_KEY = "mnist_classifier.dataset"  # absent from exports made before there were two
# A folder's files that are listed: the images read here, and those of formats that are not
# (a phone's HEIC, a browser's WebP), so that each of these gets its line rather than silence.
LISTED_SUFFIXES = IMAGE_SUFFIXES | set(UNSUPPORTED_IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: its file, its registry stage if it came from one, its SHA-256."""

    file: str
    stage: str | None
    digest: str

    @classmethod
    def of(cls, path: Path, stage: str | None = None) -> ModelIdentity:
        return cls(file=str(path), stage=stage, digest=sha256_of(path))

    def to_dict(self) -> dict:
        return {"file": self.file, "stage": self.stage, "digest": self.digest}


@dataclass(frozen=True)
class Prediction:
    file: str
    digit: int | None = None  # the class number (named for MNIST, whose classes are digits)
    probability: float | None = None
    top3: list[tuple[int, float]] = field(default_factory=list)  # (class, probability), best first
    error: str | None = None
    model: ModelIdentity | None = None  # set on every answered file
    class_names: tuple[str, ...] = MNIST.class_names

    @property
    def label(self) -> str | None:
        return None if self.digit is None else self.class_names[self.digit]

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        answer = {
            "file": self.file,
            "digit": self.digit,
            "label": self.label,
            "probability": self.probability,
            "top3": [
                {"digit": digit, "label": self.class_names[digit], "probability": p}
                for digit, p in self.top3
            ],
        }
        if self.model is not None:
            answer["model"] = self.model.to_dict()
        return answer


class Backend(Protocol):
    dataset: DatasetSpec  # what the model was trained on: its classes and its image recipe

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (B, 28, 28) -> float32 (B, 10) logits."""
        ...


class TorchBackend:
    def __init__(
        self,
        model: torch.nn.Module,
        normalization: Normalization = MNIST.normalization,
        dataset: DatasetSpec = MNIST,
    ) -> None:
        self.model = model.eval()
        self.normalization = normalization
        self.dataset = dataset

    @classmethod
    def from_checkpoint(cls, loaded) -> TorchBackend:
        """A `checkpoint.LoadedCheckpoint`, with the normalisation and data set it carries."""
        return cls(loaded.model, loaded.normalization, loaded.dataset)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        from mnist_classifier.batching import normalize

        with torch.inference_mode():
            inputs = normalize(images, normalization=self.normalization)
            return self.model(inputs).float().numpy()


class ModelFileError(RuntimeError):
    """An exported model is missing, unusable or of another data set; one line naming it."""


def load_onnx_backend(model_path: Path, dataset: str, action: str = "predict with") -> OnnxBackend:
    """onnxruntime on a file written by `mnist export`, refused if made for another data set."""
    if not model_path.is_file():
        raise ModelFileError(f"ONNX model not found: {model_path}")
    try:
        backend = OnnxBackend(model_path)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise ModelFileError(
            f"{model_path} is not a usable exported ONNX model: {first_line(error)}"
        ) from None
    if backend.dataset.name != dataset:
        raise ModelFileError(
            f"refusing to {action} {model_path}: it was trained on {backend.dataset.title}; "
            f"use --dataset {backend.dataset.name}"
        )
    return backend


class OnnxBackend:
    """onnxruntime on an exported model: needs no checkpoint and no training code."""

    def __init__(self, model_path: Path | str) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            str(model_path), providers=["CPUExecutionProvider"]
        )
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.mean = float(metadata[ONNX_MEAN_KEY])
        self.std = float(metadata[ONNX_STD_KEY])
        self.dataset = dataset_spec(metadata.get(ONNX_DATASET_KEY, MNIST.name))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, images: torch.Tensor) -> np.ndarray:
        # The same arithmetic as batching.normalize, in numpy float32.
        scaled = images.numpy().astype(np.float32)[:, None, :, :] / np.float32(255.0)
        normalized = (scaled - np.float32(self.mean)) / np.float32(self.std)
        return self.session.run(None, {self.input_name: normalized})[0]


def collect_image_files(paths: Iterable[Path]) -> list[Path]:
    """Named files as given (so a bad one is reported), folders expanded to their image files
    (and to images of formats not read here, each reported in its turn); a folder holding
    none is kept as itself, to be reported rather than skipped without a word."""
    files: list[Path] = []
    for path in paths:
        try:
            is_dir = path.is_dir()
        except OSError:  # a name too long, say: reading it as a file says why
            is_dir = False
        if not is_dir:
            files.append(path)
            continue
        listed = sorted(
            child
            for child in path.rglob("*")
            if child.suffix.lower() in LISTED_SUFFIXES and child.is_file()
        )
        files.extend(listed or [path])
    return files


def predict_files(
    files: Iterable[Path],
    backend: Backend,
    save_preprocessed: Path | None = None,
    model: ModelIdentity | None = None,
    file_done: Callable[[], None] = lambda: None,
) -> list[Prediction]:
    """One Prediction per file, in order; unusable files carry their reason in `error`.
    `file_done` is called as each file has been read and prepared (a progress display's)."""
    predictions: list[Prediction | None] = []
    images: list[torch.Tensor] = []
    positions: list[int] = []
    files = list(files)
    prepare = preprocessing_for(backend.dataset.subject)
    for index, path in enumerate(files):
        try:
            image = prepare(read_image_file(path))
        except ImageError as error:
            predictions.append(Prediction(file=str(path), error=str(error)))
            continue
        finally:
            file_done()
        predictions.append(None)
        images.append(image)
        positions.append(index)
        if save_preprocessed is not None:
            _save_preprocessed(image, save_preprocessed, path, index)

    if images:
        probabilities = softmax(backend.logits(torch.stack(images)))
        for position, row in zip(positions, probabilities, strict=True):
            predictions[position] = prediction_from_probabilities(
                str(files[position]), row, model, backend.dataset.class_names
            )
    return [prediction for prediction in predictions if prediction is not None]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def prediction_from_probabilities(
    file: str,
    probabilities: np.ndarray,
    model: ModelIdentity | None = None,
    class_names: tuple[str, ...] = MNIST.class_names,
) -> Prediction:
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    top = [(int(digit), float(probabilities[digit])) for digit in order]
    return Prediction(
        file=file,
        digit=top[0][0],
        probability=top[0][1],
        top3=top,
        model=model,
        class_names=class_names,
    )


def _save_preprocessed(image: torch.Tensor, folder: Path, source: Path, index: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    # The index keeps two files of the same name from different folders apart.
    Image.fromarray(image.numpy()).save(folder / f"{index:04d}-{source.stem}.png")
