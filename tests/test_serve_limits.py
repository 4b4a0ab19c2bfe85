"""The server's bounds (`serve/limits.py`, `serve/server.py`) and its hygiene.

The app-level bounds are checked through TestClient with small limits, against the counts they
are computed from. What happens on the wire (stalled headers and bodies, a request with both
Content-Length and Transfer-Encoding, the number of open connections) is checked against a
real uvicorn server on a free 127.0.0.1 port, in a thread, with raw sockets; every exchange has
a deadline. The load test under costly images runs `mnist serve` in its own process.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2 as httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import png_header_only
from PIL import Image, ImageDraw
from serving import (
    MODEL_INFO,
    SEVEN_PNG,
    ChecksumPredictor,
    assert_clean_error,
    local_client,
    png_bytes,
    upload,
    uvicorn_in_thread,
)
from typer.testing import CliRunner

import mnist_classifier.serve.app as app_module
from mnist_classifier.checkpoint import save_checkpoint
from mnist_classifier.cli import app as cli_app
from mnist_classifier.serve.app import create_app
from mnist_classifier.serve.limits import DEFAULT_LIMITS, ServerLimits
from mnist_classifier.serve.loading import ServeError, load_checkpoint_model, stage_checkpoint
from mnist_classifier.serve.server import allowed_hosts, server_config

# Header, body and answer timeouts are measured against the clock: run alone.
pytestmark = pytest.mark.serial

HOST = "127.0.0.1"  # loopback only: nothing here listens on the network
DRAWN_PIXELS = (255 - np.asarray(Image.open(io.BytesIO(SEVEN_PNG)).resize((28, 28)))).tolist()


def small_limits(**changes) -> ServerLimits:
    return dataclasses.replace(DEFAULT_LIMITS, **changes)


def batch_of(images: list[bytes]) -> list:
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


# --- Pixels per request -------------------------------------------------------------------------


PIXEL_LIMITS = small_limits(max_request_pixels=100_000, large_requests_pixel_budget=100_000)


@pytest.fixture(scope="module")
def pixel_limited_client() -> TestClient:
    return local_client(create_app(ChecksumPredictor(), MODEL_INFO, limits=PIXEL_LIMITS))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
# Sides from 10 px keep each image within the aspect ratio preprocess accepts (at most 50:1).
@given(sides=st.lists(st.integers(10, 300), min_size=1, max_size=6))
def test_a_request_declaring_too_many_pixels_in_all_is_refused_before_decoding(
    pixel_limited_client, sides
):
    # Header-only PNGs: decoding them fails (400), so a 413 means nothing was decoded.
    client, limits = pixel_limited_client, PIXEL_LIMITS
    images = [png_header_only(side, 100) for side in sides]
    declared = sum(side * 100 for side in sides)  # the oracle
    response = client.post("/predict/batch", files=batch_of(images))
    if declared > limits.max_request_pixels:
        detail = assert_clean_error(response, 413)
        assert f"{declared:,} pixels" in detail and "100,000-pixel limit" in detail
    else:  # refused for its undecodable data, never for its pixels
        assert "pixel" not in assert_clean_error(response, 400)


# --- Work in preparation at once ----------------------------------------------------------------


class FirstCallBlocks(ChecksumPredictor):
    """The first batch waits until released (a costly request in progress); others answer."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.first_call = threading.Event()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        if not self.first_call.is_set():
            self.first_call.set()
            self.release.wait(timeout=30)
        return super().probabilities(images)


def test_a_full_budget_answers_503_with_retry_after_while_small_requests_still_run():
    seven_pixels = 200 * 200  # SEVEN_PNG
    limits = small_limits(
        max_request_pixels=seven_pixels,
        large_requests_pixel_budget=seven_pixels,  # one such request at a time
        small_request_pixels=28 * 28,
        small_requests_pixel_budget=28 * 28,
    )
    predictor = FirstCallBlocks()
    client = local_client(create_app(predictor, MODEL_INFO, limits=limits))
    first: dict = {}
    holder = threading.Thread(
        target=lambda: first.update(r=client.post("/predict", **upload(SEVEN_PNG)))
    )
    holder.start()
    try:
        assert predictor.first_call.wait(timeout=10)
        busy = client.post("/predict", **upload(SEVEN_PNG))
        assert "retry in 2 s" in assert_clean_error(busy, 503)
        assert busy.headers["retry-after"] == str(limits.retry_after_s)
        # A drawing-sized request has workers and a budget of its own.
        small = client.post("/predict", json={"pixels": DRAWN_PIXELS})
        assert small.status_code == 200
    finally:
        predictor.release.set()
        holder.join(timeout=30)
    assert first["r"].status_code == 200
    assert (
        client.post("/predict", **upload(SEVEN_PNG)).status_code == 200
    )  # the budget was given back


