"""`mnist train` with a widened save window, for the crash test to kill at random moments.

python tests/crash_worker.py PAUSE_SECONDS [mnist train arguments...]

Every rename of a checkpoint's temporary into place waits PAUSE_SECONDS first: the new file is
written and its digest already vouched for, the old file still in place. That is the moment a
crash is most likely to lose something, made wide enough to hit. The product code knows nothing
of it: this process only wraps os.replace.
"""

import os
import sys
import time

from mnist_classifier.cli import app
from mnist_classifier.files import TEMPORARY_PREFIX


def _replace_after_a_pause(pause_seconds: float):
    replace = os.replace

    def paused_replace(source, destination, *args, **kwargs):
        if os.path.basename(source).startswith(TEMPORARY_PREFIX) and str(destination).endswith(
            ".pt"
        ):
            time.sleep(pause_seconds)
        return replace(source, destination, *args, **kwargs)

    return paused_replace


if __name__ == "__main__":
    os.replace = _replace_after_a_pause(float(sys.argv[1]))
    app(["train", *sys.argv[2:]], prog_name="mnist")
