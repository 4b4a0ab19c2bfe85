"""Test accuracy over seeds: the headline numbers come with their spread.

    python benchmarks/accuracy.py [--config configs/fast.yaml] [--seeds 3] [--set k=v]
    python benchmarks/accuracy.py --config configs/fashion.yaml    # on the config's data set

Trains one model per seed with the chosen config (default: the lab's), evaluates
the last epoch's weights on the 10,000 test images, and prints one row per seed and the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mnist_classifier.batching import Split
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.config import load_config, parse_assignment
from mnist_classifier.data import load_split
from mnist_classifier.device import resolve_device
from mnist_classifier.evaluate import evaluate
from mnist_classifier.train import train

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(REPO_ROOT / "configs" / "seed.yaml"), help="a file in configs/"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    arguments = parser.parse_args()

    overrides = dict(parse_assignment(assignment) for assignment in arguments.set)
    device = resolve_device(arguments.device)
    dataset = load_config(arguments.config, overrides).data.dataset
    test_split = Split(*load_split(arguments.data_dir, train=False, dataset=dataset)).to(device)
    print(
        f"Config: {arguments.config} {overrides or ''} on {device}, precision {arguments.precision}"
    )
    print("| seed | test accuracy | best validation accuracy | training s/epoch | training s |")
    print("|---:|---:|---:|---:|---:|")
    accuracies, seconds = [], []
    for seed in range(1, arguments.seeds + 1):
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
            loaded = load_checkpoint(result.epochs[-1].checkpoint)
        accuracy = evaluate(
            loaded.model.to(device),
            test_split,
            device=device,
            normalization=loaded.normalization,
        ).accuracy
        total = sum(epoch.seconds for epoch in result.epochs)
        accuracies.append(accuracy)
        seconds.append(total)
        print(
            f"| {seed} | {accuracy:.2%} | {result.best.validation_accuracy:.2%} | "
            f"{total / len(result.epochs):.1f} | {total:.1f} |",
            flush=True,
        )
    print(
        f"\nMedian test accuracy {statistics.median(accuracies):.2%} "
        f"(min {min(accuracies):.2%}, max {max(accuracies):.2%}); "
        f"median training time {statistics.median(seconds):.1f} s"
    )


if __name__ == "__main__":
    main()
