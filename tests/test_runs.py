"""Run directories, TensorBoard logs, early stopping, `mnist runs` and `mnist sweep`, for real."""

import csv
import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.cli import app
from mnist_classifier.config import config_from_dict
from mnist_classifier.datasets import MNIST
from mnist_classifier.figures import is_our_figure
from mnist_classifier.runs import list_runs, record_test_accuracy, run_labels

runner = CliRunner()


def _train(mnist_dir, runs_dir, *arguments):
    result = runner.invoke(
        app,
        [
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
            *arguments,
        ],
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow  # the real files: the run records their digests
def test_a_run_writes_every_artifact(mnist_dir, tmp_path):
    _train(
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
    records = list_runs(tmp_path)
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
    ],
)
def test_a_bad_run_filter_is_a_usage_error(tmp_path, filters, message):
    result = runner.invoke(app, ["runs", *filters, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


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


def test_sweep_rejects_a_bad_grid_before_training(tmp_path):
    result = runner.invoke(app, ["sweep", "--grid", "lr", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "KEY=V1,V2" in result.output
    result = runner.invoke(
        app, ["sweep", "--grid", "schedule.name=step,linear", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "schedule.name must be one of" in result.output
    assert not any(tmp_path.iterdir())


def test_test_accuracy_reaches_the_run_that_wrote_a_checkpoint_kept_elsewhere(tmp_path):
    run_dir = tmp_path / "runs" / "20260101-000000-run"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"best_epoch": 2}')
    staged = tmp_path / "models" / "staging" / "mnist" / "best_model.pt"
    assert record_test_accuracy(staged, 0.99, str(run_dir)) == run_dir / "summary.json"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == {"best_epoch": 2, "test_accuracy": 0.99, "test_checkpoint": str(staged)}
    assert record_test_accuracy(staged, 0.99, "") is None  # no run to tell
