"""Run directories: one folder per training run, holding everything needed to compare runs.

    <runs_dir>/<UTC time>-<name>/
        config.yaml       the resolved config
        provenance.json   git commit, versions, device, seed, data digests, command line
        metrics.csv       one row per epoch
        events.out.tfevents.*   TensorBoard, against the optimizer step: training loss and
                          learning rate every 50 steps, epoch metrics, labelled validation
                          predictions each epoch, and the hparams table
        curves.png        loss and accuracy against epoch
        summary.json      best epoch, stop reason, wall time (and test accuracy once evaluated)
        *.pt              checkpoints, unless --output-dir sends them elsewhere

RunRecorder writes them as a TrainingObserver; the rest of this module reads them back.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from mnist_classifier.checkpoint import TRAINING_LOCK_NAME, LoadedCheckpoint, load_checkpoint
from mnist_classifier.config import (
    ConfigError,
    TrainConfig,
    flatten,
    parse_assignment,
    read_config_file,
    shown,
)
from mnist_classifier.files import (
    lock_is_held,
    make_folders,
    remove_made_folders,
    same_path,
    write_atomically,
    write_json_atomically,
)
from mnist_classifier.paths import RUN_CONFIG_NAME, RUN_TIME_FORMAT, is_run_folder, shell_command
from mnist_classifier.provenance import software_provenance
from mnist_classifier.records import (
    FRACTION,
    NUMBER,
    TEXT,
    WHOLE_NUMBER,
    FieldType,
    RecordError,
    check_field_types,
    read_json_record,
    read_record_text,
)
from mnist_classifier.resume import (
    MAX_SUMMARY_BYTES,
    ResumeError,
    find_resume_checkpoint,
    run_finished,
)
from mnist_classifier.train import EpochResult, TrainingObserver, TrainResult, TrainSetup

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "learning_rate",
    "seconds",
    "images_per_second",
)
# Keys that differ between any two runs without being a choice worth comparing.
NOT_HYPERPARAMETERS = {"name", "runs_dir", "output_dir", "data.data_dir", "device"}
LOG_EVERY_STEPS = 50  # TensorBoard's step-level training loss and learning rate
TENSORBOARD_DPI = 72  # the validation grid TensorBoard shows each epoch
# TensorBoard tags of the epoch metrics; the hparams table shows their last values.
EPOCH_TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "validation_loss": "validation/loss",
    "validation_accuracy": "validation/accuracy",
    "seconds": "speed/seconds_per_epoch",
    "images_per_second": "speed/images_per_second",
}


def create_run_dir(runs_dir: Path | str, name: str) -> Path:
    """A new, empty folder named by the UTC start time, so runs sort by date."""
    stamp = datetime.now(timezone.utc).strftime(RUN_TIME_FORMAT)
    runs_dir = Path(runs_dir)
    for attempt in itertools.count(1):
        suffix = "" if attempt == 1 else f"-{attempt}"
        candidate = runs_dir / f"{stamp}-{name}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def run_dirs_newest_first(runs_dir: Path | str, name: str) -> list[Path]:
    """The run directories of that name, newest first (they sort by their UTC start time)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(
        (
            path
            for path in runs_dir.iterdir()
            if path.is_dir()
            and re.fullmatch(rf"\d{{8}}-\d{{6}}-{re.escape(name)}(-\d+)?", path.name)
        ),
        reverse=True,
    )


def find_resume_in_runs(run_dirs: Sequence[Path]) -> tuple[LoadedCheckpoint | None, list[str]]:
    """The newest epoch checkpoint in the newest of `run_dirs` (newest first) that holds a
    valid one, and why each newer run was skipped.

    None when no run holds any checkpoint (e.g. every start failed before its first epoch);
    ResumeError when some do but none is valid, so a run never silently starts from scratch.
    """
    notes: list[str] = []
    invalid_runs = 0
    for run_dir in run_dirs:
        try:
            chosen, skipped = find_resume_checkpoint(run_dir)
        except ResumeError as error:
            notes.append(f"skipped run {run_dir.name}: {error}")
            invalid_runs += 1
            continue
        notes.extend(skipped)
        if chosen is not None:
            return chosen, notes
        notes.append(f"skipped run {run_dir.name}: it holds no checkpoint")
    if invalid_runs:
        raise ResumeError(
            "no run holds a valid checkpoint to resume from:\n  " + "\n  ".join(notes)
        )
    return None, notes


