"""SIGKILL a real training run at seeded random moments, half of them inside a save, and check
that every file on disk verifies, best_model.pt holds the best finished epoch, and `--resume auto`
ends on exactly the weights of a run that was never interrupted."""

import multiprocessing
import random
import shutil
import time

import pytest
import torch
from crash_worker import MODULES_A_RUN_IMPORTS, train_with_paused_saves

from mnist_classifier.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # kills at moments timed from a reference run
KILLS = 10  # every second kill waits for a save to begin, then strikes inside it
SAVE_PAUSE_SECONDS = 0.25


def _arguments(mnist_dir, output_dir, runs_dir):
    return [
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
    while not any(output_dir.glob(".*.tmp")) and process.is_alive():
        assert time.monotonic() < deadline, "no save began within 30 s"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def forkserver():
    """Runs start by forking a server that imported torch and the training code once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(MODULES_A_RUN_IMPORTS)
    return context


def _start(forkserver, arguments, pause, log_path):
    """Start a run and return once its data is loaded and training begins."""
    log_path.unlink(missing_ok=True)
    process = forkserver.Process(
        target=train_with_paused_saves, args=(pause, arguments, log_path), daemon=True
    )
    process.start()
    while process.is_alive() and "\nStarting training" not in _read(log_path):
        time.sleep(0.005)
    return process


def _read(log_path):
    return log_path.read_text() if log_path.exists() else ""


def _run_to_the_end(forkserver, arguments, pause, log_path):
    """Start a run and wait for it; its output and the seconds from the start of training to
    its end. Fails with the output if the run failed."""
    process = _start(forkserver, arguments, pause, log_path)
    started = time.monotonic()
    process.join()
    assert process.exitcode == 0, _read(log_path)
    return _read(log_path), time.monotonic() - started


def test_sigkill_at_random_moments_never_loses_or_corrupts_anything(
    mnist_dir, tmp_path, forkserver
):
    log_path = tmp_path / "run.log"
    reference_dir = tmp_path / "reference"
    # The other kills fall anywhere in the time training takes on this machine, under its
    # present load: a fixed window would, on a slow or busy machine, always strike before the
    # first checkpoint, and the runs would never get far enough to resume.
    _output, training_seconds = _run_to_the_end(
        forkserver, _arguments(mnist_dir, reference_dir, tmp_path / "runs"), 0, log_path
    )
    reference = _final_weights(reference_dir)

    moments = random.Random(20261127)
    kills, kills_inside_a_save, finished_runs = 0, 0, 0
    output_dir = tmp_path / "killed-0"
    while kills < KILLS:
        arguments = _arguments(mnist_dir, output_dir, tmp_path / "runs")
        process = _start(forkserver, arguments, SAVE_PAUSE_SECONDS, log_path)
        if kills % 2:
            _wait_for_a_save_to_begin(output_dir, process)
            time.sleep(moments.uniform(0.0, 0.8 * SAVE_PAUSE_SECONDS))
        else:
            time.sleep(moments.uniform(0.0, training_seconds))
        if process.is_alive():
            process.kill()  # SIGKILL
            process.join()
            kills += 1
            kills_inside_a_save += any(output_dir.glob(".*.tmp"))
            _check_everything_on_disk(output_dir)
        else:
            process.join()
            assert process.exitcode == 0, _read(log_path)
        if (output_dir / "checkpoint_epoch_6.pt").exists():
            # The run finished through its resumptions: same weights as never interrupted.
            final = _final_weights(output_dir)
            assert all(torch.equal(final[key], reference[key]) for key in reference)
            finished_runs += 1
            shutil.rmtree(output_dir)
            output_dir = tmp_path / f"killed-{finished_runs}"

    assert kills_inside_a_save >= KILLS // 2, kills_inside_a_save
    # Finish the run in progress, and compare it too.
    output, _seconds = _run_to_the_end(
        forkserver, _arguments(mnist_dir, output_dir, tmp_path / "runs"), 0, log_path
    )
    assert "Resuming from" in output or finished_runs
    final = _final_weights(output_dir)
    assert all(torch.equal(final[key], reference[key]) for key in reference)
