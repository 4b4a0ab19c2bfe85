"""The data sets this pipeline knows: what each one is, where its files live, how to read it.

One `DatasetSpec` per data set holds every fact about it that code elsewhere needs: the pinned
digests of its four raw files, its normalisation, its class names and what its images show
(which decides how a user's photo is prepared). Nothing here imports torch or the rest of the
package, so the server, the checkpoint reader and the CLI can all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

IMAGE_SIDE = 28  # every image is IMAGE_SIDE x IMAGE_SIDE pixels
NUM_CLASSES = 10  # both data sets have ten classes; the model's output layer has this many
# Both data sets hold this many images in their training files and in their test files.
TRAIN_FILE_IMAGES = 60_000
TEST_FILE_IMAGES = 10_000

# The four uncompressed IDX files, as torchvision keeps them under <data_dir>/<folder>/raw/.
RAW_FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Make "this file is wrong" messages more telling (a truncated file shows at once), and bound
# how much a .gz may decompress to (a small gzip bomb could otherwise fill the memory).
RAW_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte": 16 + TRAIN_FILE_IMAGES * IMAGE_SIDE * IMAGE_SIDE,
    "train-labels-idx1-ubyte": 8 + TRAIN_FILE_IMAGES,
    "t10k-images-idx3-ubyte": 16 + TEST_FILE_IMAGES * IMAGE_SIDE * IMAGE_SIDE,
    "t10k-labels-idx1-ubyte": 8 + TEST_FILE_IMAGES,
}


class Normalization(NamedTuple):
    """Pixels scaled to [0, 1], then (x - mean) / std: what the model's input layer expects."""

    mean: float
    std: float


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the value of `data.dataset` and `--dataset`
    title: str  # how a person writes it
    folder: str  # torchvision's folder under the data directory
    raw_sha256: dict[str, str]  # file name -> SHA-256 of the uncompressed file
    # Mean and standard deviation of the training split's 60,000 images, pixels in [0, 1].
    normalization: Normalization
    class_names: tuple[str, ...]  # index = class number
    subject: str  # "digits" or "clothing": how a user's own image is prepared
    target_accuracy: float  # the evaluation report's pass mark (test accuracy, 0..1)


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    folder="MNIST",
    # The files torchvision downloads; `sha256sum data/MNIST/raw/*-ubyte` prints the same.
    raw_sha256={
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    normalization=Normalization(mean=0.1307, std=0.3081),
    class_names=tuple(str(digit) for digit in range(10)),
    subject="digits",
    target_accuracy=0.97,  # the lab handout's success criterion
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    folder="FashionMNIST",
    # The publisher's raw files; Debian's dataset-fashion-mnist decompresses to the same bytes.
    raw_sha256={
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
    # python benchmarks/normalization_stats.py --dataset fashion-mnist
    normalization=Normalization(mean=0.2860, std=0.3530),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    subject="clothing",
    # Zalando's benchmark table puts two-convolution CNNs at about 91-92%; 90% is the pass mark.
    target_accuracy=0.90,
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
DATASET_NAMES = tuple(DATASETS)


def class_noun(class_names) -> str:
    """What a person calls one class: "digit" when the names are digits, else "class"."""
    return "digit" if all(name.isdigit() for name in class_names) else "class"


class UnknownDatasetError(ValueError):
    """A data set name this pipeline does not know; the message lists the known ones."""


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}"
        ) from None
