"""The lab's SimpleCNN. It returns raw logits: the loss lives in training, softmax in prediction."""

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
        self.dropout1 = nn.Dropout(settings.dropout1)
        self.fc1 = nn.Linear(FLATTENED_FEATURES, 128)
        self.dropout2 = nn.Dropout(settings.dropout2)
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
