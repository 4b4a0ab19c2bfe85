"""The conventional pipeline's data and test, as a tutorial writes them.

The benchmarks that measure this project against the conventional pipeline (`train_speed.py`'s
A, `fashion_reference.py`) read the data this way: torchvision's dataset with per-sample
ToTensor + Normalize, the training images `mnist train` trains on (the same validation images
held out, chosen by the same function), and the test accuracy counted over a DataLoader of 1,000.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from mnist_classifier.batching import split_train_validation
from mnist_classifier.datasets import FASHION_MNIST, MNIST, DatasetSpec

TORCHVISION_DATASETS = {MNIST.name: datasets.MNIST, FASHION_MNIST.name: datasets.FashionMNIST}


def tutorial_datasets(
    data_dir: str, spec: DatasetSpec, validation_size: int, split_seed: int
) -> tuple[Dataset, Subset, Dataset]:
    """(all training images, those `mnist train` trains on, the test images)."""
    normalization = spec.normalization
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((normalization.mean,), (normalization.std,))]
    )
    torchvision_dataset = TORCHVISION_DATASETS[spec.name]
    full = torchvision_dataset(data_dir, train=True, transform=transform)
    test_set = torchvision_dataset(data_dir, train=False, transform=transform)
    indices = torch.arange(len(full))
    kept, _ = split_train_validation(indices, indices, validation_size, split_seed)
    return full, Subset(full, kept.labels.tolist()), test_set


def tutorial_test_accuracy(model: nn.Module, test_set: Dataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=1000):
            correct += (model(images).argmax(1) == labels).sum().item()
    return correct / len(test_set)