def checkpoint_to_resume(
    resume: str | None, config: TrainConfig
) -> tuple[LoadedCheckpoint | None, list[str]]:
    """The checkpoint `--resume` names, loaded and verified, and why newer ones were skipped:
    the path given, or for 'auto' the newest valid one in `config.output_dir` (when set), else
    in the newest run of `config.name` that holds one. None when there is nothing to resume."""
    if resume is None:
        return None, []
    if not resume.strip():
        # Never read as "no resume": that would quietly start the run again from scratch.
        raise ResumeError("--resume needs a checkpoint path or 'auto' (got an empty value)")
    if resume != "auto":
        return load_checkpoint(Path(resume)), []
    return newest_checkpoint(config, run_dirs_newest_first(config.runs_dir, config.name))


def newest_checkpoint(
    config: TrainConfig, run_dirs: Sequence[Path]
) -> tuple[LoadedCheckpoint | None, list[str]]:
    """--resume auto's choice: the newest valid checkpoint in `config.output_dir` when set, else
    in the newest of `run_dirs` (newest first) that holds one; and why newer ones were skipped."""
    if config.output_dir:
        return find_resume_checkpoint(Path(config.output_dir))
    return find_resume_in_runs(run_dirs)


def run_of_checkpoint(checkpoint: LoadedCheckpoint) -> Path | None:
    """The run whose records a resumption of `checkpoint` continues: the run folder it lies in;
    else the run that saved it, when it still lies in the folder that run saved it to (the
    lab's staging folder, an --output-dir) and that run's folder is still there. A checkpoint
    taken elsewhere (a registry stage's copy) starts a run of its own."""
    if is_run_folder(checkpoint.path.parent):
        return checkpoint.path.parent
    saved_in, saved_by = checkpoint.config.output_dir, checkpoint.run_dir
    if not (saved_in and saved_by and is_run_folder(Path(saved_by))):
        return None
    return Path(saved_by) if same_path(checkpoint.path.parent, saved_in) else None


@contextmanager
def run_directory(
    config: TrainConfig, continued_run: Path | None, rank: int | None = None
) -> Iterator[Path | None]:
    """The folder a run logs to, while it trains: `continued_run` (see run_of_checkpoint) when
    resuming one, else a new one. Under torchrun only rank 0 keeps one (the others get None).
    The folders made here (the run's, and a new runs folder) that a failed start wrote nothing
    into (unverified data, say) are removed again."""
    if rank not in (None, 0):
        yield None
        return
    if continued_run is not None:
        check_records_to_continue(continued_run)
        yield continued_run
        return
    made = make_folders(config.runs_dir)
    try:
        run_dir = create_run_dir(config.runs_dir, config.name)
        made.append(run_dir)
        yield run_dir
    except BaseException:
        # The training lock that train() took, and released, in the folder counts as nothing.
        remove_made_folders(made, leftovers=(TRAINING_LOCK_NAME,))
        raise


def check_records_to_continue(run_dir: Path) -> None:
    """Refuse, before any file is touched, to continue a run whose provenance or summary is
    damaged: a resumption adds to both, so it would have to overwrite what it cannot read.
    (The project writes them atomically, so a crash never leaves them so; someone else did.)"""
    readers = {"provenance.json": _read_json_record, "summary.json": _read_summary}
    for name, read in readers.items():
        if not (run_dir / name).is_file():
            continue
        try:
            read(run_dir / name)
        except RunRecordError as error:
            raise RunRecordError(
                f"cannot resume into run {run_dir.name}: {error}; resuming adds to this file, "
                "so repair it, or move it aside to resume with a new one"
            ) from None


