import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_payload
from synthetic_data import synthetic_train_data
from typer.testing import CliRunner

from mnist_classifier import data as data_module
from mnist_classifier.checkpoint import (
    SCHEMA_VERSION,
    TRAINING_LOCK_NAME,
    CheckpointDirInUse,
    holding_checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from mnist_classifier.cli import app
from mnist_classifier.config import make_config
from mnist_classifier.datasets import RAW_FILE_NAMES
from mnist_classifier.train import train


def _small_config(mnist_dir, output_dir, **overrides):
    values = {
        "epochs": 2,
        "data.max_train_images": 1024,
        "data.validation_size": 500,
        "data.data_dir": str(mnist_dir),
        "output_dir": str(output_dir),
        "device": "cpu",
    }
    # Keyword names use "__" for the config's dots: data__max_train_images=512.
    return make_config({**values, **{key.replace("__", "."): v for key, v in overrides.items()}})


def _train_synthetic(config):
    return train(config, data=synthetic_train_data(config))


@pytest.mark.slow  # reads the real MNIST files
def test_writes_the_labs_checkpoints_with_the_labs_keys(mnist_dir, tmp_path, monkeypatch):
    hashed = []
    real_sha256_of = data_module.sha256_of

    def counting_sha256_of(path):
        hashed.append(path)
        return real_sha256_of(path)

    monkeypatch.setattr(data_module, "sha256_of", counting_sha256_of)
    result = train(_small_config(mnist_dir, tmp_path))

    # Each of the four files is hashed once per run, and the run records their pinned digests.
    assert sorted(path.name for path in hashed) == sorted(RAW_FILE_NAMES)

    names = sorted(path.name for path in tmp_path.glob("*.pt"))
    assert names == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"]
    assert all((tmp_path / f"{name}.sha256").is_file() for name in names)
    raw = torch.load(tmp_path / "checkpoint_epoch_2.pt", weights_only=True)
    for key in ("model_state_dict", "optimizer_state_dict", "epoch", "loss", "accuracy"):
        assert key in raw
    assert raw["epoch"] == 2 and raw["schema_version"] == SCHEMA_VERSION
    assert raw["config"] == dataclasses.asdict(result.config)
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in raw["model_state_dict"])
    assert raw["accuracy"] == pytest.approx(100 * result.epochs[1].validation_accuracy)

    best = load_checkpoint(tmp_path / "best_model.pt")
    assert best.epoch == result.best.epoch
    assert best.validation_accuracy == pytest.approx(result.best.validation_accuracy)  # a fraction


def test_learns_and_validation_accuracy_is_measured_on_held_out_images(tmp_path):
    result = _train_synthetic(
        _small_config(tmp_path / "data", tmp_path, epochs=3, data__max_train_images=1024)
    )
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.best.validation_accuracy > 0.85


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    def final_weights(seed, folder):
        _train_synthetic(_small_config(tmp_path / "data", tmp_path / folder, epochs=1, seed=seed))
        return torch.load(tmp_path / folder / "checkpoint_epoch_1.pt", weights_only=True)[
            "model_state_dict"
        ]

    first, again, other = final_weights(7, "a"), final_weights(7, "b"), final_weights(8, "c")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_train_and_record_themselves(tmp_path, precision):
    config = _small_config(
        tmp_path / "data",
        tmp_path,
        epochs=3,
        data__max_train_images=512,
        precision=precision,
        batch_size=64,
    )
    result = _train_synthetic(config)
    losses = [epoch.train_loss for epoch in result.epochs]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.precision == precision
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["precision"] == precision


def test_one_cycle_schedule_is_stepped_once_per_optimizer_step(tmp_path):
    config = _small_config(
        tmp_path / "data",
        tmp_path,
        epochs=2,
        data__max_train_images=640,
        batch_size=64,
        schedule__name="onecycle",
        lr=0.01,
    )
    _train_synthetic(config)
    saved = torch.load(tmp_path / "checkpoint_epoch_2.pt", weights_only=True)
    final_lr = saved["optimizer_state_dict"]["param_groups"][0]["lr"]
    reference_optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        reference_optimizer, max_lr=0.01, total_steps=20
    )
    for _ in range(20):  # 640 images / 64 per batch * 2 epochs, stepped as the loop steps
        reference_optimizer.step()
        reference.step()
    assert final_lr == pytest.approx(reference_optimizer.param_groups[0]["lr"], rel=1e-6, abs=1e-12)