def test_a_timed_out_batch_stops_preparing_its_remaining_images(monkeypatch):
    prepared = []

    def slow_preprocess(source):
        time.sleep(0.1)
        prepared.append(source)
        return torch.zeros(28, 28, dtype=torch.uint8)

    monkeypatch.setattr(app_module, "preprocessing_for", lambda _subject: slow_preprocess)
    limits = small_limits(request_timeout_s=0.25)
    client = local_client(create_app(ChecksumPredictor(), MODEL_INFO, limits=limits))
    images = [png_bytes(np.full((8, 8), i, dtype=np.uint8)) for i in range(30)]
    assert_clean_error(client.post("/predict/batch", files=batch_of(images)), 504)
    time.sleep(0.5)
    stopped_at = len(prepared)
    time.sleep(0.5)
    # Left alone, the worker would have gone on to prepare all 30 (3 s).
    assert len(prepared) == stopped_at <= 5


# --- Host header, /model ------------------------------------------------------------------------


def test_an_unexpected_host_header_is_refused_unless_allowed():
    app = create_app(ChecksumPredictor(), MODEL_INFO)
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert local_client(app).get("/health", headers={"host": host}).status_code == 200
    for host in ("evil.example", "127.0.0.1.evil.example", "digits.example.org"):
        refused = local_client(app).get("/health", headers={"host": host})
        assert refused.status_code == 400 and refused.text == "Invalid host header"
    opened = create_app(ChecksumPredictor(), MODEL_INFO, allowed_hosts=["digits.example.org"])
    assert local_client(opened).get("/", headers={"host": "digits.example.org:80"}).is_success
    assert local_client(opened).get("/", headers={"host": "evil.example"}).status_code == 400
    # What `mnist serve --host H --allowed-host ...` allows besides the loopback names.
    assert allowed_hosts("0.0.0.0", []) == []
    assert allowed_hosts("192.168.1.5", ["Digits.Lan"]) == ["192.168.1.5", "digits.lan"]
    assert allowed_hosts("::", ["fe80::1", "*.example.org"]) == ["[fe80::1]", "*.example.org"]


@pytest.mark.parametrize("pattern", ["http://digits.lan", "digits.lan:8000", "a*b", "", "x/y"])
def test_serve_refuses_an_allowed_host_that_is_not_a_host_name(pattern):
    result = CliRunner().invoke(cli_app, ["serve", "--allowed-host", pattern])
    assert result.exit_code == 2
    assert "--allowed-host" in result.output and "Traceback" not in result.output


def test_model_gives_digest_stage_and_fractions_but_no_paths_or_git_commit(tmp_path):
    from conftest import checkpoint_payload

    checkpoint = stage_checkpoint(tmp_path, "production")
    save_checkpoint(checkpoint, checkpoint_payload())  # its `accuracy` key: 98.5 (percent)
    card = {
        "source_checkpoint": str(tmp_path / "runs" / "best_model.pt"),
        "git_commit": "0123456789abcdef",
        "config": {"data": {"dir": str(tmp_path / "data")}},
        "metrics": {"test_accuracy": 0.991, "test_loss": 0.03, "per_class_accuracy": [0.99] * 10},
    }
    (checkpoint.parent / "model_card.json").write_text(json.dumps(card))
    served = load_checkpoint_model(checkpoint, stage="production")
    model = local_client(create_app(ChecksumPredictor(), served.info)).get("/model").json()
    assert model["stage"] == "production" and len(model["digest"]) == 64
    assert model["validation_accuracy"] == pytest.approx(0.985)
    assert model["metrics"] == card["metrics"]
    text = json.dumps(model)
    assert str(tmp_path) not in text and "0123456789abcdef" not in text
    # A card whose accuracy is a percent is refused at start, in one line.
    card["metrics"]["test_accuracy"] = 99.1
    (checkpoint.parent / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ServeError, match="test_accuracy"):
        load_checkpoint_model(checkpoint, stage="production")


