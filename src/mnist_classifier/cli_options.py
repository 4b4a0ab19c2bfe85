"""The `mnist` command's parsing: one-line usage errors, exit codes, and the typed options.

cli.py lists the verbs; this module holds what they share: Click's usage errors turned into
one "error: ..." line, the choice Enums Typer checks, and the options that several commands
(or the many settings of `mnist train`) declare. Nothing here imports torch, so that
`mnist --help` answers at once.
"""

from __future__ import annotations

import errno
import re
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
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: docker stop, timeout, a batch scheduler's end of time


def fail(message: str, code: int) -> typer.Exit:
    """Print `message` as one "error: ..." line; raise the result to exit with `code`."""
    from mnist_classifier.reporting import print_error

    print_error(message)
    return typer.Exit(code)


@contextmanager
def failing(code: int, *errors: type[Exception], prefix: str = ""):
    """Inside, any of `errors` stops the command with its one-line message and exit `code`."""
    try:
        yield
    except errors as error:
        raise fail(prefix + str(error), code) from None


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
            sys.exit(fail(message, EXIT_USAGE).exit_code)
        except click_exceptions.ClickException as error:
            sys.exit(fail(error.format_message(), error.exit_code).exit_code)
        except typer.Abort:  # end of input at a prompt
            sys.exit(fail("aborted", EXIT_FAILURE).exit_code)
        except OSError as error:
            # What no command checked for: a path of the user's that cannot be read or written
            # (a folder not theirs, a read-only disk). The one line names it; no traceback.
            sys.exit(fail(_os_error_message(error), EXIT_FAILURE).exit_code)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _os_error_message(error: OSError) -> str:
    if error.errno == errno.ENOSPC:  # the file matters less than what to do
        where = f" while writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}; free some space and run the command again"
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    return f"{error.filename}: {reason}; check that the path exists and is yours to use"


class Group(_OneLineUsageErrors, typer_core.TyperGroup):
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


# The default an option's help text states, as every help text here ends with it.
_WRITTEN_DEFAULT = re.compile(r"\s*\[default: [^\]]*\]$")


