"""The evaluation report: every metric of one evaluation in one JSON-ready dict, and its files.

`build_report` computes (from an EvalResult and the test labels) what `mnist evaluate` shows
and saves: per-class precision/recall/F1, the confusion matrix, the most-confused pairs,
calibration, the misclassified images and sample predictions. `write_report_files` writes
report.json and the figures into one folder. Never prints.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from mnist_classifier import figures
from mnist_classifier.datasets import MNIST, NUM_CLASSES
from mnist_classifier.evaluate import EvalResult
from mnist_classifier.metrics import (
    Calibration,
    calibration,
    class_metrics,
    confusion_matrix,
    most_confused_pairs,
)

REPORT_JSON = "report.json"
FIGURE_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "sample_predictions": "sample_predictions.png",
    "reliability_diagram": "reliability_diagram.png",
}
REPORTS_DIR = Path("./reports")


def default_report_dir(checkpoint: Path, stage: str | None, run_dir: str) -> Path:
    """Where a report goes unless told: one folder per stage, or per run and checkpoint, so
    that evaluating production, staging and each run's best_model.pt never overwrite each other.

    `run_dir` is the run a checkpoint names (saved in every checkpoint); "" for none."""
    if stage:
        return REPORTS_DIR / stage
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
) -> dict[str, Path]:
    """report.json and the four PNGs in `output_dir`; returns what was written, by name."""
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
    shown_wrong = report["misclassified"][:grid_size]
    _grid(
        images,
        shown_wrong,
        f"Misclassified test images, most confident first "
        f"({len(shown_wrong)} of {len(report['misclassified'])})",
        paths["misclassified"],
        class_names,
    )
    samples = report["sample_predictions"]
    _grid(
        images,
        samples,
        f"Sample predictions: the first {len(samples)} test images",
        paths["sample_predictions"],
        class_names,
    )

    files = {name: str(path) for name, path in paths.items()}
    paths["report"].write_text(json.dumps({**report, "files": files}, indent=2) + "\n")
    return paths


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
