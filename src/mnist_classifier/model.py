"""The lab's SimpleCNN. It returns raw logits: the loss lives in training, softmax in prediction."""

import math

import torch
from torch import nn

from mnist_classifier.config import ModelConfig
from mnist_classifier.datasets import IMAGE_SIDE, NUM_CLASSES

# Two 2x2 poolings take 28x28 down to 7x7, with 64 channels after conv2.
FLATTENED_FEATURES = 64 * (IMAGE_SIDE // 4) * (IMAGE_SIDE // 4)


class SimpleCNN(nn.Module):
    """Two 3x3 convolutions and two linear layers; 421,642 trainable parameters.

    Layer names are the lab's, so `state_dict()` keys match a checkpoint written by its script.
    `settings` (the config's `model` section) sets the dropout; it has no parameters, so any
    setting loads any SimpleCNN's weights. Build one from a checkpoint with
    `checkpoint.load_checkpoint`, which passes the checkpoint's own settings.
    """

    def __init__(self, settings: ModelConfig | None = None) -> None:
        super().__init__()
        self.settings = settings = settings or ModelConfig()  # None: the lab's dropout
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.dropout1 = Dropout(settings.dropout1)
        self.fc1 = nn.Linear(FLATTENED_FEATURES, 128)
        self.dropout2 = Dropout(settings.dropout2)
        self.fc2 = nn.Linear(128, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Pool, then ReLU, in the lab's order. The two commute (max and ReLU are both monotone),
        # so this is the same function as ReLU-then-pool, but ReLU touches a quarter of the values.
        x = torch.relu(self.pool(self.conv1(images)))  # (B, 32, 14, 14)
        x = torch.relu(self.pool(self.conv2(x)))  # (B, 64, 7, 7)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)  # (B, 3136)
        x = self.dropout2(torch.relu(self.fc1(x)))  # (B, 128)
        return self.fc2(x)  # (B, 10) logits


class Dropout(nn.Dropout):
    """nn.Dropout, drawing the same mask faster on the CPU: same output, gradient and stream.

    torch's CPU dropout fills its mask with bernoulli_, one element at a time: a 64-bit word
    from the CPU generator, whose low 53 bits as a fraction of 2**53 are compared with the
    keep probability. Here the same words are drawn with random_() and compared as integers
    with that probability times 2**53, all at once: the mask is the same bit for bit, and the
    generator ends in the same state (tests/test_model.py checks both against F.dropout), in
    less time. Other devices, evaluation, and layouts other than contiguous or channels-last
    use torch's own dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu"):
            return super().forward(x)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        keep = 1.0 - self.p
        words = torch.empty(x.numel(), dtype=torch.int64).random_()  # random64 % 2**63 each
        # k / 2**53 < keep  <=>  k < ceil(keep * 2**53), exactly, for an integer k.
        kept = (words & (2**53 - 1)) < math.ceil(keep * 2**53)
        # bernoulli_ fills a tensor shaped like x in memory order: lay the mask out the same way.
        mask = kept.to(x.dtype).div_(keep).as_strided(x.shape, x.stride())
        return x * mask


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
