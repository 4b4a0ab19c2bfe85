"""The lab's training script, kept working as written: `python train_mnist.py [--epochs N ...]`.

A thin shim: the work is `mnist train` in the mnist_classifier package. The one difference
is where checkpoints go by default: the lab's ./models/staging/mnist/, not the run directory.
"""

from mnist_classifier.cli import run_script, train
from mnist_classifier.paths import DEFAULT_STAGING_DIR

if __name__ == "__main__":
    run_script(train, defaults={"output_dir": DEFAULT_STAGING_DIR})
