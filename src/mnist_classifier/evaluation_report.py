"""Evaluating a checkpoint, and the report: every metric of one evaluation in one JSON-ready
dict, and its files.

`evaluate_checkpoint` loads a checkpoint, checks its data set, loads the verified test split
and evaluates: `mnist evaluate`, `mnist promote` and benchmarks/accuracy.py all go through it.
`build_report` computes (from an EvalResult and the test labels) what `mnist evaluate` shows
and saves: per-class precision/recall/F1, the confusion matrix, the most-confused pairs,
calibration, the misclassified images and sample predictions. `write_report_files` writes
report.json and the figures into one folder; `save_report` does both for one evaluation.
`check_report_dir` refuses a folder holding a file at one of those names that is not part of an
earlier report (report.json says who wrote it; each figure's metadata says so too), so a report
never replaces someone else's file. Never prints.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mnist_classifier import figures
from mnist_classifier.batching import Split
from mnist_classifier.checkpoint import LoadedCheckpoint, load_checkpoint, require_dataset
from mnist_classifier.data import MnistFiles, ensure_dataset, read_split
from mnist_classifier.datasets import MNIST, NUM_CLASSES
from mnist_classifier.evaluate import EvalResult, EvaluationObserver, evaluate
from mnist_classifier.files import NotOurFile, json_object_if_regular, refuse_to_replace
from mnist_classifier.metrics import (
    Calibration,
    calibration,
    class_metrics,
    confusion_matrix,
    most_confused_pairs,
)
from mnist_classifier.paths import DEFAULT_DATA_DIR
from mnist_classifier.runs import RunRecordError, record_test_accuracy

REPORT_JSON = "report.json"
FIGURE_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "sample_predictions": "sample_predictions.png",
    "reliability_diagram": "reliability_diagram.png",
}
REPORTS_DIR = Path("./reports")
# In every report.json: how a report folder's earlier report.json is told from someone else's.
WRITTEN_BY = {"written_by": "mnist evaluate"}
MAX_REPORT_BYTES = 64 << 20  # a report lists at most 10,000 misclassified images: about 1 MB


class ReportError(RuntimeError):
    """The report could not be written; one line naming the folder and why."""


@dataclass(frozen=True)
class VerifiedTestSplit:
    """A data set's verified files and its test split (uint8, on the CPU), read from them."""

    files: MnistFiles
    split: Split


def load_test_data(data_dir: Path | str, dataset: str) -> VerifiedTestSplit:
    """Obtain and verify the data set's files once, then read its test split from them."""
    files = ensure_dataset(data_dir, dataset)
    return VerifiedTestSplit(files, Split(*read_split(files, train=False)))


@dataclass(frozen=True)
class CheckpointEvaluation:
    """One checkpoint on its data set's test split: everything a report or a model card needs."""

    checkpoint: LoadedCheckpoint
    test_data: VerifiedTestSplit
    result: EvalResult


def evaluate_checkpoint(
    checkpoint: Path | str | LoadedCheckpoint,
    dataset: str,
    *,
    data_dir: Path | str = DEFAULT_DATA_DIR,
    test_data: VerifiedTestSplit | None = None,
    device: torch.device | None = None,
    batch_size: int = 1000,
    action: str = "evaluate",
    observer: EvaluationObserver | None = None,
) -> CheckpointEvaluation:
    """Load `checkpoint` (the safe loader) unless already loaded, refuse it if trained on
    another data set than `dataset` (naming `action`), then evaluate it on the test split.

    The test split comes from `test_data` when given (several checkpoints, one reading),
    else from `data_dir`. Raises CheckpointError or DataError with a one-line message.
    """
    device = device or torch.device("cpu")
    observer = observer or EvaluationObserver()
    loaded = checkpoint
    if not isinstance(loaded, LoadedCheckpoint):
        loaded = load_checkpoint(checkpoint)
    require_dataset(loaded, dataset, action)
    observer.loading_test_data(loaded, device)
    test_data = test_data or load_test_data(data_dir, dataset)
    observer.evaluating(loaded, test_data.split)
    result = evaluate(
        loaded.model.to(device),
        test_data.split.to(device),
        batch_size=batch_size,
        device=device,
        normalization=loaded.normalization,
    )
    return CheckpointEvaluation(loaded, test_data, result)


