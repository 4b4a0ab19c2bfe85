"""torchrun for `mnist train --nproc N`: torch's own launcher, without its report of a failure.

When a rank fails, or the launch is interrupted, torchrun logs warnings, prints a table of the
failures and ends in a Python traceback, burying the one line the failing rank printed itself.
Run as `python -m mnist_classifier.torchrun ARGUMENTS` (torchrun's own arguments) it launches
the ranks in the same way, says nothing of its own but a line for a rank that could not speak
(one killed by a signal) or a launch that failed, and exits 1 when a rank failed, or 128 + the
signal's number when a signal stopped it (130 for Ctrl-C, as a shell reports one).
"""

from __future__ import annotations

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from mnist_classifier.messages import first_line


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def main(arguments: list[str]) -> int:
    # torchrun's loggers each carry their own level (they are made at import, above), so each
    # is quietened: what they say, the ranks' own lines say better.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(arguments))
    except ChildFailedError as failed:
        # The first to fail; torchrun then stops the others with SIGTERM, which says nothing.
        rank, failure = failed.get_first_failure()
        if failure.exitcode < 0:  # killed: the rank had no chance to say why
            how = _signal_name(-failure.exitcode)
            hint = " (the kernel ends a process so when memory runs out)" * (how == "SIGKILL")
            print(f"error: rank {rank} was killed by {how}{hint}", file=sys.stderr)
        return 1
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except Exception as error:  # the launch itself: a rendezvous that could not start, say
        print(f"error: torchrun could not launch the ranks: {first_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
