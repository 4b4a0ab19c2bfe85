"""A tiny trained SimpleCNN checkpoint, trained once per test process and shared by modules.

Trained by a minimal loop of its own (not `train.train`), so these tests depend only on the
model and the checkpoint format: 1 epoch on 4,096 training images, about 90% test accuracy.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from checkpoint_payloads import checkpoint_payload

from mnist_classifier.batching import normalize
from mnist_classifier.checkpoint import save_checkpoint
from mnist_classifier.data import load_split
from mnist_classifier.model import SimpleCNN

TRAIN_IMAGES = 4096


@functools.cache
def tiny_checkpoint(data_dir: Path) -> Path:
    torch.manual_seed(0)
    images, labels = load_split(data_dir, train=True)
    images, labels = images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES]
    model = SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.randperm(TRAIN_IMAGES)
    for start in range(0, TRAIN_IMAGES, 64):
        batch = order[start : start + 64]
        loss = F.cross_entropy(model(normalize(images[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = Path(tempfile.mkdtemp(prefix="mnist-tiny-")) / "tiny_model.pt"
    save_checkpoint(
        path,
        checkpoint_payload(model, optimizer, epoch=1, loss=0.0, accuracy=0.0),
    )
    return path
