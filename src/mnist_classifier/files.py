"""Leaf helpers for reading small files this project keeps beside its own (imports nothing of ours).

Digest sidecars, model cards, the promotion history and config files are small. Reading one that
is a FIFO would wait for a writer for ever, and one linked to /dev/zero or /dev/urandom would
read without end, so each is read only from a regular file and only up to a size cap.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(OSError):
    """Not a regular file, or larger than the caller's limit; the message says which."""


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of `path`, refusing anything but a regular file of at most `max_bytes`.

    Raises FileRefused for a special file or an oversized one, OSError when it cannot be read.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait until someone writes to it.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"{path} is not a regular file")
        # One byte past the cap tells "too large" apart from "exactly the cap".
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(f"{path} is larger than {max_bytes:,} bytes")
    return data
