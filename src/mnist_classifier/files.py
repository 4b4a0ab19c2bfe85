"""Leaf file helpers: bounded reads, SHA-256 of a file, crash-safe writes (imports nothing of ours).

Digest sidecars, model cards, the promotion history and config files are small. Reading one that
is a FIFO would wait for a writer for ever, and one linked to /dev/zero or /dev/urandom would
read without end, so each is read only from a regular file and only up to a size cap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


class FileRefused(OSError):
    """Not a regular file, or larger than the caller's limit; the message says which."""


class NotOurFile(Exception):
    """A command was asked to write over a file this project did not write, or over the file it
    reads from; the one-line message names the file and what to do instead."""


class LockHeld(OSError):
    """Another process holds the lock; the message names the lock file."""


@contextmanager
def holding_lock(path: Path | str) -> Iterator[None]:
    """An exclusive lock on `path` (created if need be) while the block runs.

    flock, not a file whose existence is the lock: the kernel drops it when the process ends,
    however it ends, so a crash never leaves a stale lock to clear by hand. The file itself
    stays. Raises LockHeld at once, without waiting, when another process holds the lock.
    """
    # Read-only and shared: another user training in the same folder can open it too (flock
    # needs no write access); O_NOFOLLOW and O_NONBLOCK: a link or a FIFO planted at the name
    # is neither followed nor waited on.
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    descriptor = os.open(path, flags, SHARED_FILE_MODE)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{path} is locked by another process") from None
        yield
    finally:
        os.close(descriptor)  # releases the lock


def lock_is_held(path: Path | str) -> bool:
    """Whether some process holds a `holding_lock` lock on `path`; False where that cannot be
    told (no such file, no /proc/locks). Read from the kernel's table of locks rather than by
    trying the lock, which for that instant would refuse a training that starts."""
    try:
        status = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    # A row: "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2148172 0 EOF" (device in hex, then inode);
    # a process waiting for the lock has "->" before FLOCK, and holds nothing.
    file_id = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    rows = (line.split() for line in table.splitlines())
    return any(row[1:2] == ["FLOCK"] and row[5:6] == [file_id] for row in rows)


def make_folders(path: Path | str) -> list[Path]:
    """Make `path` with its missing parents; the folders made here, outermost first (one that
    another process makes meanwhile is theirs, and not listed). Those made before a failure
    are removed again before it is raised."""
    path, missing = Path(path), []
    while path != path.parent and not path.exists():
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if not folder.is_dir():
                    raise
                continue
            made.append(folder)
    except OSError:
        remove_made_folders(made)
        raise
    return made


def remove_made_folders(made: list[Path], leftovers: tuple[str, ...] = ()) -> None:
    """Remove the folders a command made (`make_folders`' list), deepest first, while each
    holds nothing but files named in `leftovers` that the command left itself (its lock): a
    command that failed leaves the file system as it found it. A folder holding anything else
    (something written meanwhile) stays, and so do those above it."""
    for folder in reversed(made):
        try:
            for name in leftovers:
                if (folder / name).is_file() and len(list(folder.iterdir())) == 1:
                    (folder / name).unlink()
            folder.rmdir()
        except OSError:
            return


def why_not_writable(folder: Path | str) -> str:
    """Why files could not be created in `folder` (made if need be), or "" if they could.

    Nothing is created: the nearest part of the path that exists must be a folder this process
    may write into and enter (as root, anything but a read-only file system).
    """
    existing = Path(folder)
    while existing != existing.parent:
        try:
            if existing.exists():
                break
        except OSError:  # a folder above it may not be entered: that one is the answer
            pass
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only or not ours to write (permission denied)"
    return ""


def same_path(first: Path | str, second: Path | str) -> bool:
    """Whether two spellings of a path (relative, through links) name one place; False where
    either cannot be resolved."""
    try:
        return Path(first).resolve() == Path(second).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, before Python 3.13
        return False


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


def contents_if_regular(path: Path | str, max_bytes: int) -> bytes | None:
    """The bytes of `path` when it is a readable regular file of at most `max_bytes`, else None:
    for telling whether a file is one this project wrote, where anything else means "no"."""
    try:
        return read_regular_file(path, max_bytes)
    except OSError:
        return None


def json_object_if_regular(path: Path | str, max_bytes: int) -> dict[str, Any] | None:
    """The JSON object in `path` when it is a readable regular file of at most `max_bytes`
    holding one, else None (for telling whether a record is one this project wrote)."""
    data = contents_if_regular(path, max_bytes)
    try:
        value = json.loads(data) if data is not None else None
    # ValueError: not JSON, not UTF-8, or a number of more digits than Python converts;
    # RecursionError: nested too deeply.
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def refuse_to_replace(path: Path, is_ours: Callable[[Path], bool], ours: str, instead: str) -> None:
    """Raise NotOurFile when `path` exists and `is_ours(path)` says it is not `ours` (e.g. "an
    export of this project"): a command replaces only files it wrote. `instead` says what to do."""
    if (path.exists() or path.is_symlink()) and not is_ours(path):
        raise NotOurFile(f"{path} exists and is not {ours}; {instead}")


def sha256_of(path: Path | str) -> str:
    """The SHA-256 of a file's contents, as `sha256sum` prints it, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# Every temporary this project writes is named ".mnist-partial-<target name>.<8 random
# characters>.tmp", beside its target: a stray one left by a killed write is recognisably ours
# (and only those are ever removed).
TEMPORARY_PREFIX = ".mnist-partial-"
TEMPORARY_SUFFIX = ".tmp"
OUR_TEMPORARY = re.compile(
    rf"{re.escape(TEMPORARY_PREFIX)}.+\.[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}"
)
PRIVATE_FILE_MODE = 0o600  # what tempfile.mkstemp gives: checkpoints, exports, records
SHARED_FILE_MODE = 0o666  # less the umask, as open() would create it: the data set's files


def write_atomically(
    path: Path | str,
    contents: bytes | Callable[[BinaryIO], object],
    *,
    mode: int = PRIVATE_FILE_MODE,
    before_rename: Callable[[Path], object] | None = None,
) -> None:
    """Write `contents` (bytes, or a function writing to a binary handle) crash-safely to `path`.

    The new contents go to a temporary beside `path` and are fsynced; `before_rename(temporary)`
    runs then; the temporary is renamed over `path` and the folder fsynced. Readers see the old
    file or the new one, never half of one. On any failure the temporary is removed and `path`
    is as it was. `mode` is subject to the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(
        f"{TEMPORARY_PREFIX}{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    )
    # O_EXCL: never write through a file or link someone else put at that name.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if isinstance(contents, bytes):
                handle.write(contents)
            else:
                contents(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_json_atomically(path: Path | str, value: dict[str, Any]) -> None:
    """A JSON record (model card, run summary, export description), written crash-safely."""
    write_atomically(path, (json.dumps(value, indent=2) + "\n").encode())


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` itself survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
