"""Run directories, TensorBoard logs, early stopping, `mnist runs` and `mnist sweep`, for real."""

import csv
import errno
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
import torch
import typer
import yaml
from conftest import table_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_data import synthetic_train_data
from tensor_states import same_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from mnist_classifier import train as train_module
from mnist_classifier.checkpoint import (
    TRAINING_LOCK_NAME,
    CheckpointSaveError,
    epoch_checkpoints,
    load_checkpoint,
)
from mnist_classifier.cli import app
from mnist_classifier.config import TrainConfig, config_from_dict, flatten, make_config
from mnist_classifier.datasets import MNIST
from mnist_classifier.figures import is_our_figure
from mnist_classifier.files import LockHeld, holding_lock, lock_is_held
from mnist_classifier.paths import shell_command
from mnist_classifier.reporting import terminal_safe
from mnist_classifier.runs import (
    METRIC_COLUMNS,
    RunRecorder,
    RunRecordError,
    comparison_rows,
    earlier_sweep_run,
    grid_overrides,
    how_it_ended,
    list_runs,
    read_run,
    record_test_accuracy,
    run_labels,
    runs_with_config,
    sweep_run_name,
)
from mnist_classifier.train import TrainingObserver, train

runner = CliRunner()


def _small_run(mnist_dir, runs_dir) -> list[str]:
    """`mnist train` on 512 images of `mnist_dir` on the CPU, recorded under `runs_dir`."""
    return [
        "train",
        "--data-dir",
        str(mnist_dir),
        "--runs-dir",
        str(runs_dir),
        "--max-train-images",
        "512",
        "--validation-size",
        "500",
        "--device",
        "cpu",
    ]


def _train(mnist_dir, runs_dir, *arguments):
    result = runner.invoke(app, [*_small_run(mnist_dir, runs_dir), *arguments])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow  # the real files: the run records their digests
def test_a_run_writes_every_artifact(mnist_dir, tmp_path):
    trained = _train(
        mnist_dir,
        tmp_path,
        "--epochs",
        "2",
        "--name",
        "artifacts",
        "--schedule",
        "step",
        "--set",
        "schedule.gamma=0.5",
    )
    (run_dir,) = list(tmp_path.iterdir())
    assert run_dir.name.endswith("-artifacts") and run_dir.name[:8].isdigit()
    assert f"Run directory: {run_dir}  (tensorboard --logdir {tmp_path})" in trained.stdout

    config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert config.schedule.gamma == 0.5 and config.name == "artifacts"

    provenance = json.loads((run_dir / "provenance.json").read_text())
    for key in (
        "git_commit",
        "git_dirty",
        "python",
        "torch",
        "torchvision",
        "device",
        "seed",
        "command_line",
    ):
        assert key in provenance
    assert provenance["data_sha256"] == MNIST.raw_sha256

    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    # Step decay by 0.5 each epoch, by hand: 1e-3 then 5e-4.
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx([1e-3, 5e-4])

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy"):
        assert tag in scalars
    assert not [tag for tag in scalars if tag.startswith("hparam/")]  # no one-point charts
    assert not [tag for tag in scalars if "train/train" in tag or "validation/validation" in tag]
    # Against the optimizer step: 512 images in batches of 64 are 8 steps an epoch.
    assert [event.step for event in events.Scalars("validation/accuracy")] == [8, 16]
    assert [event.step for event in events.Images("validation/predictions")] == [8, 16]
    plugins = EventAccumulator(str(run_dir)).Reload().PluginTagToContent("hparams")
    assert plugins  # the hparams table, whose metrics are the epoch scalars

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "completed all 2 epochs"
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(run_dir / "best_model.pt")
    assert best.epoch == summary["best_epoch"]
    assert best.run_dir == str(run_dir.resolve())
    assert (run_dir / "checkpoint_epoch_2.pt").is_file()