# --- One training per checkpoint folder, and never over an earlier one's checkpoints ---------


def _mnist_train(tmp_path, output_dir, *arguments):
    """`mnist train` on tiny synthetic data (the synthetic_data fixture), into `output_dir`."""
    settings = ["--max-train-images", "128", "--validation-size", "100", "--device", "cpu"]
    folders = ["--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    command = ["train", *settings, *folders, "--output-dir", str(output_dir), "--quiet"]
    return CliRunner().invoke(app, [*command, *arguments])


def _files(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.usefixtures("synthetic_data")
def test_training_into_a_new_nested_folder_makes_it_and_saves_there(tmp_path):
    output_dir = tmp_path / "new" / "nested"  # the check before training leaves it unmade
    result = _mnist_train(tmp_path, output_dir, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert (output_dir / "best_model.pt").is_file()


@pytest.mark.usefixtures("synthetic_data")
def test_a_second_training_into_a_held_folder_is_refused_and_a_killed_holder_frees_it(tmp_path):
    output_dir = tmp_path / "out"
    assert _mnist_train(tmp_path, output_dir, "--epochs", "1").exit_code == 0
    before = _files(output_dir)
    # Another process, training into the same folder: it holds the folder's lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mnist_classifier.checkpoint import holding_checkpoint_dir\n"
            f"with holding_checkpoint_dir({str(output_dir)!r}):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        refused = _mnist_train(tmp_path, output_dir, "--epochs", "2", "--resume", "auto")
        assert refused.exit_code == 1
        line = _error_line(refused)
        assert f"another training is writing its checkpoints into {output_dir}" in line
        assert _files(output_dir) == before  # nothing of the refused run was written
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, and the kernel drops the lock all the same
        holder.wait()
    resumed = _mnist_train(tmp_path, output_dir, "--epochs", "2", "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    assert (output_dir / "checkpoint_epoch_2.pt").is_file()


def test_train_holds_its_checkpoint_folder_while_it_runs(tmp_path):
    config = _small_config(tmp_path / "data", tmp_path / "out", epochs=1)
    with (
        holding_checkpoint_dir(tmp_path / "out"),
        pytest.raises(CheckpointDirInUse, match="another training"),
    ):
        _train_synthetic(config)
    assert not list((tmp_path / "out").glob("*.pt"))
    _train_synthetic(config)  # released: the folder is free again
    assert (tmp_path / "out" / "best_model.pt").is_file()


@pytest.mark.usefixtures("synthetic_data")
def test_a_new_training_over_an_earlier_ones_checkpoints_is_refused_unless_forced(tmp_path):
    output_dir = tmp_path / "out"
    assert _mnist_train(tmp_path, output_dir, "--epochs", "2").exit_code == 0
    earlier = _files(output_dir)

    refused = _mnist_train(tmp_path, output_dir, "--epochs", "1", "--seed", "2")
    assert refused.exit_code == 2
    line = _error_line(refused)
    assert f"{output_dir} already holds an earlier training's checkpoints" in line
    assert "--resume auto" in line and "--force" in line
    assert _files(output_dir) == earlier  # byte for byte
    assert len(list((tmp_path / "runs").iterdir())) == 1  # no run folder for the refused start

    forced = _mnist_train(tmp_path, output_dir, "--epochs", "1", "--seed", "2", "--force")
    assert forced.exit_code == 0, forced.output
    assert "Replacing the earlier training's checkpoints" in forced.stdout
    # The earlier run's epoch 2 is gone, so --resume auto cannot continue it by mistake.
    assert sorted(path.name for path in output_dir.glob("*.pt")) == [
        "best_model.pt",
        "checkpoint_epoch_1.pt",
    ]
    best = load_checkpoint(output_dir / "best_model.pt")
    assert best.config.seed == 2 and len(best.history) == 1


@pytest.mark.usefixtures("synthetic_data")
def test_the_labs_staging_folder_takes_each_new_training(tmp_path, monkeypatch):
    """python train_mnist.py twice: the second replaces the first, as the lab's script did."""
    monkeypatch.chdir(tmp_path)
    staging = Path("models/staging/mnist")
    assert _mnist_train(tmp_path, "./models/staging/mnist", "--epochs", "2").exit_code == 0
    again = _mnist_train(tmp_path, staging, "--epochs", "1", "--seed", "3")
    assert again.exit_code == 0, again.output
    assert sorted(path.name for path in staging.glob("*.pt")) == [
        "best_model.pt",
        "checkpoint_epoch_1.pt",
    ]
    assert load_checkpoint(staging / "best_model.pt").config.seed == 3


@pytest.mark.usefixtures("synthetic_data")
def test_resume_auto_over_a_lone_first_best_model_starts_afresh(tmp_path):
    """A run killed between saving its first best_model.pt and checkpoint_epoch_1.pt left
    nothing to resume: that best model is replaced."""
    output_dir = tmp_path / "out"
    save_checkpoint(output_dir / "best_model.pt", checkpoint_payload(epoch=1))
    result = _mnist_train(tmp_path, output_dir, "--epochs", "1", "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(output_dir / "best_model.pt").history is not None


@pytest.mark.parametrize("kind", ["a later epoch's best model", "a file of the user's"])
@pytest.mark.usefixtures("synthetic_data")
def test_resume_auto_keeps_a_lone_best_model_no_first_save_left(tmp_path, kind):
    """A best_model.pt of epoch 3 with no epochs beside it (copied there, say), or a file that
    is no checkpoint at all, is not what a killed first save leaves: it is kept."""
    output_dir = tmp_path / "out"
    if kind == "a file of the user's":
        output_dir.mkdir()
        (output_dir / "best_model.pt").write_text("precious")
    else:
        save_checkpoint(output_dir / "best_model.pt", checkpoint_payload(epoch=3))
    before = _files(output_dir)
    result = _mnist_train(tmp_path, output_dir, "--epochs", "1", "--resume", "auto")
    assert result.exit_code == 2
    assert "already holds an earlier training's checkpoints (best_model.pt)" in _error_line(result)
    assert _files(output_dir) == {**before, TRAINING_LOCK_NAME: b""}  # the lock: kept, empty


@pytest.mark.usefixtures("synthetic_data")
def test_a_checkpoint_resumed_from_elsewhere_never_overwrites_another_training(tmp_path):
    """A model promoted out of a folder still names that folder; by the time it is resumed,
    another training may hold it. Continuing is refused there, and goes where it is told."""
    trained_in = tmp_path / "staging"
    assert _mnist_train(tmp_path, trained_in, "--epochs", "1").exit_code == 0
    elsewhere = tmp_path / "production"
    elsewhere.mkdir()
    for name in ("checkpoint_epoch_1.pt", "checkpoint_epoch_1.pt.sha256"):
        (elsewhere / name).write_bytes((trained_in / name).read_bytes())
    retrained = _mnist_train(tmp_path, trained_in, "--epochs", "1", "--seed", "7", "--force")
    assert retrained.exit_code == 0, retrained.output
    before = _files(trained_in)

    arguments = ["train", "--resume", str(elsewhere / "checkpoint_epoch_1.pt"), "--epochs", "2"]
    folders = ["--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    refused = CliRunner().invoke(app, [*arguments, *folders, "--quiet"])
    assert refused.exit_code == 2
    assert _error_line(refused) == (
        f"error: continuing {elsewhere / 'checkpoint_epoch_1.pt'} would write into {trained_in}, "
        "which holds another training's checkpoints (best_model.pt, checkpoint_epoch_1.pt); "
        "give the continued run another --output-dir, or replace them with --force"
    )
    assert _files(trained_in) == before

    continued_in = tmp_path / "continued"
    moved = CliRunner().invoke(
        app, [*arguments, *folders, "--quiet", "--output-dir", str(continued_in)]
    )
    assert moved.exit_code == 0, moved.output
    assert load_checkpoint(continued_in / "best_model.pt").epoch in (1, 2)
    assert (continued_in / "checkpoint_epoch_2.pt").is_file() and _files(trained_in) == before
