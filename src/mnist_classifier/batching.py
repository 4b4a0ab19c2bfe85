"""In-memory batching: the splits live on the device as uint8 tensors, batches are index slices.

MNIST is 47 MB as uint8, so the whole of it fits on any device. Keeping it there removes
per-sample Python, PIL and worker processes from the training loop; each batch is converted
and normalised on the device in one vectorised step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mnist_classifier.datasets import MNIST, Normalization


@dataclass(frozen=True)
class Ranks:
    """This process's place among data-parallel ranks; one process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard(order: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's share of a permutation, as DistributedSampler deals it: the order is padded
    by repeating its start until it divides evenly, then rank r takes every world_size-th index
    from position r. Every index is visited once per epoch across ranks (a few more often)."""
    if not ranks.enabled or len(order) == 0:
        return order
    padded_length = -(-len(order) // ranks.world_size) * ranks.world_size
    # Repeated as often as it takes: with more ranks than twice the images, one copy of the
    # start is too short, and a rank with fewer batches leaves the others' collectives unmatched.
    padded = order.repeat(-(-padded_length // len(order)))[:padded_length]
    return padded[ranks.rank :: ranks.world_size]


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def split_train_validation(
    images: torch.Tensor, labels: torch.Tensor, validation_size: int, split_seed: int
) -> tuple[Split, Split]:
    """A fixed, seeded hold-out: the same `split_seed` always holds out the same images."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(labels), generator=generator)
    validation_indices, train_indices = order[:validation_size], order[validation_size:]
    # Sorting keeps each split in the files' order, so the split itself is the only choice made.
    train_indices, validation_indices = (
        train_indices.sort().values,
        validation_indices.sort().values,
    )
    return (
        Split(images[train_indices], labels[train_indices]),
        Split(images[validation_indices], labels[validation_indices]),
    )


def normalize(
    images: torch.Tensor,
    memory_format=torch.contiguous_format,
    normalization: Normalization = MNIST.normalization,
) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28), the same values as ToTensor() + Normalize()."""
    mean, std = normalization
    scaled = images.unsqueeze(1).float().div_(255.0)
    return scaled.sub_(mean).div_(std).contiguous(memory_format=memory_format)


def shuffled_batches(
    split: Split, batch_size: int, generator: torch.Generator, ranks: Ranks | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch in a fresh random order drawn from `generator`; the last batch may be short.

    Under data-parallel training every rank draws the same order and takes its own shard.
    """
    order = torch.randperm(len(split), generator=generator)
    order = shard(order, ranks or Ranks()).to(split.labels.device)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield split.images[indices], split.labels[indices]


def ordered_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation order: the split as it is, never shuffled, so sample N is always sample N."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
