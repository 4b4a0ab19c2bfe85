"""What a person reads and what a machine parses: the lab's lines, tables, CSV, next steps,
report folders, and a resumed run's settings."""

import contextlib
import csv
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_payload
from hypothesis import given
from hypothesis import strategies as st

from mnist_classifier.checkpoint import load_checkpoint, save_checkpoint
from mnist_classifier.config import ConfigError, make_config
from mnist_classifier.evaluation_report import default_report_dir
from mnist_classifier.registry import Promotion
from mnist_classifier.reporting import (
    ConsoleTrainingObserver,
    evaluate_command,
    print_error,
    print_learning_curves,
    print_promotion,
    print_resume_choice,
    print_run_dir,
    print_runs,
    terminal_safe,
)
from mnist_classifier.resume import config_for_resume
from mnist_classifier.train import EpochResult


def _epoch_result(**changes):
    values = dict(
        epoch=1,
        learning_rate=1e-3,
        train_loss=0.23456,
        train_accuracy=0.93125,
        validation_loss=0.0812,
        validation_accuracy=0.975,
        seconds=12.34,
        images_per_second=4100.0,
        checkpoint=Path("models/staging/mnist/checkpoint_epoch_1.pt"),
        is_best=True,
    )
    return EpochResult(**{**values, **changes})


