"""Shared fixtures: the real MNIST files (obtained once per session) and small subsets of them."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist each worker, and every process it starts, gets its share of the cores.
# torch's default of one thread per core in every process has the workers' thread pools
# contend for the same cores: on 2 cores the parallel pass took 274 s that way and 199 s so.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))

import pytest  # noqa: E402
from checkpoint_payloads import checkpoint_payload  # noqa: E402, F401  (tests import it from here)

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


def table_rows(output: str) -> list[dict[str, str]]:
    """The rows of the Rich table in `output` (`mnist runs`, `mnist models`): header -> cell."""
    header, *rows = [
        [cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith(("┃", "│"))
    ]
    return [dict(zip(header, row, strict=True)) for row in rows]


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


# The drawing page's browser, for the tests that drive it (test_serve_browser, test_fashion).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the distribution; missing, it skips, or fails under CI=true."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium (make test does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


def pytest_collection_modifyitems(items):
    """Tests marked slow first. Under `make test` (pytest-xdist, --dist loadscope
    --no-loadscope-reorder) each module goes to one worker in the order its first test comes:
    the long modules start early and the many quick ones fill in at the end, instead of a
    one-test module that takes a minute (the lab's epoch) starting last while a core idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