def test_model_gives_no_metrics_from_a_card_written_for_the_model_since_replaced(tmp_path):
    from conftest import checkpoint_payload

    from mnist_classifier.files import sha256_of

    checkpoint = stage_checkpoint(tmp_path, "staging")
    save_checkpoint(checkpoint, checkpoint_payload())
    card = {"checkpoint_sha256": sha256_of(checkpoint), "metrics": {"test_accuracy": 0.9123}}
    (checkpoint.parent / "model_card.json").write_text(json.dumps(card))
    served = load_checkpoint_model(checkpoint, stage="staging")
    assert served.info.metrics.test_accuracy == 0.9123  # the card is this model's
    # As `python train_mnist.py` does: a retrained best_model.pt lands beside the old card.
    save_checkpoint(checkpoint, checkpoint_payload(epoch=4))
    served = load_checkpoint_model(checkpoint, stage="staging")
    model = local_client(create_app(ChecksumPredictor(), served.info)).get("/model").json()
    assert model["digest"] == sha256_of(checkpoint) != card["checkpoint_sha256"]
    assert model["epoch"] == 4 and model["metrics"] is None


# --- On the wire: a real server on loopback -----------------------------------------------------


@contextmanager
def running_server(limits: ServerLimits) -> Iterator[int]:
    """uvicorn with `server_config`, serving the checksum app on a free loopback port."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    port = listener.getsockname()[1]
    app = create_app(ChecksumPredictor(), MODEL_INFO, limits=limits)
    server = uvicorn.Server(server_config(app, HOST, port, limits, log_level="error"))
    try:
        with uvicorn_in_thread(server, sockets=[listener]):
            yield port
    finally:
        listener.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=10)


def read_until_closed(connection: socket.socket, limit_s: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    connection.settimeout(limit_s)
    while chunk := connection.recv(65536):
        received += chunk
        assert time.monotonic() - started < limit_s, "the server kept the connection open"
    return received, time.monotonic() - started


def json_request(body: bytes, *extra_headers: str) -> bytes:
    lines = [
        "POST /predict HTTP/1.1",
        f"Host: {HOST}",
        "Content-Type: application/json",
        *extra_headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


WIRE_LIMITS = small_limits(header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_timeout_s=1)
PIXELS_BODY = json.dumps({"pixels": DRAWN_PIXELS}).encode()


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    with running_server(WIRE_LIMITS) as port:
        yield port


def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_closed(
    server_port,
):
    # The oracle: the same chunked request without Content-Length is served.
    with connect(server_port) as connection:
        connection.sendall(
            json_request(chunked(PIXELS_BODY), "Transfer-Encoding: chunked", "Connection: close")
        )
        answer, _ = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 200")
    # Both headers, and a second request hidden where Content-Length says the body ends.
    smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = chunked(PIXELS_BODY) + smuggled
    with connect(server_port) as connection:
        connection.sendall(
            json_request(body, "Transfer-Encoding: chunked", f"Content-Length: {len(body)}")
        )
        answer, _ = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"both Content-Length and Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1") == 1  # one answer, then closed: nothing smuggled through


def test_stalled_or_dripped_headers_are_cut_off_after_the_header_timeout(server_port):
    with connect(server_port) as silent:
        answer, waited = read_until_closed(silent, limit_s=5)
        assert answer == b"" and waited < 2
    with connect(server_port) as partial:
        partial.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer, waited = read_until_closed(partial, limit_s=5)
        assert answer == b"" and waited < 2
    # Slowloris: a byte every 0.1 s never completes the headers; the deadline still holds.
    with connect(server_port) as dripping:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in json_request(PIXELS_BODY, f"Content-Length: {len(PIXELS_BODY)}"):
                dripping.sendall(bytes([byte]))
                time.sleep(0.1)
                assert time.monotonic() - started < 5, "the dripping client was not cut off"
    # On a kept-alive connection the deadline starts again with the next request's first byte.
    with connect(server_port) as kept:
        kept.sendall(json_request(PIXELS_BODY, f"Content-Length: {len(PIXELS_BODY)}"))
        first = http.client.HTTPResponse(kept)
        first.begin()
        assert first.status == 200 and json.loads(first.read())["digit"] in range(10)
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        answer, waited = read_until_closed(kept, limit_s=5)
        assert answer == b"" and waited < 2


def test_a_stalled_body_is_answered_408_and_closed(server_port):
    with connect(server_port) as connection:
        connection.sendall(json_request(PIXELS_BODY[:100], f"Content-Length: {len(PIXELS_BODY)}"))
        answer, waited = read_until_closed(connection, limit_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and waited < 3
    assert b"did not arrive within 0.5 s" in answer


def test_stalled_connections_are_bounded_in_number_and_released_by_the_timeout():
    limits = dataclasses.replace(WIRE_LIMITS, max_connections=4, header_timeout_s=1.0)
    with running_server(limits) as port:
        stalled = [connect(port) for _ in range(limits.max_connections)]
        try:
            with connect(port) as connection:
                connection.sendall(json_request(PIXELS_BODY, f"Content-Length: {len(PIXELS_BODY)}"))
                answer, _ = read_until_closed(connection)
            assert answer.startswith(b"HTTP/1.1 503")
            time.sleep(limits.header_timeout_s + 0.5)  # the stalled ones are cut off
            with connect(port) as connection:
                connection.sendall(
                    json_request(
                        PIXELS_BODY, f"Content-Length: {len(PIXELS_BODY)}", "Connection: close"
                    )
                )
                answer, _ = read_until_closed(connection)
            assert answer.startswith(b"HTTP/1.1 200")
        finally:
            for connection in stalled:
                connection.close()


# --- Under load: costly images against `mnist serve` in its own process --------------------------

ATTACK_SECONDS = 8.0
ATTACKERS = 6
MAX_REQUESTS_PER_ATTACKER = 100
NORMAL_REQUEST_INTERVAL_S = 0.5
NORMAL_ANSWER_LIMIT_S = 2.0
# How far the server's peak resident memory may rise above what it holds at rest (torch and
# the model: about 0.9 GiB): the pixel budgets admit 20 MP at once, about 25 bytes each.
RSS_GROWTH_CAP_MIB = 768


def costly_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of a thin stroke: a few KB that declare `width` x `height` pixels."""
    image = Image.new("1", (width, height), 1)
    ImageDraw.Draw(image).line(
        [(width // 4, height // 4), (3 * width // 4, height // 4), (width // 3, 3 * height // 4)],
        fill=0,
        width=max(1, width // 40),
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def resident_mib(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of a process, from /proc, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_under_costly_images_normal_requests_answer_in_time_and_memory_stays_capped(tmp_path):
    from conftest import checkpoint_payload

    checkpoint = tmp_path / "random.pt"
    save_checkpoint(checkpoint, checkpoint_payload())  # a forward pass costs the same untrained
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    side = math.isqrt(DEFAULT_LIMITS.max_request_pixels)  # the most one request may declare
    costly_requests = [[costly_png(side, side)], [costly_png(side, side // 3)] * 3]
    normal = png_bytes(np.asarray(Image.open(io.BytesIO(SEVEN_PNG)).resize((280, 280))))
    command = [sys.executable, "-m", "mnist_classifier", "serve", "--checkpoint", str(checkpoint)]
    log_path = tmp_path / "server.log"
    server = subprocess.Popen(
        [*command, "--host", HOST, "--port", str(port)],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # this checkout's code
    )
    base_url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        at_rest_mib = resident_mib(server.pid, "VmRSS")

        attack_ends = time.monotonic() + ATTACK_SECONDS
        attack_statuses: list[int] = []
        normal_answers: list[tuple[int, float]] = []

        def attacker(images: list[bytes]) -> None:
            path, field = ("/predict/batch", "files") if len(images) > 1 else ("/predict", "file")
            files = [(field, (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
            with httpx.Client(base_url=base_url, timeout=30) as client:
                for _ in range(MAX_REQUESTS_PER_ATTACKER):
                    if time.monotonic() > attack_ends:
                        return
                    attack_statuses.append(client.post(path, files=files).status_code)
                    time.sleep(0.05)

        attackers = [
            threading.Thread(target=attacker, args=(costly_requests[i % 2],))
            for i in range(ATTACKERS)
        ]
        for thread in attackers:
            thread.start()
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while time.monotonic() < attack_ends:
                sent = time.monotonic()
                response = client.post("/predict", files={"file": ("d.png", normal, "image/png")})
                normal_answers.append((response.status_code, time.monotonic() - sent))
                time.sleep(NORMAL_REQUEST_INTERVAL_S)
        for thread in attackers:  # each stops at its next request; one may be in flight (30 s)
            thread.join(timeout=max(0.0, attack_ends + 30 - time.monotonic()))
        peak_mib = resident_mib(server.pid, "VmHWM")
    finally:
        server.kill()  # it holds nothing to save; SIGKILL cannot be ignored or hang
        server.wait(timeout=20)
    counts = {status: attack_statuses.count(status) for status in sorted(set(attack_statuses))}
    slowest = max(seconds for _status, seconds in normal_answers)
    print(
        f"at rest {at_rest_mib:.0f} MiB, peak {peak_mib:.0f} MiB; costly requests by status "
        f"{counts}; {len(normal_answers)} normal requests, slowest {slowest:.2f} s"
    )
    assert set(counts) <= {200, 503, 504} and counts.get(200, 0) >= 1  # costly work did run
    assert len(normal_answers) >= 5
    assert all(status == 200 for status, _seconds in normal_answers)
    assert slowest < NORMAL_ANSWER_LIMIT_S
    assert peak_mib - at_rest_mib < RSS_GROWTH_CAP_MIB