@pytest.mark.parametrize(
    ("epochs", "start_epoch", "last_epoch", "announced"),
    [
        (5, 1, 5, "Starting training for 5 epochs..."),  # the handout's line
        (1, 1, 1, "Starting training for 1 epoch..."),
        (5, 3, 5, "Starting training at epoch 3 of 5..."),  # resumed
        (5, 3, 2, "Nothing left to train: the run finished at epoch 2 and was stopped before"),
    ],
)
def test_the_start_says_which_epochs_this_start_trains(
    capsys, tmp_path, epochs, start_epoch, last_epoch, announced
):
    from mnist_classifier.data import MnistFiles
    from mnist_classifier.model import SimpleCNN
    from mnist_classifier.train import TrainSetup

    setup = TrainSetup(
        device=torch.device("cpu"),
        precision="fp32",
        data=MnistFiles(raw_dir=tmp_path, route="disk", sha256={}),
        train_size=55_000,
        validation_size=5_000,
        model=SimpleCNN(),
        parameter_count=421_642,
        checkpoint_dir=tmp_path,
        validation_images=torch.zeros(0, 28, 28, dtype=torch.uint8),
        validation_labels=torch.zeros(0, dtype=torch.int64),
        start_epoch=start_epoch,
        last_epoch=last_epoch,
        start_step=0,
    )
    ConsoleTrainingObserver(live=False, run_dir=tmp_path / "run").started(
        make_config({"epochs": epochs}), setup
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Run directory: {tmp_path / 'run'}  (tensorboard --logdir {tmp_path})"
    assert lines[-1].startswith(announced)


def test_the_labs_lines_are_unchanged_when_output_is_not_a_terminal(capsys):
    observer = ConsoleTrainingObserver(live=False)
    observer.epoch_started(1, 5, 55000)
    for batch in range(201):
        loss = torch.tensor(2.304586 if batch == 0 else 0.234567)
        observer.batch_done(1, 64 * (batch + 1), 55000, loss, torch.tensor(0), batch + 1, 1e-3)
    observer.epoch_done(_epoch_result())
    # The handout's lines, character for character (its README shows them).
    assert capsys.readouterr().out.splitlines() == [
        "",
        "=" * 60,
        "Epoch 1/5",
        "=" * 60,
        "Epoch 1 [0/55000 (0%)]\tLoss: 2.304586",
        "Epoch 1 [6400/55000 (12%)]\tLoss: 0.234567",
        "Epoch 1 [12800/55000 (23%)]\tLoss: 0.234567",
        "Training: Loss: 0.2346, Accuracy: 93.12% (12.3s, 4,100 images/s, lr 0.001)",
        "",
        "Validation: Average loss: 0.0812, Accuracy: 97.50%",
        "",
        "Checkpoint saved: models/staging/mnist/checkpoint_epoch_1.pt",
        "New best accuracy: 97.50%",
    ]


@pytest.mark.parametrize(
    ("script", "checkpoint", "dataset", "command"),
    [
        ("train_mnist.py", "models/staging/mnist/best_model.pt", "mnist", "python test_mnist.py"),
        (
            "train_mnist.py",
            "elsewhere/best_model.pt",
            "mnist",
            "python test_mnist.py --checkpoint elsewhere/best_model.pt",
        ),
        (
            "mnist",
            "runs/r/best_model.pt",
            "mnist",
            "mnist evaluate --checkpoint runs/r/best_model.pt",
        ),
        (
            "train_mnist.py",
            "models/staging/fashion-mnist/best_model.pt",
            "fashion-mnist",
            "python test_mnist.py --dataset fashion-mnist",
        ),
        (
            "mnist",
            "runs/r/best_model.pt",
            "fashion-mnist",
            "mnist evaluate --checkpoint runs/r/best_model.pt --dataset fashion-mnist",
        ),
    ],
)
def test_training_ends_by_naming_the_evaluation_command(
    monkeypatch, script, checkpoint, dataset, command
):
    monkeypatch.setattr(sys, "argv", [f"/somewhere/{script}"])
    assert evaluate_command(Path(checkpoint), dataset) == command


@given(
    folder=st.text(
        st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20
    ).filter(lambda name: "/" not in name and name not in (".", "..")),
    script=st.sampled_from(["mnist", "train_mnist.py"]),
)
def test_the_evaluation_command_can_be_pasted_into_a_shell_whatever_the_path(folder, script):
    """A folder named "my runs" or "it's" is one word to the shell, as the user meant it."""
    checkpoint = Path(folder) / "best_model.pt"
    original_argv = sys.argv
    sys.argv = [script]
    try:
        words = shlex.split(evaluate_command(checkpoint, "fashion-mnist"))
    finally:
        sys.argv = original_argv
    assert words[words.index("--checkpoint") + 1] == str(checkpoint)
    assert words[-2:] == ["--dataset", "fashion-mnist"]


def test_tables_keep_whole_paths_and_csv_has_short_floats_on_a_pipe(capsys):
    long_path = "/a/" + "very-long-folder-name/" * 12 + "best_model.pt"
    rows = [{"run": long_path, "lr": 0.0030000000000000001, "test_accuracy": 0.98840004205}]
    print_runs(rows, "table")
    assert long_path in capsys.readouterr().out  # one unbroken line, not folded at 80 columns
    print_runs(rows, "csv")
    assert capsys.readouterr().out.splitlines()[1] == f"{long_path},0.003,0.9884"


@pytest.mark.parametrize(
    "setting", ["high", True, [0.9], 10**400], ids=["text", "bool", "list", "beyond a float"]
)
def test_a_setting_named_like_an_accuracy_is_shown_whatever_it_holds(setting, capsys):
    # A hand-edited config.yaml may add one; `mnist runs` shows the settings that differ.
    rows = [
        {"run": "a", "early_accuracy": setting, "test_accuracy": 0.99},
        {"run": "b", "early_accuracy": 0.5, "test_accuracy": None},
    ]
    print_runs(rows, "table")
    table = capsys.readouterr().out
    first, second = (
        next(line for line in table.splitlines() if f" {run} " in line) for run in "ab"
    )
    assert str(setting)[:20] in first and "99.00%" in first
    assert "50.00%" in second


def test_report_folders_are_keyed_by_stage_and_data_set_or_run():
    best = Path("models/staging/mnist/best_model.pt")
    staging = default_report_dir(best, "staging", "/r/20260101-000000-a", "mnist")
    assert staging == Path("reports/staging")
    production = default_report_dir(best, "production", "/r/x", "mnist")
    assert production == Path("reports/production")
    # Each data set's models sit in their own folder of a stage, and so do their reports.
    fashion = Path("models/production/fashion-mnist/best_model.pt")
    fashion_report = default_report_dir(fashion, "production", "/r/y", "fashion-mnist")
    assert fashion_report == Path("reports/production/fashion-mnist")
    first = default_report_dir(Path("runs/a/best_model.pt"), None, "/abs/runs/a", "mnist")
    second = default_report_dir(Path("runs/b/best_model.pt"), None, "/abs/runs/b", "fashion-mnist")
    assert first == Path("reports/a/best_model") and second == Path("reports/b/best_model")
    loose = default_report_dir(Path("/tmp/x/best_model.pt"), None, "", "mnist")
    assert loose == Path("reports/x-best_model")


@pytest.fixture
def saved_run(tmp_path):
    config = make_config({"lr": 0.003, "batch_size": 32, "schedule.name": "cosine", "epochs": 4})
    path = tmp_path / "checkpoint_epoch_2.pt"
    save_checkpoint(path, checkpoint_payload(config=config.to_dict()))
    return path, config


def test_resume_continues_with_the_runs_saved_config(saved_run):
    path, saved = saved_run
    assert config_for_resume(load_checkpoint(path), {}) == saved


def test_settings_given_with_resume_still_count(saved_run, tmp_path):
    path, saved = saved_run
    config_file = tmp_path / "more.yaml"
    config_file.write_text("epochs: 6\nschedule:\n  name: step\n")
    resumed = config_for_resume(load_checkpoint(path), {"batch_size": 16}, config_file=config_file)
    assert (resumed.batch_size, resumed.epochs, resumed.schedule.name) == (16, 6, "step")
    assert resumed.lr == saved.lr  # not retyped: the run's own
    with pytest.raises(ConfigError, match="batch_size"):
        config_for_resume(load_checkpoint(path), {"batch_size": 0})


def test_the_live_bar_reads_the_device_only_when_it_refreshes(monkeypatch):
    import io

    from rich.console import Console

    from mnist_classifier import reporting

    screen = io.StringIO()
    monkeypatch.setattr(
        reporting, "console", Console(file=screen, force_terminal=True, width=160, highlight=False)
    )
    monkeypatch.setattr(reporting, "LIVE_REFRESH_SECONDS", 60.0)  # no second refresh in this test
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda tensor: reads.append(1) or real_item(tensor))

    observer = ConsoleTrainingObserver(live=True)
    observer.epoch_started(1, 3, 6400)
    correct = torch.tensor(0)
    for batch in range(100):
        correct = correct + 32
        observer.batch_done(1, 64 * (batch + 1), 6400, torch.tensor(0.5), correct, batch + 1, 1e-3)
    assert len(reads) == 2  # the running loss and accuracy, once, for the first frame
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    observer.epoch_done(_epoch_result(train_loss=0.5, train_accuracy=0.5))

    drawn = screen.getvalue()
    assert "loss 0.5000  acc 50.00%" in drawn  # the running means, as of the first batch
    assert "Epoch 1/3: loss 0.5000, accuracy 50.00%, validation loss 0.0812" in drawn


