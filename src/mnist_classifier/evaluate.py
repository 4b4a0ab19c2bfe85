"""Evaluate a model on a split: loss, accuracy, per-class accuracy, predictions and their
probabilities (for calibration and confidence). Never prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mnist_classifier.batching import Split, normalize, ordered_batches
from mnist_classifier.datasets import MNIST, NUM_CLASSES, Normalization
from mnist_classifier.device import autocast, memory_format_for

if TYPE_CHECKING:
    from mnist_classifier.checkpoint import LoadedCheckpoint


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy over the split
    correct: int
    total: int
    per_class_correct: tuple[int, ...]  # indexed by digit
    per_class_total: tuple[int, ...]
    predictions: torch.Tensor  # int64 (N,), on the CPU, in the split's order
    # float32 (N, 10) softmax of the logits, on the CPU, in the split's order.
    probabilities: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        """Fraction correct, 0..1."""
        return self.correct / self.total

    def class_accuracy(self, digit: int) -> float:
        return self.per_class_correct[digit] / max(self.per_class_total[digit], 1)

    @property
    def confidences(self) -> torch.Tensor:
        """float32 (N,): the probability the model gave its own prediction."""
        if self.probabilities is None:
            raise ValueError("this EvalResult was made without probabilities")
        return self.probabilities.gather(1, self.predictions.unsqueeze(1)).squeeze(1)


def evaluate(
    model: torch.nn.Module,
    split: Split,
    *,
    batch_size: int = 1000,
    device: torch.device | None = None,
    precision: str = "fp32",
    normalization: Normalization = MNIST.normalization,
) -> EvalResult:
    """Run `model` over `split` in its stored order, in large batches without autograd."""
    device = device or next(model.parameters()).device
    memory_format = memory_format_for(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    predictions = []
    probabilities = []
    with torch.inference_mode():
        for images, labels in ordered_batches(split, batch_size):
            images, labels = images.to(device), labels.to(device)
            with autocast(device, precision):
                logits = model(normalize(images, memory_format, normalization))
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
            predictions.append(logits.argmax(dim=1))
            probabilities.append(torch.softmax(logits.float(), dim=1))
    model.train(was_training)

    predicted = torch.cat(predictions).cpu()
    labels = split.labels.cpu()
    hits = predicted == labels
    per_class_total = torch.bincount(labels, minlength=NUM_CLASSES)
    per_class_correct = torch.bincount(labels[hits], minlength=NUM_CLASSES)
    return EvalResult(
        loss=loss_sum.item() / len(split),
        correct=int(hits.sum()),
        total=len(split),
        per_class_correct=tuple(per_class_correct.tolist()),
        per_class_total=tuple(per_class_total.tolist()),
        predictions=predicted,
        probabilities=torch.cat(probabilities).cpu(),
    )


class EvaluationObserver:
    """What a caller may show while a checkpoint is evaluated (evaluation_report's
    `evaluate_checkpoint`); every method is a no-op here."""

    def loading_test_data(self, checkpoint: LoadedCheckpoint, device: torch.device) -> None:
        """The checkpoint is loaded and fits the data set; the test split comes next."""

    def evaluating(self, checkpoint: LoadedCheckpoint, test_split: Split) -> None:
        """The test split is loaded; evaluation starts."""
