"""The lab's training script, kept working as written: `python train_mnist.py [--epochs N ...]`.

A thin shim: the work is `mnist train` in the mnist_classifier package. The one difference
is where checkpoints go by default: the lab's ./models/staging/mnist/ (for Fashion-MNIST
./models/staging/fashion-mnist/, where test_mnist.py --dataset fashion-mnist looks), not the
run directory.
"""

from mnist_classifier.cli import run_script, train
from mnist_classifier.paths import STAGING_DIR_OF_DATASET

if __name__ == "__main__":
    run_script(train, defaults={"output_dir": STAGING_DIR_OF_DATASET})