def provenance(config_seed: int, setup: TrainSetup) -> dict[str, Any]:
    return {
        **software_provenance(),
        "device": str(setup.device),
        "precision": setup.precision,
        "seed": config_seed,
        "data_route": setup.data.route,
        "data_sha256": dict(setup.data.sha256),
        "command_line": sys.argv,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _metric_row(epoch: EpochResult) -> dict[str, Any]:
    return {column: getattr(epoch, column) for column in METRIC_COLUMNS}


class RunRecorder(TrainingObserver):
    """Writes a run directory's files as training goes; each epoch's row lands as it finishes."""

    def __init__(self, run_dir: Path, log_every_steps: int = LOG_EVERY_STEPS) -> None:
        self.run_dir = Path(run_dir)
        self.log_every_steps = log_every_steps
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        self.config = None
        self.setup: TrainSetup | None = None
        self.step = 0

    def started(self, config, setup: TrainSetup) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.config, self.setup, self.step = config, setup, setup.start_step
        provenance_path = self.run_dir / "provenance.json"
        this_start = provenance(config.seed, setup)
        if setup.start_epoch > 1:
            # A resumed run keeps its origin and adds this start to the record; if the record
            # was moved aside, the new one says so rather than pass this start off as the origin.
            record = (
                _read_json_record(provenance_path)
                if provenance_path.is_file()
                else {"origin": "not recorded here; this record begins with a resumption"}
            )
            record.setdefault("resumptions", []).append(
                {"from_epoch": setup.start_epoch - 1, **this_start}
            )
        else:
            record = this_start
        # Every record is replaced whole, so a crash leaves the old file or the new one.
        config_text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        write_atomically(self.run_dir / RUN_CONFIG_NAME, config_text.encode())
        write_json_atomically(provenance_path, record)

        # The checkpoint resumed from holds every finished epoch's figures, so metrics.csv is
        # rebuilt from it, not read back: a row the run logged after that checkpoint (epochs
        # it trains again) goes, and a row a crash kept from being written (the checkpoint is
        # saved before its row) comes back.
        self.rows = [_metric_row(epoch) for epoch in setup.earlier_epochs]
        self._write_metrics()
        # Every event is logged against the optimizer step; purge_step hides the events a
        # killed run logged beyond the step it resumes from.
        threads_before = set(threading.enumerate())
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=setup.start_step + 1)
        # The thread the writer started is the one that writes its events to the file.
        self.writer_failures = _ThreadFailures(set(threading.enumerate()) - threads_before)

    def batch_done(
        self, epoch, images_seen, images_total, loss, correct, step=0, learning_rate=0.0
    ) -> None:
        self.step = step
        if step % self.log_every_steps == 0:
            # One read of the device's loss every `log_every_steps` steps, not every step.
            self.writer.add_scalar("train/batch_loss", loss.item(), step)
            self.writer.add_scalar("learning_rate", learning_rate, step)

    def epoch_done(self, result: EpochResult) -> None:
        row = _metric_row(result)
        self.rows.append(row)
        self._write_metrics()
        for column, tag in EPOCH_TAGS.items():
            self.writer.add_scalar(tag, row[column], self.step)
        self.writer.add_scalar("epoch", result.epoch, self.step)
        grid = self._prediction_grid(result)
        # TensorBoard scales an image to its card unless asked for the actual size, so the
        # report files' 120 dpi would only cost time: at 72 dpi the grid is drawn and
        # PNG-encoded in about 0.18 s an epoch instead of 0.31 s (2-core Xeon).
        grid.set_dpi(TENSORBOARD_DPI)
        self.writer.add_figure("validation/predictions", grid, self.step)
        self.writer.flush()

    def _write_metrics(self) -> None:
        """metrics.csv, every row, rewritten atomically: an append killed half-way would leave
        a row cut short, which readers would have to guess about. At one row per epoch the
        whole file is a few kilobytes, so the rewrite costs nothing next to an epoch."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomically(self.run_dir / "metrics.csv", text.getvalue().encode())

    def _prediction_grid(self, result: EpochResult):
        """The first validation images with the model's predictions; mistakes in red."""
        import torch

        from mnist_classifier.batching import normalize
        from mnist_classifier.figures import digit_grid_figure

        model, images = self.setup.model, self.setup.validation_images
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            parameter = next(model.parameters())
            inputs = normalize(images.to(parameter.device)).to(parameter.dtype)
            predictions = model(inputs).argmax(dim=1).cpu()  # (N,)
        model.train(was_training)
        labels = self.setup.validation_labels
        pairs = zip(labels.tolist(), predictions.tolist(), strict=True)
        captions = [f"{label}→{predicted}" for label, predicted in pairs]
        colours = ["black" if right else "red" for right in (predictions == labels).tolist()]
        wrong = int((predictions != labels).sum())
        return digit_grid_figure(
            images,
            captions,
            colours,
            f"Epoch {result.epoch}: the first {len(images)} validation images, "
            f"{wrong} wrong (red)\ntrue→predicted",
        )

    def finished(self, result: TrainResult) -> None:
        from mnist_classifier.figures import save_learning_curves

        self._write_summary(result)
        self._write_hparams_table()
        self._close_writer()
        save_learning_curves({self.run_dir.name: self.rows}, self.run_dir / "curves.png")

    def diverged(self, result: TrainResult, epoch: int) -> None:
        # Marked, so that `mnist runs` tells it from a run still training or killed, and so
        # that `mnist sweep --resume` keeps it rather than train it into the same divergence.
        self._write_summary(result, {DIVERGED_KEY: epoch})
        self._close_writer()

    def _write_summary(self, result: TrainResult, extra: dict[str, Any] | None = None) -> None:
        summary: dict[str, Any] = {}
        if result.epochs:  # none when the first epoch diverged
            best = result.best
            summary = {
                "best_epoch": best.epoch,
                "best_validation_accuracy": best.validation_accuracy,
                "best_validation_loss": best.validation_loss,
            }
        summary.update(
            {
                "epochs_run": len(result.epochs),
                "stop_reason": result.stop_reason,
                "wall_seconds": result.wall_seconds,
                "checkpoint_dir": str(result.checkpoint_dir),
                **(extra or {}),
            }
        )
        summary_path = self.run_dir / "summary.json"
        # A resumed run's summary may hold what other commands added (mnist evaluate's test
        # accuracy and checkpoint): those stay; only what training itself records is replaced.
        # A test accuracy of an earlier best model goes once a later epoch is the best: shown
        # beside the new best validation accuracy, it would pass for that model's.
        earlier = (
            _read_summary(summary_path)
            if self.setup.start_epoch > 1 and summary_path.is_file()
            else {}
        )
        earlier.pop(DIVERGED_KEY, None)  # an earlier start's divergence, trained past now
        tested = earlier.get("test_epoch")
        if tested is not None and tested != summary.get("best_epoch"):
            for key in ("test_accuracy", "test_checkpoint", "test_epoch"):
                earlier.pop(key, None)
        write_json_atomically(summary_path, {**earlier, **summary})

    def _close_writer(self) -> None:
        self.writer.close()  # its thread has ended: anything that failed there is known now
        self.writer_failures.stop()

    def _write_hparams_table(self) -> None:
        """The hparams table alone: its metric columns read this run's epoch scalars, so no
        single-point `hparam/*` charts are written (SummaryWriter.add_hparams would)."""
        from torch.utils.tensorboard.summary import hparams

        values = {
            key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in flatten(self.config.to_dict()).items()
            if key not in NOT_HYPERPARAMETERS
        }
        metrics = {EPOCH_TAGS["validation_accuracy"]: 0.0, EPOCH_TAGS["validation_loss"]: 0.0}
        for summary in hparams(values, metrics):
            self.writer.file_writer.add_summary(summary)


