"""Exact resume: what a checkpoint must hold to continue a run, and putting it back.

Training captures every random stream with `rng_states` into each checkpoint. A resumption
loads the checkpoint early (`load_resume_checkpoint`, before any data is read), checks that it
continues the same run (`check_resumable`), then `restore_training_state` puts the weights,
optimizer, schedule and random streams back, so the resumed run is bit-identical to one that
was never interrupted (on the same device).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mnist_classifier.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    epoch_checkpoint_path,
    epoch_checkpoints,
    load_checkpoint,
)
from mnist_classifier.config import (
    TrainConfig,
    flatten,
    make_config,
    patience_used_up,
    read_config_file,
)
from mnist_classifier.files import json_object_if_regular
from mnist_classifier.messages import first_line
from mnist_classifier.model import SimpleCNN
from mnist_classifier.paths import is_run_folder


class ResumeError(RuntimeError):
    """A run cannot be resumed from the given checkpoint(s); says which and why."""


# Changing these between a checkpoint and its resumption would silently change the run.
RESUME_MUST_MATCH = (
    "batch_size",
    "lr",
    "label_smoothing",
    "model.dropout1",
    "model.dropout2",
    "seed",
    "schedule.name",
    "schedule.warmup_epochs",
    "schedule.step_size",
    "schedule.gamma",
    "data.validation_size",
    "data.split_seed",
    "data.max_train_images",
)
# A run's summary.json (and provenance.json) is a few hundred bytes: a file over this ceiling
# was never written by a run, only linked to a device or replaced by something else.
MAX_SUMMARY_BYTES = 1024 * 1024
# The random streams rng_states captures that every resumable checkpoint must hold.
RNG_STREAMS = {"torch", "python", "numpy", "batch_order"}


def rng_states(batch_order_generator: torch.Generator) -> dict:
    """Every random stream training draws from, as tensors and plain values."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "batch_order": batch_order_generator.get_state(),
    }


