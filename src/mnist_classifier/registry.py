"""The model registry: stages are plain folders, promotion is a verified, audited copy.

    models/<stage>/<name>/best_model.pt (+ .sha256)   the model of that stage; <name> is by
                                                      default its data set (mnist, fashion-mnist)
    models/<stage>/<name>/model_card.json             what it scored, where it came from
    models/history.jsonl                              one line per promotion, appended

`mnist train`'s lab-compatible output lands in models/staging/mnist/; `promote` evaluates a
candidate on the test set and copies it to the next stage only if it meets the threshold.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mnist_classifier.checkpoint import copy_checkpoint, load_checkpoint
from mnist_classifier.datasets import DATASET_NAMES, MNIST
from mnist_classifier.files import (
    read_regular_file,
    same_path,
    sha256_of,
    why_not_writable,
    write_json_atomically,
)
from mnist_classifier.paths import BEST_CHECKPOINT_NAME, staging_dir
from mnist_classifier.provenance import git_commit
from mnist_classifier.records import (
    FRACTION,
    NUMBER,
    OBJECT,
    TEXT,
    RecordError,
    check_field_types,
    read_json_record,
)

MODEL_CARD_NAME = "model_card.json"
HISTORY_NAME = "history.jsonl"
# A stage or model name becomes a folder name: no separators or dots, so it cannot escape;
# and no leading "-", so that no shell command given the folder reads it as an option.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# What `mnist models` shows of a card and `mnist serve` sends: a card is written by `promote`,
# so a value of another type is a damaged (or hand-edited) card. Serving checks the metrics it
# sends against its own schema as well (ranges, the per-class list).
MODEL_CARD_TYPES = {"promoted_utc": TEXT, "metrics": OBJECT, "checkpoint_sha256": TEXT}
MODEL_CARD_METRIC_TYPES = {"test_accuracy": FRACTION, "test_loss": NUMBER}
# A card is a few kilobytes; the history grows by about 200 bytes per promotion.
MAX_MODEL_CARD_BYTES = 1 << 20
MAX_HISTORY_BYTES = 64 << 20
# A stage's status in `mnist models` when its card was written for the model it replaced.
STALE_MODEL_CARD = "stale model card: it is for another model; promote again or move it aside"


class RegistryError(RuntimeError):
    """A stage or model is missing or misnamed; one line naming what."""


class PromotionRefused(RuntimeError):
    """The candidate scored below the promotion threshold; nothing was copied."""


def stage_checkpoint(models_dir: Path | str, stage: str, name: str = "mnist") -> Path:
    for label, value, example in (("stage", stage, "production"), ("name", name, "mnist")):
        if not PLAIN_NAME.fullmatch(value):
            raise RegistryError(
                f"{label} must be a plain name like {example}: letters, digits, _ and -, "
                f"beginning with a letter or digit (got {value!r})"
            )
    return Path(models_dir) / stage / name / BEST_CHECKPOINT_NAME


def existing_stage_checkpoint(models_dir: Path | str, stage: str, name: str = "mnist") -> Path:
    """The checkpoint of a stage that must already exist; a RegistryError lists those that do."""
    path = stage_checkpoint(models_dir, stage, name)
    if path.is_file():
        return path
    # Only a stage's best_model.pt makes it a stage: training keeps every epoch's checkpoint
    # beside it (models/staging/mnist/), which must not name the stage once per epoch.
    stages = sorted(
        found.parent.parent.name
        for found in Path(models_dir).glob(f"*/{name}/{BEST_CHECKPOINT_NAME}")
        if found.is_file()
    )
    missing = f"no stage {stage!r} in {models_dir} (no {path})"
    # How to get one there: training writes the staging model; other stages are promoted to.
    dataset = f" --dataset {name}" if name in DATASET_NAMES and name != MNIST.name else ""
    if stages:
        how = (
            f"mnist promote{dataset} --to {stage}"
            if stage != "staging"
            else f"python train_mnist.py{dataset}"
        )
        raise RegistryError(
            f"{missing}; the stages there are: {', '.join(stages)}: name one of them, or "
            f"first {how}"
        )
    how = f"python train_mnist.py{dataset} trains one into staging"
    if stage != "staging":
        how += f", then mnist promote{dataset} --to {stage}"
    raise RegistryError(f"{missing}; it holds no {name} models yet: {how}")


def checkpoint_to_read(
    checkpoint: Path | None, stage: str | None, models_dir: Path | str, dataset: str
) -> Path:
    """The checkpoint a command reads: the one named, or a stage's, never both; with neither,
    the lab's default, which follows the data set: models/staging/<dataset>/best_model.pt.

    A named checkpoint is always the one read, even where it is the default of another data set
    (MNIST's, say, with --dataset fashion-mnist): loading it then refuses the mismatch, rather
    than another model than the one named answering in its place."""
    if stage is None:
        if checkpoint is None:
            return Path(staging_dir(dataset)) / BEST_CHECKPOINT_NAME
        return checkpoint
    if checkpoint is not None:
        raise RegistryError("give --checkpoint or --stage, not both")
    return existing_stage_checkpoint(models_dir, stage, dataset)


def resolve_source(models_dir: Path | str, source: str, name: str) -> Path:
    """`--from` is a stage name, or a path to a checkpoint (e.g. a run's best_model.pt).

    A stage must exist: a RegistryError names those that do, as `evaluate --stage` does."""
    if PLAIN_NAME.fullmatch(source) and not source.endswith(".pt"):
        return existing_stage_checkpoint(models_dir, source, name)
    return Path(source)


@dataclass(frozen=True)
class Promotion:
    destination: Path
    model_card: dict[str, Any]
    history_problems: list[str] = field(default_factory=list)  # bad lines found, and skipped


def read_history(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The promotion records in `path`, and one note per line that is not a JSON record.

    A missing file is an empty history. Raises RegistryError when the file is not a regular
    file (a FIFO, a folder) or is too large: appending to it could hang or fail.
    """
    if not path.exists() and not path.is_symlink():
        return [], []
    try:
        text = read_regular_file(path, MAX_HISTORY_BYTES).decode("utf-8", errors="replace")
    except OSError as error:
        raise RegistryError(
            f"the promotion history cannot be used ({error.strerror or error}); "
            f"move {path} aside and promote again"
        ) from None
    records, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        # ValueError: not JSON, or a number of more digits than Python converts;
        # RecursionError: nested too deeply. Either way one bad line, not a lost history.
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            problems.append(f"{path} line {number} is not a JSON record; skipped it")
    return records, problems


def promote(
    candidate: Path,
    *,
    models_dir: Path | str,
    name: str,
    to_stage: str,
    min_test_accuracy: float,
    data_dir: Path | str,
    from_label: str,
    dataset: str = "mnist",
) -> Promotion:
    """Evaluate `candidate` on the test set; copy it to `to_stage` if it meets the threshold."""
    # Lazily: evaluating reads the data set, which the server (importing this module) never does.
    from mnist_classifier.evaluation_report import evaluate_checkpoint

    destination = stage_checkpoint(models_dir, to_stage, name)
    if same_path(candidate, destination):
        # Copying a file onto itself would only add a promotion that changed nothing.
        raise RegistryError(
            f"{candidate} is already the {to_stage} model; promote from another stage (--from) "
            "or a checkpoint, or to another stage (--to)"
        )
    history_path = Path(models_dir) / HISTORY_NAME
    _, history_problems = read_history(history_path)  # before anything is copied
    # Before the test set is evaluated, not after: the copy, card and history must land.
    for folder in (destination.parent, Path(models_dir)):
        if problem := why_not_writable(folder):
            raise RegistryError(
                f"cannot promote into {folder} ({problem}); choose a --models-dir you can write"
            )
    # The safe loader verifies digest, weights_only, schema and shapes.
    evaluation = evaluate_checkpoint(candidate, dataset, data_dir=data_dir, action="promote")
    loaded, result = evaluation.checkpoint, evaluation.result
    if result.accuracy < min_test_accuracy:
        raise PromotionRefused(
            f"{candidate} scored {result.accuracy:.2%} on the test set, below the required "
            f"{min_test_accuracy:.2%}; nothing was promoted"
        )
    digest = copy_checkpoint(candidate, destination)
    model_card = {
        "name": name,
        "stage": to_stage,
        "promoted_from": from_label,
        "source_checkpoint": str(candidate),
        "parent_checkpoint_sha256": sha256_of(candidate),
        "checkpoint_sha256": digest,
        "promoted_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "epoch": loaded.epoch,
        "metrics": {
            "test_accuracy": result.accuracy,
            "test_loss": result.loss,
            "test_correct": result.correct,
            "test_total": result.total,
            "per_class_accuracy": [
                result.class_accuracy(digit) for digit in range(len(loaded.dataset.class_names))
            ],
            "class_names": list(loaded.dataset.class_names),
            "validation_accuracy": loaded.validation_accuracy,
            "validation_loss": loaded.validation_loss,
        },
        "threshold": {"min_test_accuracy": min_test_accuracy},
        "config": loaded.config.to_dict(),
        "data_sha256": dict(evaluation.test_data.files.sha256),
    }
    write_json_atomically(destination.parent / MODEL_CARD_NAME, model_card)
    _append_history(
        history_path,
        {
            "time_utc": model_card["promoted_utc"],
            "name": name,
            "from": from_label,
            "to": to_stage,
            "checkpoint_sha256": digest,
            "test_accuracy": result.accuracy,
        },
    )
    return Promotion(
        destination=destination, model_card=model_card, history_problems=history_problems
    )


def _append_history(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        # A line cut short by a crash must not swallow this record: start a fresh line.
        handle.seek(0, os.SEEK_END)
        ends_mid_line = handle.tell() > 0 and not _ends_with_newline(handle)
        line = ("\n" if ends_mid_line else "") + json.dumps(entry) + "\n"
        # One write() in append mode: entries never interleave or half-land.
        handle.write(line.encode())
        handle.flush()
        os.fsync(handle.fileno())


def _ends_with_newline(handle) -> bool:
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) == b"\n"


def read_model_card(path: Path) -> dict[str, Any]:
    """A stage's model card; {} when there is none. Raises RegistryError naming the problem,
    a field of another type than its readers expect included."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        card = read_json_record(path, MAX_MODEL_CARD_BYTES)
        check_field_types(path, card, MODEL_CARD_TYPES)
        check_field_types(path, card.get("metrics", {}), MODEL_CARD_METRIC_TYPES, "metrics.")
    except RecordError as error:
        # Without its card a stage is still listed and served, only without test metrics.
        raise RegistryError(f"{error}; repair it or move it aside") from None
    return card


def is_card_of(card: dict[str, Any], checkpoint_digest: str) -> bool:
    """Whether `card` was written for the checkpoint whose SHA-256 is `checkpoint_digest`.

    `promote` writes a card beside the best_model.pt it copies, but a later best_model.pt may
    land there by other means (train_mnist.py retrains into models/staging/mnist/): the card
    then holds the figures of the model that was replaced. A card recording no digest (not
    written by `promote`) cannot tell, and is taken at its word."""
    recorded = card.get("checkpoint_sha256")
    return recorded is None or recorded.lower() == checkpoint_digest


def list_models(models_dir: Path | str) -> list[dict[str, Any]]:
    """One row per <stage>/<name> holding a best_model.pt; `status` is "ok" or the problem."""
    rows = []
    for checkpoint in sorted(Path(models_dir).glob(f"*/*/{BEST_CHECKPOINT_NAME}")):
        try:
            card, card_problem = read_model_card(checkpoint.parent / MODEL_CARD_NAME), ""
        except RegistryError as error:
            card, card_problem = {}, str(error)
        row = {
            "stage": checkpoint.parent.parent.name,
            "name": checkpoint.parent.name,
            "test_accuracy": card.get("metrics", {}).get("test_accuracy"),
            "promoted_utc": card.get("promoted_utc"),
        }
        try:
            loaded = load_checkpoint(checkpoint)
            row.update(epoch=loaded.epoch, validation_accuracy=loaded.validation_accuracy)
            row["status"] = "ok"
        except Exception as error:  # a listing reports a broken file, it does not stop at it
            row.update(epoch=None, validation_accuracy=None, status=f"invalid: {error}")
        else:  # the digest the loader verified: the file is read once, not hashed again
            if card and not is_card_of(card, loaded.sha256):
                # Its test accuracy and promotion time are another model's: shown as absent.
                row.update(test_accuracy=None, promoted_utc=None, status=STALE_MODEL_CARD)
        if card_problem:
            row["status"] = f"invalid model card: {card_problem}"
        rows.append(row)
    return rows
