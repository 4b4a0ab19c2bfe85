"""How long `preprocess_image` takes on a 12-megapixel phone photo, from its bytes to 28x28.

    python benchmarks/preprocess_speed.py [--repeats 10]

Builds a photo-like 4000x3000 JPEG (a test digit on lit, shadowed paper: tests/photo_digits.py,
scaled up, with fresh sensor noise), prepares it --repeats times and prints the median and the
slowest, with the machine. The goal: at most 1 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the photo-like test set's generator

from photo_digits import photo_like  # noqa: E402
from train_speed import _machine  # noqa: E402  (this folder is on sys.path when run)

from mnist_classifier.data import load_split  # noqa: E402
from mnist_classifier.preprocess import preprocess_image  # noqa: E402

PHOTO_SIZE = (4000, 3000)  # a 12 MP phone photo


def phone_photo(data_dir: Path) -> bytes:
    images, _labels = load_split(data_dir, train=False)
    rng = np.random.default_rng(0)
    small = Image.open(io.BytesIO(photo_like(images[0].numpy(), 0, rng))).convert("RGB")
    large = np.asarray(small.resize(PHOTO_SIZE, Image.Resampling.BICUBIC), dtype=np.float32)
    large = large + rng.normal(0, 3, large.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(large, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    arguments = parser.parse_args()

    print(f"Machine: {_machine()}")
    data = phone_photo(arguments.data_dir)
    seconds = []
    for _ in range(arguments.repeats):
        started = time.perf_counter()
        preprocess_image(data)
        seconds.append(time.perf_counter() - started)
    print(
        f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG ({len(data) / 2**20:.1f} MiB): "
        f"median {1000 * statistics.median(seconds):.0f} ms, "
        f"slowest {1000 * max(seconds):.0f} ms over {arguments.repeats} runs"
    )


if __name__ == "__main__":
    main()