def test_the_live_bar_shows_the_epochs_running_mean(monkeypatch):
    import io

    from rich.console import Console

    from mnist_classifier import reporting

    screen = io.StringIO()
    monkeypatch.setattr(
        reporting, "console", Console(file=screen, force_terminal=True, width=160, highlight=False)
    )
    monkeypatch.setattr(reporting, "LIVE_REFRESH_SECONDS", 0.0)  # refresh on every batch
    observer = ConsoleTrainingObserver(live=True)
    observer.epoch_started(1, 1, 300)
    # Batches of 100, 100 and 50 images with mean losses 1, 3 and 6: by hand, the running
    # means are 1, (100 + 300) / 200 = 2 and (100 + 300 + 300) / 250 = 2.8.
    for images_seen, loss, correct in ((100, 1.0, 50), (200, 3.0, 150), (250, 6.0, 150)):
        observer.batch_done(1, images_seen, 300, torch.tensor(loss), torch.tensor(correct), 1, 0.1)
    observer.epoch_done(_epoch_result())
    drawn = screen.getvalue()
    for running in (
        "loss 1.0000  acc 50.00%",
        "loss 2.0000  acc 75.00%",
        "loss 2.8000  acc 60.00%",
    ):
        assert running in drawn


def test_the_console_names_data_a_caller_prepared(tmp_path, capsys):
    # train() takes prepared data with a route of the caller's own; the console must say so,
    # not fail on a route it does not know.
    from synthetic_data import synthetic_train_data

    from mnist_classifier.train import train

    config = make_config(
        {"epochs": 1, "output_dir": str(tmp_path), "data.max_train_images": 64, "device": "cpu"}
    )
    train(config, [ConsoleTrainingObserver(live=False)], data=synthetic_train_data(config))
    assert "prepared by the caller (synthetic)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\nb.png", "a\\nb.png"),
        ("tab\t.png", "tab\\t.png"),
        ("cr\r.png", "cr\\r.png"),
        ("\x1b[31mred.png", "\\x1b[31mred.png"),
        ("bell\x07\x7f.png", "bell\\x07\\x7f.png"),
        ("rtl\u202e.png", "rtl\\u202e.png"),  # would show the rest of the line reversed
        ("tag\U000e0001.png", "tag\\U000e0001.png"),
        # A Latin-1 name on a UTF-8 system, as os.fsdecode gives it: shown as its byte.
        (b"caf\xe9.png".decode("utf-8", "surrogateescape"), "caf\\xe9.png"),
        ("naïve 数字 [bold] back\\slash.png", "naïve 数字 [bold] back\\slash.png"),
    ],
)
def test_terminal_safe_escapes_what_a_terminal_would_obey_and_keeps_the_rest(name, shown):
    assert terminal_safe(name) == shown