@pytest.mark.usefixtures("synthetic_data")  # tiny synthetic data: no MNIST needed
def test_tensorboard_has_step_level_training_loss_and_learning_rate(mnist_dir, tmp_path):
    # 800 images in batches of 8: 100 optimizer steps, logged every 50.
    _train(
        mnist_dir,
        tmp_path,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-train-images",
        "800",
        "--lr",
        "0.002",
        "--quiet",
    )
    (run_dir,) = list(tmp_path.iterdir())
    events = EventAccumulator(str(run_dir))
    events.Reload()
    losses = events.Scalars("train/batch_loss")
    assert [event.step for event in losses] == [50, 100]
    assert all(0 < event.value < 10 for event in losses)
    rates = events.Scalars("learning_rate")
    assert [event.step for event in rates] == [50, 100]
    assert [event.value for event in rates] == pytest.approx([0.002, 0.002])  # float32 in events
    # The epoch's own figures sit at the step the epoch ended on, beside the step-level ones.
    with open(run_dir / "metrics.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    (epoch_loss,) = events.Scalars("train/loss")
    assert epoch_loss.step == 100
    assert epoch_loss.value == pytest.approx(float(row["train_loss"]), rel=1e-6)


def _on_a_small_filesystem(folder, size, command):
    """`command` run with a tmpfs of `size` mounted on `folder` (in a mount namespace of its own,
    so it needs no root and leaves no mount behind), as a full disk really fails; the test is
    skipped where this machine allows no such namespace."""
    folder.mkdir()
    mount = ["unshare", "--mount", "--map-root-user", "sh", "-c"]
    script = 'mount -t tmpfs -o size="$0" tmpfs "$1" && shift && exec "$@"'
    if (
        shutil.which("unshare") is None
        or subprocess.run([*mount, script, size, folder, "true"]).returncode
    ):
        pytest.skip("no mount namespace here to make a small filesystem in")
    return subprocess.run(
        [*mount, script, size, str(folder), *command], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # the real files, in a process of its own
def test_a_disk_that_fills_under_tensorboard_ends_the_run_with_one_line(mnist_dir, tmp_path):
    """TensorBoard writes its events from a thread of its own: its error on a full disk ends
    training with the one line any full disk gets, not that thread's traceback, and the
    checkpoints saved (on another disk here) stay."""
    checkpoints = tmp_path / "checkpoints"
    # 32 KiB: the run's config, provenance and metrics fit, the first epoch's figure does not.
    train = [*_small_run(mnist_dir, tmp_path / "runs"), "--output-dir", str(checkpoints)]
    completed = _on_a_small_filesystem(
        tmp_path / "runs",
        "32k",
        [sys.executable, "-m", "mnist_classifier", *train, "--epochs", "2", "--quiet"],
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr and "Exception in thread" not in completed.stderr
    (line,) = completed.stderr.splitlines()
    assert line.startswith("error: no space left on the device")
    assert line.endswith("; free some space and run the command again")
    assert load_checkpoint(checkpoints / "checkpoint_epoch_1.pt").epoch == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full, the full device")
@pytest.mark.usefixtures("synthetic_data")  # tiny synthetic data: no MNIST needed
# pytest's warning for an error a thread left uncaught, which Python would print as a traceback
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_under_tensorboards_last_writes_is_raised_not_printed(tmp_path):
    """The run's last events (the hparams table) fail in TensorBoard's thread as close() ends
    it: the error reaches the training's caller, and the thread leaves it unprinted."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    class DiskFullAtTheEnd(TrainingObserver):
        def finished(self, result):
            # The kernel's full device: every write to it fails with ENOSPC.
            (events,) = run_dir.glob("events.out.tfevents.*")
            events.unlink()
            events.symlink_to("/dev/full")

    config = make_config(
        {"epochs": 1, "data.max_train_images": 256, "data.validation_size": 100, "device": "cpu"}
    )
    with pytest.raises(OSError) as raised:
        train(config, [DiskFullAtTheEnd(), RunRecorder(run_dir)], run_dir=run_dir)
    assert raised.value.errno == errno.ENOSPC
    assert load_checkpoint(run_dir / "checkpoint_epoch_1.pt").epoch == 1


@pytest.mark.usefixtures("synthetic_data")  # tiny synthetic data: no MNIST needed
def test_early_stopping_stops_on_a_forced_plateau(mnist_dir, tmp_path):
    # A learning rate of 1e-12 cannot move the weights: validation accuracy stays flat.
    _train(
        mnist_dir,
        tmp_path,
        "--epochs",
        "10",
        "--lr",
        "1e-12",
        "--name",
        "plateau",
        "--set",
        "early_stopping.patience=2",
        "--quiet",
    )
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 3  # epoch 1 sets the best; 2 and 3 fail to beat it
    assert summary["best_epoch"] == 1
    assert "early stopping after epoch 3" in summary["stop_reason"]
    assert not (run_dir / "checkpoint_epoch_4.pt").exists()


@pytest.mark.usefixtures("synthetic_data")  # tiny synthetic data: no MNIST needed
def test_sweep_then_runs_compares_what_differs(mnist_dir, tmp_path):
    swept = runner.invoke(
        app,
        [
            "sweep",
            "--grid",
            "lr=0.001,0.003",
            "--set",
            "epochs=1",
            "--set",
            "data.max_train_images=512",
            "--set",
            "data.validation_size=500",
            "--set",
            f"data.data_dir={mnist_dir}",
            "--set",
            "device=cpu",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert swept.exit_code == 0, swept.output
    records, unreadable = list_runs(tmp_path)
    assert unreadable == []
    assert [record.config["lr"] for record in records] == [0.001, 0.003]
    assert all(record.name.endswith(f"run-lr={record.config['lr']}") for record in records)

    record_test_accuracy(records[0].path / "best_model.pt", 0.5)
    listed = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path), "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [row["lr"] for row in rows] == [0.001, 0.003]
    assert "epochs" in rows[0] and "batch_size" not in rows[0]  # only what differs
    assert rows[0]["test_accuracy"] == 0.5 and rows[1]["test_accuracy"] is None
    assert all(0 < row["best_validation_accuracy"] <= 1 for row in rows)

    as_csv = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path), "--format", "csv"])
    assert list(csv.DictReader(as_csv.output.splitlines()))[1]["lr"] == "0.003"

    plot = tmp_path / "curves.png"
    chosen = runner.invoke(
        app,
        ["runs", "lr=0.003", "--runs-dir", str(tmp_path), "--plot", str(plot), "--format", "json"],
    )
    assert chosen.exit_code == 0, chosen.output
    assert [row["run"][-8:] for row in json.loads(chosen.output)] == ["lr=0.003"]
    assert plot.read_bytes()[:4] == b"\x89PNG"

    # Filters are config values, not folder names: every run here has batch_size 64.
    both = runner.invoke(app, ["runs", "batch_size=64", "--runs-dir", str(tmp_path)])
    assert (
        both.exit_code == 0
        and len(
            json.loads(
                runner.invoke(
                    app, ["runs", "batch_size=64", "--runs-dir", str(tmp_path), "--format", "json"]
                ).output
            )
        )
        == 2
    )
    none = runner.invoke(app, ["runs", "lr=0.002", "--runs-dir", str(tmp_path)])
    assert none.exit_code == 1 and none.output.startswith("error: no runs match lr=0.002")
    assert [label for label in run_labels(records)] == ["lr=0.001", "lr=0.003"]


def test_runs_with_nothing_to_list_says_so(tmp_path):
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no runs found" in result.output


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (["lr"], "a run filter is KEY=VALUE"),
        (["learning_rate=0.1"], "unknown config key 'learning_rate'"),
        # These named --set, an option `runs` does not have.
        (["=1"], "a run filter is KEY=VALUE, e.g. lr=0.002 (got '=1')"),
        (["lr="], "a run filter is KEY=VALUE, e.g. lr=0.002 (got 'lr=')"),
        # No run has two learning rates: "no runs match" would hide the slip.
        (["lr=0.001", "lr=0.002"], "the filters give lr twice; give it once"),
    ],
)
def test_a_bad_run_filter_is_a_usage_error(tmp_path, filters, message):
    result = runner.invoke(app, ["runs", *filters, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_runs_dir_that_is_a_file_is_named_as_one(tmp_path):
    (tmp_path / "f").write_text("")
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "f")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {tmp_path / 'f'} is a file, not a runs folder; give --runs-dir a folder"
    )


def test_a_run_with_an_odd_name_in_an_odd_folder_is_shown_literally_and_listed_exactly(
    tmp_path, synthetic_data
):
    # Rich markup in the run's name, and in its folder's a newline, an escape sequence and a
    # "[/]" that closes nothing (Rich's MarkupError).
    runs_dir = tmp_path / "runs[/]\n\x1b[2J"
    tiny = ["--max-train-images", "64", "--validation-size", "64", "--device", "cpu"]
    trained = runner.invoke(
        app, ["train", *tiny, "--epochs", "1", "--runs-dir", str(runs_dir), "--name", "[bold]x"]
    )
    assert trained.exit_code == 0, trained.output
    (run_dir,) = runs_dir.iterdir()
    assert run_dir.name.endswith("-[bold]x")
    lines = trained.stdout.splitlines()
    assert "\x1b" not in trained.stdout and str(runs_dir) not in trained.stdout
    logs = terminal_safe(f"'{runs_dir}'")  # quoted for the shell: "[" and "\n" are special
    assert f"Run directory: {terminal_safe(run_dir)}  (tensorboard --logdir {logs})" in lines
    assert f"Best model: {terminal_safe(run_dir / 'best_model.pt')}" in lines

    table = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)])
    assert table.exit_code == 0, table.output
    assert sum(run_dir.name in row for row in table.stdout.splitlines()) == 1  # "[bold]" kept
    assert "\x1b" not in table.stdout
    listed = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir), "--format", "json"])
    assert [entry["run"] for entry in json.loads(listed.stdout)] == [run_dir.name]


def _a_recorded_run(runs_dir):
    run_dir = runs_dir / "20260101-000000-run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("lr: 0.001\n")
    (run_dir / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy\n1,0.5,0.8,0.4,0.85\n"
    )


@pytest.mark.parametrize("name", ["curves.txt", "curves", "curves.jpg"])
def test_a_plot_in_a_format_not_drawn_is_a_usage_error_before_any_work(tmp_path, name):
    _a_recorded_run(tmp_path / "runs")
    plot = tmp_path / name
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--plot", str(plot)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: --plot {plot} must end in one of .png, .svg, .pdf\n"
    assert not plot.exists()


def test_a_plot_that_cannot_be_written_is_refused_before_the_table(tmp_path):
    """The table was printed, and then the plot failed: the command looked half done."""
    _a_recorded_run(tmp_path / "runs")
    notes = tmp_path / "notes"
    notes.write_text("a file, so no folder can be made here")
    plot = notes / "curves.png"
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--plot", str(plot)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: cannot write {plot}: {notes} is not a folder; choose another --plot\n"
    )


def test_a_plot_never_replaces_a_file_it_did_not_draw(tmp_path):
    _a_recorded_run(tmp_path / "runs")
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"the user's own picture")
    result = runner.invoke(
        app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--plot", str(notes)]
    )
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: {notes} exists and is not a plot of this project; choose another --plot, "
        "or move that file away\n"
    )
    assert notes.read_bytes() == b"the user's own picture"


@pytest.mark.parametrize("name", ["curves.png", "curves.svg", "curves.PDF"])
def test_a_plot_of_ours_is_redrawn_in_place(tmp_path, name):
    _a_recorded_run(tmp_path / "runs")
    plot = tmp_path / name
    arguments = ["runs", "--runs-dir", str(tmp_path / "runs"), "--plot", str(plot)]
    for _ in range(2):  # the second time over the first plot
        result = runner.invoke(app, [*arguments, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert is_our_figure(plot)


@pytest.mark.parametrize(
    ("fixed", "grid"),
    [
        (["--set", "lr=0.01"], "lr=0.001,0.003"),
        (["--dataset", "fashion-mnist"], "data.dataset=mnist,fashion-mnist"),
    ],
)
def test_sweep_refuses_a_setting_given_to_every_run_and_in_the_grid(tmp_path, fixed, grid):
    result = runner.invoke(app, ["sweep", "--grid", grid, *fixed, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    key = grid.partition("=")[0]
    assert result.stderr.splitlines() == [
        f"error: {key} is given both to every run (--set or its option) and in --grid: give it "
        "in one place"
    ]
    assert list(tmp_path.iterdir()) == []  # before any run


# How a run stops the sweep: its exception, the exit code and the run's own line.
SWEEP_STOPS = {
    "Ctrl-C": (
        KeyboardInterrupt(),
        130,
        "error: interrupted before the first epoch's checkpoint: nothing to resume from",
    ),
    "a full disk": (
        CheckpointSaveError("no space left on the device"),
        1,
        "error: no space left on the device",
    ),
}


@pytest.mark.parametrize("stop", sorted(SWEEP_STOPS))
@pytest.mark.parametrize(
    ("stopped_at", "left"),
    [(1, "run 1 of 3: runs 2 to 3 were not trained"), (2, "run 2 of 3: run 3 was not trained")]
    + [(3, "its last run, 3 of 3")],
)
def test_a_stopped_sweep_says_which_runs_it_did_not_train_and_how_to_continue(
    tmp_path, monkeypatch, stopped_at, left, stop
):
    calls = []
    error, exit_code, run_line = SWEEP_STOPS[stop]

    def stopped_at_its_run(*_arguments, **_keywords):
        calls.append(True)
        if len(calls) == stopped_at:
            raise error

    monkeypatch.setattr(train_module, "train", stopped_at_its_run)
    grid, runs_dir, data = "lr=0.001,0.002,0.003", str(tmp_path / "runs"), str(tmp_path)
    arguments = ["--grid", grid, "--runs-dir", runs_dir, "--set", f"data.data_dir={data}"]
    result = runner.invoke(app, ["sweep", *arguments])
    assert result.exit_code == exit_code
    # The same options, in the order of sweep's --help.
    continue_with = shell_command(
        "mnist", "sweep", "--grid", grid, "--set", f"data.data_dir={data}", "--runs-dir", runs_dir
    )
    continue_with += " --resume"
    assert result.stderr.splitlines() == [
        run_line,
        f"The sweep stopped at {left}; continue the sweep with {continue_with}",
    ]


def test_sweep_rejects_a_bad_grid_before_training(tmp_path):
    result = runner.invoke(app, ["sweep", "--grid", "lr", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "KEY=V1,V2" in result.output
    result = runner.invoke(
        app, ["sweep", "--grid", "schedule.name=step,linear", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "schedule.name must be one of" in result.output
    shared = tmp_path / "checkpoints"
    arguments = ["sweep", "--grid", "lr=0.001,0.003", "--set", f"output_dir={shared}"]
    result = runner.invoke(app, [*arguments, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: 2 of the sweep's runs would write their checkpoints into {shared}: leave "
        "output_dir unset (each run keeps its checkpoints in its own run folder) or sweep over "
        "output_dir too"
    ]
    assert list(tmp_path.iterdir()) == []  # no run started, and no folder was left behind


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        # Kept as the last --grid alone, lr=0.001's run was silently never trained.
        (["lr=0.001", "lr=0.003"], "--grid gives lr twice; list all its values in one"),
        (["lr=0.001,1e-3"], "--grid lr lists the value 0.001 twice; list it once"),
        (["batch_size=32,64,32"], "--grid batch_size lists the value 32 twice"),
        # An empty value was dropped: one run fewer than the grid seemed to ask for.
        (["lr=,0.1"], "--grid lr has an empty value in 'lr=,0.1'; remove the comma"),
        (["lr=0.1,,0.2"], "--grid lr has an empty value"),
        # The grid's values make the run names: one over the 100-character limit.
        (["lr=0.1,0.2", f"name={'n' * 95}"], "name must be at most 100 characters"),
    ],
)
def test_sweep_refuses_a_grid_it_cannot_train_as_written(tmp_path, grid, message):
    arguments = ["sweep", *(f"--grid={entry}" for entry in grid), "--runs-dir", str(tmp_path)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_swept_folder_makes_a_plain_run_name():
    """A value holding "/" (sweeping output_dir over sub/o2) made a name that is no one
    folder's, refused with a traceback once the grid was resolved."""
    assert sweep_run_name("run", {"output_dir": "sub/o2"}) == "run-output_dir=sub_o2"


def test_a_grid_value_of_another_type_is_not_a_repeat():
    # True == 1 in Python, but "seed=1,True" names two different settings.
    assert grid_overrides(["seed=1,True"]) == [{"seed": 1}, {"seed": True}]


def test_test_accuracy_reaches_the_run_that_wrote_a_checkpoint_kept_elsewhere(tmp_path):
    run_dir = tmp_path / "runs" / "20260101-000000-run"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"best_epoch": 2}')
    staged = tmp_path / "models" / "staging" / "mnist" / "best_model.pt"
    assert record_test_accuracy(staged, 0.99, str(run_dir)) == run_dir / "summary.json"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == {"best_epoch": 2, "test_accuracy": 0.99, "test_checkpoint": str(staged)}
    assert record_test_accuracy(staged, 0.99, "") is None  # no run to tell


def test_only_the_best_models_test_accuracy_is_the_runs(tmp_path):
    """Evaluating checkpoint_epoch_1.pt replaced the run's test accuracy, shown beside the
    best validation accuracy as if the best model had scored it."""
    run_dir = tmp_path / "20260101-000000-run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"best_epoch": 2}')
    earlier = run_dir / "checkpoint_epoch_1.pt"
    assert record_test_accuracy(earlier, 0.5, str(run_dir), epoch=1) is None
    assert json.loads((run_dir / "summary.json").read_text()) == {"best_epoch": 2}
    best = run_dir / "best_model.pt"
    assert record_test_accuracy(best, 0.9, str(run_dir), epoch=2) == run_dir / "summary.json"
    assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] == 0.9


@pytest.mark.parametrize("damaged", ["{broken", "[1, 2]", '{"best_epoch": "two"}'])
def test_a_damaged_run_summary_is_left_as_it_is_and_named(tmp_path, damaged):
    run_dir = tmp_path / "20260101-000000-run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(damaged)
    with pytest.raises(RunRecordError, match="summary.json"):
        record_test_accuracy(run_dir / "best_model.pt", 0.99, str(run_dir))
    assert (run_dir / "summary.json").read_text() == damaged


def _run_folder(runs_dir, name, lr):
    """A finished two-epoch run's records, as RunRecorder writes them, without training."""
    run_dir = runs_dir / f"20260101-000000-{name}"
    run_dir.mkdir(parents=True)
    config = TrainConfig().to_dict()
    config.update(lr=lr, name=name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"best_epoch": 2, "best_validation_accuracy": 0.9, "epochs_run": 2}
    (run_dir / "summary.json").write_text(json.dumps({**summary, "wall_seconds": 3.5}))
    rows = [[epoch, 0.5, 0.8, 0.4, 0.9, lr, 1.0, 500.0] for epoch in (1, 2)]
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([METRIC_COLUMNS, *rows])
    return run_dir


def _runs_json(runs_dir):
    result = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir), "--format", "json"])
    return result, json.loads(result.stdout) if result.stdout else []