def save_report(
    evaluation: CheckpointEvaluation,
    *,
    grid_size: int,
    output_dir: Path | None = None,
    stage: str | None = None,
) -> dict:
    """Build the report, write report.json and the figures (into `output_dir`, else the
    default folder), and give the checkpoint's run its test accuracy. Returns the report as
    report.json holds it, with the written files under "files". Raises ReportError, or
    NotOurFile (writing nothing) when `check_report_dir` refuses the folder."""
    loaded = evaluation.checkpoint
    report = build_report(
        evaluation.result,
        evaluation.test_data.split.labels,
        checkpoint={
            "path": str(loaded.path),
            "epoch": loaded.epoch,
            "validation_accuracy": loaded.validation_accuracy,
        },
        grid_size=grid_size,
        class_names=loaded.dataset.class_names,
    )
    run_dir = loaded.run_dir
    report_dir = output_dir or default_report_dir(loaded.path, stage, run_dir, loaded.dataset.name)
    check_report_dir(report_dir)
    try:
        written = write_report_files(
            report, evaluation.test_data.split.images, report_dir, grid_size=grid_size
        )
    except OSError as error:
        raise ReportError(
            f"cannot write the report to {report_dir}: {error.strerror or error}"
        ) from None
    # A checkpoint inside a run directory gets its test accuracy into that run's summary,
    # so `mnist runs` can show it beside the validation figures.
    try:
        record_test_accuracy(loaded.path, evaluation.result.accuracy, run_dir, loaded.epoch)
    except RunRecordError as error:  # the report stands; only the run's summary lacks it
        raise ReportError(
            f"the report is in {report_dir}, but the test accuracy could not be added to the "
            f"run's summary: {error} (repair that file or move it aside)"
        ) from None
    return written


def check_report_dir(report_dir: Path) -> None:
    """NotOurFile unless `report_dir` is a folder (or nothing yet) whose files at the report's
    names, if any, are an earlier report's: a report replaces only what a report wrote."""
    if report_dir.exists() and not report_dir.is_dir():
        raise NotOurFile(f"{report_dir} is not a folder; choose another --output-dir")
    instead = "choose another --output-dir, or move that file away"
    report, figure = "a report of this project", "a figure of this project"
    refuse_to_replace(report_dir / REPORT_JSON, _is_our_report, report, instead)
    for name in FIGURE_FILES.values():
        refuse_to_replace(report_dir / name, figures.is_our_figure, figure, instead)


def _is_our_report(path: Path) -> bool:
    report = json_object_if_regular(path, MAX_REPORT_BYTES)
    return report is not None and all(report.get(k) == v for k, v in WRITTEN_BY.items())


def default_report_dir(checkpoint: Path, stage: str | None, run_dir: str, dataset: str) -> Path:
    """Where a report goes unless told: one folder per stage and data set, or per run and
    checkpoint, so that evaluating production, staging and each run's best_model.pt, on MNIST
    or Fashion-MNIST, never overwrite each other.

    `run_dir` is the run a checkpoint names (saved in every checkpoint); "" for none. A stage
    holds a model per data set (models/<stage>/<dataset>/), and so its reports: MNIST's in
    reports/<stage>/, where reports of earlier versions are and scripts read them, and another
    data set's in a folder of its name within it, which no report's file name can be."""
    if stage:
        return REPORTS_DIR / stage if dataset == MNIST.name else REPORTS_DIR / stage / dataset
    if run_dir:
        return REPORTS_DIR / Path(run_dir).name / checkpoint.stem
    return REPORTS_DIR / f"{checkpoint.resolve().parent.name}-{checkpoint.stem}"