_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|([ntr]))")


def _unescaped(shown: str) -> str:
    def character(match: re.Match) -> str:
        if match[4]:
            return {"n": "\n", "t": "\t", "r": "\r"}[match[4]]
        return chr(int(match[1] or match[2] or match[3], 16))

    return _ESCAPE.sub(character, shown)


# Any text, and undecodable bytes of file names as os.fsdecode gives them (lone surrogates).
NAMES = st.text(st.characters() | st.sampled_from([chr(0xDC00 + byte) for byte in range(128, 256)]))


@given(name=NAMES)
def test_a_name_shown_terminal_safe_is_one_printable_line(name):
    shown = terminal_safe(name)
    assert shown.isprintable() and "\n" not in shown
    if name.isprintable():
        assert shown == name


@given(name=st.text(st.characters(exclude_characters="\\")))
def test_a_name_without_backslashes_can_be_read_back_from_its_escapes(name):
    assert _unescaped(terminal_safe(name)) == name


def _printed_error(message: str) -> str:
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        print_error(message)
    return stderr.getvalue()


@pytest.mark.parametrize(
    ("message", "lines"),
    [
        # A path the user typed, with a newline and a colour escape in it: still one line.
        (
            "checkpoint not found: /tmp/x\ny\x1b[31m.pt. Train a model first",
            ["error: checkpoint not found: /tmp/x\\ny\\x1b[31m.pt. Train a model first"],
        ),
        ("cr\rover\x1b[2J\u202e", ["error: cr\\rover\\x1b[2J\\u202e"]),
        # Never markup (a "[/]" would stop Rich with MarkupError) nor an emoji code.
        ("/tmp/odd[/]x [bold]loud :smile:", ["error: /tmp/odd[/]x [bold]loud :smile:"]),
        # A message with detail lines keeps them; the newline in its path is escaped.
        (
            "MNIST file /d/a\nb is not the canonical b.\n  expected SHA-256 00\n"
            "  actual   SHA-256 ff\n  It may be truncated or altered.",
            [
                "error: MNIST file /d/a\\nb is not the canonical b.",
                "  expected SHA-256 00",
                "  actual   SHA-256 ff",
                "  It may be truncated or altered.",
            ],
        ),
    ],
)
def test_an_error_is_one_inert_line_and_keeps_only_its_own_detail_lines(message, lines):
    assert _printed_error(message).splitlines() == lines


