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
import itertools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from mnist_classifier.checkpoint import TRAINING_LOCK_NAME, LoadedCheckpoint, load_checkpoint
from mnist_classifier.config import ConfigError, TrainConfig, flatten, parse_assignment
from mnist_classifier.files import write_json_atomically
from mnist_classifier.provenance import software_provenance
from mnist_classifier.resume import ResumeError, find_resume_checkpoint
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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
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
    if resume != "auto":
        return (load_checkpoint(Path(resume)) if resume else None), []
    if config.output_dir:
        return find_resume_checkpoint(Path(config.output_dir))
    return find_resume_in_runs(run_dirs_newest_first(config.runs_dir, config.name))


@contextmanager
def run_directory(
    config: TrainConfig, resume_from: Path | None, rank: int | None = None
) -> Iterator[Path | None]:
    """The folder a run logs to, while it trains: a checkpoint inside a run directory continues
    that run's logs; anything else starts a new one. Under torchrun only rank 0 keeps one (the
    others get None). A folder created here that a failed start wrote nothing into (unverified
    data, say) is removed again."""
    if rank not in (None, 0):
        yield None
        return
    if resume_from is not None and (resume_from.parent / "config.yaml").is_file():
        yield resume_from.parent
        return
    run_dir = create_run_dir(config.runs_dir, config.name)
    try:
        yield run_dir
    except BaseException:
        # The training lock that train() took, and released, in the folder counts as nothing.
        lock = run_dir / TRAINING_LOCK_NAME
        if run_dir.is_dir() and all(path == lock for path in run_dir.iterdir()):
            lock.unlink(missing_ok=True)
            run_dir.rmdir()
        raise


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
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        provenance_path = self.run_dir / "provenance.json"
        this_start = provenance(config.seed, setup)
        if setup.start_epoch > 1 and provenance_path.is_file():
            # A resumed run keeps its origin and adds this start to the record.
            record = json.loads(provenance_path.read_text())
            record.setdefault("resumptions", []).append(
                {"from_epoch": setup.start_epoch - 1, **this_start}
            )
        else:
            record = this_start
        write_json_atomically(provenance_path, record)

        metrics_path = self.run_dir / "metrics.csv"
        kept: list[dict[str, str]] = []
        if setup.start_epoch > 1 and metrics_path.is_file():
            with open(metrics_path, newline="") as handle:
                kept = [
                    row for row in csv.DictReader(handle) if int(row["epoch"]) < setup.start_epoch
                ]
        self.rows = [{key: float(value) for key, value in row.items()} for row in kept]
        with open(metrics_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        # Every event is logged against the optimizer step; purge_step hides the events a
        # killed run logged beyond the step it resumes from.
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=setup.start_step + 1)

    def batch_done(
        self, epoch, images_seen, images_total, loss, correct, step=0, learning_rate=0.0
    ) -> None:
        self.step = step
        if step % self.log_every_steps == 0:
            # One read of the device's loss every `log_every_steps` steps, not every step.
            self.writer.add_scalar("train/batch_loss", loss.item(), step)
            self.writer.add_scalar("learning_rate", learning_rate, step)

    def epoch_done(self, result: EpochResult) -> None:
        row = {column: getattr(result, column) for column in METRIC_COLUMNS}
        self.rows.append(row)
        with open(self.run_dir / "metrics.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([row[column] for column in METRIC_COLUMNS])
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

        best = result.best
        summary = {
            "best_epoch": best.epoch,
            "best_validation_accuracy": best.validation_accuracy,
            "best_validation_loss": best.validation_loss,
            "epochs_run": len(result.epochs),
            "stop_reason": result.stop_reason,
            "wall_seconds": result.wall_seconds,
            "checkpoint_dir": str(result.checkpoint_dir),
        }
        write_json_atomically(self.run_dir / "summary.json", summary)
        self._write_hparams_table()
        self.writer.close()
        save_learning_curves({self.run_dir.name: self.rows}, self.run_dir / "curves.png")

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


def record_test_accuracy(checkpoint: Path, accuracy: float, run_dir: str = "") -> Path | None:
    """Add the test accuracy to the summary of the run that wrote `checkpoint`: the run
    directory it names (`run_dir`, saved in every checkpoint) or else the folder it is in."""
    for folder in (Path(run_dir) if run_dir else None, Path(checkpoint).resolve().parent):
        summary_path = folder / "summary.json" if folder else None
        if summary_path is not None and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            summary["test_accuracy"] = accuracy
            summary["test_checkpoint"] = str(checkpoint)
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


def read_run(path: Path) -> RunRecord:
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics_path = path / "metrics.csv"
    metrics = []
    if metrics_path.is_file():
        with open(metrics_path, newline="") as handle:
            metrics = [
                {key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)
            ]
    return RunRecord(path=path, config=flatten(config), summary=summary, metrics=metrics)


def list_runs(runs_dir: Path | str) -> list[RunRecord]:
    """Runs under `runs_dir`, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = sorted(path for path in runs_dir.iterdir() if (path / "config.yaml").is_file())
    return [read_run(path) for path in folders]


def parse_run_filters(filters: list[str]) -> dict[str, Any]:
    """['lr=0.002', 'schedule.name=onecycle'] -> {'lr': 0.002, 'schedule.name': 'onecycle'},
    typed as the config reads them; a key the config does not have is a ConfigError."""
    known = flatten(TrainConfig().to_dict())
    wanted = {}
    for text in filters:
        if "=" not in text:
            raise ConfigError(f"a run filter is KEY=VALUE, e.g. lr=0.002 (got {text!r})")
        key, value = parse_assignment(text)
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in filter {text!r}")
        wanted[key] = value
    return wanted


def matching_runs(runs: list[RunRecord], wanted: dict[str, Any]) -> list[RunRecord]:
    """The runs whose saved config has every wanted value (1 and 1.0 count as equal)."""
    return [
        run for run in runs if all(run.config.get(key) == value for key, value in wanted.items())
    ]


class NoRunsFound(LookupError):
    """No run to compare: none under the runs folder, or none that the filters match."""


def runs_to_compare(runs_dir: Path | str, filters: list[str]) -> list[RunRecord]:
    """The runs under `runs_dir` whose config has the `filters`' values (KEY=VALUE), oldest
    first; ConfigError for a bad filter, NoRunsFound (saying what to do) when none is left."""
    wanted = parse_run_filters(filters)
    records = list_runs(runs_dir)
    if not records:
        raise NoRunsFound(f"no runs found in {runs_dir}; train one first: mnist train")
    records = matching_runs(records, wanted)
    if not records:
        raise NoRunsFound(
            f"no runs match {' '.join(filters)} in {runs_dir}; "
            f"mnist runs --runs-dir {runs_dir} lists them all"
        )
    return records


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
        row["wall_seconds"] = run.summary.get("wall_seconds")
        rows.append(row)
    return rows


def sweep_run_name(name: str, combination: dict[str, Any]) -> str:
    """A sweep run's name: the config's, then the combination's values, e.g. run-lr=0.002."""
    label = "-".join(f"{key.split('.')[-1]}={value}" for key, value in combination.items())
    return f"{name}-{label}"


def grid_overrides(grid: list[str]) -> list[dict[str, Any]]:
    """['lr=0.001,0.003', 'batch_size=64,128'] -> the 4 override dicts of their product."""
    axes = []
    for entry in grid:
        key, separator, values_text = entry.partition("=")
        texts = [text for text in values_text.split(",") if text.strip()]
        if not separator or not key.strip() or not texts:
            raise ConfigError(f"--grid needs KEY=V1,V2,... (got {entry!r})")
        values = [parse_assignment(f"{key}={text}")[1] for text in texts]
        axes.append([(key.strip(), value) for value in values])
    return [dict(combination) for combination in itertools.product(*axes)]
