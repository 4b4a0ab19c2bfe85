"""Steps several `mnist` commands share: a library call whose errors stop the command with one
line and an exit code (1: the work failed; 2: the command line asked for something that cannot
be), and the training of one run that `train`, its torchrun ranks and `sweep` all do.

Like cli.py, it imports the library inside each step, so that `mnist --help` answers at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import typer

from mnist_classifier import paths
from mnist_classifier.cli_options import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Backend,
    fail,
    failing,
)


def check_model_options(
    backend: Backend, model: Path | None, checkpoint: Path | None, stage: str | None
) -> None:
    """The model options of predict and serve, refused before anything is loaded when they
    contradict each other: one of them would be ignored, and another model than the one meant
    would answer without a word."""
    if checkpoint is not None and stage is not None:
        raise fail("give --checkpoint or --stage, not both", EXIT_USAGE)
    if backend is Backend.onnxruntime:
        if model is None:
            raise fail(
                "--backend onnxruntime needs --model PATH.onnx (see mnist export)", EXIT_USAGE
            )
        if checkpoint is not None or stage is not None:
            raise fail(
                "--backend onnxruntime runs --model PATH.onnx alone; drop --checkpoint and --stage",
                EXIT_USAGE,
            )
    elif model is not None:
        raise fail("--model is for --backend onnxruntime; use --checkpoint", EXIT_USAGE)


def checkpoint_to_read(
    checkpoint: Path | None, stage: str | None, models_dir: Path, dataset: str
) -> Path:
    from mnist_classifier.registry import RegistryError, checkpoint_to_read

    with failing(EXIT_USAGE, RegistryError):
        return checkpoint_to_read(checkpoint, stage, models_dir, dataset)


def check_data_dir(data_dir: Path) -> None:
    """A --data-dir that is a file is a usage error before any work, as `mnist train` has it:
    else the command would start (load a model, print its device) and fail on reading it."""
    from mnist_classifier.data import DataError
    from mnist_classifier.data import check_data_dir as check

    with failing(EXIT_USAGE, DataError):
        check(data_dir)


def load_for_dataset(checkpoint: Path, dataset: str, action: str):
    """The checkpoint, read by the safe loader and refused if trained on another data set."""
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint, require_dataset

    with failing(EXIT_FAILURE, CheckpointError):
        loaded = load_checkpoint(checkpoint)
        require_dataset(loaded, dataset, action)
    return loaded


def check_plot_file(plot: Path) -> None:
    """--plot names a format matplotlib draws here, in a folder that can be written (checked
    before the table is printed, not after), and no file but an earlier plot of ours."""
    from mnist_classifier.figures import PLOT_FORMATS, is_our_figure
    from mnist_classifier.files import NotOurFile, refuse_to_replace, why_not_writable

    if plot.suffix.lower().removeprefix(".") not in PLOT_FORMATS:
        endings = ", ".join(f".{extension}" for extension in PLOT_FORMATS)
        raise fail(f"--plot {plot} must end in one of {endings}", EXIT_USAGE)
    if problem := why_not_writable(plot.parent):
        raise fail(f"cannot write {plot}: {problem}; choose another --plot", EXIT_USAGE)
    with failing(EXIT_USAGE, NotOurFile):
        instead = "choose another --plot, or move that file away"
        refuse_to_replace(plot, is_our_figure, "a plot of this project", instead)


def resolved_device(setting: str):
    from mnist_classifier.device import DeviceError, resolve_device

    with failing(EXIT_USAGE, DeviceError):
        return resolve_device(setting)


def explicit_settings(assignments: list[str] | None, flags: dict) -> dict:
    from mnist_classifier.config import ConfigError, explicit_settings

    with failing(EXIT_USAGE, ConfigError):
        return explicit_settings(assignments or [], flags)


def load_config(config_file: Path | None, settings: dict):
    """Defaults < file < `settings`; errors are usage errors. Nothing is checked or created."""
    from mnist_classifier.config import ConfigError
    from mnist_classifier.config import load_config as load

    with failing(EXIT_USAGE, ConfigError):
        return load(config_file, settings)


def with_lab_output_dir(config_file: Path | None, settings: dict) -> dict:
    """train_mnist.py's `settings`: checkpoints go to the lab's staging folder of the run's data
    set, unless --set or the config file names a folder (which then wins over this default)."""
    config = load_config(config_file, settings)
    if config.output_dir:
        return settings
    return {**settings, "output_dir": str(Path(paths.staging_dir(config.data.dataset)))}


def resolve_config(config_file: Path | None, settings: dict, processes: int | None = None):
    """The config, checked for this machine (batch size for `processes`, device, precision,
    writable folders, data folder); errors are usage errors."""
    from mnist_classifier.config import ConfigError
    from mnist_classifier.data import DataError
    from mnist_classifier.device import DeviceError
    from mnist_classifier.distributed import LaunchError
    from mnist_classifier.train import check_before_training

    config = load_config(config_file, settings)
    with failing(EXIT_USAGE, DeviceError, DataError, ConfigError, LaunchError):
        check_before_training(config, processes)
    return config


def train_one_run(
    config,
    quiet: bool,
    resume: str | None = None,
    force: bool = False,
    config_file: Path | None = None,
    settings: dict | None = None,
    divergence_fails: bool = True,
) -> Path | None:
    """Train in a run directory (a new one, or the resumed run's), printing progress.

    A resumed run continues with its own saved config under the settings given now (the
    --config file and the flags), so the user need not retype them. A run that diverges stops
    the command with its line; unless not `divergence_fails` (a sweep's run): then the line is
    printed and the run's folder, whose summary records the divergence, is returned.
    """
    import torch

    from mnist_classifier.checkpoint import (
        CheckpointDirInUse,
        CheckpointError,
        CheckpointSaveError,
        EarlierTrainingFound,
    )
    from mnist_classifier.config import ConfigError
    from mnist_classifier.cuda_graph import CudaGraphError
    from mnist_classifier.data import DataError
    from mnist_classifier.device import DeviceError, resolve_device
    from mnist_classifier.distributed import LaunchError, launch_rank, launch_world_size
    from mnist_classifier.reporting import (
        ConsoleTrainingObserver,
        print_error,
        print_resume_choice,
    )
    from mnist_classifier.resume import (
        ResumeError,
        check_epochs_left,
        check_training_state,
        config_for_resume,
    )
    from mnist_classifier.runs import (
        RunRecorder,
        RunRecordError,
        checkpoint_to_resume,
        run_directory,
        run_of_checkpoint,
    )
    from mnist_classifier.train import TrainingDiverged, check_batch_fits
    from mnist_classifier.train import train as run_training

    with failing(EXIT_USAGE, LaunchError):
        rank = launch_rank()
    with failing(EXIT_FAILURE, ResumeError, CheckpointError):
        resumed, skipped = checkpoint_to_resume(resume, config)
    resume_path = resumed.path if resumed is not None else None
    continued_run = run_of_checkpoint(resumed) if resumed is not None else None
    if resumed is not None:  # a checkpoint that cannot be resumed costs no run folder
        with failing(EXIT_USAGE, ResumeError, ConfigError, DeviceError):
            check_training_state(resumed)
            config = config_for_resume(resumed, settings or {}, config_file)
            check_batch_fits(config, resolve_device(config.device), launch_world_size())
            check_epochs_left(resumed, config)
    # A new run replaces an earlier training's checkpoints when told to (--force), in the lab's
    # staging folder (as the lab's script always did), and when --resume auto found a run
    # killed while saving its first best_model.pt there; else it is refused. A resumed run
    # replaces another training's checkpoints only when told to.
    replace_earlier = force or (
        resumed is None
        and (is_staging_dir(config) or (resume == "auto" and _first_save_interrupted(config)))
    )
    where = f"rank {rank}: " if rank is not None else ""
    failures = (
        DataError,
        CheckpointError,
        CheckpointSaveError,
        CheckpointDirInUse,
        TrainingDiverged,
        CudaGraphError,
        RunRecordError,
    )
    with (
        failing(EXIT_USAGE, ConfigError, ResumeError, EarlierTrainingFound, prefix=where),
        failing(EXIT_FAILURE, *failures, prefix=where),
        run_directory(config, continued_run, rank) as run_dir,
    ):
        observers = []
        if run_dir is not None:  # under torchrun, rank 0 alone prints and records
            # Said once the resumption is accepted and the run it continues is known to take
            # it, so that a refusal stays the one line it is.
            if resume is not None:
                print_resume_choice(resume_path, skipped, continued_run)
            observers = [
                ConsoleTrainingObserver(quiet=quiet, run_dir=run_dir),
                RunRecorder(run_dir),
            ]
        try:
            # Under torchrun, the launcher stops the other ranks with SIGTERM when one fails:
            # that rank's line says why, and theirs would only bury it.
            with terminated_as_interrupted() if rank is None else nullcontext():
                run_training(
                    config,
                    observers,
                    run_dir=run_dir,
                    resume_from=resumed,
                    force=force,
                    replace_earlier=replace_earlier,
                )
        except TrainingDiverged as error:
            if rank not in (None, 0):
                # Every rank sees the same summed loss diverge; rank 0 says so, once.
                raise typer.Exit(EXIT_FAILURE) from None
            if divergence_fails:
                raise
            print_error(where + str(error))
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM: say what is kept, how to go on
            how, code = how_stopped(stop)
            checkpoint_dir = Path(config.output_dir or run_dir or ".")
            raise fail(where + _interrupted(checkpoint_dir, how), code) from None
        except torch.OutOfMemoryError:  # a GPU's (a CPU's memory is checked before training)
            raise fail(
                f"{where}training ran out of GPU memory with batch_size {config.batch_size}; "
                "choose a smaller --batch-size",
                EXIT_FAILURE,
            ) from None
    return run_dir


class _Terminated(KeyboardInterrupt):
    """SIGTERM, met where the program is, as Ctrl-C's KeyboardInterrupt is."""


def how_stopped(stop: KeyboardInterrupt) -> tuple[str, int]:
    """("terminated", 143) for SIGTERM under terminated_as_interrupted, else ("interrupted",
    130): the word for the line, and the exit code a shell reports for that signal."""
    if isinstance(stop, _Terminated):
        return "terminated", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


@contextmanager
def terminated_as_interrupted() -> Iterator[None]:
    """Within the block, SIGTERM ends training as Ctrl-C does: the save in progress is left
    whole (or not made), and the line says what is saved and how to go on, where the default
    would end the process without a word. Signal handlers belong to the main thread alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signal_number, _frame) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(checkpoint_dir: Path, how: str) -> str:
    from mnist_classifier.checkpoint import epoch_checkpoints

    saved = epoch_checkpoints(checkpoint_dir) if checkpoint_dir.is_dir() else []
    if not saved:
        return f"{how} before the first epoch's checkpoint: nothing to resume from"
    return (
        f"{how}: the epochs up to {saved[0].name} are saved; continue with "
        + paths.shell_command("mnist", "train", "--resume", saved[0])
    )


def _first_save_interrupted(config) -> bool:
    """Whether the run's checkpoint folder holds just what a run killed between saving its
    first best_model.pt and its checkpoint_epoch_1.pt leaves: that best model, at epoch 1.
    Anything else there (a user's own best_model.pt, a model of a later epoch) is kept."""
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint, training_checkpoints

    if not config.output_dir:
        return False  # a new run folder: nothing earlier in it
    found = training_checkpoints(Path(config.output_dir))
    if [path.name for path in found] != [paths.BEST_CHECKPOINT_NAME]:
        return False
    try:
        return load_checkpoint(found[0]).epoch == 1
    except CheckpointError:
        return False


def is_staging_dir(config) -> bool:
    """Whether the run writes into the lab's staging folder of its data set."""
    from mnist_classifier.files import same_path

    if not config.output_dir:
        return False
    return same_path(config.output_dir, paths.staging_dir(config.data.dataset))
