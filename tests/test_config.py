from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnist_classifier.batching import Ranks, shard
from mnist_classifier.cli import app
from mnist_classifier.config import (
    ConfigError,
    TrainConfig,
    check_batch_size,
    config_from_dict,
    load_config,
    make_config,
    parse_assignment,
    training_images,
)
from mnist_classifier.train import split_for_training

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def test_defaults_are_the_labs_settings():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr) == (5, 64, 1e-3)
    assert config.schedule.name == "none" and config.label_smoothing == 0.0
    assert config.data.data_dir == "./data" and config.data.validation_size == 5000


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().epochs = 3
    with pytest.raises(AttributeError):
        TrainConfig().schedule.name = "step"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config_from_dict(config.to_dict()) == config  # and survives a checkpoint round trip


def test_seed_config_is_exactly_the_labs_settings():
    seed = load_config(REPO_ROOT / "configs" / "seed.yaml")
    assert (seed.epochs, seed.batch_size, seed.lr, seed.label_smoothing) == (5, 64, 0.001, 0.0)
    assert seed.schedule.name == "none"


def test_precedence_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 3\nlr: 0.01\nschedule:\n  name: cosine\n")
    config = load_config(path, {"lr": 0.02, "schedule.warmup_epochs": 1})
    assert config.epochs == 3  # from the file
    assert config.lr == 0.02  # the flag beats the file
    assert config.schedule.name == "cosine" and config.schedule.warmup_epochs == 1.0
    assert config.batch_size == 64  # untouched default


def test_none_means_not_given():
    assert make_config({"epochs": None}).epochs == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": 0.0}, "lr must be greater than 0"),
        ({"device": "tpu"}, "device must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"data.validation_size": 60_000}, "data.validation_size must be between"),
        ({"epochs": "5"}, "epochs must be of type int"),
        ({"epochs": True}, "epochs must be of type int"),
        ({"schedule.name": "linear"}, "schedule.name must be one of none, step, cosine, onecycle"),
        ({"schedule.gamma": "half"}, "schedule.gamma must be of type float"),
        ({"schedule.gamma": 1.5}, r"schedule.gamma must be in \(0, 1\]"),
        ({"early_stopping.patience": -1}, "early_stopping.patience must be 0"),
        ({"early_stopping.metric": "f1"}, "early_stopping.metric must be one of"),
        ({"epoch": 5}, "unknown config key 'epoch'"),
        ({"schedule.nme": "step"}, "unknown config key 'schedule.nme'"),
        ({"schedule": 5}, "schedule must be a mapping"),
        ({"epochs.value": 5}, "epochs must be of type int"),
        ({"name": "a/b"}, "name must be a plain folder name"),
    ],
)
def test_bad_values_are_rejected_with_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides)