def test_the_runs_table_shows_start_times_and_seconds_alike_and_machines_get_them_as_saved(
    tmp_path,
):
    """The table showed the folder's raw stamp (20260314-093005) as the start, and seconds with
    four significant digits: 3.5, 61.25 and 1.235e+04 in one column."""
    # Folder name -> wall seconds, oldest first as `mnist runs` lists them.
    runs = {"20260314-093005-a": 3.5, "20260314-093005-b": 12345.678, "20261231-235959-c": 61.25}
    for number, (folder, wall_seconds) in enumerate(runs.items()):
        run_dir = _run_folder(tmp_path, folder[-1], 0.001 * (number + 1))
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "wall_seconds": wall_seconds}))
        run_dir.rename(tmp_path / folder)

    table = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert table.exit_code == 0, table.output
    shown = table_rows(table.stdout)
    assert [row["run"] for row in shown] == list(runs)
    for row, (folder, wall_seconds) in zip(shown, runs.items(), strict=True):
        started = datetime.strptime(folder[:15], "%Y%m%d-%H%M%S").replace(second=0)
        assert datetime.strptime(row["started (UTC)"], "%Y-%m-%d %H:%M") == started
        assert re.fullmatch(r"\d+\.\d", row["seconds"]), row["seconds"]
        assert abs(float(row["seconds"]) - wall_seconds) <= 0.05

    _, listed = _runs_json(tmp_path)  # for machines, as saved
    assert [(row["started_utc"], row["wall_seconds"]) for row in listed] == [
        (folder[:15], wall_seconds) for folder, wall_seconds in runs.items()
    ]


