import pytest

from mnist_classifier.config import ConfigError, TrainConfig, make_config


def test_defaults_are_the_labs_settings():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr) == (5, 64, 1e-3)
    assert config.output_dir == "./models/staging/mnist"
    assert config.data_dir == "./data"
    assert config.validation_size == 5000


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().epochs = 3


def test_overrides_apply_and_none_means_unset():
    config = make_config({"epochs": 2, "lr": None})
    assert config.epochs == 2 and config.lr == 1e-3


def test_an_int_learning_rate_is_accepted_as_float():
    assert make_config({"lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"epochs": -3}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": 0.0}, "lr must be greater than 0"),
        ({"lr": -0.1}, "lr must be greater than 0"),
        ({"device": "tpu"}, "device must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"validation_size": 60_000}, "validation_size must be between"),
        ({"epochs": "5"}, "epochs must be of type int"),
        ({"epochs": True}, "epochs must be of type int"),
        ({"epoch": 5}, "unknown config key 'epoch'"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides)