class _ThreadFailures:
    """What fails in `threads` (TensorBoard's event writer's), kept for the training's thread
    to raise, not printed there.

    SummaryWriter writes its events from a thread of its own. A write that fails in it (a full
    disk) ends that thread, which keeps the error for the writer's next call to raise in the
    training's thread, where the command reports it on one line; but the thread also prints
    its own traceback, and the writer's close() looks for the error before the thread has
    written the last events, not after. threading.excepthook is Python's own say in what
    becomes of a thread's uncaught error: this one keeps those threads' errors, for stop() to
    raise, and passes any other thread's on. Should training fail first, it stays, to keep the
    ended writer thread's error quiet too."""

    def __init__(self, threads: set[threading.Thread]) -> None:
        self.threads = threads
        self.error: BaseException | None = None
        self.passed_on = threading.excepthook
        threading.excepthook = self.caught

    def caught(self, args) -> None:
        if args.thread in self.threads:
            self.error = args.exc_value
        else:
            self.passed_on(args)

    def stop(self) -> None:
        """Once the threads have ended: raise what failed in them, and hand threading's
        excepthook back (unless another took it since)."""
        if threading.excepthook == self.caught:
            threading.excepthook = self.passed_on
        if self.error is not None:
            raise self.error


def record_test_accuracy(
    checkpoint: Path, accuracy: float, run_dir: str = "", epoch: int | None = None
) -> Path | None:
    """Add the test accuracy to the summary of the run that wrote `checkpoint`: the run
    directory it names (`run_dir`, saved in every checkpoint) or else the folder it is in.
    Only the run's best model's (of the summary's best_epoch, wherever it was copied): `mnist
    runs` shows it beside the best validation accuracy, and a figure of an earlier `epoch`
    there would pass for the run's own. Raises RunRecordError, changing nothing, when that
    summary is damaged."""
    for folder in (Path(run_dir) if run_dir else None, Path(checkpoint).resolve().parent):
        summary_path = folder / "summary.json" if folder else None
        if summary_path is not None and summary_path.is_file():
            summary = _read_summary(summary_path)  # RunRecordError when it is damaged
            if epoch is not None and summary.get("best_epoch") not in (None, epoch):
                return None
            summary["test_accuracy"] = accuracy
            summary["test_checkpoint"] = str(checkpoint)
            if epoch is not None:
                summary["test_epoch"] = epoch
            write_json_atomically(summary_path, summary)
            return summary_path
    return None


