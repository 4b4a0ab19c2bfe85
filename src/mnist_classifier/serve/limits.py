"""What the server will take from one request, and how much work it holds at once.

Bytes are a poor measure of cost: a 24 KB 1-bit PNG can declare 40 million pixels and take
seconds and a gigabyte to prepare. So the server counts the pixels each image declares in its
header, before anything is decoded, and bounds them per request and in total while they are
being prepared. Requests as small as the drawing page's have their own workers and budget, so a
flood of costly uploads cannot make them wait. Each limit here is stated in the README's
"Serving predictions" section.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from mnist_classifier.preprocess import ACCEPTED_SIGNATURES, bomb_pixels

T = TypeVar("T")


@dataclass(frozen=True)
class ServerLimits:
    """Every bound the server keeps; the defaults are `mnist serve`'s."""

    max_body_bytes: int = 1 << 20  # 1 MiB: a drawn digit is a few KiB; shrink photos first
    # All the images of one request together: one 16-megapixel photo, or 64 drawings from the
    # page (64 x 280 x 280 = 5 MP). Each image also meets preprocess's own per-image limit.
    max_request_pixels: int = 16_000_000
    # A request of at most this many pixels in all (a drawing from the page is 78,400, a JSON
    # `pixels` image 784) is prepared by the small-request workers, under their own budget.
    small_request_pixels: int = 1_000_000
    # Pixels admitted for preparation at once (queued or being prepared), per kind of request.
    # Preparing costs about 25 bytes and a few microseconds per declared pixel, so a budget
    # bounds both the memory and how long an admitted request can wait for a worker.
    large_requests_pixel_budget: int = 16_000_000
    small_requests_pixel_budget: int = 4_000_000
    # Worker threads per kind. Decoding and torch already use the cores; more threads would
    # only add memory.
    workers_per_kind: int = 2
    # A full budget answers 503 with this Retry-After (seconds): about what admitted work takes.
    retry_after_s: int = 2
    request_timeout_s: float = 10.0  # preparing and predicting; past it the answer is 504
    header_timeout_s: float = 10.0  # for a request's line and headers, from its first byte
    body_timeout_s: float = 30.0  # for its body, after the headers (1 MiB at 35 KB/s)
    keep_alive_timeout_s: int = 5  # an idle kept-alive connection is closed after this
    # Open connections plus requests in progress; past it uvicorn answers 503 at once. With the
    # timeouts this bounds what slow or stalled clients can hold (at most 1 MiB each).
    max_connections: int = 100

    def __post_init__(self) -> None:
        # A request the per-request limit admits must fit its budget, or it could never run.
        if self.max_request_pixels > self.large_requests_pixel_budget:
            raise ValueError("max_request_pixels must not exceed large_requests_pixel_budget")
        if self.small_request_pixels > self.small_requests_pixel_budget:
            raise ValueError("small_request_pixels must not exceed small_requests_pixel_budget")


DEFAULT_LIMITS = ServerLimits()
_FORMATS = sorted(set(ACCEPTED_SIGNATURES.values()))


def declared_pixels(source: bytes | np.ndarray) -> int:
    """The pixels an image's header declares (a JSON array's own size), read without decoding.

    A file Pillow cannot even open counts 0: preparing it fails at once, with its reason. One
    that Pillow refuses as a decompression bomb counts the pixels its refusal quotes.
    """
    if isinstance(source, np.ndarray):
        return source.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source), formats=_FORMATS) as image:  # the header only
                width, height = image.size
    except Image.DecompressionBombError as error:  # over Pillow's own limit, twice ours
        return bomb_pixels(error)
    except Exception:  # any unreadable header: preprocess_image names what is wrong
        return 0
    return width * height


class PreparationLane:
    """Worker threads, and a budget of pixels that may be admitted to them at once.

    A request's pixels are admitted when it is accepted and released only when its worker has
    stopped (or the job was cancelled before it started), so work abandoned after a timeout
    still counts until it has really ended.
    """

    def __init__(self, name: str, budget_pixels: int, workers: int) -> None:
        self.budget_pixels = budget_pixels
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"mnist-{name}")
        self._admitted_pixels = 0
        self._lock = threading.Lock()

    def submit(self, pixels: int, function: Callable[..., T], *args: object) -> Future[T] | None:
        """Run `function(*args)` on a worker if `pixels` fit in the budget now, else None."""
        with self._lock:
            if self._admitted_pixels + pixels > self.budget_pixels:
                return None
            self._admitted_pixels += pixels
        try:
            job = self.pool.submit(function, *args)
        except BaseException:  # e.g. the pool is shutting down
            self._release(pixels)
            raise
        job.add_done_callback(lambda _job: self._release(pixels))
        return job

    @property
    def admitted_pixels(self) -> int:
        with self._lock:
            return self._admitted_pixels

    def _release(self, pixels: int) -> None:
        with self._lock:
            self._admitted_pixels -= pixels
