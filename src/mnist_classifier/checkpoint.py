"""Checkpoint files: what goes in them, how they are written, and the one way to read them.

A checkpoint is a dict of tensors and plain values only, so that
`torch.load(..., weights_only=True)` reads it and no file can run code on load.
CheckpointContents is its one schema: `to_payload()` writes that dict, `load_checkpoint` reads
it back as a LoadedCheckpoint, and nothing else touches the file's keys.

Writing survives a crash at any instant. Each checkpoint has a sidecar `<name>.sha256` in
`sha256sum` format. A save writes the new file to a temporary name and fsyncs it, adds the new
digest to the sidecar (which then accepts the old file and the new one), renames the file into
place, fsyncs the folder, and finally rewrites the sidecar with the new digest alone. Whenever
the process dies, the file on disk is the old one or the new one, and the sidecar vouches for
it; a stray temporary is ignored and removed at the next start. Temporaries carry this
project's prefix and their target's name, so that nothing else in the folder is ever removed.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mnist_classifier.config import ConfigError, TrainConfig, config_from_dict, shown
from mnist_classifier.datasets import DatasetSpec, Normalization, dataset_spec
from mnist_classifier.files import (
    OUR_TEMPORARY,
    TEMPORARY_PREFIX,
    TEMPORARY_SUFFIX,
    FileRefused,
    LockHeld,
    holding_lock,
    make_folders,
    read_regular_file,
    remove_made_folders,
    sha256_of,
    write_atomically,
)
from mnist_classifier.model import SimpleCNN
from mnist_classifier.paths import BEST_CHECKPOINT_NAME, DEFAULT_STAGING_DIR, shell_command

SCHEMA_VERSION = 1
ARCHITECTURE = "SimpleCNN"
DIGEST_SUFFIX = ".sha256"
# A sidecar holds a line or two of 64 hex digits and a name.
MAX_DIGEST_FILE_BYTES = 4096
# Held (flock) by the one process that writes a folder's checkpoints while it trains.
TRAINING_LOCK_NAME = ".mnist-training.lock"
# The lab's keys first; the rest are ours.
REQUIRED_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "epoch",
    "loss",
    "accuracy",
    "schema_version",
    "architecture",
    "config",
)
# The lab's `accuracy` key holds a percent, where the rest of the schema holds a fraction. The
# conversions' float error showed: 9696 of 10000 right went in as 96.96000000000001 and came
# back as 0.9696000000000001. A split holds fewer than 10**5 images, so ten decimals of a
# fraction tell every count of images right from the next: rounded to them, the figure is the
# count's again, and a percent saved with the noise reads back as counted too.
ACCURACY_DECIMALS = 10


def lab_percent(fraction: float) -> float:
    """A fraction 0..1 as the percent the lab's `accuracy` key holds."""
    return round(100 * fraction, ACCURACY_DECIMALS - 2)


def fraction_of_lab_percent(percent: float) -> float:
    """The lab's percent as the fraction 0..1 the rest of the schema holds."""
    return round(percent / 100, ACCURACY_DECIMALS)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, altered, not ours, or of another architecture."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the files that were there before are untouched."""


class CheckpointDirInUse(RuntimeError):
    """Another training is writing its checkpoints into the same folder."""


class EarlierTrainingFound(RuntimeError):
    """A new training would mix its checkpoints with those an earlier one left in the folder."""