class _Command(_OneLineUsageErrors, typer_core.TyperCommand):
    """A stand-alone script's command (train_mnist.py, test_mnist.py)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # An option whose default the script replaces (its default_map) shows that default,
        # as Click adds it: the package's, written into the help text, would contradict it.
        replaced = (self.context_settings or {}).get("default_map") or {}
        for parameter in self.params:
            if parameter.name in replaced and getattr(parameter, "help", None):
                parameter.help = _WRITTEN_DEFAULT.sub("", parameter.help)


APP_SETTINGS = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


def run_script(command, defaults: dict | None = None) -> None:
    """Run one command as a stand-alone script (the lab's train_mnist.py / test_mnist.py).

    `defaults` replaces option defaults by parameter name, e.g. the lab's checkpoint folder.
    """
    script = typer.Typer(**APP_SETTINGS)
    context_settings = {**APP_SETTINGS["context_settings"], "default_map": defaults or {}}
    script.command(cls=_Command, context_settings=context_settings)(command)
    script()


def _print_version(value: bool) -> None:
    if not value:
        return
    from mnist_classifier.reporting import print_version

    print_version()
    raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option(
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the package, torch and torchvision versions and exit.",
    ),
]


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


def value_of(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def _path_given(text: str) -> Path:
    """A path option's value. Path("") is ".", the current folder: an empty value (an unset
    shell variable, say) would read or write there, so it is refused while parsing."""
    if not text:
        raise typer.BadParameter("an empty path names no file or folder; give one")
    return Path(text)


DEFAULT_DATA_DIR = Path(paths.DEFAULT_DATA_DIR)
DEFAULT_MODELS_DIR = Path(paths.DEFAULT_MODELS_DIR)
# Help texts write every default one way, "[default: ./data]" (Click would print Path("./data")
# as "data" and a show_default text in parentheses).
# --checkpoint's default is None, "not given": the --dataset's staging model is then read. A
# default path could not be told from the same path given on purpose with another --dataset.
SHOWN_CHECKPOINT = f"[default: {paths.CHECKPOINT_OF_DATASET}]"

# For commands that read a checkpoint, --dataset names the data set the model must have been
# trained on: its test split, its registry folder (models/<stage>/<dataset>/) and its default
# checkpoint (models/staging/<dataset>/best_model.pt).
DatasetOption = Annotated[Dataset, typer.Option("--dataset", help="The model's data set.")]
MNIST_DATASET = Dataset(MNIST.name)
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Where the data lives (torchvision layout). [default: ./data]",
    ),
]
TestDataDirOption = Annotated[  # for the commands that read the test split
    Path,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Where the data set lives (torchvision layout). [default: ./data]",
        show_default=False,
    ),
]
StageOption = Annotated[
    str | None,
    typer.Option(help="Use the registry's model of this stage (e.g. production) instead."),
]
ModelsDirOption = Annotated[
    Path,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="The registry's root folder. [default: ./models]",
        show_default=False,
    ),
]
OnnxModelOption = Annotated[
    Path | None, typer.Option(help="Exported .onnx model (onnxruntime backend).")
]

# --- The training settings: each flag is a config key, None = not given --------------------------
ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config file (see configs/); flags override it."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: --set schedule.name=cosine (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", help="Only one line per epoch.")]
EpochsOption = Annotated[
    int | None, typer.Option(help="Passes over the training set. [default: 5]")
]
BatchSizeOption = Annotated[int | None, typer.Option(help="Images per step. [default: 64]")]
LrOption = Annotated[float | None, typer.Option(help="Adam (peak) learning rate. [default: 0.001]")]
ScheduleOption = Annotated[
    Schedule | None, typer.Option(help="Learning-rate schedule. [default: none]")
]
SeedOption = Annotated[
    int | None, typer.Option(help="Seed for weights, dropout and batch order. [default: 1]")
]
DeviceOption = Annotated[Device | None, typer.Option(help="[default: auto]", show_default=False)]
PrecisionOption = Annotated[
    Precision | None, typer.Option(help="[default: auto]", show_default=False)
]
TrainDatasetOption = Annotated[
    Dataset | None,
    typer.Option("--dataset", help="The data set. [default: mnist]", show_default=False),
]
OutputDirOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Where checkpoints go. [default: the run directory]",
    ),
]
ValidationSizeOption = Annotated[
    int | None, typer.Option(help="Training images held out for validation. [default: 5000]")
]
MaxTrainImagesOption = Annotated[
    int | None, typer.Option(help="Train on only this many images (0 = all). [default: 0]")
]
RunsDirOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_given, metavar="<path>", help="Where run directories go. [default: ./runs]"
    ),
]
NameOption = Annotated[
    str | None, typer.Option(help="The run's name, after its start time. [default: run]")
]
KeepLastOption = Annotated[
    int | None,
    typer.Option(help="Keep only the newest K epoch checkpoints (0 = all). [default: 0]"),
]


def _resume_target(value: str | None) -> str | None:
    # An empty value (a shell variable that was never set, say) would otherwise mean "no
    # resume" and start a fresh run from scratch beside the one the user meant to continue.
    if value is not None and not value.strip():
        raise typer.BadParameter("needs a checkpoint path or 'auto' (got an empty value)")
    return value


ResumeOption = Annotated[
    str | None,
    typer.Option(
        help="Continue a run exactly: a checkpoint_epoch_N.pt path, or 'auto' for the "
        "newest valid one in the output (or latest run) directory.",
        callback=_resume_target,
    ),
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Resume even though batch size, seed, etc. changed; start anew in an --output-dir "
        "holding an earlier training's checkpoints (they are removed); allow --nproc above the "
        "devices (or cores) here.",
    ),
]
NprocOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Data-parallel processes on this machine (launches torchrun); --batch-size "
        "is per process.",
    ),
]

# --- mnist runs ----------------------------------------------------------------------------------
RunFiltersArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Only runs whose config has these values: lr=0.002 schedule.name=onecycle.",
        show_default=False,
    ),
]
RunsToCompareOption = Annotated[
    Path,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Where run directories are. [default: ./runs]",
        show_default=False,
    ),
]
PlotOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Also draw the runs' learning curves into this .png, .svg or .pdf file (an "
        "existing file is replaced only if it is such a plot).",
    ),
]

# --- mnist sweep ---------------------------------------------------------------------------------
SweepResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue a stopped sweep (same --config, --set and --grid): keep each finished run, "
        "resume an interrupted one from its newest checkpoint, train the rest.",
    ),
]
GridOption = Annotated[
    list[str] | None,
    typer.Option(help="KEY=V1,V2,... ; runs every combination (repeatable)."),
]

# --- mnist evaluate ------------------------------------------------------------------------------
EvaluateCheckpointOption = Annotated[
    Path | None,
    typer.Option(help=f"Checkpoint to evaluate. {SHOWN_CHECKPOINT}", show_default=False),
]
ShowSamplesOption = Annotated[int, typer.Option(min=0, help="How many test predictions to list.")]
ReportDirOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="Where report.json and the figures go (replacing only an earlier report). "
        "[default: ./reports/<stage> for MNIST, ./reports/<stage>/<dataset> for another "
        "data set, or ./reports/<run>/<checkpoint name>]",
        show_default=False,
    ),
]
ReportFormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", help="text (the lab's report and more) or json (stdout)."),
]
GridSizeOption = Annotated[
    # min=1: a grid of no images was drawn as two blank figures.
    int, typer.Option(min=1, help="Images in the misclassified and sample-prediction grids.")
]

# --- mnist predict -------------------------------------------------------------------------------
ImagePathsArgument = Annotated[
    list[Path],
    # readable=False: a file that cannot be read is reported on its own line, like any other
    # unusable file, and the rest still run.
    typer.Argument(
        metavar="IMAGES",
        readable=False,
        help="Image files (PNG, JPEG, BMP, GIF, TIFF) or folders.",
    ),
]
PredictCheckpointOption = Annotated[
    Path | None,
    typer.Option(help=f"Checkpoint (torch backend). {SHOWN_CHECKPOINT}", show_default=False),
]
PredictionFormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="text (a table) or json (a list, on stdout).")
]
SavePreprocessedOption = Annotated[
    Path | None, typer.Option(help="Folder for the 28x28 images the model actually saw.")
]

# --- mnist export --------------------------------------------------------------------------------
ExportOutputOption = Annotated[
    Path,
    typer.Option(
        parser=_path_given,
        metavar="<path>",
        help="File to write (safetensors adds a .json sidecar); an existing file is replaced "
        "only if it is an earlier export.",
    ),
]
ExportCheckpointOption = Annotated[
    Path | None,
    typer.Option(help=f"Checkpoint to export. {SHOWN_CHECKPOINT}", show_default=False),
]

# --- mnist serve ---------------------------------------------------------------------------------
ServeCheckpointOption = Annotated[
    Path | None, typer.Option(help="Checkpoint to serve (torch backend), instead of --stage.")
]
ServeStageOption = Annotated[
    str | None,
    typer.Option(
        help="Registry stage to serve: <models-dir>/<stage>/<dataset>/best_model.pt. "
        "[default: production]",
        show_default=False,
    ),
]
HostOption = Annotated[
    str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")
]


def _number_in(low: float, high: float):
    """A float option's check: click's own range check lets NaN through with a message about
    the bound and takes inf as a value, so finiteness and the range are checked as one."""

    def check(value: float) -> float:
        if not low <= value <= high:  # False for NaN
            raise typer.BadParameter(f"must be a number from {low:g} to {high:g} (got {value})")
        return value

    return check


TimeoutOption = Annotated[
    float,
    typer.Option(
        callback=_number_in(0.01, 3600),
        help="Seconds a prediction may take before it answers 504 (0.01 to 3600).",
    ),
]
AllowedHostOption = Annotated[
    list[str] | None,
    typer.Option(
        help="A Host name clients use to reach the server (repeatable; '*.example.org', "
        "or '*' for any). Loopback names and the --host address are always allowed."
    ),
]

# --- mnist promote -------------------------------------------------------------------------------
ModelNameOption = Annotated[
    str | None,
    typer.Option(
        help="The model's name in the registry. [default: the data set's name, e.g. mnist]",
        show_default=False,
    ),
]
FromStageOption = Annotated[
    str, typer.Option("--from", help="A stage, or a checkpoint path (e.g. a run's best).")
]
MinTestAccuracyOption = Annotated[
    float,
    typer.Option(callback=_number_in(0, 1), help="Refuse below this test accuracy (0..1)."),
]
