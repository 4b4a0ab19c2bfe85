"""The staging -> production registry, and the safe loader on every path that reads a model."""

import json
import pickle
import shutil

import pytest
import torch
from conftest import CreatesAFile, checkpoint_payload, vouch_for
from PIL import Image
from trained_model import tiny_checkpoint
from typer.testing import CliRunner

from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.cli import app
from mnist_classifier.config import make_config
from mnist_classifier.resume import load_resume_checkpoint
from mnist_classifier.serve.loading import ServeError, load_checkpoint_model
from mnist_classifier.train import train

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def models_dir(mnist_dir, tmp_path_factory):
    """A registry whose staging holds the tiny trained model (about 90% test accuracy)."""
    root = tmp_path_factory.mktemp("models")
    staging = root / "staging" / "mnist"
    staging.mkdir(parents=True)
    source = tiny_checkpoint(mnist_dir)
    shutil.copy(source, staging / "best_model.pt")
    shutil.copy(f"{source}.sha256", staging / "best_model.pt.sha256")
    return root


def _promote(models_dir, mnist_dir, *arguments):
    return runner.invoke(
        app,
        ["promote", "--models-dir", str(models_dir), "--data-dir", str(mnist_dir), *arguments],
    )


def test_promotion_below_the_threshold_is_refused_and_copies_nothing(models_dir, mnist_dir):
    result = _promote(models_dir, mnist_dir, "--min-test-accuracy", "0.99")
    assert result.exit_code == 1
    assert "below the required 99.00%; nothing was promoted" in result.output
    assert not (models_dir / "production").exists()
    assert not (models_dir / "history.jsonl").exists()


def test_promotion_copies_verifies_writes_a_card_and_appends_history(models_dir, mnist_dir):
    for _ in range(2):
        result = _promote(models_dir, mnist_dir, "--min-test-accuracy", "0.5")
        assert result.exit_code == 0, result.output

    staged = models_dir / "staging" / "mnist" / "best_model.pt"
    promoted = models_dir / "production" / "mnist" / "best_model.pt"
    assert promoted.read_bytes() == staged.read_bytes()
    load_checkpoint(promoted)  # its digest came along
    card = json.loads((promoted.parent / "model_card.json").read_text())
    assert card["stage"] == "production" and card["promoted_from"] == "staging"
    assert 0.5 < card["metrics"]["test_accuracy"] < 1.0
    assert len(card["metrics"]["per_class_accuracy"]) == 10
    assert card["parent_checkpoint_sha256"] == card["checkpoint_sha256"]
    for key in ("config", "data_sha256", "git_commit", "promoted_utc"):
        assert key in card
    history = (models_dir / "history.jsonl").read_text().splitlines()
    assert len(history) == 2 and json.loads(history[-1])["to"] == "production"

    listed = runner.invoke(app, ["models", "--models-dir", str(models_dir)])
    assert listed.exit_code == 0 and "production" in listed.output and "staging" in listed.output

    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--stage",
            "production",
            "--models-dir",
            str(models_dir),
            "--data-dir",
            str(mnist_dir),
            "--output-dir",
            str(models_dir / "report"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert f"Overall Accuracy: {100 * card['metrics']['test_accuracy']:.2f}%" in evaluated.output


@pytest.mark.parametrize(
    "option",
    [
        *(["--to", stage] for stage in ("../elsewhere", "-x", "a b", "")),
        ["--name", ""],  # was quietly taken as the data set's name
        ["--name", "../x"],
    ],
)
def test_a_stage_or_model_name_cannot_leave_the_registry_or_pass_for_an_option(
    models_dir, mnist_dir, option
):
    before = sorted(models_dir.rglob("*"))
    result = _promote(models_dir, mnist_dir, *option)
    label = "stage" if option[0] == "--to" else "name"
    assert result.exit_code == 2
    assert f"{label} must be a plain name like" in result.output
    assert sorted(models_dir.rglob("*")) == before


@pytest.mark.parametrize("source", ["staging", "{models}/staging/mnist/best_model.pt"])
def test_promoting_a_model_onto_itself_is_refused(models_dir, mnist_dir, source):
    before = {path: path.read_bytes() for path in models_dir.rglob("*") if path.is_file()}
    source = source.format(models=models_dir)
    result = _promote(models_dir, mnist_dir, "--from", source, "--to", "staging")
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line.startswith("error: ") and "is already the staging model" in line
    assert {path: path.read_bytes() for path in models_dir.rglob("*") if path.is_file()} == before


def test_a_code_carrying_checkpoint_is_refused_on_every_path(mnist_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "models" / "staging" / "mnist" / "best_model.pt"
    evil.parent.mkdir(parents=True)
    payload = checkpoint_payload(rng_state=CreatesAFile(marker))
    torch.save(payload, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    vouch_for(evil)  # its digest is right: only the loader itself stands in the way
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 0).save(image)

    paths = {
        "evaluate": ["evaluate", "--checkpoint", str(evil), "--data-dir", str(mnist_dir)],
        "predict": ["predict", str(image), "--checkpoint", str(evil)],
        "export": [
            "export",
            "--checkpoint",
            str(evil),
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "m.onnx"),
        ],
        "promote": [
            "promote",
            "--models-dir",
            str(tmp_path / "models"),
            "--data-dir",
            str(mnist_dir),
        ],
    }
    for path_name, arguments in paths.items():
        result = runner.invoke(app, arguments)
        assert result.exit_code != 0, path_name
        assert "refused" in result.output and "Traceback" not in result.output, path_name
    with pytest.raises(ServeError, match="refused"):
        load_checkpoint_model(evil)
    config = make_config(
        {
            "data.data_dir": str(mnist_dir),
            "output_dir": str(tmp_path / "resume"),
            "data.max_train_images": 64,
            "device": "cpu",
        }
    )
    with pytest.raises(Exception, match="refused"):
        train(config, resume_from=load_resume_checkpoint(evil))
    assert not marker.exists()