DAMAGED_RECORDS = [
    ("summary.json", b'{"best_epoch": 2,', "summary.json is not valid JSON"),
    ("summary.json", b"[0.9, 0.8]", "summary.json holds a JSON list, not a record"),
    ("summary.json", b'"done"', "summary.json holds a JSON str, not a record"),
    (
        "summary.json",
        b'{"best_validation_accuracy": "high"}',
        "summary.json: best_validation_accuracy is 'high', not a number",
    ),
    ("summary.json", b'{"epochs_run": true}', "summary.json: epochs_run is True, not a whole"),
    ("summary.json", b'{"test_accuracy": 99.12}', "test_accuracy is 99.12, not a number from 0"),
    ("summary.json", b'{"test_accuracy": NaN}', "test_accuracy is nan, not a number from 0 to 1"),
    ("summary.json", b'{"wall_seconds": -Infinity}', "wall_seconds is -inf, not a number"),
    # Beyond a float's range: the table would overflow formatting it as a percentage.
    (
        "summary.json",
        b'{"test_accuracy": 1' + b"0" * 400 + b"}",
        "summary.json: test_accuracy is 1000",
    ),
    ("summary.json", b'{"epochs_run": ' + b"9" * 5_000 + b"}", "holds a number too long to read"),
    ("summary.json", b"\xff\xfe{}", "summary.json is not UTF-8 text"),
    ("config.yaml", b"lr: [0.1\n", "config.yaml is not valid YAML"),
    ("config.yaml", b"- lr\n- 0.1\n", "config.yaml must hold a mapping"),
    ("config.yaml", bytes(range(256)), "config.yaml is not UTF-8 text"),
    ("config.yaml", b"lr: 2026-01-01\n", "config.yaml: 'lr' holds a date, not a setting"),
    ("metrics.csv", bytes(range(256)), "metrics.csv is not UTF-8 text"),
    ("metrics.csv", b"epoch,train_loss\n1,0.5\n", "metrics.csv has no train_accuracy"),
    (
        "metrics.csv",
        ",".join(METRIC_COLUMNS).encode() + b"\n1,0.5,0.8,0.4,0.9,0.001,1.0,500\n2,0.4,0.8",
        "metrics.csv: line 3 does not have one value per column (cut short",
    ),
    (
        "metrics.csv",
        ",".join(METRIC_COLUMNS).encode() + b"\n1,low,0.8,0.4,0.9,0.001,1.0,500\n",
        "metrics.csv: line 2: 'train_loss' is 'low', not a number",
    ),
    (
        "metrics.csv",
        ",".join(METRIC_COLUMNS).encode() + b"\ninf,0.5,0.8,0.4,0.9,0.001,1.0,500\n",
        "metrics.csv: line 2: epoch is 'inf', not an epoch number",
    ),
]


@pytest.mark.parametrize(("file_name", "content", "message"), DAMAGED_RECORDS)
def test_a_damaged_run_record_is_named_on_one_line_and_the_other_runs_still_listed(
    tmp_path, file_name, content, message
):
    _run_folder(tmp_path, "good", 0.001)
    damaged = _run_folder(tmp_path, "damaged", 0.002)
    _run_folder(tmp_path, "later", 0.003)
    (damaged / file_name).write_bytes(content)
    files_before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    result, rows = _runs_json(tmp_path)

    assert result.exit_code == 2, result.output
    assert [row["run"] for row in rows] == ["20260101-000000-good", "20260101-000000-later"]
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and str(damaged / file_name) in line and message in line
    assert "run 20260101-000000-damaged is not listed" in line
    table = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert table.exit_code == 2 and "Traceback" not in table.output
    assert "20260101-000000-later" in table.stdout
    with_plot = runner.invoke(
        app, ["runs", "--runs-dir", str(tmp_path), "--plot", str(tmp_path / "curves.png")]
    )
    assert with_plot.exit_code == 2 and (tmp_path / "curves.png").is_file()
    (tmp_path / "curves.png").unlink()
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == (
        files_before
    )


@pytest.mark.parametrize("plot_name", ["curves.png", "curves.svg", "curves.pdf"])
def test_runs_named_like_mathtext_are_plotted(tmp_path, plot_name):
    # Runs alike but for their names: the legend labels each by its folder name.
    names = ["run-$\\frac$", "run-$x$", "$$", "back\\slash"]
    for name in names:
        _run_folder(tmp_path / "runs", name, 0.001)
    plot = tmp_path / plot_name
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--plot", str(plot)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert is_our_figure(plot)
    for name in names:
        assert sum(name in row for row in result.stdout.splitlines()) == 1


def test_when_every_run_is_damaged_each_gets_its_line(tmp_path):
    for name in ("first", "second"):
        (_run_folder(tmp_path, name, 0.001) / "summary.json").write_text("{")
    result, rows = _runs_json(tmp_path)
    assert result.exit_code == 2 and rows == []
    assert len(result.stderr.splitlines()) == 2
    assert all(line.startswith("error: ") for line in result.stderr.splitlines())


# Keys the property below writes into records: some typed summary fields (the ones the table
# derives its `ended` column from among them) and a setting.
SAMPLED_RECORD_KEYS = ["best_epoch", "test_accuracy", "stop_reason", "diverged_in_epoch", "lr"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    file_name=st.sampled_from(["summary.json", "config.yaml", "metrics.csv"]),
    content=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(SAMPLED_RECORD_KEYS), inner)
        ),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
)
def test_any_record_file_leaves_the_other_runs_listed(tmp_path_factory, file_name, content):
    runs_dir = tmp_path_factory.mktemp("runs")
    _run_folder(runs_dir, "good", 0.001)
    (_run_folder(runs_dir, "arbitrary", 0.002) / file_name).write_bytes(content)

    result, rows = _runs_json(runs_dir)

    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "20260101-000000-good" in [row["run"] for row in rows]
    if result.exit_code == 0:  # the file happened to be a usable record
        assert len(rows) == 2 and result.stderr == ""
    else:
        assert result.exit_code == 2 and len(rows) == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and file_name in line


def _run_files(run_dir):
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}


def _resume(checkpoint, *arguments):
    return runner.invoke(app, ["train", "--resume", str(checkpoint), "--quiet", *arguments])


@pytest.fixture
def finished_run(mnist_dir, tmp_path, synthetic_data):
    """A finished two-epoch run (schedule none: its length can change without --force)."""
    _train(mnist_dir, tmp_path / "runs", "--epochs", "2", "--quiet")
    (run_dir,) = list((tmp_path / "runs").iterdir())
    return run_dir


