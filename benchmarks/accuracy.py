"""Test accuracy over seeds: the headline numbers come with their spread.

    python benchmarks/accuracy.py [--config configs/fast.yaml] [--seeds 3] [--first-seed 1]
                                  [--set k=v]
    python benchmarks/accuracy.py --config configs/fashion.yaml    # on the config's data set

Trains one model per seed with the chosen config (default: the lab's) and evaluates, on the
10,000 test images, both the last epoch's weights and best_model.pt (the epoch with the best
validation accuracy: what `mnist train` then `mnist evaluate` give). One row per seed, the
medians, and the per-class table of the last epoch's weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from mnist_classifier.config import load_config, parse_assignment
from mnist_classifier.datasets import dataset_spec
from mnist_classifier.device import resolve_device
from mnist_classifier.evaluation_report import (
    VerifiedTestSplit,
    evaluate_checkpoint,
    load_test_data,
)
from mnist_classifier.metrics import confusion_matrix
from mnist_classifier.train import train

REPO_ROOT = Path(__file__).resolve().parent.parent


def per_seed_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    """The options of every benchmark that trains one model per seed (this one,
    gpu_speed.py, weight_averaging.py): the config file, how many seeds, the data folder."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(REPO_ROOT / "configs" / default_config), help="a file in configs/"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    return parser


def main() -> None:
    parser = per_seed_parser(__doc__, "seed.yaml")
    parser.add_argument(
        "--first-seed", type=int, default=1, help="seeds run from here: screen on 1, add 2 and 3"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    arguments = parser.parse_args()

    overrides = dict(parse_assignment(assignment) for assignment in arguments.set)
    device = resolve_device(arguments.device)
    dataset = load_config(arguments.config, overrides).data.dataset
    test_data = load_test_data(arguments.data_dir, dataset)  # read once, for every checkpoint
    print(
        f"Config: {arguments.config} {overrides or ''} on {device}, precision {arguments.precision}"
    )
    print(
        "| seed | test accuracy, last epoch | test accuracy, best_model.pt (epoch) "
        "| best validation accuracy | training s/epoch | training s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    accuracies, best_accuracies, seconds, results = [], [], [], []
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
        with tempfile.TemporaryDirectory() as output_dir:
            config = load_config(
                arguments.config,
                {
                    **overrides,
                    "seed": seed,
                    "device": arguments.device,
                    "precision": arguments.precision,
                    "data.data_dir": arguments.data_dir,
                    "output_dir": output_dir,
                },
            )
            result = train(config)
            evaluation = test_evaluation(result.epochs[-1].checkpoint, test_data, device)
            best_accuracy = test_evaluation(result.best_checkpoint, test_data, device).accuracy
        results.append(evaluation)
        accuracy = evaluation.accuracy
        total = sum(epoch.seconds for epoch in result.epochs)
        accuracies.append(accuracy)
        best_accuracies.append(best_accuracy)
        seconds.append(total)
        print(
            f"| {seed} | {accuracy:.2%} | {best_accuracy:.2%} ({result.best.epoch}) | "
            f"{result.best.validation_accuracy:.2%} | "
            f"{total / len(result.epochs):.1f} | {total:.1f} |",
            flush=True,
        )
    print(
        f"\nMedian test accuracy, last epoch {statistics.median(accuracies):.2%} "
        f"(min {min(accuracies):.2%}, max {max(accuracies):.2%}); "
        f"best_model.pt {statistics.median(best_accuracies):.2%} "
        f"(min {min(best_accuracies):.2%}, max {max(best_accuracies):.2%}); "
        f"median training time {statistics.median(seconds):.1f} s"
    )
    seeds = list(range(arguments.first_seed, arguments.first_seed + arguments.seeds))
    print_per_class(
        results, seeds, accuracies, test_data.split.labels, dataset_spec(dataset).class_names
    )


def test_evaluation(checkpoint: Path, test_data: VerifiedTestSplit, device: torch.device):
    """The checkpoint's test-set result, as `mnist evaluate` computes it."""
    dataset = test_data.files.dataset
    return evaluate_checkpoint(checkpoint, dataset, test_data=test_data, device=device).result


def print_per_class(
    results,
    seeds: list[int],
    accuracies: list[float],
    labels: torch.Tensor,
    class_names: tuple[str, ...],
) -> None:
    """Per-class test accuracy of every seed, and the median seed's confusion matrix."""
    print("\n| class | " + " | ".join(f"seed {seed}" for seed in seeds) + " |")
    print("|---|" + "---:|" * len(results))
    for number, name in enumerate(class_names):
        cells = " | ".join(f"{result.class_accuracy(number):.1%}" for result in results)
        print(f"| {name} | {cells} |")
    by_accuracy = sorted(range(len(results)), key=lambda index: accuracies[index])
    median_index = by_accuracy[(len(results) - 1) // 2]
    confusion = confusion_matrix(labels.cpu(), results[median_index].predictions, len(class_names))
    print(f"\nConfusion matrix, seed {seeds[median_index]} (rows: true class, columns: predicted):")
    print("| true \\ predicted | " + " | ".join(str(n) for n in range(len(class_names))) + " |")
    print("|---|" + "---:|" * len(class_names))
    for number, row in enumerate(confusion.tolist()):
        print(f"| {number} {class_names[number]} | " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