@dataclass(frozen=True)
class RunRecord:
    """One finished (or running) run as read back from its folder."""

    path: Path
    config: dict[str, Any]  # flattened
    summary: dict[str, Any]
    metrics: list[dict[str, float]]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def started(self) -> str:
        return "-".join(self.path.name.split("-")[:2])


class RunRecordError(ValueError):
    """One of a run folder's files cannot be used; the message names the file and why."""


# Ceilings on the record files `mnist runs` reads (config.yaml has the config files' own,
# summary.json and provenance.json MAX_SUMMARY_BYTES): a metrics row is about 150 bytes, so
# these are never reached by a real run, only by a file linked to a device or replaced.
MAX_METRICS_BYTES = 64 * 1024 * 1024
# In the summary of a run whose training diverged: the epoch it diverged in.
DIVERGED_KEY = "diverged_in_epoch"
# What the summary's readers format: a value of another type is a damaged record, not a run's.
SUMMARY_TYPES: dict[str, FieldType] = {
    "best_epoch": WHOLE_NUMBER,
    "epochs_run": WHOLE_NUMBER,
    "best_validation_accuracy": FRACTION,
    "best_validation_loss": NUMBER,
    "test_accuracy": FRACTION,
    "wall_seconds": NUMBER,
    "stop_reason": TEXT,
    "checkpoint_dir": TEXT,
    "test_checkpoint": TEXT,
    "test_epoch": WHOLE_NUMBER,
    DIVERGED_KEY: WHOLE_NUMBER,
}
# The columns the learning curves draw; a metrics.csv without them cannot be plotted.
PLOTTED_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
)
SETTING_TYPES = (str, int, float, bool, type(None))


def read_run(path: Path) -> RunRecord:
    """A run folder's config, summary and metrics; RunRecordError if any of them is damaged."""
    summary_path, metrics_path = path / "summary.json", path / "metrics.csv"
    return RunRecord(
        path=path,
        config=_read_run_config(path / RUN_CONFIG_NAME),
        summary=_read_summary(summary_path) if summary_path.is_file() else {},
        metrics=_read_metrics(metrics_path) if metrics_path.is_file() else [],
    )


def _read_run_config(path: Path) -> dict[str, Any]:
    try:
        config = flatten(read_config_file(path))
    except ConfigError as error:
        raise RunRecordError(str(error)) from None
    for key, value in config.items():
        if not isinstance(value, SETTING_TYPES):
            raise RunRecordError(
                f"{path}: {shown(key)} holds a {type(value).__name__}, not a setting"
            )
    return config


def _read_text(path: Path, max_bytes: int) -> str:
    try:
        return read_record_text(path, max_bytes)
    except RecordError as error:
        raise RunRecordError(str(error)) from None