def build_report(
    result: EvalResult,
    labels: torch.Tensor,
    *,
    checkpoint: dict,
    grid_size: int,
    class_names: tuple[str, ...] = MNIST.class_names,
) -> dict:
    """All the report's numbers; misclassified images most-confident first (the worst mistakes)."""
    labels = labels.cpu()
    confusion = confusion_matrix(labels, result.predictions, NUM_CLASSES)
    per_class = class_metrics(confusion)
    confidences = result.confidences
    correct = result.predictions == labels
    wrong = torch.nonzero(~correct).flatten()
    wrong = wrong[torch.argsort(confidences[wrong], descending=True, stable=True)]
    reliability = calibration(confidences, correct)

    def entry(index: int) -> dict:
        return {
            "index": index,
            "true": int(labels[index]),
            "predicted": int(result.predictions[index]),
            "confidence": float(confidences[index]),
        }

    return {
        "checkpoint": checkpoint,
        "class_names": list(class_names),  # index = class number, as in every list below
        "test_images": result.total,
        "accuracy": result.accuracy,
        "correct": result.correct,
        "loss": result.loss,
        "macro_f1": per_class.macro_f1,
        "per_class": [
            {
                "digit": digit,
                "label": class_names[digit],
                "precision": per_class.precision[digit],
                "recall": per_class.recall[digit],
                "f1": per_class.f1[digit],
                "support": per_class.support[digit],
            }
            for digit in range(NUM_CLASSES)
        ],
        "confusion_matrix": confusion.tolist(),  # rows: true digit, columns: predicted digit
        "most_confused_pairs": [asdict(pair) for pair in most_confused_pairs(confusion)],
        "calibration": asdict(reliability),
        "misclassified": [entry(int(index)) for index in wrong],
        "sample_predictions": [entry(index) for index in range(min(grid_size, result.total))],
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def write_report_files(
    report: dict, images: torch.Tensor, output_dir: Path, *, grid_size: int
) -> dict:
    """report.json and the four PNGs in `output_dir`; returns the report as report.json holds
    it, with the files written under "files". Every PNG is written, misclassified.png too
    when nothing was misclassified (it then says so)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    images = images.cpu()
    paths = {name: output_dir / file for name, file in FIGURE_FILES.items()}
    paths["report"] = output_dir / REPORT_JSON

    class_names = report["class_names"]
    figures.save_confusion_heatmap(
        torch.tensor(report["confusion_matrix"]), paths["confusion_matrix"], class_names
    )
    figures.save_reliability_diagram(
        Calibration(**report["calibration"]), paths["reliability_diagram"]
    )
    wrong = report["misclassified"]
    if wrong:
        shown_wrong = wrong[:grid_size]
        _grid(
            images,
            shown_wrong,
            f"Misclassified test images, most confident first ({len(shown_wrong)} of {len(wrong)})",
            paths["misclassified"],
            class_names,
        )
    else:  # an empty grid would read as a figure that failed to draw
        figures.save_notice(
            f"No misclassified images among the {report['test_images']:,} test images",
            paths["misclassified"],
        )
    samples = report["sample_predictions"]
    _grid(
        images,
        samples,
        f"Sample predictions: the first {len(samples)} test images",
        paths["sample_predictions"],
        class_names,
    )

    written = {**report, **WRITTEN_BY, "files": {name: str(path) for name, path in paths.items()}}
    paths["report"].write_text(json.dumps(written, indent=2) + "\n")
    return written


def _grid(
    images: torch.Tensor, entries: list[dict], title: str, path: Path, class_names: list[str]
) -> None:
    indices = torch.tensor([entry["index"] for entry in entries], dtype=torch.long)
    short = [figures.short_class_name(name) for name in class_names]
    captions = [
        f"{short[entry['true']]}→{short[entry['predicted']]} {100 * entry['confidence']:.0f}%"
        for entry in entries
    ]
    colours = ["black" if entry["true"] == entry["predicted"] else "red" for entry in entries]
    figures.save_digit_grid(
        images[indices], captions, colours, title + "\ntrue→predicted confidence", path
    )
