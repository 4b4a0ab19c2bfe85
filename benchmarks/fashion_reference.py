"""The lab's recipe on Fashion-MNIST as a tutorial writes it, beside configs/fashion.yaml.

    python benchmarks/fashion_reference.py [--seeds 3] [--epochs N]

torchvision's FashionMNIST through a DataLoader (ToTensor, then Normalize with Fashion-MNIST's
own mean and std), the lab's SimpleCNN, Adam, shuffled each epoch, plain cross-entropy, with
configs/fashion.yaml's batch size, learning rate and epochs: once on all 60,000 training
images, as the lab's handout trains, and once on the images `mnist train` trains on (the same
validation images held out). Prints the test accuracy
after the last epoch, per seed, and the medians: what this pipeline's engine reaches with
`python benchmarks/accuracy.py --config configs/fashion.yaml` should match the second row.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tutorial_pipeline import tutorial_datasets, tutorial_test_accuracy  # folder on sys.path

from mnist_classifier.config import TrainConfig, load_config
from mnist_classifier.data import ensure_dataset
from mnist_classifier.datasets import FASHION_MNIST
from mnist_classifier.model import SimpleCNN

REPO_ROOT = Path(__file__).resolve().parent.parent
LAB_CONFIG = REPO_ROOT / "configs" / "fashion.yaml"


def test_accuracy_after_training(train_set, test_set, seed: int, recipe: TrainConfig) -> float:
    torch.manual_seed(seed)
    loader = DataLoader(train_set, recipe.batch_size, shuffle=True)
    model = SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for _ in range(recipe.epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return tutorial_test_accuracy(model, test_set)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="default: configs/fashion.yaml's")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    arguments = parser.parse_args()

    overrides = {} if arguments.epochs is None else {"epochs": arguments.epochs}
    recipe = load_config(LAB_CONFIG, overrides)
    ensure_dataset(arguments.data_dir, FASHION_MNIST.name)  # verified before torchvision reads it
    full, kept, test_set = tutorial_datasets(
        arguments.data_dir, FASHION_MNIST, recipe.data.validation_size, recipe.data.split_seed
    )
    training_sets = {
        f"all {len(full):,} (the handout)": full,
        f"{len(kept):,} (as mnist train)": kept,
    }

    seeds = range(1, arguments.seeds + 1)
    print(f"| training images | {' | '.join(f'seed {seed}' for seed in seeds)} | median |")
    print("|---|" + "---:|" * (arguments.seeds + 1))
    for name, train_set in training_sets.items():
        accuracies = [
            test_accuracy_after_training(train_set, test_set, seed, recipe) for seed in seeds
        ]
        cells = " | ".join(f"{accuracy:.2%}" for accuracy in accuracies)
        print(f"| {name} | {cells} | {statistics.median(accuracies):.2%} |", flush=True)


if __name__ == "__main__":
    main()