def _read_json_record(path: Path) -> dict[str, Any]:
    """A JSON object (provenance.json, summary.json); RunRecordError for anything else."""
    try:
        return read_json_record(path, MAX_SUMMARY_BYTES)
    except RecordError as error:
        raise RunRecordError(str(error)) from None


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = read_json_record(path, MAX_SUMMARY_BYTES)
        check_field_types(path, summary, SUMMARY_TYPES)
    except RecordError as error:
        raise RunRecordError(str(error)) from None
    return summary


def _read_metrics(path: Path) -> list[dict[str, float]]:
    text = _read_text(path, MAX_METRICS_BYTES)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [
            column
            for column in PLOTTED_COLUMNS
            if column not in (reader.fieldnames or PLOTTED_COLUMNS)
        ]
        if missing:
            raise RunRecordError(f"{path} has no {', '.join(missing)} column")
        rows = []
        for row in reader:
            # A row cut short has None for its last values; one too long, a key None.
            if None in row or None in row.values():
                raise RunRecordError(
                    f"{path}: line {reader.line_num} does not have one value per column "
                    "(cut short or damaged)"
                )
            rows.append(
                {key: _metric(path, reader.line_num, key, value) for key, value in row.items()}
            )
    except csv.Error as error:
        raise RunRecordError(f"{path} is not CSV ({error})") from None
    return rows


def _metric(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RunRecordError(
            f"{path}: line {line}: {shown(column)} is {shown(text)}, not a number"
        ) from None
    if column == "epoch" and not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise RunRecordError(f"{path}: line {line}: epoch is {shown(text)}, not an epoch number")
    return value


def list_runs(runs_dir: Path | str) -> tuple[list[RunRecord], list[str]]:
    """Runs under `runs_dir`, oldest first, and one line for each run folder left out because
    one of its files is damaged (one bad record must not hide the other runs)."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir} is a file, not a runs folder; give --runs-dir a folder")
    if not runs_dir.is_dir():
        return [], []
    records, unreadable = [], []
    for path in sorted(path for path in runs_dir.iterdir() if is_run_folder(path)):
        try:
            records.append(read_run(path))
        except RunRecordError as error:
            unreadable.append(
                f"{error}; run {path.name} is not listed (repair or move the file aside)"
            )
    return records, unreadable


def parse_run_filters(filters: list[str]) -> dict[str, Any]:
    """['lr=0.002', 'schedule.name=onecycle'] -> {'lr': 0.002, 'schedule.name': 'onecycle'},
    typed as the config reads them; a key the config does not have is a ConfigError."""
    known = flatten(TrainConfig().to_dict())
    wanted = {}
    for text in filters:
        key, _, value_text = text.partition("=")
        if not key.strip() or not value_text.strip():  # parse_assignment would name --set
            raise ConfigError(f"a run filter is KEY=VALUE, e.g. lr=0.002 (got {text!r})")
        key, value = parse_assignment(text)
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in filter {text!r}")
        if key in wanted:  # no run has two values: "no runs match" would hide the slip
            raise ConfigError(f"the filters give {key} twice; give it once")
        wanted[key] = value
    return wanted


def matching_runs(runs: list[RunRecord], wanted: dict[str, Any]) -> list[RunRecord]:
    """The runs whose saved config has every wanted value (1 and 1.0 count as equal)."""
    return [
        run for run in runs if all(run.config.get(key) == value for key, value in wanted.items())
    ]


class NoRunsFound(LookupError):
    """No run to compare: none under the runs folder, or none that the filters match."""


def runs_to_compare(runs_dir: Path | str, filters: list[str]) -> tuple[list[RunRecord], list[str]]:
    """The runs under `runs_dir` whose config has the `filters`' values (KEY=VALUE), oldest
    first, and a line for each run left out because a file of it is damaged; ConfigError for
    a bad filter, NoRunsFound (saying what to do) when there is neither."""
    wanted = parse_run_filters(filters)
    records, unreadable = list_runs(runs_dir)
    if not records and not unreadable:
        raise NoRunsFound(f"no runs found in {runs_dir}; train one first: mnist train")
    records = matching_runs(records, wanted)
    if not records and not unreadable:
        raise NoRunsFound(
            f"no runs match {' '.join(filters)} in {runs_dir}; "
            + shell_command("mnist", "runs", "--runs-dir", runs_dir)
            + " lists them all"
        )
    return records, unreadable


def run_labels(runs: list[RunRecord]) -> dict[str, RunRecord]:
    """Each run by the settings that differ between `runs` (its folder name where none do)."""
    keys = differing_keys(runs)
    labels = {}
    for run in runs:
        label = " ".join(f"{key}={run.config.get(key)}" for key in keys) or run.name
        labels[label if label not in labels else f"{label} ({run.name})"] = run
    return labels


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """The config keys whose values are not the same in every listed run."""
    keys = sorted({key for run in runs for key in run.config} - NOT_HYPERPARAMETERS)
    return [key for key in keys if len({repr(run.config.get(key)) for run in runs}) > 1]


def comparison_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: name, date, the differing hyper-parameters, results."""
    keys = differing_keys(runs)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "started_utc": run.started}
        row.update({key: run.config.get(key) for key in keys})
        row["best_validation_accuracy"] = run.summary.get("best_validation_accuracy")
        row["test_accuracy"] = run.summary.get("test_accuracy")
        row["epochs"] = run.summary.get("epochs_run", len(run.metrics))
        row["ended"] = how_it_ended(run.summary) or ("training" if _is_training(run) else None)
        row["wall_seconds"] = run.summary.get("wall_seconds")
        rows.append(row)
    return rows


