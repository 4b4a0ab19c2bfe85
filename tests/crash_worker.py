"""`mnist train` with a widened save window, for the crash test to kill at random moments.

python tests/crash_worker.py PAUSE_SECONDS [mnist train arguments...]
"""

import sys

from mnist_classifier import checkpoint
from mnist_classifier.cli import app

if __name__ == "__main__":
    checkpoint.PAUSE_INSIDE_SAVE = float(sys.argv[1])
    app(["train", *sys.argv[2:]], prog_name="mnist")
