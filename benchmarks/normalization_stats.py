"""Mean and standard deviation of a data set's training pixels, the normalisation it trains with.

    python benchmarks/normalization_stats.py --dataset fashion-mnist

Over all 60,000 training images (not the 55,000 left after the validation hold-out), pixels
scaled to [0, 1], as MNIST's customary 0.1307 / 0.3081 were computed; datasets.py pins the
result rounded to four places.
"""

from __future__ import annotations

import argparse

from mnist_classifier.data import load_split
from mnist_classifier.datasets import DATASET_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="mnist")
    parser.add_argument("--data-dir", default="./data")
    arguments = parser.parse_args()
    images, _labels = load_split(arguments.data_dir, train=True, dataset=arguments.dataset)
    pixels = images.double().div(255.0)  # float64: 47 million values, no rounding drift
    print(
        f"{arguments.dataset}: {len(images):,} training images, "
        f"mean {pixels.mean().item():.4f}, std {pixels.std(unbiased=False).item():.4f}"
    )


if __name__ == "__main__":
    main()