def _is_training(run: RunRecord) -> bool:
    """Whether a training holds the run's folder now. Only for a run that keeps its checkpoints
    in its own folder: one with an output_dir shares it (the lab's staging folder) with other
    runs, and its lock does not say which of them is training."""
    return not run.config.get("output_dir") and lock_is_held(run.path / TRAINING_LOCK_NAME)


def how_it_ended(summary: dict[str, Any]) -> str | None:
    """'completed', 'stopped early' or 'diverged in epoch N', from a run's summary; None when
    training has written none (the run is training, or was killed before it ended)."""
    if DIVERGED_KEY in summary:
        return f"diverged in epoch {summary[DIVERGED_KEY]}"
    stop_reason = summary.get("stop_reason")
    if not stop_reason:
        return None
    return "stopped early" if stop_reason.startswith("early stopping") else "completed"


def sweep_run_name(name: str, combination: dict[str, Any]) -> str:
    """A sweep run's name: the config's, then the combination's values, e.g. run-lr=0.002; a
    value holding "/" (a folder swept over) is written with "_", as a name is one folder's."""
    label = "-".join(f"{key.split('.')[-1]}={value}" for key, value in combination.items())
    return f"{name}-{label.replace('/', '_')}"


def grid_overrides(grid: list[str]) -> list[dict[str, Any]]:
    """['lr=0.001,0.003', 'batch_size=64,128'] -> the 4 override dicts of their product."""
    axes = []
    keys: list[str] = []
    for entry in grid:
        key, separator, values_text = entry.partition("=")
        key = key.strip()
        texts = values_text.split(",")
        if not separator or not key or not values_text.strip():
            raise ConfigError(f"--grid needs KEY=V1,V2,... (got {entry!r})")
        if not all(text.strip() for text in texts):  # 'lr=,0.1': one run fewer than meant
            raise ConfigError(f"--grid {key} has an empty value in {entry!r}; remove the comma")
        # A key given twice would keep only its last --grid's values, silently dropping runs.
        if key in keys:
            raise ConfigError(
                f"--grid gives {key} twice; list all its values in one: --grid {key}=V1,V2,..."
            )
        keys.append(key)
        values = [parse_assignment(f"{key}={text}")[1] for text in texts]
        # The same value twice (0.001 and 1e-3, say) would train the same run twice. By type
        # too: True == 1 in Python, but they are different settings.
        typed = [(type(value), value) for value in values]
        if repeated := [value for value in values if typed.count((type(value), value)) > 1]:
            raise ConfigError(f"--grid {key} lists the value {repeated[0]!r} twice; list it once")
        axes.append([(key, value) for value in values])
    return [dict(combination) for combination in itertools.product(*axes)]


# What a run's saved config may hold otherwise than a sweep's combination resolved again, and
# still be that combination's run: the two folders it names, which are where things lie, not
# settings of the run. The run is found inside the runs folder searched, however that folder
# was spelled when it started (./runs, runs, an absolute path) or wherever it was moved since;
# and the data is the same files wherever they lie (each data set's digests are pinned, and a
# resumption checks them again). Any other setting, the name the sweep gives the run included,
# must be equal: a run that differs in one trained something else and must not pass for it.
FOLDER_SETTINGS = ("runs_dir", "data.data_dir")


