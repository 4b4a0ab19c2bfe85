"""Serving throughput and latency on loopback: N prediction requests from C concurrent clients.

    python benchmarks/serve_load.py [--requests 2000] [--clients 16] [--time-limit 60]
                                    [--checkpoint PATH]

Starts `mnist serve` in its own process on a free 127.0.0.1 port, sends POST /predict with
MNIST test digits drawn as the page sends them (280x280 PNG, dark ink on white) from C async
clients until N have answered or the time limit passes, then stops the server. Without
--checkpoint it serves a randomly initialised SimpleCNN: a forward pass costs the same whatever
the weights. Prints requests/s and p50/p99 latency; exits 1 on any error or an unfinished run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import torch
from PIL import Image

from mnist_classifier.checkpoint import save_checkpoint
from mnist_classifier.data import load_split
from mnist_classifier.model import SimpleCNN

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the one checkpoint-payload builder lives there
from checkpoint_payloads import checkpoint_payload  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this benchmark never listens on the network
DISTINCT_IMAGES = 64
PAGE_CANVAS = 280  # the drawing page's canvas size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds, all requests")
    parser.add_argument("--checkpoint", type=Path, help="serve this instead of a random model")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    arguments = parser.parse_args()

    uploads = page_like_uploads(arguments.data_dir)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        checkpoint = arguments.checkpoint or random_checkpoint(Path(scratch) / "random.pt")
        port = free_loopback_port()
        log_path = Path(scratch) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "mnist_classifier", "serve", "--checkpoint", str(checkpoint)]
                + ["--host", HOST, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                base_url = f"http://{HOST}:{port}"
                wait_until_healthy(base_url, server, timeout_s=60)
                result = asyncio.run(
                    load(base_url, uploads, arguments.requests, arguments.clients,
                         arguments.time_limit)
                )  # fmt: skip
            finally:
                server.terminate()
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
        if result["errors"] and result["first_error"]:
            print(f"first error: {result['first_error']}\nserver log:\n{log_path.read_text()}")
    return report(result, arguments)


def page_like_uploads(data_dir: Path) -> list[bytes]:
    images, _labels = load_split(data_dir, train=False)
    uploads = []
    for image in images[:DISTINCT_IMAGES]:
        drawn = Image.fromarray(255 - image.numpy()).resize(
            (PAGE_CANVAS, PAGE_CANVAS), Image.Resampling.BILINEAR
        )
        buffer = io.BytesIO()
        drawn.save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    return uploads


def random_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = SimpleCNN()
    save_checkpoint(path, checkpoint_payload(model))
    return path


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_until_healthy(base_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before answering")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout_s:g} s")


async def load(
    base_url: str, uploads: list[bytes], total: int, clients: int, time_limit_s: float
) -> dict:
    latencies: list[float] = []
    errors = 0
    first_error = ""
    answers: dict[int, int] = {}  # image index -> digit: the same image must always agree
    next_request = 0
    started = time.perf_counter()
    deadline = started + time_limit_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_request, errors, first_error
        while next_request < total and time.perf_counter() < deadline:
            index = next_request % len(uploads)
            next_request += 1
            sent = time.perf_counter()
            try:
                response = await http.post(
                    "/predict", files={"file": ("digit.png", uploads[index], "image/png")}
                )
                response.raise_for_status()
                digit = response.json()["digit"]
                if answers.setdefault(index, digit) != digit:
                    raise ValueError(f"image {index} was a {answers[index]}, now a {digit}")
            except Exception as error:  # counted and shown: any failure is a benchmark error
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {error}"
                continue
            latencies.append(time.perf_counter() - sent)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {
        "requests": total,
        "answered": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "seconds": time.perf_counter() - started,
        "latencies": sorted(latencies),
    }


def report(result: dict, arguments: argparse.Namespace) -> int:
    latencies = result["latencies"]
    answered = result["answered"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {arguments.clients} concurrent clients on loopback"
    )
    print(
        f"answered {answered}/{result['requests']} in {result['seconds']:.1f} s, "
        f"errors: {result['errors']}"
    )
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(
            f"throughput: {answered / result['seconds']:.0f} requests/s; "
            f"latency p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms, "
            f"max {1000 * latencies[-1]:.1f} ms"
        )
    if result["errors"] or answered < result["requests"]:
        print("FAILED: errors, or the time limit stopped it before every request was answered")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
