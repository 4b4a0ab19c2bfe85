"""Shared fixtures: the real MNIST files (obtained once per session) and small subsets of them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The repository's ./data with verified MNIST (`make test` obtains it before pytest runs)."""
    from mnist_classifier.data import ensure_mnist

    ensure_mnist(DATA_DIR)
    return DATA_DIR
