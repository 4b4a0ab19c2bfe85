"""The training display as a person sees it: `mnist train` on a (pseudo-)terminal."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from conftest import REPO_ROOT

# Trains on a subset of the real MNIST files; the bar is caught frame by frame, so it runs alone.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

BATCH_SIZE = 64
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# One frame of the live bar: "Epoch 1/1 ━━━ 1280/3000 loss 0.8123  acc 71.25% ..."
LIVE_FIGURES = re.compile(r"Epoch 1/\d+\s.*?(\d+)/(\d+)\s+loss ([\d.]+)\s+acc ([\d.]+)%")


def _run_on_a_terminal(arguments: list[str], cwd, timeout: float = 300) -> str:
    """Run `python -m mnist_classifier ARGUMENTS` with stdout on a pty; everything it drew."""
    controller, terminal = pty.openpty()
    # A wide terminal, so that Rich draws the whole bar on one line.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_classifier", *arguments],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=environment,
    )
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    assert process.returncode == 0, output
    return output


# Batches in an epoch: enough that an epoch lasts several of the bar's refreshes (0.25 s) even
# at 20,000 images/s. The bar refreshes by time, not by batch: 20 batches took less than one
# refresh on a 2-core CPU with native bf16.
BATCHES = 100


def test_live_bar_shows_a_running_loss_that_changes_within_the_epoch(mnist_dir, tmp_path):
    output = _run_on_a_terminal(
        [
            "train",
            "--epochs",
            "2",
            "--batch-size",
            str(BATCH_SIZE),
            "--data-dir",
            str(mnist_dir),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--device",
            "cpu",
            "--set",
            f"data.max_train_images={BATCHES * BATCH_SIZE}",
            "--set",
            "data.validation_size=500",
        ],
        cwd=tmp_path,
    )
    frames = [ANSI_ESCAPE.sub("", frame) for frame in re.split(r"[\r\n]", output)]
    # Before the epoch's last batch: the figures change while it runs, not only at its end.
    losses_during_epoch = {
        match.group(3)
        for frame in frames
        if (match := LIVE_FIGURES.search(frame)) and int(match.group(1)) < BATCHES * BATCH_SIZE
    }
    assert len(losses_during_epoch) >= 2, "\n".join(frame for frame in frames if "loss" in frame)

    # The bar gives way to one kept line per epoch, and the run ends with the next command.
    kept = [frame for frame in frames if re.match(r"Epoch \d/2: loss [\d.]+, accuracy", frame)]
    assert [line[:9] for line in kept] == ["Epoch 1/2", "Epoch 2/2"]
    assert all("validation accuracy" in line for line in kept)
    assert re.search(r"Next: evaluate it on the test set: mnist evaluate --checkpoint \S+", output)
    # The lab's plain lines are for logs and pipes only.
    assert "Training: Loss:" not in output and "Epoch 1 [0/" not in output
