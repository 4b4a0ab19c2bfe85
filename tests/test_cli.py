"""The `mnist` command and the lab's scripts, driven as a user drives them."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, checkpoint_payload, table_rows
from images import encode
from PIL import Image
from typer.testing import CliRunner

import mnist_classifier.train
from mnist_classifier.checkpoint import save_checkpoint
from mnist_classifier.cli import app
from mnist_classifier.datasets import MNIST
from mnist_classifier.files import sha256_of
from mnist_classifier.registry import (
    MODEL_CARD_NAME,
    STALE_MODEL_CARD,
    checkpoint_to_read,
    list_models,
)
from mnist_classifier.reporting import terminal_safe

runner = CliRunner()


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("train", "evaluate", "data"):
        assert verb in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "epochs must be at least 1 (got 0)"),
        (["--epochs", "-1"], "epochs must be at least 1"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--lr", "0"], "lr must be greater than 0"),
        (["--lr", "-0.01"], "lr must be greater than 0"),
        (["--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
        (["--precision", "fp8"], "'fp8' is not one of"),
    ],
)
def test_bad_training_arguments_exit_2_with_one_line_before_any_work(arguments, message, tmp_path):
    output_dir = tmp_path / "models"
    result = runner.invoke(app, ["train", *arguments, "--output-dir", str(output_dir)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {result.output.strip()[7:]}"  # one line
    assert len(result.output.strip().splitlines()) == 1
    assert message in result.output
    assert not output_dir.exists()  # nothing was started


def test_unwritable_output_dir_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["train", "--output-dir", str(blocker / "models")])
    assert result.exit_code == 2
    assert "cannot be written" in result.output


def test_cuda_when_there_is_none_exits_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["train", "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.output


def test_type_errors_from_the_parser_exit_2():
    result = runner.invoke(app, ["train", "--epochs", "many"])
    assert result.exit_code == 2 and "Invalid value for '--epochs'" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["promote", "--min-test-accuracy", "97"], "Invalid value for '--min-test-accuracy'"),
        (["promote", "--min-test-accuracy", "nan"], "must be a number from 0 to 1 (got nan)"),
        (["serve", "--timeout", "inf"], "must be a number from 0.01 to 3600 (got inf)"),
        (["serve", "--timeout", "nan"], "must be a number from 0.01 to 3600 (got nan)"),
        (["export"], "Missing option '--output'"),
        (["predict"], "Missing argument"),
        (["train", "--epoch", "2"], "No such option: --epoch"),
        (["nosuch"], "No such command 'nosuch'"),
        (["config", "show", "--set"], "Option '--set' requires an argument"),
        # Path("") is the current folder: an empty path to write to would write there.
        (["export", "--output", ""], "Invalid value for '--output': an empty path"),
        (["runs", "--plot", ""], "Invalid value for '--plot': an empty path"),
        (["evaluate", "--output-dir", ""], "Invalid value for '--output-dir': an empty path"),
        # A folder option left empty (an unset variable) named the current folder.
        (["train", "--output-dir", ""], "Invalid value for '--output-dir': an empty path"),
        (["train", "--runs-dir", ""], "Invalid value for '--runs-dir': an empty path"),
        (["data", "--data-dir", ""], "Invalid value for '--data-dir': an empty path"),
        (["runs", "--runs-dir", ""], "Invalid value for '--runs-dir': an empty path"),
        (["models", "--models-dir", ""], "Invalid value for '--models-dir': an empty path"),
        # A grid of no images was drawn as two blank figures.
        (
            ["evaluate", "--grid-size", "0"],
            "'--grid-size': Input should be greater than or equal to 1",
        ),
        (
            ["evaluate", "--grid-size", "-1"],
            "'--grid-size': Input should be greater than or equal to 1",
        ),
    ],
)
def test_every_usage_error_is_one_error_line_with_exit_2(arguments, message):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Usage:" not in result.output and "Traceback" not in result.output


def test_h_is_help_everywhere():
    for command in ([], ["train"], ["config", "show"]):
        long, short = runner.invoke(app, [*command, "--help"]), runner.invoke(app, [*command, "-h"])
        assert long.exit_code == short.exit_code == 0
        assert short.output == long.output and "Usage:" in short.output


def test_help_lists_each_command_without_cutting_its_description():
    result = runner.invoke(app, ["--help"])
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands and "…" not in commands
    assert "best validation" in result.output  # the end of `runs`' first sentence


@pytest.mark.parametrize(
    "command",
    [["train"], ["runs"], ["sweep"], ["evaluate"], ["data"], ["predict"], ["export"], ["serve"]]
    + [["promote"], ["models"]],
)
def test_help_writes_every_folder_default_one_way(command):
    import re

    text = " ".join(runner.invoke(app, [*command, "--help"]).output.split())
    defaults = re.findall(r"\[default: ([^\]]*)\]", text)
    assert defaults
    for default in defaults:
        assert not default.startswith("("), default
        if default.split("/")[0].strip() in ("data", "models", "runs", "reports"):
            raise AssertionError(f"{default!r} should start with ./")
        if "/" in default:
            assert default.startswith("./"), default


def test_version_names_the_package_torch_and_torchvision():
    import torchvision

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("mnist-classifier ")
    assert f"torch {torch.__version__}" in result.output
    assert f"torchvision {torchvision.__version__}" in result.output


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "x.png"], ["serve"]])
def test_checkpoint_with_stage_is_refused(command, tmp_path):
    result = runner.invoke(
        app, [*command, "--checkpoint", str(tmp_path / "a.pt"), "--stage", "production"]
    )
    assert result.exit_code == 2
    assert result.output.strip() == "error: give --checkpoint or --stage, not both"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "m.onnx"], "--model is for --backend onnxruntime; use --checkpoint"),
        (
            ["--backend", "onnxruntime"],
            "--backend onnxruntime needs --model PATH.onnx (see mnist export)",
        ),
        (
            ["--backend", "onnxruntime", "--model", "m.onnx", "--stage", "staging"],
            "--backend onnxruntime runs --model PATH.onnx alone; drop --checkpoint and --stage",
        ),
        (
            ["--backend", "onnxruntime", "--model", "m.onnx", "--checkpoint", "X.pt"],
            "--backend onnxruntime runs --model PATH.onnx alone; drop --checkpoint and --stage",
        ),
    ],
)
def test_predict_refuses_contradictory_model_options_as_serve_does(
    arguments, message, tmp_path, monkeypatch
):
    """An option that would be ignored is refused before any model is loaded: the lab's
    staging model is there to be read, and no model file named exists."""
    monkeypatch.chdir(tmp_path)
    Path("models/staging/mnist").mkdir(parents=True)
    save_checkpoint(Path("models/staging/mnist/best_model.pt"), checkpoint_payload())
    Image.fromarray(np.zeros((28, 28), np.uint8)).save("x.png")
    predicted = runner.invoke(app, ["predict", *arguments, "x.png"])
    served = runner.invoke(app, ["serve", *arguments, "--port", "1"])
    for result in (predicted, served):
        assert result.exit_code == 2
        assert result.output.strip() == f"error: {message}"


@pytest.mark.parametrize(
    ("arguments", "how"),
    [
        (
            ["--stage", "production"],
            "python train_mnist.py trains one into staging, then mnist promote --to production",
        ),
        (
            ["--stage", "staging", "--dataset", "fashion-mnist"],
            "python train_mnist.py --dataset fashion-mnist trains one into staging",
        ),
    ],
)
def test_serving_an_empty_registry_says_how_to_fill_that_stage(arguments, how, tmp_path):
    """Serving production with no models said only to train one, which fills staging."""
    result = runner.invoke(app, ["serve", "--models-dir", str(tmp_path), *arguments])
    assert result.exit_code == 2
    dataset = arguments[-1] if "--dataset" in arguments else "mnist"
    assert result.output.strip().endswith(f"it holds no {dataset} models yet: {how}")


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--stage"],
        ["evaluate", "--stage"],
        ["predict", "x.png", "--stage"],
        ["promote", "--from"],
    ],
)
def test_a_missing_stage_names_the_stages_that_exist(command, tmp_path):
    for stage in ("staging", "canary"):
        (tmp_path / stage / "mnist").mkdir(parents=True)
        save_checkpoint(tmp_path / stage / "mnist" / "best_model.pt", checkpoint_payload())
    # Training keeps every epoch's checkpoint beside the best one: a stage is named once all
    # the same, and a folder holding only epoch checkpoints (no best_model.pt) is no stage.
    for epoch in (1, 2, 3):
        save_checkpoint(
            tmp_path / "staging" / "mnist" / f"checkpoint_epoch_{epoch}.pt", checkpoint_payload()
        )
    (tmp_path / "scratch" / "mnist").mkdir(parents=True)
    save_checkpoint(tmp_path / "scratch" / "mnist" / "checkpoint_epoch_1.pt", checkpoint_payload())
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, [*command, "nosuch", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: no stage 'nosuch' in {tmp_path} (no ")
    assert result.output.strip().endswith(
        "; the stages there are: canary, staging: name one of them, or first mnist promote "
        "--to nosuch"
    )
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before  # promote copied nothing, wrote no history


def test_a_missing_staging_stage_beside_others_says_to_train_one(tmp_path):
    (tmp_path / "production" / "mnist").mkdir(parents=True)
    save_checkpoint(tmp_path / "production" / "mnist" / "best_model.pt", checkpoint_payload())
    result = runner.invoke(app, ["serve", "--stage", "staging", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().endswith(
        "; the stages there are: production: name one of them, or first python train_mnist.py"
    )


def test_promote_from_a_checkpoint_path_reads_that_file(tmp_path):
    # A path, not a stage name: its absence is a missing checkpoint (exit 1), as for evaluate.
    candidate = tmp_path / "runs" / "a" / "best_model.pt"
    result = runner.invoke(
        app, ["promote", "--from", str(candidate), "--models-dir", str(tmp_path / "models")]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"error: checkpoint not found: {candidate}. Train a model")


def test_promote_from_a_symlink_loop_is_one_line_naming_it(tmp_path):
    """The check that the candidate is not already the stage's model resolved the path by hand,
    and a symlink loop ended promote with a traceback (RuntimeError, before Python 3.13)."""
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    models_dir, no_data = tmp_path / "models", tmp_path / "no-data"
    arguments = ["--models-dir", str(models_dir), "--data-dir", str(no_data)]
    result = runner.invoke(app, ["promote", "--from", str(loop), *arguments])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {loop} is a broken link or a symlink loop; point it at a checkpoint"
    ]
    assert not models_dir.exists() and not no_data.exists()


def test_evaluate_missing_checkpoint_says_train_first(tmp_path):
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1
    assert "Train a model first: python train_mnist.py" in result.output
    assert "Traceback" not in result.output


def test_evaluate_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, checkpoint_payload())
    path.write_bytes(path.read_bytes()[:1000])
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


@pytest.mark.slow
def test_data_reports_route_and_digests(mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    result = runner.invoke(app, ["data", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "found on disk" in result.output
    for digest in MNIST.raw_sha256.values():
        assert digest in result.output


@pytest.mark.slow
def test_data_refuses_an_altered_file_and_names_it(mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    labels = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[100] ^= 1
    labels.write_bytes(bytes(content))
    result = runner.invoke(app, ["data", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "t10k-labels-idx1-ubyte" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_train_then_evaluate_with_every_flag(mnist_dir, tmp_path):
    output_dir = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "train",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--lr",
            "0.002",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--data-dir",
            str(mnist_dir),
            "--output-dir",
            str(output_dir),
            "--validation-size",
            "500",
            "--max-train-images",
            "640",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Epoch 1 [0/640 (0%)]" in result.output
    assert "Total trainable parameters: 421,642" in result.output
    assert "Validation samples: 500" in result.output
    saved = torch.load(output_dir / "checkpoint_epoch_2.pt", weights_only=True)
    assert saved["config"]["batch_size"] == 32 and saved["config"]["lr"] == 0.002
    assert saved["config"]["seed"] == 3
    assert (output_dir / "best_model.pt").is_file()

    result = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(output_dir / "checkpoint_epoch_2.pt"),
            "--batch-size",
            "128",
            "--data-dir",
            str(mnist_dir),
            "--show-samples",
            "3",
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Test samples: 10000" in result.output
    assert "  - Epoch: 2" in result.output
    assert "Correct predictions: " in result.output and "/10000" in result.output
    assert result.output.count("  Digit ") == 10
    assert "Sample 3: " in result.output and "Sample 4: " not in result.output


def test_scripts_and_module_offer_the_same_flags_as_the_package():
    def help_text(*command):
        completed = subprocess.run(
            [sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    train_help = help_text("train_mnist.py")
    for flag in (
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--data-dir",
        "--output-dir",
    ):
        assert flag in train_help
    evaluate_help = help_text("test_mnist.py")
    for flag in ("--checkpoint", "--batch-size", "--data-dir", "--show-samples"):
        assert flag in evaluate_help
    # Unwrapped: the help wraps the default's text where the terminal width falls.
    default_checkpoint = "[default: ./models/staging/<dataset>/best_model.pt]"
    assert default_checkpoint in " ".join(evaluate_help.split())
    assert "train" in help_text("-m", "mnist_classifier")


def test_train_mnist_script_and_mnist_train_each_show_their_own_output_dir_default():
    """The script's --help shows its default alone, not also the package's written in the
    option's help text; `mnist train --help` keeps the package's."""
    import re

    def output_dir_defaults(help_text: str) -> list[str]:
        text = " ".join(help_text.split())  # unwrapped
        entry = text.split("--output-dir <path>")[1].split(" --")[0]
        return re.findall(r"\[default: ([^\]]*)\]", entry)

    script = subprocess.run(
        [sys.executable, "train_mnist.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert script.returncode == 0, script.stderr
    assert output_dir_defaults(script.stdout) == ["./models/staging/<dataset>"]
    package = runner.invoke(app, ["train", "--help"])
    assert output_dir_defaults(package.output) == ["the run directory"]


@pytest.mark.parametrize(
    ("arguments", "checkpoints_in"),
    [
        ([], "models/staging/mnist"),
        (["--dataset", "fashion-mnist"], "models/staging/fashion-mnist"),
        (["--set", "data.dataset=fashion-mnist"], "models/staging/fashion-mnist"),
        (["--dataset", "fashion-mnist", "--output-dir", "elsewhere"], "elsewhere"),
        # A folder named by --set or the config file wins over the script's default.
        (["--set", "output_dir=elsewhere"], "elsewhere"),
        (["--config", "mine.yaml"], "from-file"),
    ],
)
def test_train_mnist_script_writes_to_the_staging_folder_of_its_data_set(
    arguments, checkpoints_in, tmp_path, monkeypatch
):
    """train_mnist.py --dataset D writes where test_mnist.py --dataset D reads by default. The
    training itself is intercepted: only the config the script resolved is checked."""
    trained = []
    monkeypatch.setattr(
        mnist_classifier.train, "train", lambda config, *_, **__: trained.append(config)
    )
    monkeypatch.chdir(tmp_path)
    Path("mine.yaml").write_text("output_dir: from-file\n")
    monkeypatch.setattr(sys, "argv", ["train_mnist.py", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "train_mnist.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert [config.output_dir for config in trained] == [checkpoints_in]
    if checkpoints_in.startswith("models/"):
        dataset = trained[0].data.dataset
        evaluated_by_default = checkpoint_to_read(None, None, "models", dataset)
        assert evaluated_by_default.parent == Path(checkpoints_in)


def test_predict_names_its_argument_images_in_usage_and_errors():
    usage = runner.invoke(app, ["predict", "-h"]).output.splitlines()[0]
    assert usage.endswith("{IMAGES}...")
    missing = runner.invoke(app, ["predict"])
    assert missing.exit_code == 2 and "Missing argument 'IMAGES'" in missing.output


# File names a terminal would obey or Rich would read as markup -> how predict shows them.
ODD_FILE_NAMES = {
    "a\nb.png": "a\\nb.png",
    "tab\there.png": "tab\\there.png",
    "cr\rret.png": "cr\\rret.png",
    "esc\x1b[31mred.png": "esc\\x1b[31mred.png",
    "rtl\u202ex.png": "rtl\\u202ex.png",
    "[bold]loud.png": "[bold]loud.png",
    "odd[/]x.png": "odd[/]x.png",  # a folder "odd[" holding "]x.png": Rich's closing tag
    ":smile:.png": ":smile:.png",
    "plain.png": "plain.png",
}


def test_predict_shows_each_odd_file_name_escaped_on_its_own_line(tmp_path):
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, checkpoint_payload())  # untrained: only the names matter here
    images = tmp_path / "images"
    stroke = np.full((64, 64), 255, dtype=np.uint8)
    stroke[10:54, 28:36] = 0
    for name in ODD_FILE_NAMES:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(encode(Image.fromarray(stroke), "PNG"))
    (images / "empty\n\x1b[2J.png").write_bytes(b"")  # fails: its error line names it
    arguments = ["predict", str(images), "--checkpoint", str(checkpoint)]

    listed = runner.invoke(app, [*arguments, "--format", "json"])
    shown = runner.invoke(app, arguments)

    # The JSON keeps each real name, escaped by JSON itself.
    assert listed.exit_code == 2, listed.output
    entries = json.loads(listed.stdout)
    assert {entry["file"] for entry in entries} == {
        str(images / name) for name in [*ODD_FILE_NAMES, "empty\n\x1b[2J.png"]
    }
    digits = {entry["file"]: entry["digit"] for entry in entries if "error" not in entry}
    assert shown.exit_code == 2, shown.output
    assert "\x1b" not in shown.output and "\r" not in shown.output
    rows = shown.stdout.splitlines()[2:]  # after the model and the header
    assert len(rows) == len(ODD_FILE_NAMES)
    for name, escaped in ODD_FILE_NAMES.items():
        (row,) = [row for row in rows if row.startswith(f"{images / escaped}  ")]
        assert row.split()[1] == str(digits[str(images / name)])
    error = f"error: {images}/empty\\n\\x1b[2J.png: empty file (0 bytes)"
    assert shown.stderr.splitlines() == [error]
    assert listed.stderr.splitlines() == [error]


# A folder name with a newline, a carriage return, an escape sequence, Rich markup (a "[/]"
# closes nothing: Rich's MarkupError) and an emoji code.
ODD_FOLDER = "odd\n\r\x1b[31m[/][bold]:smile:"


def _one_inert_error_line(result) -> str:
    """The one line on stderr, checked to hold nothing a terminal would obey."""
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and line.isprintable()
    return line


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["evaluate", "--checkpoint", "{odd}/best_model.pt"], 1, "checkpoint not found: {odd}/"),
        (["runs", "--runs-dir", "{odd}"], 1, "no runs found in {odd};"),
        (["runs", "--plot", "{odd}/curves.txt"], 2, "--plot {odd}/curves.txt must end in"),
        (["models", "--models-dir", "{odd}"], 1, "no models in {odd};"),
        (["train", "--config", "{odd}/c.yaml"], 2, "config file {odd}/c.yaml cannot be read"),
    ],
)
def test_an_error_naming_an_odd_path_is_one_line_that_shows_it_escaped(
    tmp_path, arguments, code, message
):
    odd = tmp_path / ODD_FOLDER
    result = runner.invoke(app, [argument.format(odd=odd) for argument in arguments])
    assert result.exit_code == code
    assert message.format(odd=terminal_safe(odd)) in _one_inert_error_line(result)


def test_a_data_file_refused_keeps_its_detail_lines_and_escapes_its_path(tmp_path):
    data_dir = tmp_path / ODD_FOLDER
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not the labels")
    result = runner.invoke(app, ["data", "--data-dir", str(data_dir)])
    assert result.exit_code == 1 and result.stdout == ""
    shown = terminal_safe(raw / "t10k-labels-idx1-ubyte")
    first, *details = result.stderr.splitlines()
    assert first == f"error: MNIST file {shown} is not the canonical t10k-labels-idx1-ubyte."
    assert [line.split()[0] for line in details] == ["expected", "actual", "It"]
    assert all(line.startswith("  ") and line.isprintable() for line in details)


def test_models_lists_odd_stage_names_literally_and_names_a_bad_card_on_one_line(tmp_path):
    models_dir = tmp_path / ODD_FOLDER
    for stage in ("[bold]staging", "[red]production"):
        save_checkpoint(models_dir / stage / "mnist" / "best_model.pt", checkpoint_payload())
    card = models_dir / "[red]production" / "mnist" / MODEL_CARD_NAME
    card.write_text("{")
    result = runner.invoke(app, ["models", "--models-dir", str(models_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "\x1b" not in result.stdout
    rows = result.stdout.splitlines()
    assert any("[bold]staging" in row and " ok " in row for row in rows)
    (error,) = result.stderr.splitlines()
    entry = "[red]production/mnist"
    assert error.startswith(f"error: {entry}: invalid model card: {terminal_safe(card)} is not")
    assert error.isprintable()


def test_sigterm_while_training_says_what_is_saved_as_ctrl_c_does(monkeypatch, tmp_path):
    """docker stop, timeout and batch schedulers end a run with SIGTERM, which ended the
    process without a word; it now ends as Ctrl-C does, with SIGTERM's exit code."""
    import mnist_classifier.train as train_module

    output_dir = tmp_path / "checkpoints"
    output_dir.mkdir()

    def terminated_in_epoch_2(config, *_arguments, **_keywords):
        (output_dir / "checkpoint_epoch_1.pt").write_bytes(b"saved")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal's handler raises here

    untouched = []  # this test's own handler: a SIGTERM that reaches it was not handled
    previous = signal.signal(signal.SIGTERM, lambda *_: untouched.append(True))
    try:
        monkeypatch.setattr(train_module, "train", terminated_in_epoch_2)
        arguments = ["train", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path)]
        result = runner.invoke(app, [*arguments, "--output-dir", str(output_dir)])
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        own_handler = signal.signal(signal.SIGTERM, previous)
    assert untouched == [] and handler_after is own_handler  # handled, then given back
    assert result.exit_code == 143
    newest = output_dir / "checkpoint_epoch_1.pt"
    assert result.stderr.strip().splitlines() == [
        f"error: terminated: the epochs up to {newest.name} are saved; continue with "
        f"mnist train --resume {newest}"
    ]