def runs_with_config(config: TrainConfig) -> list[Path]:
    """The run folders of `config`'s name under its runs_dir whose saved config is `config` (but
    for FOLDER_SETTINGS), newest first. RunRecordError for one whose config.yaml cannot be read:
    it may be this run, which must not be trained again unseen."""
    wanted = _run_settings(flatten(config.to_dict()))
    found = []
    for run_dir in run_dirs_newest_first(config.runs_dir, config.name):
        if not is_run_folder(run_dir):
            continue
        try:
            saved = _read_run_config(run_dir / RUN_CONFIG_NAME)
        except RunRecordError as error:
            raise RunRecordError(
                f"{error}; cannot tell whether run {run_dir.name} is the sweep's {config.name}: "
                "repair the file, or move the run aside"
            ) from None
        if _run_settings(saved) == wanted:
            found.append(run_dir)
    return found


def _run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in FOLDER_SETTINGS}


@dataclass(frozen=True)
class EarlierSweepRun:
    """What earlier starts of a sweep left of one combination, for `mnist sweep --resume`."""

    matching: tuple[Path, ...]  # the run folders holding its config, newest first
    run_dir: Path | None  # the newest of them that holds a valid checkpoint
    checkpoint: Path | None  # that run's newest valid checkpoint: resume from it (None: anew)
    finished: RunRecord | None  # that run, read back, when it has finished: kept as it is
    skipped: tuple[str, ...]  # why newer runs and checkpoints were passed over


def earlier_sweep_run(config: TrainConfig) -> EarlierSweepRun:
    """Where the sweep's combination resolved as `config` stands, from the runs holding its
    config (runs_with_config): the newest valid checkpoint among them, chosen as --resume auto
    chooses, is resumed; or its run has finished, and is kept; or there is none, and the
    combination is trained anew.

    ResumeError when those runs hold checkpoints but none is valid (as --resume auto: never
    silently started again); RunRecordError when a record of the run it would keep or continue
    is damaged. The sweep asks this of every combination before it trains any."""
    matching = tuple(runs_with_config(config))
    if not matching:
        return EarlierSweepRun(matching, None, None, None, ())
    if diverged := _diverged_run(matching[0], config):
        # Trained again, the same settings and seed would diverge the same way.
        return EarlierSweepRun(matching, matching[0], None, diverged, ())
    checkpoint, skipped = newest_checkpoint(config, matching)
    run_dir = run_of_checkpoint(checkpoint) if checkpoint is not None else None
    # A checkpoint in a shared --output-dir may be another training's: not this one's to go on.
    if run_dir is None or not any(same_path(run_dir, found) for found in matching):
        return EarlierSweepRun(matching, None, None, None, tuple(skipped))
    if not run_finished(checkpoint, config):
        check_records_to_continue(run_dir)
        return EarlierSweepRun(matching, run_dir, checkpoint.path, None, tuple(skipped))
    try:
        finished = read_run(run_dir)
    except RunRecordError as error:
        raise RunRecordError(
            f"{error}; run {run_dir.name} has finished the sweep's {config.name}, and the "
            "sweep's table shows it: repair the file, or move the run aside to train it again"
        ) from None
    return EarlierSweepRun(matching, run_dir, checkpoint.path, finished, tuple(skipped))


def _diverged_run(run_dir: Path, config: TrainConfig) -> RunRecord | None:
    """`run_dir`, read back, when its summary records that its training diverged. (A damaged
    summary says nothing: the run is then judged by its checkpoints, as any other.)"""
    summary_path = run_dir / "summary.json"
    try:
        if not (summary_path.is_file() and DIVERGED_KEY in _read_summary(summary_path)):
            return None
    except RunRecordError:
        return None
    try:
        return read_run(run_dir)
    except RunRecordError as error:
        raise RunRecordError(
            f"{error}; cannot tell whether run {run_dir.name} of the sweep's {config.name} "
            "diverged: repair the file, or move the run aside to train it again"
        ) from None
