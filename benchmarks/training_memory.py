"""How much memory a CPU training step needs per image of its batch: train.TRAINING_BYTES_PER_IMAGE.

    python benchmarks/training_memory.py [--batches 8000 16000] [--precision fp32]

Trains one epoch of --batches[i] images in one batch, each in a process of its own, and reads
its peak resident memory (the kernel's maxrss). The slope between the batches is what each
image adds at the step's peak; the intercept is the process itself (torch, the data set).
`mnist train` refuses a batch whose slope times batch size exceeds the memory free here.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from train_speed import _machine  # noqa: E402

from mnist_classifier.train import TRAINING_BYTES_PER_IMAGE  # noqa: E402


def peak_bytes_of_training(batch_size: int, precision: str, data_dir: str) -> int:
    """Peak resident memory of `mnist train` with one batch of `batch_size` images."""
    with tempfile.TemporaryDirectory() as runs_dir:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mnist_classifier",
                "train",
                "--epochs",
                "1",
                "--max-train-images",
                str(batch_size),
                "--batch-size",
                str(batch_size),
                "--device",
                "cpu",
                "--precision",
                precision,
                "--data-dir",
                data_dir,
                "--runs-dir",
                runs_dir,
                "--quiet",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest of any so far: batches run in ascending order.
    if after <= before:
        raise SystemExit("give --batches in ascending order: each must need more than the last")
    return after * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs=2, default=[8000, 16000])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    arguments = parser.parse_args()

    print(_machine())
    small, large = sorted(arguments.batches)
    peaks = [
        peak_bytes_of_training(batch, arguments.precision, arguments.data_dir)
        for batch in (small, large)
    ]
    for batch, peak in zip((small, large), peaks, strict=True):
        print(f"batch {batch:>6,}: peak {peak / 1e9:.2f} GB")
    slope = (peaks[1] - peaks[0]) / (large - small)
    print(
        f"per image at the step's peak ({arguments.precision}): {slope / 1e3:,.0f} KB; "
        f"the process itself: {(peaks[0] - slope * small) / 1e9:.2f} GB; "
        f"mnist train assumes {TRAINING_BYTES_PER_IMAGE / 1e3:,.0f} KB per image"
    )


if __name__ == "__main__":
    main()
