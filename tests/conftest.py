"""Shared fixtures: the real MNIST files (obtained once per session) and small subsets of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoint_payloads import checkpoint_payload  # noqa: F401  (tests import it from here)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The repository's ./data with verified MNIST (`make test` obtains it before pytest runs)."""
    from mnist_classifier.data import ensure_mnist

    ensure_mnist(DATA_DIR)
    return DATA_DIR


def vouch_for(path: Path) -> None:
    """As the loader asks of whoever trusts a file: `sha256sum NAME > NAME.sha256`."""
    from mnist_classifier.checkpoint import digest_path
    from mnist_classifier.files import sha256_of

    digest_path(path).write_text(f"{sha256_of(path)}  {path.name}\n")


class CreatesAFile:
    """Pickles to a call of Path.touch: loading it with a full unpickler would create `target`."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.fixture
def synthetic_data(monkeypatch):
    """Make every `train()` in this test, the CLI's included, read tiny synthetic data."""
    from synthetic_data import synthetic_train_data

    from mnist_classifier import train as train_module

    monkeypatch.setattr(train_module, "load_train_validation", synthetic_train_data)
