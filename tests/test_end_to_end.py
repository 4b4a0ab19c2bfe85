"""The lab's own commands, exactly as its handout runs them, on the real data."""

import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(arguments, cwd):
    completed = subprocess.run(
        [sys.executable, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    return completed.stdout


def test_lab_commands_train_one_epoch_then_evaluate_above_97_percent(mnist_dir, tmp_path):
    # A fresh working folder with the lab's default ./data, so every default path is exercised.
    (tmp_path / "data").symlink_to(mnist_dir, target_is_directory=True)

    training = _run([str(REPO_ROOT / "train_mnist.py"), "--epochs", "1"], cwd=tmp_path)
    assert "Checkpoint saved: models/staging/mnist/checkpoint_epoch_1.pt" in training
    staging = tmp_path / "models" / "staging" / "mnist"
    assert sorted(path.name for path in staging.glob("*.pt")) == [
        "best_model.pt",
        "checkpoint_epoch_1.pt",
    ]

    report = _run([str(REPO_ROOT / "test_mnist.py")], cwd=tmp_path)
    accuracy = float(re.search(r"Overall Accuracy: ([\d.]+)%", report).group(1))
    assert accuracy >= 97.0
    assert "✓ Model meets target accuracy (>97%)" in report
    # The handout's sample 9 says Actual=6; the test set's ninth label is a 5.
    assert re.search(r"Sample 9: Predicted=\d, Actual=5 ", report)
    assert "Sample 10:" in report and "Sample 11:" not in report

    report = _run(
        [
            str(REPO_ROOT / "test_mnist.py"),
            "--checkpoint",
            "./models/staging/mnist/checkpoint_epoch_1.pt",
            "--show-samples",
            "20",
            "--batch-size",
            "128",
            "--data-dir",
            "./data",
        ],
        cwd=tmp_path,
    )
    assert "Sample 20:" in report and "Sample 21:" not in report
