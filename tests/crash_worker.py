"""`mnist train` with a widened save window, for the crash test to kill at random moments.

python tests/crash_worker.py PAUSE_SECONDS [mnist train arguments...]

Every rename of a checkpoint's temporary into place waits PAUSE_SECONDS first: the new file is
written and its digest already vouched for, the old file still in place. That is the moment a
crash is most likely to lose something, made wide enough to hit. The product code knows nothing
of it: this process only wraps os.replace.

The crash test starts each run with `train_with_paused_saves` in a process forked from a
multiprocessing forkserver that imported the training code once, so the runs it kills skip the
seconds that importing torch and the training code take; what they run is the same.
"""

import os
import sys
import time

from mnist_classifier.cli import app
from mnist_classifier.files import TEMPORARY_PREFIX

# What `mnist train` imports, for the forkserver to import once (by name from site-packages:
# Python 3.11's forkserver does not see the tests folder on sys.path, and skips what fails).
MODULES_A_RUN_IMPORTS = [
    "torch.utils.tensorboard",
    "mnist_classifier.data",
    "mnist_classifier.figures",
    "mnist_classifier.runs",
    "mnist_classifier.train",
]


def _replace_after_a_pause(pause_seconds: float):
    replace = os.replace

    def paused_replace(source, destination, *args, **kwargs):
        if os.path.basename(source).startswith(TEMPORARY_PREFIX) and str(destination).endswith(
            ".pt"
        ):
            time.sleep(pause_seconds)
        return replace(source, destination, *args, **kwargs)

    return paused_replace


def train_with_paused_saves(pause_seconds: float, arguments: list[str], log_path=None) -> None:
    """`mnist train ARGUMENTS`, its output line by line into `log_path` when one is given."""
    os.replace = _replace_after_a_pause(pause_seconds)
    if log_path is None:
        app(["train", *arguments], prog_name="mnist")
        return
    with open(log_path, "w", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        app(["train", *arguments], prog_name="mnist")


if __name__ == "__main__":
    train_with_paused_saves(float(sys.argv[1]), sys.argv[2:])
