"""SIGKILL a real training run at seeded random moments, half of them inside a save, and check
that every file on disk verifies, best_model.pt holds the best finished epoch, and `--resume auto`
ends on exactly the weights of a run that was never interrupted."""

import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT

from mnist_classifier.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # kills at moments timed from a reference run
KILLS = 10  # every second kill waits for a save to begin, then strikes inside it
SAVE_PAUSE_SECONDS = 0.25


def _command(mnist_dir, output_dir, runs_dir, pause):
    return [
        sys.executable,
        str(REPO_ROOT / "tests" / "crash_worker.py"),
        str(pause),
        "--epochs",
        "6",
        "--max-train-images",
        "320",
        "--validation-size",
        "300",
        "--schedule",
        "onecycle",
        "--device",
        "cpu",
        "--data-dir",
        str(mnist_dir),
        "--output-dir",
        str(output_dir),
        "--runs-dir",
        str(runs_dir),
        "--resume",
        "auto",
    ]


def _final_weights(output_dir):
    return load_checkpoint(output_dir / "checkpoint_epoch_6.pt").model.state_dict()


def _check_everything_on_disk(output_dir):
    """Every checkpoint verifies; best_model.pt is the best of the finished epochs."""
    epochs = {path: load_checkpoint(path) for path in output_dir.glob("checkpoint_epoch_*.pt")}
    best_path = output_dir / "best_model.pt"
    if not epochs:
        if best_path.exists():
            load_checkpoint(best_path)
        return
    assert best_path.exists(), "an epoch finished but best_model.pt is missing"
    best = load_checkpoint(best_path)
    assert all(best.validation_accuracy >= epoch.validation_accuracy for epoch in epochs.values())
    # A new best is strictly better, so the best is the first epoch to reach its accuracy;
    # it is saved before its epoch checkpoint, so it may be one epoch ahead of them.
    reaching = [
        e.epoch for e in epochs.values() if e.validation_accuracy == best.validation_accuracy
    ]
    if reaching:
        assert best.epoch == min(reaching)
    else:
        assert best.epoch == max(epoch.epoch for epoch in epochs.values()) + 1


def _wait_for_a_save_to_begin(output_dir, process, timeout=30.0):
    """Poll until a save has written its temporary file (it then pauses before the rename)."""
    deadline = time.monotonic() + timeout
    while not any(output_dir.glob(".*.tmp")) and process.poll() is None:
        assert time.monotonic() < deadline, "no save began within 30 s"
        time.sleep(0.005)


def _start(command):
    """Start a run and return once its data is loaded and training begins."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("Starting training"):
            break
    return process


def test_sigkill_at_random_moments_never_loses_or_corrupts_anything(mnist_dir, tmp_path):
    reference_dir = tmp_path / "reference"
    process = _start(_command(mnist_dir, reference_dir, tmp_path / "runs", 0))
    started = time.monotonic()
    _output, errors = process.communicate()
    assert process.returncode == 0, errors
    # The other kills fall anywhere in the time training takes on this machine, under its
    # present load: a fixed window would, on a slow or busy machine, always strike before the
    # first checkpoint, and the runs would never get far enough to resume.
    training_seconds = time.monotonic() - started
    reference = _final_weights(reference_dir)

    moments = random.Random(20261127)
    kills, kills_inside_a_save, finished_runs = 0, 0, 0
    output_dir = tmp_path / "killed-0"
    while kills < KILLS:
        process = _start(_command(mnist_dir, output_dir, tmp_path / "runs", SAVE_PAUSE_SECONDS))
        if kills % 2:
            _wait_for_a_save_to_begin(output_dir, process)
            time.sleep(moments.uniform(0.0, 0.8 * SAVE_PAUSE_SECONDS))
        else:
            time.sleep(moments.uniform(0.0, training_seconds))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            kills_inside_a_save += any(output_dir.glob(".*.tmp"))
            _check_everything_on_disk(output_dir)
        else:
            process.communicate()
            assert process.returncode == 0
        if (output_dir / "checkpoint_epoch_6.pt").exists():
            # The run finished through its resumptions: same weights as never interrupted.
            final = _final_weights(output_dir)
            assert all(torch.equal(final[key], reference[key]) for key in reference)
            finished_runs += 1
            shutil.rmtree(output_dir)
            output_dir = tmp_path / f"killed-{finished_runs}"

    assert kills_inside_a_save >= KILLS // 2, kills_inside_a_save
    # Finish the run in progress, and compare it too.
    completed = subprocess.run(
        _command(mnist_dir, output_dir, tmp_path / "runs", 0), capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert "Resuming from" in completed.stdout or finished_runs
    final = _final_weights(output_dir)
    assert all(torch.equal(final[key], reference[key]) for key in reference)