@pytest.mark.parametrize("damage", ["cut short", "missing"])
def test_resume_restores_the_metrics_row_a_crash_cut_short(finished_run, damage):
    # The checkpoint of an epoch is saved before its metrics row: a kill in between leaves
    # the row missing, or (with the append this replaced) cut short.
    metrics_path = finished_run / "metrics.csv"
    header, first, second = metrics_path.read_text().splitlines()
    kept = [header, first, second[: len(second) // 2]] if damage == "cut short" else [header, first]
    metrics_path.write_text("\n".join(kept) + "\n")

    resumed = _resume(finished_run / "checkpoint_epoch_2.pt", "--epochs", "3")

    assert resumed.exit_code == 0, resumed.output
    lines = metrics_path.read_text().splitlines()
    assert lines[:3] == [header, first, second]  # rebuilt from the checkpoint, digit for digit
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
    listed = runner.invoke(
        app, ["runs", "--runs-dir", str(finished_run.parent), "--format", "json"]
    )
    assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["epochs"] == 3


def test_metrics_csv_is_replaced_whole_never_appended(finished_run, monkeypatch):
    from mnist_classifier import files

    before = (finished_run / "metrics.csv").read_bytes()

    def killed_before_the_rename(source, target):
        raise KeyboardInterrupt  # the process dies between writing the new file and renaming

    monkeypatch.setattr(files.os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        from mnist_classifier.runs import RunRecorder

        recorder = RunRecorder(finished_run)
        recorder.rows = [{column: 1 for column in METRIC_COLUMNS}]
        recorder._write_metrics()
    assert (finished_run / "metrics.csv").read_bytes() == before
    assert not list(finished_run.glob(".mnist-partial-*"))


@pytest.mark.parametrize("content", [b'{"git_commit": "abc"', b"[1, 2]", b"\xff\xfe"])
def test_resume_into_a_run_with_damaged_provenance_is_one_line_and_touches_nothing(
    finished_run, content
):
    (finished_run / "provenance.json").write_bytes(content)
    before = _run_files(finished_run)

    resumed = _resume(finished_run / "checkpoint_epoch_2.pt", "--epochs", "3")

    assert resumed.exit_code == 1, resumed.output
    (line,) = resumed.output.splitlines()
    assert line.startswith("error: cannot resume into run") and "provenance.json" in line
    assert "move it aside" in line
    assert _run_files(finished_run) == before
    assert list(finished_run.parent.iterdir()) == [finished_run]  # no new run folder either


def test_resume_with_provenance_moved_aside_says_where_the_record_begins(finished_run):
    (finished_run / "provenance.json").rename(finished_run.parent / "provenance.json.damaged")
    assert _resume(finished_run / "checkpoint_epoch_2.pt", "--epochs", "3").exit_code == 0
    record = json.loads((finished_run / "provenance.json").read_text())
    assert "not recorded here" in record["origin"] and "git_commit" not in record
    assert [start["from_epoch"] for start in record["resumptions"]] == [2]


@pytest.mark.parametrize("resume", ["auto", "checkpoint_epoch_2.pt"])
def test_resume_says_where_it_resumes_from_whether_found_or_named(finished_run, resume):
    """--resume auto said which checkpoint it resumes and which run it continues; a checkpoint
    named by its path said neither, though the same checkpoint was resumed the same way."""
    named = str(finished_run / resume) if resume != "auto" else resume
    resumed = _resume(named, "--runs-dir", str(finished_run.parent), "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    checkpoint = finished_run / "checkpoint_epoch_2.pt"
    assert resumed.output.splitlines()[0] == (
        f"Resuming from {checkpoint} (run {finished_run.name})"
    )


@pytest.mark.parametrize(
    ("checkpoint", "epochs", "wanted"),
    [(2, [], "--epochs 3"), (2, ["--epochs", "1"], "--epochs 3")],
)
def test_resume_with_nothing_left_to_train_is_refused_before_touching_a_file(
    finished_run, checkpoint, epochs, wanted
):
    record_test_accuracy(finished_run / "best_model.pt", 0.75, str(finished_run))
    before = _run_files(finished_run)

    resumed = _resume(finished_run / f"checkpoint_epoch_{checkpoint}.pt", *epochs)

    assert resumed.exit_code == 2, resumed.output
    (line,) = resumed.output.splitlines()
    assert line.startswith("error: nothing left to train: the run already has 2 epochs")
    assert f"to train more, resume with {wanted}" in line
    assert _run_files(finished_run) == before


@pytest.mark.usefixtures("synthetic_data")
def test_a_onecycle_run_is_not_lengthened_even_with_force_and_says_to_train_anew(
    mnist_dir, tmp_path
):
    """The refusal to lengthen a onecycle run said to resume with --force, and that resumption
    ended in torch's traceback: the schedule cannot step past the steps it was laid out for."""
    _train(mnist_dir, tmp_path / "runs", "--epochs", "1", "--schedule", "onecycle", "--quiet")
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoint = run_dir / "checkpoint_epoch_1.pt"
    before = _run_files(run_dir)

    refused = _resume(checkpoint)
    forced = _resume(checkpoint, "--epochs", "2", "--force")

    assert refused.exit_code == 2, refused.output
    (line,) = refused.output.splitlines()
    assert line.endswith(
        "to train more, train a new run (a onecycle schedule spans its run) with --epochs 2 or more"
    )
    assert forced.exit_code == 2, forced.output
    assert "Traceback" not in forced.output
    assert forced.stderr.splitlines() == [  # 512 images in batches of 64: 8 steps an epoch
        f"error: cannot resume from {checkpoint}: its onecycle schedule is laid out over 8 "
        "steps and this run would take 16 (another --epochs, batch size or process count); a "
        "onecycle run cannot change its length: train a new run"
    ]
    assert _run_files(run_dir) == before


@pytest.mark.usefixtures("synthetic_data")
def test_resuming_checkpoints_kept_outside_the_run_folder_continues_that_run(mnist_dir, tmp_path):
    """python train_mnist.py keeps its checkpoints in the lab's staging folder, not the run
    folder; resuming them started a second run folder that repeated the first's epochs, and
    left the first run's record (and its test accuracy) behind."""
    runs_dir, staging = tmp_path / "runs", tmp_path / "staging"
    _train(mnist_dir, runs_dir, "--epochs", "1", "--output-dir", str(staging), "--quiet")
    (run_dir,) = runs_dir.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "completed its 1 epoch"  # not "all 1 epochs"
    resumed = runner.invoke(
        app,
        ["train", "--data-dir", str(mnist_dir), "--runs-dir", str(runs_dir), "--quiet"]
        + ["--output-dir", str(staging), "--resume", "auto", "--epochs", "2"],
    )
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming from {staging / 'checkpoint_epoch_1.pt'} (run {run_dir.name})" in (
        resumed.output
    )
    assert list(runs_dir.iterdir()) == [run_dir]
    epochs = [row["epoch"] for row in csv.DictReader((run_dir / "metrics.csv").open())]
    assert epochs == ["1", "2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "completed all 2 epochs"


def test_a_checkpoint_copied_out_of_its_folder_resumes_into_a_new_run(finished_run, tmp_path):
    elsewhere = tmp_path / "production"
    elsewhere.mkdir()
    for name in ("checkpoint_epoch_2.pt", "checkpoint_epoch_2.pt.sha256"):
        shutil.copy(finished_run / name, elsewhere / name)
    before = _run_files(finished_run)
    resumed = _resume(elsewhere / "checkpoint_epoch_2.pt", "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    assert _run_files(finished_run) == before  # its record is the run that wrote it
    assert len(list(finished_run.parent.iterdir())) == 2


def test_a_resumed_run_drops_the_test_accuracy_of_a_model_no_longer_its_best(finished_run):
    """A test accuracy recorded for another epoch's model than the best one the resumed run
    ends with (the best moves only forward, so the other of the two finished epochs never is)
    would stand beside the best validation accuracy as if it were that model's."""
    summary_path = finished_run / "summary.json"
    summary = json.loads(summary_path.read_text())
    not_the_best = 2 if summary["best_epoch"] == 1 else 1
    tested = {"test_accuracy": 0.75, "test_checkpoint": "x.pt", "test_epoch": not_the_best}
    summary_path.write_text(json.dumps({**summary, **tested}))

    assert _resume(finished_run / "checkpoint_epoch_2.pt", "--epochs", "3").exit_code == 0

    summary = json.loads(summary_path.read_text())
    assert summary["best_epoch"] != not_the_best
    assert not set(tested) & set(summary)


def test_resume_keeps_the_summary_fields_it_did_not_write(finished_run):
    best = finished_run / "best_model.pt"
    record_test_accuracy(best, 0.75, str(finished_run))

    assert _resume(finished_run / "checkpoint_epoch_2.pt", "--epochs", "3").exit_code == 0

    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["test_accuracy"] == 0.75 and summary["test_checkpoint"] == str(best)
    assert summary["epochs_run"] == 3 and summary["stop_reason"] == "completed all 3 epochs"
    assert yaml.safe_load((finished_run / "config.yaml").read_text())["epochs"] == 3


def _killed_before_its_summary(run_dir):
    """What a run killed after saving its last checkpoint, before writing its summary, leaves:
    the summary it returns is the one the uninterrupted run wrote."""
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").unlink()
    (run_dir / "curves.png").unlink()
    return summary


def _checkpoint_files(run_dir):
    return {path.name: path.read_bytes() for path in run_dir.glob("*.pt")}


def test_a_finished_run_killed_before_its_summary_resumes_to_write_it(finished_run):
    uninterrupted = _killed_before_its_summary(finished_run)
    checkpoints, metrics = (
        _checkpoint_files(finished_run),
        (finished_run / "metrics.csv").read_text(),
    )

    resumed = _resume(finished_run / "checkpoint_epoch_2.pt")

    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((finished_run / "summary.json").read_text())
    assert {**summary, "wall_seconds": 0} == {**uninterrupted, "wall_seconds": 0}
    assert (finished_run / "curves.png").is_file()
    # Nothing was trained: the checkpoints and the metrics are the uninterrupted run's.
    assert _checkpoint_files(finished_run) == checkpoints
    assert (finished_run / "metrics.csv").read_text() == metrics
    # Once the records are complete, the same command has nothing left to do.
    again = _resume(finished_run / "checkpoint_epoch_2.pt")
    assert again.exit_code == 2 and again.output.startswith("error: nothing left to train")


def test_a_checkpoint_the_run_went_past_never_rewrites_its_records(finished_run):
    _killed_before_its_summary(finished_run)  # killed after epoch 2, but resumed from epoch 1
    before = _run_files(finished_run)

    refused = _resume(finished_run / "checkpoint_epoch_1.pt", "--epochs", "1")

    assert refused.exit_code == 2, refused.output
    assert refused.output.startswith("error: nothing left to train: the run already has 1 epoch")
    assert _run_files(finished_run) == before  # epoch 2's row is still in metrics.csv


@pytest.fixture
def early_stopped_run(mnist_dir, tmp_path, synthetic_data):
    """A run of up to 4 epochs that stops early after epoch 2: no accuracy can improve by more
    than 1.0, so with patience 1 the second epoch is the first without improvement."""
    arguments = ["--epochs", "4", "--set", "early_stopping.min_delta=1.0"]
    _train(mnist_dir, tmp_path / "runs", *arguments, "--set", "early_stopping.patience=1")
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert sorted(path.name for path in run_dir.glob("checkpoint_epoch_*.pt")) == [
        "checkpoint_epoch_1.pt",
        "checkpoint_epoch_2.pt",
    ]
    return run_dir


def test_an_early_stopped_run_killed_before_its_summary_trains_no_further(early_stopped_run):
    uninterrupted = _killed_before_its_summary(early_stopped_run)
    assert uninterrupted["stop_reason"].startswith("early stopping after epoch 2")
    checkpoints = _checkpoint_files(early_stopped_run)

    resumed = _resume(early_stopped_run / "checkpoint_epoch_2.pt")

    assert resumed.exit_code == 0, resumed.output
    assert _checkpoint_files(early_stopped_run) == checkpoints  # no epoch 3
    summary = json.loads((early_stopped_run / "summary.json").read_text())
    assert {**summary, "wall_seconds": 0} == {**uninterrupted, "wall_seconds": 0}


def test_resuming_an_early_stopped_run_says_how_to_train_more(early_stopped_run):
    before = _run_files(early_stopped_run)

    refused = _resume(early_stopped_run / "checkpoint_epoch_2.pt")

    assert refused.exit_code == 2, refused.output
    (line,) = refused.output.splitlines()
    assert line.startswith("error: nothing left to train: it stopped early")
    assert "resume with --set early_stopping.patience=2 or more" in line
    assert _run_files(early_stopped_run) == before

    more = _resume(
        early_stopped_run / "checkpoint_epoch_2.pt", "--set", "early_stopping.patience=2"
    )
    assert more.exit_code == 0, more.output
    summary = json.loads((early_stopped_run / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["stop_reason"].startswith(
        "early stopping after epoch 3"
    )


# --- mnist sweep --resume -------------------------------------------------------------------

SWEEP_GRID = "lr=0.001,0.002,0.003"
# The columns of metrics.csv that time the epoch: the only ones two runs alike differ in.
TIMED_COLUMNS = ("seconds", "images_per_second")


def _sweep(runs_dir, *arguments, grid=SWEEP_GRID, epochs=2):
    """`mnist sweep` of tiny runs on the CPU (the synthetic data: the data folder is not read)."""
    settings = [f"epochs={epochs}", "data.max_train_images=128", "data.validation_size=100"]
    settings += ["device=cpu", f"data.data_dir={runs_dir.parent}"]
    return runner.invoke(
        app,
        ["sweep", "--grid", grid, "--runs-dir", str(runs_dir)]
        + [word for setting in settings for word in ("--set", setting)]
        + list(arguments),
    )


class _CtrlCInEpoch(TrainingObserver):
    """Ctrl-C at the first step of `epoch`: the epochs before it are saved, this one is not."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_done(self, epoch, *_arguments) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _interrupt_the_run_of(monkeypatch, lr: float, epoch: int):
    """Every training of learning rate `lr` is interrupted in `epoch`; returns the real train."""
    real_train = train_module.train

    def train_interrupted(config, observers, **keywords):
        if config.lr == lr:
            observers = [*observers, _CtrlCInEpoch(epoch)]
        return real_train(config, observers, **keywords)

    monkeypatch.setattr(train_module, "train", train_interrupted)
    return real_train


def _files_as_they_are(run_dir):
    """Every file of a run folder: its bytes, and when it was last written."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.iterdir()}


def _trained_alike(run_dir, oracle_dir) -> bool:
    """Whether two runs ended the same to the bit: the last checkpoint's weights and optimizer
    state, every figure of metrics.csv but its timings, and the summary but its clock."""

    def trained(folder):
        (last, *_) = epoch_checkpoints(folder)
        state = torch.load(last, weights_only=True)
        with (folder / "metrics.csv").open() as metrics:
            rows = [
                {column: value for column, value in row.items() if column not in TIMED_COLUMNS}
                for row in csv.DictReader(metrics)
            ]
        summary = json.loads((folder / "summary.json").read_text())
        for key in ("wall_seconds", "checkpoint_dir"):
            summary.pop(key)
        return last.name, state["model_state_dict"], state["optimizer_state_dict"], rows, summary

    return same_state(trained(run_dir), trained(oracle_dir))


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory):
    """The oracle: the sweep never interrupted; its run folders by learning rate."""
    runs_dir = tmp_path_factory.mktemp("uninterrupted") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "load_train_validation", synthetic_train_data)
        swept = _sweep(runs_dir)
    assert swept.exit_code == 0, swept.output
    records, _ = list_runs(runs_dir)
    return {record.config["lr"]: record.path for record in records}


@pytest.mark.usefixtures("synthetic_data")
def test_an_interrupted_sweep_continues_exactly_with_the_command_it_names(
    tmp_path, monkeypatch, uninterrupted_sweep
):
    runs_dir = tmp_path / "runs"
    real_train = _interrupt_the_run_of(monkeypatch, lr=0.002, epoch=2)
    stopped = _sweep(runs_dir)
    assert stopped.exit_code == 130, stopped.output
    kept, interrupted = sorted(runs_dir.iterdir())
    assert (interrupted / "checkpoint_epoch_1.pt").is_file()
    assert not (interrupted / "summary.json").exists()
    said = "The sweep stopped at run 2 of 3: run 3 was not trained; continue the sweep with "
    *_, last_line = stopped.stderr.splitlines()
    assert last_line.startswith(said)
    command = shlex.split(last_line.removeprefix(said))
    assert command[:2] == ["mnist", "sweep"] and command[-1] == "--resume"
    monkeypatch.setattr(train_module, "train", real_train)
    kept_files = _files_as_they_are(kept)

    resumed = runner.invoke(app, command[1:])

    assert resumed.exit_code == 0, resumed.output
    assert _files_as_they_are(kept) == kept_files  # not trained again, not a byte rewritten
    *_, trained = sorted(runs_dir.iterdir())
    assert sorted(runs_dir.iterdir()) == [kept, interrupted, trained]  # no second lr=0.002 run
    lines = resumed.stdout.splitlines()
    assert f"Kept run {kept.name}: completed all 2 epochs; not trained again" in lines
    checkpoint = interrupted / "checkpoint_epoch_1.pt"
    assert f"Resuming from {checkpoint} (run {interrupted.name})" in lines
    assert "No earlier run has these settings: training it from scratch" in lines
    for lr, run_dir in zip((0.001, 0.002, 0.003), (kept, interrupted, trained), strict=True):
        assert _trained_alike(run_dir, uninterrupted_sweep[lr]), lr
    rows = table_rows(resumed.stdout)
    assert [row["run"] for row in rows] == [kept.name, interrupted.name, trained.name]
    assert [row["epochs"] for row in rows] == ["2", "2", "2"]


@pytest.mark.usefixtures("synthetic_data")
def test_a_sweep_trains_anew_without_resume_and_resuming_keeps_the_newest_of_its_runs(tmp_path):
    runs_dir, grid = tmp_path / "runs", "lr=0.001,0.002"
    # No runs folder yet: nothing to continue, which is no error.
    first = _sweep(runs_dir, "--resume", grid=grid, epochs=1)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("No earlier run has these settings: training it from scratch") == 2
    again = _sweep(runs_dir, grid=grid, epochs=1)  # as before --resume was: all trained again
    assert again.exit_code == 0, again.output
    assert not {"Kept", "Resuming", "scratch"} & set(again.stdout.split())
    runs = sorted(runs_dir.iterdir())
    assert len(runs) == 4
    # Oldest first by name; the last of each learning rate is its newest run.
    newest = {yaml.safe_load((run / "config.yaml").read_text())["lr"]: run for run in runs}
    before = {run: _files_as_they_are(run) for run in runs}

    resumed = _sweep(runs_dir, "--resume", grid=grid, epochs=1)

    assert resumed.exit_code == 0, resumed.output
    assert sorted(runs_dir.iterdir()) == runs
    assert {run: _files_as_they_are(run) for run in runs} == before
    lines = resumed.stdout.splitlines()
    for run in newest.values():
        assert (
            f"2 runs have these settings; using the newest that holds a checkpoint: {run.name}"
            in (lines)
        )
        assert f"Kept run {run.name}: completed its 1 epoch; not trained again" in lines
    assert [row["run"] for row in table_rows(resumed.stdout)] == [
        newest[0.001].name,
        newest[0.002].name,
    ]


# The middle learning rate is far too high: its first epoch's loss is not a number.
DIVERGING_GRID = "lr=0.001,10000000000,0.003"


@pytest.mark.usefixtures("synthetic_data")
def test_a_sweep_goes_on_past_a_run_that_diverges_and_resuming_keeps_that_run(
    tmp_path, uninterrupted_sweep
):
    runs_dir = tmp_path / "runs"

    swept = _sweep(runs_dir, grid=DIVERGING_GRID)

    assert swept.exit_code == 1, swept.output
    records, _ = list_runs(runs_dir)
    by_lr = {record.config["lr"]: record.path for record in records}
    first, diverged, third = by_lr[0.001], by_lr[1e10], by_lr[0.003]
    # The runs around it trained as in a sweep without it, to the bit.
    assert _trained_alike(first, uninterrupted_sweep[0.001])
    assert _trained_alike(third, uninterrupted_sweep[0.003])
    summary = json.loads((diverged / "summary.json").read_text())
    assert summary["diverged_in_epoch"] == 1 and summary["epochs_run"] == 0
    assert re.match(
        r"training diverged in epoch 1: training loss (nan|inf)", summary["stop_reason"]
    )
    assert "best_validation_accuracy" not in summary and not list(diverged.glob("*.pt"))
    run_line, last_line = swept.stderr.splitlines()
    assert (
        run_line
        == f"error: {summary['stop_reason']}; nothing from this epoch was saved. Try a lower --lr."
    )
    assert last_line.startswith(
        f"error: 1 of the sweep's 3 runs diverged: {diverged.name} (in epoch 1); "
    )
    rows = table_rows(swept.stdout)
    assert [row["run"] for row in rows] == [first.name, diverged.name, third.name]
    assert [row["epochs"] for row in rows] == ["2", "0", "2"]
    assert [row["ended"] for row in rows] == ["completed", "diverged in epoch 1", "completed"]
    before = {run: _files_as_they_are(run) for run in (first, diverged, third)}

    resumed = _sweep(runs_dir, "--resume", grid=DIVERGING_GRID)

    assert resumed.exit_code == 1, resumed.output
    assert sorted(runs_dir.iterdir()) == sorted([first, diverged, third])
    assert {run: _files_as_they_are(run) for run in before} == before  # nothing trained again
    kept = f"Kept run {diverged.name}: {summary['stop_reason']}; not trained again"
    assert kept in resumed.stdout.splitlines()
    assert resumed.stderr.splitlines() == [last_line]


class _NotANumberFromEpoch(TrainingObserver):
    """From the start of `epoch`, every loss the training computes is NaN."""

    def __init__(self, epoch: int, monkeypatch) -> None:
        self.epoch, self.monkeypatch = epoch, monkeypatch

    def epoch_started(self, epoch, *_arguments) -> None:
        if epoch == self.epoch:
            real_cross_entropy = train_module.F.cross_entropy

            def not_a_number(*arguments, **keywords):
                return real_cross_entropy(*arguments, **keywords) * float("nan")

            self.monkeypatch.setattr(train_module.F, "cross_entropy", not_a_number)


@pytest.mark.usefixtures("synthetic_data")
@pytest.mark.parametrize(
    ("summary", "ended"),
    [
        ({"stop_reason": "completed all 5 epochs", "epochs_run": 5}, "completed"),
        ({"stop_reason": "early stopping after epoch 3: ...", "epochs_run": 3}, "stopped early"),
        (
            {"stop_reason": "training diverged in epoch 2: ...", "diverged_in_epoch": 2},
            "diverged in epoch 2",
        ),
        ({"test_accuracy": 0.99}, None),  # evaluated, but training wrote no summary: killed
        ({}, None),
    ],
)
def test_the_runs_table_says_how_each_run_ended(summary, ended):
    assert how_it_ended(summary) == ended


def test_a_lock_is_seen_held_only_while_a_process_holds_it(tmp_path):
    lock = tmp_path / TRAINING_LOCK_NAME
    assert not lock_is_held(lock)  # no such file
    with holding_lock(lock):
        assert lock_is_held(lock)
        assert not lock_is_held(tmp_path)  # another file
        with pytest.raises(LockHeld), holding_lock(lock):  # what a training that starts meets
            pass
    assert lock.is_file() and not lock_is_held(lock)


def test_the_runs_table_says_training_for_a_run_whose_folder_is_held(tmp_path):
    own = _run_folder(tmp_path, "own", 0.001)
    (own / "summary.json").unlink()  # it has not ended
    shared = _run_folder(tmp_path, "shared", 0.002)
    (shared / "summary.json").unlink()
    config = yaml.safe_load((shared / "config.yaml").read_text())
    config["output_dir"] = str(tmp_path / "staging")  # its checkpoints go elsewhere
    (shared / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def ended():
        _, rows = _runs_json(tmp_path)
        return {row["run"]: row["ended"] for row in rows}

    assert ended() == {own.name: None, shared.name: None}
    with holding_lock(own / TRAINING_LOCK_NAME), holding_lock(shared / TRAINING_LOCK_NAME):
        # The shared folder's lock does not say which of its runs is training.
        assert ended() == {own.name: "training", shared.name: None}
    assert ended() == {own.name: None, shared.name: None}  # killed, or ended without a word


def test_a_run_that_diverges_fails_in_one_line_is_recorded_and_resumes_past_it(
    mnist_dir, tmp_path, monkeypatch
):
    real_train, real_cross_entropy = train_module.train, train_module.F.cross_entropy

    def train_diverging(config, observers, **keywords):
        return real_train(config, [*observers, _NotANumberFromEpoch(2, monkeypatch)], **keywords)

    monkeypatch.setattr(train_module, "train", train_diverging)
    arguments = ["--epochs", "2", "--schedule", "none", "--quiet"]
    failed = runner.invoke(app, [*_small_run(mnist_dir, tmp_path / "runs"), *arguments])

    assert failed.exit_code == 1, failed.output
    (line,) = failed.stderr.splitlines()
    assert line.startswith("error: training diverged in epoch 2: training loss nan")
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = read_run(run_dir)
    assert record.summary["diverged_in_epoch"] == 2
    assert record.summary["epochs_run"] == 1 and record.summary["best_epoch"] == 1
    assert [row["epochs"] for row in comparison_rows([record])] == [1]

    monkeypatch.setattr(train_module, "train", real_train)
    monkeypatch.setattr(train_module.F, "cross_entropy", real_cross_entropy)
    resumed = _resume(run_dir / "checkpoint_epoch_1.pt")

    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "diverged_in_epoch" not in summary
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "completed all 2 epochs"


def _never_trains(monkeypatch):
    def trained(*_arguments, **_keywords):
        raise AssertionError("a sweep that is refused trains nothing")

    monkeypatch.setattr(train_module, "train", trained)


def _a_sweeps_run(runs_dir, lr, started="20260101-000000", **changes):
    """A run folder as `_sweep --grid lr=...` starts it: its config, nothing trained yet."""
    config = make_config(
        {
            "epochs": 2,
            "lr": lr,
            "data.max_train_images": 128,
            "data.validation_size": 100,
            "device": "cpu",
            "data.data_dir": str(runs_dir.parent),
            "runs_dir": str(runs_dir),
            "name": f"run-lr={lr}",
            **changes,
        }
    )
    run_dir = runs_dir / f"{started}-{config.name}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return run_dir


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"lr: [0.1\n", "config.yaml is not valid YAML"),
        (b"lr: 2026-01-01\n", "config.yaml: 'lr' holds a date, not a setting"),
    ],
)
def test_a_damaged_config_of_a_sweeps_run_is_named_on_one_line_before_any_training(
    tmp_path, monkeypatch, content, message
):
    _never_trains(monkeypatch)
    runs_dir = tmp_path / "runs"
    damaged = _a_sweeps_run(runs_dir, 0.002)
    (damaged / "config.yaml").write_bytes(content)

    result = _sweep(runs_dir, "--resume")

    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and str(damaged / "config.yaml") in line and message in line
    assert f"cannot tell whether run {damaged.name} is the sweep's run-lr=0.002" in line
    assert result.stdout == "" and list(runs_dir.iterdir()) == [damaged]


@pytest.mark.parametrize(
    ("damaged_file", "content", "message"),
    [
        (None, b"", ""),
        (
            "metrics.csv",
            b"epoch,train_loss\n1,0.5\n",
            "metrics.csv has no train_accuracy, validation_loss, validation_accuracy column; "
            "run {run} has finished the sweep's run-lr=0.001",
        ),
        # Without a summary saying so, the run has not finished: it would be resumed, and the
        # resumption adds to the summary.
        ("summary.json", b'{"best_epoch": 2,', "error: cannot resume into run {run}: "),
    ],
)
def test_a_finished_sweep_moved_elsewhere_is_kept_whole_unless_a_record_is_damaged(
    tmp_path, monkeypatch, uninterrupted_sweep, damaged_file, content, message
):
    _never_trains(monkeypatch)
    # Another runs folder, and another data folder: the same sweep, which matches its runs.
    runs_dir = tmp_path / "moved" / "runs"
    shutil.copytree(uninterrupted_sweep[0.001].parent, runs_dir)
    runs = sorted(runs_dir.iterdir())
    if damaged_file:
        (runs[0] / damaged_file).write_bytes(content)
    before = {run: _files_as_they_are(run) for run in runs}

    result = _sweep(runs_dir, "--resume")

    assert {run: _files_as_they_are(run) for run in runs} == before
    if damaged_file:
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and str(runs[0] / damaged_file) in line
        assert message.format(run=runs[0].name) in line
        assert result.stdout == ""
        return
    assert result.exit_code == 0, result.output
    kept = [line for line in result.stdout.splitlines() if line.startswith("Kept run ")]
    assert kept == [
        f"Kept run {run.name}: completed all 2 epochs; not trained again" for run in runs
    ]
    assert [row["run"] for row in table_rows(result.stdout)] == [run.name for run in runs]


def test_a_sweeps_run_whose_checkpoints_are_all_damaged_is_refused_as_resume_auto_does(
    tmp_path, monkeypatch
):
    _never_trains(monkeypatch)
    runs_dir = tmp_path / "runs"
    damaged = _a_sweeps_run(runs_dir, 0.002)
    (damaged / "checkpoint_epoch_1.pt").write_bytes(b"not a checkpoint")

    result = _sweep(runs_dir, "--resume")

    assert result.exit_code == 1, result.output
    first, *details = result.stderr.splitlines()
    assert first == "error: no run holds a valid checkpoint to resume from:"
    assert details and all(line.startswith("  ") for line in details)
    assert f"skipped run {damaged.name}" in details[0]
    assert result.stdout == "" and list(runs_dir.iterdir()) == [damaged]


def test_a_sweeps_runs_without_checkpoints_are_named_and_it_trains_from_scratch(
    tmp_path, monkeypatch
):
    runs_dir = tmp_path / "runs"
    older = _a_sweeps_run(runs_dir, 0.002, "20260101-000000")
    newer = _a_sweeps_run(runs_dir, 0.002, "20260102-000000")
    other = _a_sweeps_run(runs_dir, 0.002, "20260103-000000", epochs=3)  # another sweep's
    config = make_config(yaml.safe_load((older / "config.yaml").read_text()))

    earlier = earlier_sweep_run(config)

    assert earlier.matching == (newer, older) and other not in earlier.matching
    assert earlier.checkpoint is None and earlier.finished is None
    assert earlier.skipped == tuple(
        f"skipped run {run.name}: it holds no checkpoint" for run in (newer, older)
    )
    calls = []

    def interrupted_at_once(*_arguments, **keywords):
        calls.append(keywords["resume_from"])
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_at_once)
    result = _sweep(runs_dir, "--resume", grid="lr=0.002")
    assert result.exit_code == 130 and calls == [None]  # a fresh start
    assert result.stdout.splitlines()[-3:] == [
        f"skipped run {newer.name}: it holds no checkpoint",
        f"skipped run {older.name}: it holds no checkpoint",
        "No checkpoint of these settings to resume: training it from scratch",
    ]


# Settings a run's saved config may hold, beside the combination's own, and whether that run
# is still the combination's: another spelling of the runs or data folder is the same run.
SAVED_SETTINGS = [
    ({}, True),
    ({"runs_dir": "RUNS/."}, True),
    ({"data.data_dir": "elsewhere/data"}, True),
    ({"lr": 0.003}, False),
    ({"epochs": 3}, False),
    ({"device": "cuda"}, False),
    ({"seed": 2}, False),
    ({"name": "run-lr=0.002-2"}, False),  # a folder name the combination's pattern matches
]


@settings(max_examples=40, deadline=None)
@given(
    saved=st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from(range(len(SAVED_SETTINGS)))), max_size=6
    )
)
def test_a_combination_is_matched_to_the_runs_saved_with_its_settings_newest_first(saved):
    with tempfile.TemporaryDirectory() as folder:
        runs_dir = Path(folder) / "runs"
        combination = make_config({"lr": 0.002, "name": "run-lr=0.002", "runs_dir": str(runs_dir)})
        expected = []
        for day, which in saved:
            changes, is_the_combinations = SAVED_SETTINGS[which]
            changes = {
                key: value.replace("RUNS", str(runs_dir)) if key == "runs_dir" else value
                for key, value in changes.items()
            }
            config = make_config({**flatten(combination.to_dict()), **changes})
            # As create_run_dir names it: a run started in the same second gets a suffix.
            run_dir = runs_dir / f"2026010{day}-000000-{config.name}"
            for repeat in itertools.count(2):
                if not run_dir.exists():
                    break
                run_dir = runs_dir / f"2026010{day}-000000-{config.name}-{repeat}"
            run_dir.mkdir(parents=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
            if is_the_combinations:
                expected.append(run_dir)
        assert runs_with_config(combination) == sorted(expected, reverse=True)


def test_the_continue_command_gives_the_sweep_every_option_it_was_given(tmp_path, monkeypatch):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("epochs: 1\n")
    arguments = ["--config", str(config_file), "--grid", "lr=0.001,0.002", "--grid"]
    arguments += ["batch_size=32,64", "--set", "seed=3", "--set", f"data.data_dir={tmp_path}"]
    arguments += ["--runs-dir", str(tmp_path / "runs"), "--dataset", "fashion-mnist", "--verbose"]
    sweep = typer.main.get_command(app).commands["sweep"]
    # Every option of sweep is given above: one the command would leave out shows below.
    assert {param.name for param in sweep.params} - {"resume"} == {
        "config_file",
        "grid",
        "assignments",
        "runs_dir",
        "dataset",
        "quiet",
    }

    def interrupted_at_once(*_arguments, **_keywords):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_at_once)
    result = runner.invoke(app, ["sweep", *arguments])
    assert result.exit_code == 130, result.output
    command = shlex.split(result.stderr.splitlines()[-1].partition("continue the sweep with ")[2])
    assert command[:2] == ["mnist", "sweep"]
    given = sweep.make_context("sweep", list(arguments)).params
    assert sweep.make_context("sweep", command[2:]).params == {**given, "resume": True}