def test_models_shows_no_figures_from_a_card_written_for_the_model_since_replaced(tmp_path):
    for stage in ("staging", "production"):
        checkpoint = tmp_path / stage / "mnist" / "best_model.pt"
        save_checkpoint(checkpoint, checkpoint_payload())
        card = {
            "checkpoint_sha256": sha256_of(checkpoint),
            "promoted_utc": "2026-01-02T03:04:05+00:00",
            "metrics": {"test_accuracy": 0.9123},
        }
        (checkpoint.parent / MODEL_CARD_NAME).write_text(json.dumps(card))
    # As `python train_mnist.py` does: a retrained best_model.pt lands beside staging's old card.
    save_checkpoint(tmp_path / "staging" / "mnist" / "best_model.pt", checkpoint_payload(epoch=4))

    rows = {row["stage"]: row for row in list_models(tmp_path)}
    assert rows["production"]["test_accuracy"] == 0.9123 and rows["production"]["status"] == "ok"
    assert rows["staging"]["epoch"] == 4
    assert rows["staging"]["test_accuracy"] is None and rows["staging"]["promoted_utc"] is None
    assert rows["staging"]["status"] == STALE_MODEL_CARD
    result = runner.invoke(app, ["models", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stdout.count("91.23%") == 1  # production's, never beside the new model
    assert result.stderr.splitlines() == [f"error: staging/mnist: {STALE_MODEL_CARD}"]


def test_ctrl_c_while_training_says_what_is_saved_and_how_to_continue(monkeypatch, tmp_path):
    import mnist_classifier.train as train_module

    output_dir = tmp_path / "checkpoints"

    def interrupted_in_epoch_3(config, *_arguments, **_keywords):
        for epoch in (1, 2):  # what the two finished epochs saved
            (output_dir / f"checkpoint_epoch_{epoch}.pt").write_bytes(b"saved")
        raise KeyboardInterrupt

    def interrupted_at_once(config, *_arguments, **_keywords):
        raise KeyboardInterrupt

    arguments = ["train", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path)]
    arguments += ["--output-dir", str(output_dir)]
    output_dir.mkdir()
    monkeypatch.setattr(train_module, "train", interrupted_at_once)
    result = runner.invoke(app, arguments)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: interrupted before the first epoch's checkpoint: nothing to resume from"
    ]
    monkeypatch.setattr(train_module, "train", interrupted_in_epoch_3)
    result = runner.invoke(app, arguments)
    assert result.exit_code == 130
    newest = output_dir / "checkpoint_epoch_2.pt"
    assert result.stderr.strip().splitlines() == [
        f"error: interrupted: the epochs up to {newest.name} are saved; continue with "
        f"mnist train --resume {newest}"
    ]