@dataclass(frozen=True, kw_only=True)
class CheckpointContents:
    """Every value a checkpoint holds, typed: the one schema, written by `to_payload()`.

    The file keeps the lab's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`, `loss`,
    `accuracy` in percent) beside ours. Files not written by training (e.g. a lab's own) may
    lack the keys after `normalization`; they read as the defaults below.
    """

    epoch: int
    model_state_dict: dict[str, torch.Tensor]
    optimizer_state_dict: dict[str, Any]
    validation_loss: float  # key `loss`
    validation_accuracy: float  # 0..1; key `accuracy`, the lab's percent
    config: TrainConfig
    normalization: Normalization  # what the weights were trained with
    train_loss: float | None = None
    train_accuracy: float | None = None  # 0..1, over the epoch's batches with dropout on
    best_validation_accuracy: float | None = None  # 0..1, over the run so far
    precision: str = ""
    device: str = ""
    torch_version: str = ""
    data_sha256: dict[str, str] | None = None  # the verified digests of the data set's files
    run_dir: str = ""  # the run whose logs describe this checkpoint, even when saved elsewhere
    # What an exact resume needs (resume.py checks it is all there):
    scheduler_state_dict: dict[str, Any] = field(default_factory=dict)  # {} without a schedule
    rng_state: dict[str, Any] | None = None  # rank 0's random streams
    rng_state_by_rank: list[dict[str, Any]] = field(default_factory=list)  # under torchrun
    world_size: int = 1
    global_step: int | None = None  # optimizer steps taken over the whole run
    early_stopping: tuple[float, int] | None = None  # best value, epochs without improvement
    history: list[dict[str, Any]] | None = None  # every epoch so far, as plain records

    @property
    def dataset(self) -> DatasetSpec:
        return dataset_spec(self.config.data.dataset)

    def to_payload(self) -> dict[str, Any]:
        """The dict a checkpoint file holds: tensors and plain values only."""
        return {
            # The lab's keys first; the rest are ours.
            "model_state_dict": self.model_state_dict,
            "optimizer_state_dict": self.optimizer_state_dict,
            "epoch": self.epoch,
            "loss": self.validation_loss,
            "accuracy": lab_percent(self.validation_accuracy),
            "schema_version": SCHEMA_VERSION,
            "architecture": ARCHITECTURE,
            "config": self.config.to_dict(),
            "normalization": self.normalization._asdict(),
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "best_validation_accuracy": self.best_validation_accuracy,
            "precision": self.precision,
            "device": self.device,
            "torch_version": self.torch_version,
            "data_sha256": self.data_sha256,
            "run_dir": self.run_dir,
            "scheduler_state_dict": self.scheduler_state_dict,
            "rng_state": self.rng_state,
            "rng_state_by_rank": self.rng_state_by_rank,
            "world_size": self.world_size,
            "global_step": self.global_step,
            "early_stopping": None if self.early_stopping is None else list(self.early_stopping),
            "history": self.history,
        }


@dataclass(frozen=True, kw_only=True)
class LoadedCheckpoint(CheckpointContents):
    """A checkpoint read back and verified, with its model rebuilt."""

    path: Path
    model: SimpleCNN  # on the CPU, in eval mode
    sha256: str  # the file's, as read and verified against its sidecar


def require_dataset(checkpoint: LoadedCheckpoint, dataset: str, action: str) -> None:
    """Refuse to `action` (evaluate, resume, ...) a model on a data set it was not trained on."""
    if checkpoint.config.data.dataset != dataset:
        wanted, trained_on = dataset_spec(dataset), checkpoint.dataset
        raise CheckpointError(
            f"refusing to {action} {checkpoint.path} with {wanted.title}: it was trained on "
            f"{trained_on.title}; use --dataset {trained_on.name} (or another checkpoint)"
        )


def _check_normalization(path: Path, saved: Any) -> None:
    values = saved.values() if isinstance(saved, dict) else ()
    if not (
        isinstance(saved, dict)
        and set(saved) == {"mean", "std"}
        and all(isinstance(value, float) and math.isfinite(value) for value in values)
        and saved["std"] > 0
    ):
        raise CheckpointError(
            f"{path} carries an invalid normalization {saved!r}; expected "
            "{'mean': float, 'std': float > 0}"
        )


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_digests(path: Path, digests: list[str]) -> None:
    lines = "".join(f"{digest}  {path.name}\n" for digest in digests)
    write_atomically(digest_path(path), lines.encode())


def _accepted_digests(path: Path) -> list[str]:
    """The digests the sidecar vouches for; none when it is missing or unreadable.

    Raises FileRefused when the sidecar is a FIFO, a device or oversized: reading it could
    hang or never end, and it is not a file this project wrote.
    """
    try:
        lines = read_regular_file(digest_path(path), MAX_DIGEST_FILE_BYTES).decode().splitlines()
    except FileRefused:
        raise
    except (OSError, UnicodeDecodeError):
        return []
    # sha256sum -c takes hex in either case, so uppercase digests are read as lowercase ones.
    return [line.split()[0].lower() for line in lines if line.strip()]


