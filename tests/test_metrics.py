"""Metrics against hand-computed cases."""

import pytest
import torch

from mnist_classifier.evaluate import EvalResult
from mnist_classifier.metrics import (
    calibration,
    class_metrics,
    confusion_matrix,
    most_confused_pairs,
)

# Three classes: 0,0 -> 0,1; 1,1 -> 1,1; 2 -> 0.
LABELS = torch.tensor([0, 0, 1, 1, 2])
PREDICTIONS = torch.tensor([0, 1, 1, 1, 0])


def test_confusion_matrix_rows_are_true_columns_predicted():
    assert confusion_matrix(LABELS, PREDICTIONS, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_precision_recall_f1_by_hand():
    metrics = class_metrics(confusion_matrix(LABELS, PREDICTIONS, 3))
    # Class 0: 1 of 2 predicted 0 is right, 1 of 2 true 0 found. Class 1: 2 of 3, 2 of 2.
    # Class 2: never predicted, never found: 0, not NaN.
    assert metrics.precision == pytest.approx((1 / 2, 2 / 3, 0.0))
    assert metrics.recall == pytest.approx((1 / 2, 1.0, 0.0))
    assert metrics.f1 == pytest.approx((1 / 2, 2 * (2 / 3) / (2 / 3 + 1), 0.0))
    assert metrics.support == (2, 2, 1)
    assert metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_most_confused_pairs_largest_first_then_in_order():
    confusion = torch.tensor([[5, 1, 3], [0, 4, 3], [2, 0, 9]])
    pairs = [(p.true_digit, p.predicted_digit, p.count) for p in most_confused_pairs(confusion)]
    assert pairs == [(0, 2, 3), (1, 2, 3), (2, 0, 2), (0, 1, 1)]  # never the diagonal
    assert len(most_confused_pairs(confusion, count=2)) == 2


def test_expected_calibration_error_by_hand():
    # Ten bins. Two images at 0.85 (bin (0.8, 0.9]), both right: gap 0.15, share 2/3.
    # One at 0.25 (bin (0.2, 0.3]), wrong: gap 0.25, share 1/3.  ECE = 0.3/3 + 0.25/3.
    confidences = torch.tensor([0.85, 0.85, 0.25])
    result = calibration(confidences, torch.tensor([True, True, False]), bins=10)
    assert result.expected_calibration_error == pytest.approx(0.55 / 3)
    assert result.bin_count[8] == 2 and result.bin_count[2] == 1 and sum(result.bin_count) == 3
    assert result.bin_accuracy[8] == 1.0 and result.bin_confidence[2] == pytest.approx(0.25)


def test_perfectly_calibrated_bins_give_zero_and_overconfidence_does_not():
    confidences = torch.full((4,), 0.75)
    assert calibration(confidences, torch.tensor([1, 1, 1, 0])).expected_calibration_error == (
        pytest.approx(0.0)
    )
    overconfident = calibration(confidences, torch.tensor([1, 0, 0, 0]))
    assert overconfident.expected_calibration_error == pytest.approx(0.5)


def test_confidences_are_the_probability_of_the_prediction():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    result = EvalResult(
        loss=0.0,
        correct=1,
        total=2,
        per_class_correct=(1, 0, 0),
        per_class_total=(1, 1, 0),
        predictions=torch.tensor([0, 2]),
        probabilities=probabilities,
    )
    assert result.confidences.tolist() == pytest.approx([0.7, 0.6])