def restore_rng_states(states: dict, batch_order_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    batch_order_generator.set_state(states["batch_order"])


def load_resume_checkpoint(path: Path) -> LoadedCheckpoint:
    """A checkpoint to continue from: verified, and holding a usable training state."""
    checkpoint = load_checkpoint(path)
    check_training_state(checkpoint)
    return checkpoint


def check_training_state(checkpoint: LoadedCheckpoint) -> None:
    """Refuse, even with --force, a checkpoint without a usable training state to continue."""
    problem = ""
    history = checkpoint.history
    if checkpoint.rng_state is None or not RNG_STREAMS.issubset(checkpoint.rng_state):
        problem = "it holds no random-number state"
    elif not history:
        problem = "its epoch history is empty"
    elif not all(isinstance(record, dict) for record in history):
        problem = "its epoch history is not a list of records"
    elif checkpoint.global_step is None:
        problem = "it holds no step counter"
    elif checkpoint.early_stopping is None:
        problem = "it holds no early-stopping counters"
    if problem:
        raise ResumeError(
            f"cannot resume from {checkpoint.path}: {problem}, so the run cannot continue "
            "exactly (not even with --force); start a new run, or resume another checkpoint"
        )
    # Loading it into a fresh optimizer finds a damaged state before any work starts.
    optimizer = torch.optim.Adam(SimpleCNN().parameters())
    with restoring("optimizer state", checkpoint.path):
        optimizer.load_state_dict(checkpoint.optimizer_state_dict)


@contextmanager
def restoring(part: str, checkpoint_path: Path) -> Iterator[None]:
    """A damaged `part` of the saved state, found while restoring it, becomes one ResumeError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise ResumeError(
            f"cannot resume from {checkpoint_path}: its {part} is damaged "
            f"({first_line(error)[:200]})"
        ) from None


def check_epochs_left(checkpoint: LoadedCheckpoint, config: TrainConfig) -> None:
    """Refuse, before any file is touched, a resumption of a run that has finished (its epochs,
    or early stopping under `config`'s patience) and whose records are complete: it would only
    rewrite them for nothing. A finished run killed before it wrote its summary may resume: it
    trains nothing and writes the records."""
    finished, needed = _why_finished(checkpoint, config)
    if finished and run_records_complete(checkpoint):
        # A onecycle run cannot be lengthened (restore_training_state): more epochs are a new run.
        how = "resume with"
        if config.schedule.name == "onecycle" and config.epochs <= checkpoint.epoch:
            how = "train a new run (a onecycle schedule spans its run) with"
        raise ResumeError(
            f"nothing left to train: {' and '.join(finished)} ({checkpoint.path}); "
            f"to train more, {how} {' and '.join(needed)}"
        )


def run_finished(checkpoint: LoadedCheckpoint, config: TrainConfig) -> bool:
    """Whether a run resumed from `checkpoint` under `config` would train nothing (its epochs
    are done, or early stopping ended it) and its records say it finished: the resumption
    check_epochs_left refuses."""
    finished, _ = _why_finished(checkpoint, config)
    return bool(finished) and run_records_complete(checkpoint)


def _why_finished(checkpoint: LoadedCheckpoint, config: TrainConfig) -> tuple[list[str], list[str]]:
    """Why a run resumed from `checkpoint` under `config` would train no further epoch (nothing
    when it would), and the settings each reason needs changed to train more."""
    epochs = f"{checkpoint.epoch} epoch{'s' if checkpoint.epoch != 1 else ''}"
    finished, needed = [], []
    if config.epochs <= checkpoint.epoch:
        finished.append(f"the run already has {epochs} and epochs is {config.epochs}")
        needed.append(f"--epochs {checkpoint.epoch + 1} or more")
        # check_resumable refuses another length for these: the schedule spans the run. A
        # cosine one can be forced on; a onecycle one cannot step past its last step.
        if config.schedule.name == "cosine":
            needed.append("--force (the cosine schedule spans the epochs)")
    patience, stalled = config.early_stopping.patience, (checkpoint.early_stopping or (0, 0))[1]
    if patience_used_up(patience, stalled):
        finished.append(
            f"it stopped early ({config.early_stopping.metric} did not improve for {stalled} "
            f"epochs; early_stopping.patience is {patience})"
        )
        needed.append(f"--set early_stopping.patience={stalled + 1} or more (0 switches it off)")
    return finished, needed


def run_records_complete(checkpoint: LoadedCheckpoint) -> bool:
    """Whether the records of the run folder holding `checkpoint` are complete: not when
    training was killed after saving it, its run's newest, before writing the summary. (A
    damaged summary counts as incomplete; resuming into that run then refuses it.)"""
    run_dir = checkpoint.path.parent
    if not is_run_folder(run_dir):
        return True  # it resumes into a new run folder: nothing there to complete
    newest = epoch_checkpoints(run_dir)
    if newest and newest[0] != epoch_checkpoint_path(run_dir, checkpoint.epoch):
        return True  # the run went past it: finishing here would drop the later epochs' rows
    summary = json_object_if_regular(run_dir / "summary.json", MAX_SUMMARY_BYTES)
    return summary is not None and summary.get("epochs_run") == checkpoint.epoch


def check_resumable(
    checkpoint: LoadedCheckpoint, config: TrainConfig, data_sha256: dict, world_size: int = 1
) -> None:
    """Refuse a resumption that would not continue the same run (override with --force)."""
    saved, wanted = flatten(checkpoint.config.to_dict()), flatten(config.to_dict())
    keys = list(RESUME_MUST_MATCH)
    if config.schedule.name in ("cosine", "onecycle"):
        keys.append("epochs")  # these schedules are laid out over the whole run
    changed = [
        f"{key} {saved[key]!r} -> {wanted[key]!r}" for key in keys if saved[key] != wanted[key]
    ]
    if checkpoint.data_sha256 != data_sha256:
        changed.append("the data set's digests")
    if checkpoint.world_size != world_size:
        changed.append(f"processes {checkpoint.world_size} -> {world_size}")
    if changed:
        raise ResumeError(
            f"refusing to resume from {checkpoint.path}: {'; '.join(changed)} "
            "(use --force to resume anyway)"
        )


def restore_training_state(
    checkpoint: LoadedCheckpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch_order_generator: torch.Generator,
    rank: int = 0,
) -> None:
    """Put the weights, optimizer, schedule and this rank's random streams back as saved."""
    model.load_state_dict(checkpoint.model_state_dict)
    with restoring("optimizer state", checkpoint.path):
        optimizer.load_state_dict(checkpoint.optimizer_state_dict)
    if scheduler is not None and checkpoint.scheduler_state_dict:
        # A one-cycle schedule is laid out over the run's steps and cannot step past them
        # (torch raises): a run of another length (--force) must not continue it.
        laid_out = getattr(scheduler, "total_steps", None)
        with restoring("schedule state", checkpoint.path):
            scheduler.load_state_dict(checkpoint.scheduler_state_dict)
        if laid_out is not None and scheduler.total_steps != laid_out:
            raise ResumeError(
                f"cannot resume from {checkpoint.path}: its onecycle schedule is laid out over "
                f"{scheduler.total_steps} steps and this run would take {laid_out} (another "
                "--epochs, batch size or process count); a onecycle run cannot change its "
                "length: train a new run"
            )
    by_rank = checkpoint.rng_state_by_rank or [checkpoint.rng_state]
    with restoring("random-number state", checkpoint.path):
        restore_rng_states(by_rank[rank % len(by_rank)], batch_order_generator)


def config_for_resume(
    checkpoint: LoadedCheckpoint, explicit: dict, config_file: Path | None = None
) -> TrainConfig:
    """The config a resumed run continues with: the one saved in `checkpoint`, under the
    settings given now (`config_file`, then `explicit` dotted keys), which check_resumable
    still checks."""
    settings = flatten(checkpoint.config.to_dict())
    if config_file is not None:
        settings.update(flatten(read_config_file(config_file)))
    settings.update(explicit)
    return make_config(settings)


def find_resume_checkpoint(directory: Path) -> tuple[LoadedCheckpoint | None, list[str]]:
    """The newest epoch checkpoint that passes every check, loaded (so it is read and verified
    once), and why newer ones were skipped.

    None when there are no checkpoints at all; ResumeError when there are some but none is valid,
    so a run never silently starts again from scratch.
    """
    skipped = []
    candidates = epoch_checkpoints(directory)
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            skipped.append(f"skipped {path.name}: {error}")
            continue
        return checkpoint, skipped
    if candidates:
        raise ResumeError(
            f"no valid checkpoint to resume from in {directory}:\n  " + "\n  ".join(skipped)
        )
    return None, skipped