def _current_digest(path: Path) -> list[str]:
    """The digest of the file now at `path`, if its sidecar vouches for it; else nothing."""
    if not path.exists():
        return []
    current = sha256_of(path)
    return [current] if current in _accepted_digests(path) else []


def _commit_with_digest(path: Path, write) -> str:
    """The save protocol of the module docstring; returns the new file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new_digest = ""

    def vouch_for_both(temporary: Path) -> None:
        nonlocal new_digest
        new_digest = sha256_of(temporary)
        _write_digests(path, [*_current_digest(path), new_digest])

    write_atomically(path, write, before_rename=vouch_for_both)
    _write_digests(path, [new_digest])
    return new_digest


def save_checkpoint(path: Path, payload: dict[str, Any]) -> str:
    """Write `payload` to `path` crash-safely (see the module docstring); returns its SHA-256.

    Raises CheckpointSaveError, leaving every earlier file as it was, when the write fails,
    e.g. with no space left on the device.
    """
    try:
        return _commit_with_digest(path, lambda handle: _torch_save(payload, handle))
    except OSError as error:
        reason = "no space left on the device" if error.errno == errno.ENOSPC else str(error)
        raise CheckpointSaveError(
            f"could not save {path}: {reason}; the checkpoints saved before are intact"
        ) from None


def _torch_save(payload: dict[str, Any], handle: BinaryIO) -> None:
    """torch.save, with a failed write raised as the OSError it is: torch's zip writer turns
    one (a full disk) into a RuntimeError ("unexpected pos ...") that keeps it as context."""
    try:
        torch.save(payload, handle)
    except RuntimeError as error:
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries a killed save left behind (ours only); returns what was removed."""
    if not directory.is_dir():
        return []
    stale = [
        path
        for path in directory.glob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}")
        if OUR_TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def epoch_checkpoint_path(directory: Path, epoch: int) -> Path:
    """Where training saves the checkpoint of `epoch`."""
    return Path(directory) / f"checkpoint_epoch_{epoch}.pt"


def _epoch_number(path: Path) -> int:
    match = re.fullmatch(r"checkpoint_epoch_(\d+)\.pt", path.name)
    return int(match.group(1)) if match else -1


def epoch_checkpoints(directory: Path) -> list[Path]:
    """checkpoint_epoch_N.pt files in `directory`, newest epoch first."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.glob("checkpoint_epoch_*.pt") if _epoch_number(path) > 0]
    return sorted(found, key=_epoch_number, reverse=True)


def training_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints a training leaves in `directory`: best_model.pt and its epochs'."""
    best = Path(directory) / BEST_CHECKPOINT_NAME
    return ([best] if best.is_file() else []) + epoch_checkpoints(Path(directory))


@contextmanager
def holding_checkpoint_dir(directory: Path) -> Iterator[None]:
    """Keep every other training out of `directory` while the block writes its checkpoints.

    Two runs saving into one folder would overwrite each other's best_model.pt and epochs, and
    each report its own figures for files that hold the other's weights.
    """
    directory = Path(directory)
    made = make_folders(directory)
    try:
        with holding_lock(directory / TRAINING_LOCK_NAME):
            yield
    except LockHeld:
        raise CheckpointDirInUse(
            f"another training is writing its checkpoints into {directory} (it holds "
            f"{directory / TRAINING_LOCK_NAME}); wait for it to finish or choose another "
            "--output-dir"
        ) from None
    except BaseException:
        # A start that failed before its first checkpoint (unverified data, say) leaves no
        # folder behind that holds only its lock.
        remove_made_folders(made, leftovers=(TRAINING_LOCK_NAME,))
        raise


def delete_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


def copy_checkpoint(source: Path, destination: Path) -> str:
    """Copy a checkpoint that verifies, with the same crash-safe protocol as a save."""
    load_checkpoint(source)  # never copy what would not load
    data = Path(source).read_bytes()
    return _commit_with_digest(destination, lambda handle: handle.write(data))


def load_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """Read, check and rebuild a checkpoint; any failure is one CheckpointError naming the file."""
    path = Path(path)
    try:
        return _load_checkpoint(path)
    except OSError as error:  # e.g. a folder on the way that this user may not enter
        raise CheckpointError(
            f"{path} cannot be read ({error.strerror or error}); check the file's and its "
            "folders' permissions"
        ) from None


