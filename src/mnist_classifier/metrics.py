"""Classification metrics from predictions: confusion matrix, precision/recall/F1, calibration.

Everything is derived from the confusion matrix (rows = true digit, columns = prediction) or from
the per-image confidences, in a few lines of torch, so each number can be checked by hand.
Nothing here prints or draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CALIBRATION_BINS = 15  # the usual choice for ECE on MNIST/CIFAR-sized test sets


@dataclass(frozen=True)
class ClassMetrics:
    precision: tuple[float, ...]  # indexed by digit
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]  # true images of each digit

    @property
    def macro_f1(self) -> float:
        return sum(self.f1) / len(self.f1)


@dataclass(frozen=True)
class ConfusedPair:
    true_digit: int
    predicted_digit: int
    count: int


@dataclass(frozen=True)
class Calibration:
    """Reliability of the confidences: per-bin accuracy against per-bin mean confidence."""

    expected_calibration_error: float  # sum over bins of (bin share) * |accuracy - confidence|
    bin_edges: tuple[float, ...]  # bins + 1 edges from 0 to 1
    bin_accuracy: tuple[float, ...]  # 0 for an empty bin
    bin_confidence: tuple[float, ...]  # 0 for an empty bin
    bin_count: tuple[int, ...]


def confusion_matrix(
    labels: torch.Tensor, predictions: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """int64 (num_classes, num_classes): entry [t, p] counts images of digit t predicted as p."""
    flat_index = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat_index, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def class_metrics(confusion: torch.Tensor) -> ClassMetrics:
    """Per-class precision, recall and F1; a class never predicted (or absent) scores 0, not NaN."""
    true_positives = confusion.diag().double()
    predicted_counts = confusion.sum(dim=0).double()  # column sums
    true_counts = confusion.sum(dim=1).double()  # row sums
    precision = true_positives / predicted_counts.clamp(min=1)
    recall = true_positives / true_counts.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=torch.finfo(torch.double).tiny)
    return ClassMetrics(
        precision=tuple(precision.tolist()),
        recall=tuple(recall.tolist()),
        f1=tuple(f1.tolist()),
        support=tuple(int(count) for count in true_counts.tolist()),
    )


def most_confused_pairs(confusion: torch.Tensor, count: int = 10) -> list[ConfusedPair]:
    """The off-diagonal cells with the most images, largest first; ties by (true, predicted)."""
    off_diagonal = confusion.clone()
    off_diagonal.fill_diagonal_(0)
    num_classes = confusion.shape[0]
    cells = [
        (int(off_diagonal[true, predicted]), true, predicted)
        for true in range(num_classes)
        for predicted in range(num_classes)
        if off_diagonal[true, predicted] > 0
    ]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [ConfusedPair(true, predicted, n) for n, true, predicted in cells[:count]]


def calibration(
    confidences: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS
) -> Calibration:
    """Expected calibration error over `bins` equal-width confidence bins (Guo et al., 2017).

    `confidences` is the top-class probability of each image, `correct` whether that class was
    right. Bins are (low, high], with the first bin also holding a confidence of exactly 0.
    """
    confidences = confidences.double().cpu()
    correct = correct.double().cpu()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.double)
    # bucketize(right=False) puts c in bin i when edges[i] < c <= edges[i + 1].
    bin_index = (torch.bucketize(confidences, edges) - 1).clamp(0, bins - 1)
    bin_count = torch.bincount(bin_index, minlength=bins).double()
    accuracy_sum = torch.bincount(bin_index, weights=correct, minlength=bins)
    confidence_sum = torch.bincount(bin_index, weights=confidences, minlength=bins)
    bin_accuracy = accuracy_sum / bin_count.clamp(min=1)
    bin_confidence = confidence_sum / bin_count.clamp(min=1)
    share = bin_count / max(len(confidences), 1)
    ece = (share * (bin_accuracy - bin_confidence).abs()).sum()
    return Calibration(
        expected_calibration_error=float(ece),
        bin_edges=tuple(edges.tolist()),
        bin_accuracy=tuple(bin_accuracy.tolist()),
        bin_confidence=tuple(bin_confidence.tolist()),
        bin_count=tuple(int(n) for n in bin_count.tolist()),
    )
