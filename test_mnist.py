"""The lab's evaluation script, kept working as written: `python test_mnist.py [--checkpoint ...]`.

A thin shim: the work is `mnist evaluate` in the mnist_classifier package.
"""

from mnist_classifier.cli import evaluate, run_script

if __name__ == "__main__":
    run_script(evaluate)