def _load_checkpoint(path: Path) -> LoadedCheckpoint:
    if path.is_symlink() and not path.exists():
        raise CheckpointError(
            f"{path} is a broken link or a symlink loop; point it at a checkpoint"
        )
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give the path of a checkpoint")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}. Train a model first: python train_mnist.py "
            f"(or mnist train), then check it exists: ls -lh {DEFAULT_STAGING_DIR}/"
        )
    try:
        accepted = _accepted_digests(path)
    except FileRefused as error:
        raise CheckpointError(f"{error}: a digest file must be a small plain file") from None
    if not accepted:
        raise CheckpointError(
            f"{path} has no digest file {digest_path(path).name} beside it, so it cannot be "
            "verified; if you trust the file, create one: "
            f"{shell_command('sha256sum', path)} > {shell_command(digest_path(path))}"
        )
    actual = sha256_of(path)
    if actual not in accepted:
        raise CheckpointError(
            f"{path} does not match its digest (SHA-256 {actual[:16]}..., expected "
            f"{accepted[-1][:16]}...): the file is truncated or altered"
        )
    with path.open("rb") as file:
        export_format = export_format_of(file, path.name)
        file.seek(0)
        head = file.read(4)
    if export_format:
        what, instead = EXPORT_USE[export_format]
        raise CheckpointError(f"{path} is {what}, not a checkpoint: {instead}")
    # torch.save writes a zip, or (before torch 1.6) a pickle: anything else (a text file named
    # .pt) would reach the unpickler, whose refusal speaks of code it could run.
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: its first bytes are not those torch.save "
            "writes (a file of another kind under a checkpoint's name?)"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"{path} was refused: it holds an object that is not a tensor or plain value{what}, "
            "and loading it could run code"
        ) from None
    except Exception:  # a malformed file can fail anywhere in the unpickler
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is truncated or damaged"
        ) from None
    if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_KEYS):
        missing = [key for key in REQUIRED_KEYS if not isinstance(raw, dict) or key not in raw]
        raise CheckpointError(
            f"{path} is not a mnist-classifier checkpoint (missing {', '.join(missing)})"
        )
    if raw["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint schema version {raw['schema_version']!r}; "
            f"this version of mnist-classifier reads version {SCHEMA_VERSION}"
        )
    if raw["architecture"] != ARCHITECTURE:
        raise CheckpointError(f"{path} holds a {raw['architecture']!r}, not a {ARCHITECTURE}")
    problem = _value_type_problem(raw)
    if problem:
        raise CheckpointError(f"{path} is not a valid checkpoint: {problem}")
    try:
        config = config_from_dict(raw["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} carries an invalid config: {error}") from None
    if "normalization" in raw:
        _check_normalization(path, raw["normalization"])
    model = SimpleCNN(config.model)  # the one place a model is rebuilt from a checkpoint
    try:
        model.load_state_dict(raw["model_state_dict"])
    except RuntimeError as error:
        detail = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path} holds weights of another architecture: "
            f"{detail[1].strip() if len(detail) > 1 else detail[0]}"
        ) from None
    # NaN weights would give NaN probabilities (invalid JSON) everywhere the model is used.
    not_finite = [
        name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()
    ]
    if not_finite:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or infinity in {', '.join(not_finite)}); "
            "the training that wrote it diverged: use an earlier checkpoint"
        )
    model.eval()
    return LoadedCheckpoint(path=path, model=model, sha256=actual, **_contents(raw, config))


# What each export format is called, and what to do with such a file given where a checkpoint
# belongs (`mnist export` writes all three).
EXPORT_USE = {
    "onnx": ("an ONNX export", "predict or serve it with --backend onnxruntime --model PATH"),
    "safetensors": ("a safetensors export", "give the checkpoint it was exported from"),
    "torchscript": (
        "a TorchScript export",
        "load it with torch.jit.load, or give the checkpoint it came from",
    ),
}