def test_models_shows_promotion_times_as_runs_shows_start_times_and_lists_them_as_saved(tmp_path):
    """The table showed a card's raw ISO time (2026-01-02T03:04:05+00:00) where `mnist runs`
    shows 2026-03-14 09:30."""
    promoted = {
        "production": "2026-01-02T03:04:05+00:00",
        "staging": "2026-12-31T23:59:59+00:00",
        "edited": "2026-06-30T01:30:00+02:00",  # a card edited by hand: shown in UTC as well
    }
    for stage, promoted_utc in promoted.items():
        checkpoint = tmp_path / stage / "mnist" / "best_model.pt"
        save_checkpoint(checkpoint, checkpoint_payload())
        card = {"checkpoint_sha256": sha256_of(checkpoint), "promoted_utc": promoted_utc}
        (checkpoint.parent / MODEL_CARD_NAME).write_text(json.dumps(card))

    result = runner.invoke(app, ["models", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = {row["stage"]: row["promoted (UTC)"] for row in table_rows(result.stdout)}
    assert set(shown) == set(promoted)
    for stage, promoted_utc in promoted.items():
        in_utc = datetime.fromisoformat(promoted_utc).astimezone(timezone.utc)
        assert datetime.strptime(shown[stage], "%Y-%m-%d %H:%M") == in_utc.replace(
            second=0, tzinfo=None
        )
    # For machines, as the card saved it.
    assert {row["stage"]: row["promoted_utc"] for row in list_models(tmp_path)} == promoted


def _count_hashing(monkeypatch, *modules) -> list[Path]:
    """Every file `modules` hash with sha256_of from now on, in order."""
    hashed = []

    def counting_sha256_of(path):
        hashed.append(Path(path))
        return sha256_of(path)

    for module in modules:
        monkeypatch.setattr(module, "sha256_of", counting_sha256_of)
    return hashed


def test_models_reads_each_checkpoint_through_sha256_once(tmp_path, monkeypatch):
    """The listing hashed each checkpoint twice: verifying it on loading, then again to tell
    whether its model card was written for it."""
    import mnist_classifier.checkpoint as checkpoint_module
    import mnist_classifier.registry as registry_module

    checkpoints = []
    for stage in ("staging", "production"):
        checkpoint = tmp_path / stage / "mnist" / "best_model.pt"
        save_checkpoint(checkpoint, checkpoint_payload())
        card = {"checkpoint_sha256": sha256_of(checkpoint), "metrics": {"test_accuracy": 0.9}}
        (checkpoint.parent / MODEL_CARD_NAME).write_text(json.dumps(card))
        checkpoints.append(checkpoint)
    hashed = _count_hashing(monkeypatch, checkpoint_module, registry_module)

    result = runner.invoke(app, ["models", "--models-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert sorted(hashed) == sorted(checkpoints)
    # Each card still matched to its model: both stages show their test accuracy.
    assert [row["test"] for row in table_rows(result.stdout)] == ["90.00%", "90.00%"]


def test_serving_a_checkpoint_hashes_it_once_and_still_matches_its_card(tmp_path, monkeypatch):
    """The server hashed the checkpoint twice too: verifying it on loading, then again to match
    its model card (a second read, which could see another file put there in between)."""
    import mnist_classifier.checkpoint as checkpoint_module
    import mnist_classifier.serve.loading as loading_module
    from mnist_classifier.serve.loading import load_checkpoint_model

    checkpoint = tmp_path / "production" / "mnist" / "best_model.pt"
    save_checkpoint(checkpoint, checkpoint_payload())
    card = {"checkpoint_sha256": sha256_of(checkpoint), "metrics": {"test_accuracy": 0.9}}
    (checkpoint.parent / MODEL_CARD_NAME).write_text(json.dumps(card))
    hashed = _count_hashing(monkeypatch, checkpoint_module, loading_module)

    served = load_checkpoint_model(checkpoint, stage="production")

    assert hashed == [checkpoint]
    assert served.info.digest == card["checkpoint_sha256"]
    assert served.info.metrics.test_accuracy == 0.9  # the card was still read as this model's
