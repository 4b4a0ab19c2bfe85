from pathlib import Path

import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner

from mnist_classifier.cli import app
from mnist_classifier.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_config,
    make_config,
    parse_assignment,
)

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


def test_assignments_are_read_as_yaml_scalars():
    assert parse_assignment("lr=0.01") == ("lr", 0.01)
    assert parse_assignment("schedule.name=cosine") == ("schedule.name", "cosine")
    assert parse_assignment("epochs=3") == ("epochs", 3)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("epochs")


def test_config_show_only_shows_even_a_config_this_machine_could_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folders ./runs, ./models and ./data are here
    shown = CliRunner().invoke(
        app, ["config", "show", "--set", "device=cuda", "--set", "runs_dir=deep/runs"]
    )

    assert shown.exit_code == 0, shown.output
    assert "device: cuda" in shown.output and "runs_dir: deep/runs" in shown.output
    assert list(tmp_path.iterdir()) == []  # no folder made, no device or data checked


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