def export_format_of(file: BinaryIO, name: str) -> str | None:
    """The export format (as `mnist export --format` names it) that the open binary `file` is
    laid out in, from its first bytes; None for anything else, a checkpoint included. `name` is
    the file's name (an ONNX file is told partly by its suffix).

    This is the one description of what each export format looks like: load_checkpoint uses it
    to name an export given as a checkpoint (torch.load would misname each: ONNX and safetensors
    bytes as a pickle holding "an object that could run code", TorchScript with a warning
    advising weights_only=False), and export.is_our_export before it looks for our marker.
    """
    file.seek(0)
    head = file.read(64 * 1024)
    if head[:2] == b"PK":  # a zip, as torch.save writes too: TorchScript's holds its constants
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else None
    size = file.seek(0, os.SEEK_END)
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 0 < header_length <= size - 8:
        return "safetensors"  # an 8-byte length, then its JSON header
    if head[:1] == b"\x08" and (Path(name).suffix.lower() == ".onnx" or b"pytorch" in head[:256]):
        return "onnx"  # a protobuf: ir_version first, then the producer's name
    return None


def _contents(raw: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """The schema's fields from a file's checked dict. A resume-only value of the wrong kind
    reads as absent, and resume.py refuses it by name."""

    def of_type(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = raw.get(key)
        return value if isinstance(value, kind) else default

    saved_normalization = raw.get("normalization")
    early_stopping = raw.get("early_stopping")
    return {
        "epoch": int(raw["epoch"]),
        "model_state_dict": raw["model_state_dict"],
        "optimizer_state_dict": raw["optimizer_state_dict"],
        "validation_loss": float(raw["loss"]),
        "validation_accuracy": fraction_of_lab_percent(float(raw["accuracy"])),
        "config": config,
        # Checkpoints from before it was saved are MNIST's.
        "normalization": Normalization(**saved_normalization)
        if saved_normalization is not None
        else dataset_spec(config.data.dataset).normalization,
        "train_loss": of_type("train_loss", (int, float)),
        "train_accuracy": of_type("train_accuracy", (int, float)),
        "best_validation_accuracy": of_type("best_validation_accuracy", (int, float)),
        "precision": of_type("precision", str, ""),
        "device": of_type("device", str, ""),
        "torch_version": of_type("torch_version", str, ""),
        "data_sha256": of_type("data_sha256", dict),
        "run_dir": of_type("run_dir", str, ""),
        "scheduler_state_dict": of_type("scheduler_state_dict", dict, {}),
        "rng_state": of_type("rng_state", dict),
        "rng_state_by_rank": of_type("rng_state_by_rank", list, []),
        "world_size": of_type("world_size", int, 1),
        "global_step": of_type("global_step", int),
        "early_stopping": tuple(early_stopping)
        if isinstance(early_stopping, list) and len(early_stopping) == 2
        else None,
        "history": of_type("history", list),
    }


def _value_type_problem(raw: dict[str, Any]) -> str:
    """What is of the wrong type among the lab's keys (a foreign file re-trusted), or ''."""

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    state = raw["model_state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        return "model_state_dict must be a mapping of names to tensors"
    if not isinstance(raw["optimizer_state_dict"], dict):
        return "optimizer_state_dict must be a mapping"
    if not isinstance(raw["epoch"], int) or isinstance(raw["epoch"], bool) or raw["epoch"] < 1:
        return f"epoch must be a whole number of at least 1 (got {shown(raw['epoch'])})"
    for key in ("loss", "accuracy"):
        if not is_number(raw[key]):
            return f"{key} must be a number (got {shown(raw[key])})"
    return ""


def check_output_dir(
    path: Path | str, setting: str = "output_dir", flag: str = "--output-dir"
) -> None:
    """Fail before any work, not after the first epoch, when a folder could not be written.

    The folder is made (with any missing parents) and a file is created and removed in it;
    then the folders this check made are removed again, so that a command that fails later
    leaves nothing behind. Whatever writes into the folder later makes it again.
    `setting` and `flag` name what the folder is for in the message (e.g. runs_dir).
    """
    path = Path(path)
    made: list[Path] = []
    try:
        made = make_folders(path)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"{setting} {str(path)!r} cannot be written ({error.strerror or error}); "
            f"choose another with {flag}"
        ) from None
    finally:
        remove_made_folders(made)
