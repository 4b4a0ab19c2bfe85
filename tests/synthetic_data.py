"""Tiny synthetic training data that `train()` takes in place of the real data set.

Each class lights its own 7x7 patch of the 28x28 image over seeded noise, so a few hundred
images are enough for a model to learn (accuracy well above chance within an epoch), and the
same config always gives the same images. Split and trimmed by the loop's own code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mnist_classifier.config import TrainConfig
from mnist_classifier.data import MnistFiles
from mnist_classifier.train import TrainData, split_for_training

PATCH = 7
DEFAULT_TRAIN_IMAGES = 1024  # when the config trains on the whole split


def synthetic_images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (count, 28, 28), labels int64 (count,)): class k brightens patch k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = torch.randint(0, 96, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for label in range(10):
        row, column = divmod(label, 4)  # a 3x4 grid of patches, 10 of them used
        chosen = labels == label
        images[chosen, row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] = 255
    return images, labels


def synthetic_train_data(config: TrainConfig) -> TrainData:
    """What `train()` would read for `config`, made of synthetic images instead of the files."""
    count = config.data.validation_size + (config.data.max_train_images or DEFAULT_TRAIN_IMAGES)
    images, labels = synthetic_images(count)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    files = MnistFiles(Path("synthetic"), "synthetic", {"synthetic": digest}, config.data.dataset)
    return split_for_training(config, images, labels, files)
