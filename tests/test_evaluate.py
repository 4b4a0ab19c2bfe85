import math

import torch
import torch.nn.functional as F
from torch import nn

from mnist_classifier.batching import Split
from mnist_classifier.datasets import MNIST
from mnist_classifier.evaluate import evaluate

MNIST_MEAN, MNIST_STD = MNIST.normalization


class PixelReader(nn.Module):
    """Predicts the digit written into pixel (0, 0), with logit 2.0 on it and 0 elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel = torch.round((images[:, 0, 0, 0] * MNIST_STD + MNIST_MEAN) * 255).long()
        return 2.0 * F.one_hot(pixel, 10).float()


def test_metrics_match_a_hand_computed_case():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2, 3, 9])  # 5 of 8 right
    images = torch.zeros(8, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = predicted.to(torch.uint8)

    result = evaluate(PixelReader(), Split(images, labels), batch_size=3)

    assert (result.correct, result.total) == (5, 8)
    assert result.accuracy == 5 / 8
    assert result.per_class_correct[:4] == (1, 2, 1, 1)
    assert result.per_class_total[:4] == (2, 3, 1, 2)
    assert result.class_accuracy(1) == 2 / 3 and result.class_accuracy(7) == 0.0
    assert torch.equal(result.predictions, predicted)
    # Cross-entropy by hand: logits are 2 on the prediction, 0 on the other nine.
    log_normaliser = math.log(math.exp(2) + 9)
    right, wrong = log_normaliser - 2, log_normaliser
    assert math.isclose(result.loss, (5 * right + 3 * wrong) / 8, rel_tol=1e-6)  # float32 logits


def test_evaluation_restores_training_mode():
    model = PixelReader().train()
    evaluate(
        model, Split(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    )
    assert model.training
