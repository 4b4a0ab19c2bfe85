"""The import graph's layering: serving never imports training, the checkpoint never the data.

Each probe runs in a fresh interpreter (sys.modules of this test process holds everything) and
lists which of the forbidden modules its imports pulled in.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

# The server's modules, and what answering a request runs (normalising through batching).
SERVE_A_PREDICTION = """
import torch
import mnist_classifier.serve.app, mnist_classifier.serve.loading
from mnist_classifier.datasets import MNIST
from mnist_classifier.model import SimpleCNN
from mnist_classifier.predict import TorchBackend
TorchBackend(SimpleCNN().eval(), MNIST.normalization, MNIST).logits(
    torch.zeros(1, 28, 28, dtype=torch.uint8)
)
"""
TRAINING = ("mnist_classifier.train", "mnist_classifier.distributed")
# Training and evaluating read the verified IDX files and tile figures themselves: torchvision
# (1.4 s to import) is for its download route alone.
TRAIN_AND_EVALUATE = """
import mnist_classifier.train, mnist_classifier.runs, mnist_classifier.evaluation_report
"""


def _forbidden_modules_loaded(code: str, forbidden: tuple[str, ...]) -> list[str]:
    loaded = f"sorted(set({forbidden!r}) & set(sys.modules))"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({loaded}))"
    # This checkout's package first, whatever is installed.
    path = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("code", "forbidden"),
    [
        (SERVE_A_PREDICTION, TRAINING),
        ("import mnist_classifier.checkpoint", ("mnist_classifier.data", "torchvision")),
        (TRAIN_AND_EVALUATE, ("torchvision",)),
    ],
    ids=["serving", "checkpoint", "training"],
)
def test_module_does_not_import_what_lies_above_it(code, forbidden):
    assert _forbidden_modules_loaded(code, forbidden) == []


def test_the_probe_sees_a_forbidden_import():
    """The oracle for the tests above: training does pull in DDP and the data code."""
    loaded = _forbidden_modules_loaded(
        "import mnist_classifier.train", (*TRAINING, "mnist_classifier.data")
    )
    assert loaded == [
        "mnist_classifier.data",
        "mnist_classifier.distributed",
        "mnist_classifier.train",
    ]
