"""Serving test helpers shared by the API tests and the server-limit tests.

`ChecksumPredictor` is a fake model whose answer is a known function of the exact image it
receives, so a test can check that the API hands the model `preprocess_image`'s output and
reports the model's answer unchanged.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from mnist_classifier.serve.app import create_app
from mnist_classifier.serve.schemas import ModelInfo

DIGEST = "ab" * 32
MODEL_INFO = ModelInfo(
    digest=DIGEST,
    stage="production",
    backend="torch",
    file_name="best_model.pt",
    architecture="SimpleCNN",
    epoch=3,
    validation_accuracy=0.985,
    metrics={"test_accuracy": 0.99},
)


def checksum_digit(image: torch.Tensor) -> int:
    return int(image.to(torch.int64).sum()) % 10


class ChecksumPredictor:
    """Puts 0.91 on (sum of the image's pixels) mod 10 and 0.01 on every other digit."""

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28)
        probabilities = np.full((len(images), 10), 0.01)
        for row, image in enumerate(images):
            probabilities[row, checksum_digit(image)] = 0.91
        return probabilities


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_seven() -> np.ndarray:
    """A dark "7" on white paper, as a user would draw it: 200x200 pixels."""
    paper = np.full((200, 200), 255, dtype=np.uint8)
    paper[40:56, 40:160] = 0  # the top bar
    for row in range(56, 170):
        column = 160 - (row - 56) * 70 // 114  # the diagonal, down to the left
        paper[row, column - 8 : column + 8] = 0
    return paper


SEVEN_PNG = png_bytes(drawn_seven())


def local_client(app) -> TestClient:
    """A client that reaches the app as http://127.0.0.1, a host it serves by default."""
    return TestClient(app, base_url="http://127.0.0.1")


def assert_clean_error(response, status: int | tuple[int, ...]) -> str:
    """A 4xx with a one-line JSON detail: no traceback, no file path."""
    assert response.status_code in (status if isinstance(status, tuple) else (status,))
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for leak in ("Traceback", ".py", "/work", "/tmp", "site-packages", "\n"):
        assert leak not in detail
    return detail


def upload(data: bytes) -> dict:
    return {"files": {"file": ("digit.png", data, "image/png")}}


@contextlib.contextmanager
def uvicorn_in_thread(server: uvicorn.Server, sockets=None) -> Iterator[None]:
    """Run `server` in a daemon thread for the block; fails if it has not started in 20 s."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(served) -> Iterator[str]:
    """A real uvicorn server for a loaded model on a free loopback port; yields its URL."""
    port = free_loopback_port()
    settings = uvicorn.Config(
        create_app(served.predictor, served.info), host="127.0.0.1", port=port, log_level="warning"
    )
    with uvicorn_in_thread(uvicorn.Server(settings)):
        yield f"http://127.0.0.1:{port}/"