# Any text, with the pieces an error message might quote: newlines with and without the two
# spaces of a detail line, escape sequences, Rich markup and emoji codes.
MESSAGES = st.lists(
    st.text(st.characters(exclude_characters="\\"))
    | st.sampled_from(["\n", "\n  ", "\r\n", "\x1b[2J", "[/]", "[bold]", ":smile:"])
).map("".join)


@given(message=MESSAGES)
def test_an_error_shows_every_character_and_one_line_per_detail_line(message):
    shown = _printed_error(message)
    assert shown.startswith("error: ") and shown.endswith("\n")
    body = shown.removeprefix("error: ").removesuffix("\n")
    assert body.replace("\n", "").isprintable()  # nothing a terminal would obey
    assert body.count("\n") == message.count("\n  ")  # a line per detail line, no more
    assert _unescaped(body) == message  # and nothing lost


def test_tables_show_odd_names_and_settings_literally_on_one_line_each(capsys):
    rows = [
        {"run": "20260101-000000-[bold]x", "schedule.name": "[/]", "test_accuracy": 0.99},
        {"run": "20260101-000001-a\nb\x1b[2J", "schedule.name": ":smile:", "test_accuracy": None},
    ]
    print_runs(rows, "table")
    table = capsys.readouterr().out
    assert "\x1b" not in table
    (first,) = [line for line in table.splitlines() if "20260101-000000-" in line]
    assert "20260101-000000-[bold]x" in first and "[/]" in first and "99.00%" in first
    (second,) = [line for line in table.splitlines() if "20260101-000001-" in line]
    assert "20260101-000001-a\\nb\\x1b[2J" in second and ":smile:" in second
    # Machine-readable output keeps the real values, escaped only by its format.
    print_runs(rows, "json")
    assert json.loads(capsys.readouterr().out) == rows
    print_runs(rows, "csv")
    listed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["run"] for row in listed] == [row["run"] for row in rows]


ODD_FOLDER = Path("/tmp/odd[/]\n\x1b[2J\u202e[bold]")


@pytest.mark.parametrize(
    "show",
    [
        lambda folder: print_run_dir(folder / "20260101-000000-run"),
        lambda folder: print_learning_curves(folder / "curves.png"),
        lambda folder: print_resume_choice(
            folder / "run" / "checkpoint_epoch_2.pt",
            [f"skipped run x: no valid checkpoint in {folder}:\n  skipped {folder}/a.pt: bad"],
            folder / "run",
        ),
        lambda folder: print_promotion(
            Promotion(
                folder / "production" / "mnist" / "best_model.pt",
                {
                    "promoted_from": str(folder / "best_model.pt"),
                    "stage": "production",
                    "metrics": {"test_accuracy": 0.99},
                    "epoch": 3,
                },
                [f"{folder}/history.jsonl line 2 is not a JSON record; skipped it"],
            )
        ),
        lambda folder: ConsoleTrainingObserver(live=False).epoch_done(
            _epoch_result(checkpoint=folder / "checkpoint_epoch_1.pt")
        ),
    ],
    ids=["run dir", "learning curves", "resume choice", "promotion", "epoch"],
)
def test_a_printed_path_keeps_its_line_and_cannot_steer_the_terminal(show, capsys):
    show(Path("/tmp/plain"))
    plain = capsys.readouterr().out
    show(ODD_FOLDER)
    odd = capsys.readouterr().out
    assert odd.count("\n") == plain.count("\n")
    assert odd.replace("\n", "").isprintable()
    assert terminal_safe(ODD_FOLDER) in odd