@pytest.mark.parametrize(
    ("content", "message"),
    [("epochs: [5\n", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_bad_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_is_rejected():
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(Path("/nonexistent/config.yaml"))


@pytest.mark.parametrize(
    ("overrides", "processes", "most"),
    [
        ({}, 1, 55_000),  # 60,000 less the 5,000 held out
        ({"data.validation_size": 10_000}, 1, 50_000),
        ({"data.max_train_images": 500}, 1, 500),
        ({"data.max_train_images": 70_000}, 1, 55_000),  # more than there are: all of them
        ({"data.dataset": "fashion-mnist"}, 1, 55_000),
        ({}, 2, 27_500),
        ({"data.max_train_images": 501}, 2, 251),  # a share is rounded up, as shard pads
    ],
)
def test_a_batch_up_to_the_training_images_is_accepted_and_one_more_is_refused(
    overrides, processes, most
):
    check_batch_size(make_config({**overrides, "batch_size": most}), processes)
    share = f" each of the {processes} processes trains on" if processes > 1 else ""
    expected = (
        f"batch_size {most + 1} is more than the {most} training images{share}; "
        f"choose at most {most} with --batch-size"
    )
    with pytest.raises(ConfigError) as refused:
        check_batch_size(make_config({**overrides, "batch_size": most + 1}), processes)
    assert str(refused.value) == expected


def test_a_checkpoints_config_with_a_batch_above_its_images_still_loads():
    # Training used to accept it (one short batch per epoch); such checkpoints must stay usable.
    saved = make_config({"data.max_train_images": 32}).to_dict()  # batch_size 64
    assert config_from_dict(saved).batch_size == 64


# The training file's positions, split by the loop's own code: the oracle for the count.
_POSITIONS = torch.arange(60_000)


@settings(max_examples=60, deadline=None)
@given(
    validation_size=st.integers(1, 59_999),
    max_train_images=st.one_of(st.just(0), st.integers(1, 70_000)),
    processes=st.integers(1, 64),
)
def test_training_images_is_what_the_loop_gives_each_process(
    validation_size, max_train_images, processes
):
    config = make_config(
        {"data.validation_size": validation_size, "data.max_train_images": max_train_images}
    )
    train_split = split_for_training(config, _POSITIONS, _POSITIONS, files=None).train_split
    shares = {
        len(shard(torch.arange(len(train_split)), Ranks(rank, processes)))
        for rank in range(processes)
    }
    assert shares == {training_images(config, processes)}


def test_assignments_are_read_as_yaml_scalars():
    assert parse_assignment("lr=0.01") == ("lr", 0.01)
    assert parse_assignment("schedule.name=cosine") == ("schedule.name", "cosine")
    assert parse_assignment("epochs=3") == ("epochs", 3)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("epochs")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--set", "lr=0.01", "--set", "lr=0.02"],
            "error: lr is given twice by --set; give it once",
        ),
        (
            ["--set", "lr=0.01", "--lr", "0.01"],
            "error: lr is given both by --set and by its own option; give it once",
        ),
        (
            ["--dataset", "mnist", "--set", "data.dataset=fashion-mnist"],
            "error: data.dataset is given both by --set and by its own option; give it once",
        ),
    ],
)
def test_a_setting_given_twice_on_the_command_line_is_refused(arguments, message, tmp_path):
    """Whichever value silently won, someone would train what they did not ask for."""
    result = CliRunner().invoke(app, ["train", *arguments, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert list(tmp_path.iterdir()) == []


def test_config_show_only_shows_even_a_config_this_machine_could_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folders ./runs, ./models and ./data are here
    shown = CliRunner().invoke(
        app, ["config", "show", "--set", "device=cuda", "--set", "runs_dir=deep/runs"]
    )

    assert shown.exit_code == 0, shown.output
    assert "device: cuda" in shown.output and "runs_dir: deep/runs" in shown.output
    assert list(tmp_path.iterdir()) == []  # no folder made, no device or data checked


@pytest.mark.parametrize(
    "settings",
    [
        ["batch_size=100000"],
        ["data.max_train_images=500", "batch_size=501"],
        ["data.validation_size=10000", "batch_size=50001"],
    ],
)
def test_config_show_refuses_a_batch_larger_than_the_training_images_as_train_does(
    tmp_path, monkeypatch, settings
):
    """config show printed such a config as if it could train, which train then refused."""
    monkeypatch.chdir(tmp_path)
    arguments = [part for setting in settings for part in ("--set", setting)]
    trained = CliRunner().invoke(app, ["train", *arguments])
    shown = CliRunner().invoke(app, ["config", "show", *arguments])
    assert trained.exit_code == 2 and trained.output.startswith("error: batch_size ")
    assert (shown.exit_code, shown.output) == (trained.exit_code, trained.output)
    assert list(tmp_path.iterdir()) == []


def test_config_show_prints_the_resolved_config_and_rejects_before_reading_data(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(
        app,
        [
            "config",
            "show",
            "--config",
            str(REPO_ROOT / "configs" / "fast.yaml"),
            "--set",
            "epochs=4",
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert "epochs: 4" in shown.output and "name: onecycle" in shown.output

    data_dir = tmp_path / "no-data-here"
    refused = runner.invoke(
        app,
        [
            "train",
            "--set",
            "schedule.name=linear",
            "--data-dir",
            str(data_dir),
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert refused.exit_code == 2
    assert "schedule.name must be one of" in refused.output
    assert not data_dir.exists() and not any(tmp_path.iterdir())
