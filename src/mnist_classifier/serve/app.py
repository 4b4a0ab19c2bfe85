"""The HTTP API and drawing page: `create_app(predictor, model_info)` builds it, nothing more.

The model is loaded before this app exists (see `loading.py`); no endpoint loads or accepts a
model. Every request is refused with a 4xx and a one-line JSON `detail` before it can cost
anything when it names a host the server is not (400), frames its body ambiguously (400), is
too big in bytes or declared pixels (413), too slow to arrive (408), of the wrong content type
(415), malformed (422) or not a usable image (400). Decoding and inference run on worker
threads within the budgets of `limits.py` (503 when full) and under a deadline (504), so a slow
request never blocks `/health` or the other requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Protocol

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_classifier.datasets import DatasetSpec, dataset_spec
from mnist_classifier.preprocess import ImageError, preprocessing_for
from mnist_classifier.serve.limits import (
    DEFAULT_LIMITS,
    PreparationLane,
    ServerLimits,
    declared_pixels,
)
from mnist_classifier.serve.schemas import (
    MAX_BATCH_IMAGES,
    NUM_CLASSES,
    BatchInput,
    BatchPredictionResponse,
    ErrorResponse,
    HealthResponse,
    ImageInput,
    ModelInfo,
    PredictionResponse,
    PredictionResult,
)

# Host headers accepted whatever the configuration: this machine's own names for itself.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# At most this many validation problems are listed in a 422, so a 28x28 array of NaN answers
# with three lines, not 784.
MAX_LISTED_PROBLEMS = 3
# RFC 2397: data:[<type/subtype>][;name=value]...;base64, (a file reader may add a name or a
# charset); only at the start.
DATA_URL_PREFIX = re.compile(r"\s*data:[A-Za-z0-9.+/-]*(?:;[^;,=]+=[^;,]*)*;base64,")
# Base64 as encoders write it besides the plain alphabet: the URL-safe alphabet's two letters.
URL_SAFE_LETTERS = str.maketrans("-_", "+/")

ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorResponse, "description": "Not a usable image, or invalid JSON."},
    408: {"model": ErrorResponse, "description": "The body did not arrive in time."},
    413: {"model": ErrorResponse, "description": "Body over 1 MiB, or too many pixels."},
    415: {"model": ErrorResponse, "description": "Not multipart/form-data or JSON."},
    422: {"model": ErrorResponse, "description": "Well-formed but wrong fields or values."},
    503: {"model": ErrorResponse, "description": "Busy preparing other images: see Retry-After."},
    504: {"model": ErrorResponse, "description": "Inference took longer than the deadline."},
}


class Predictor(Protocol):
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (B, 28, 28) -> (B, 10) probabilities."""
        ...


# An uploaded file's bytes, or a validated 28x28 array from JSON.
ImageSource = bytes | np.ndarray


def create_app(
    predictor: Predictor,
    model_info: ModelInfo,
    *,
    limits: ServerLimits = DEFAULT_LIMITS,
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The app answering with `predictor`, within `limits`, to requests whose Host header is a
    loopback name or matches `allowed_hosts` ("digits.lan", "*.example.org", or "*" for any)."""
    # The app's own pools, not the event loop's default one: a request that timed out leaves
    # its thread running until its current image is done, and nothing that stops the loop
    # should wait for it. Small requests (drawings from the page) have workers of their own.
    small_requests = PreparationLane(
        "small", limits.small_requests_pixel_budget, limits.workers_per_kind
    )
    large_requests = PreparationLane(
        "large", limits.large_requests_pixel_budget, limits.workers_per_kind
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for lane in (small_requests, large_requests):
            lane.pool.shutdown(wait=False, cancel_futures=True)

    # FastAPI's /docs page loads Swagger UI from a CDN; this one serves it from the installed
    # package, so the docs work on a machine without internet. ReDoc is left out: its page
    # still fetches a logo from its CDN.
    app = FastAPIOffline(
        redoc_url=None,
        title="MNIST digit classifier",
        version="1",
        description=(
            "Predicts the handwritten digit in an image with one model, loaded at start. "
            "`GET /` is a page to draw a digit on."
        ),
        lifespan=lifespan,
    )
    # The last added runs first: the body's framing, size and time are settled before anything
    # else answers, so that a refusal can close the connection on a body it has not read.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_HOSTS, *allowed_hosts])
    app.add_middleware(BodyLimits, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    identity = model_info.identity
    dataset = dataset_spec(model_info.dataset)  # its classes' names and its image recipe
    index_html = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")

    async def predict_sources(sources: list[ImageSource]) -> list[PredictionResult]:
        pixels = sum(declared_pixels(source) for source in sources)  # headers only, no decoding
        if pixels > limits.max_request_pixels:
            what = (
                f"the {len(sources)} images declare" if len(sources) > 1 else "the image declares"
            )
            raise HTTPException(
                413,
                f"{what} {pixels:,} pixels, over the {limits.max_request_pixels:,}-pixel limit "
                "per request; send smaller images, or fewer at a time",
            )
        lane = small_requests if pixels <= limits.small_request_pixels else large_requests
        abandoned = threading.Event()
        job = lane.submit(pixels, _predict, predictor, sources, dataset, abandoned)
        if job is None:
            raise HTTPException(
                503,
                f"busy preparing other images; retry in {limits.retry_after_s} s",
                headers={"Retry-After": str(limits.retry_after_s)},
            )
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(
                504,
                f"prediction took longer than {limits.request_timeout_s:g} s and was abandoned",
            ) from None
        except _UnusableImage as error:
            where = f"image {error.index}: " if len(sources) > 1 else ""
            raise HTTPException(400, f"{where}{error.reason}") from None
        finally:
            # A thread cannot be stopped, and a job already running is not cancelled by the
            # timeout: this tells it to stop before its next image. Harmless once it is done.
            abandoned.set()

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_request_body("ImageInput", file_field="file", many=False),
        summary="Predict the digit in one image",
    )
    async def predict(request: Request) -> PredictionResponse:
        """Send a file as multipart field `file`, or JSON with `image` (base64) or `pixels`."""
        sources = await _read_sources(request, batch=False)
        (result,) = await predict_sources(sources)
        return PredictionResponse(**result.model_dump(), model=identity)

    @app.post(
        "/predict/batch",
        response_model=BatchPredictionResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_request_body("BatchInput", file_field="files", many=True),
        summary=f"Predict the digits in up to {MAX_BATCH_IMAGES} images",
    )
    async def predict_batch(request: Request) -> BatchPredictionResponse:
        """Send files as repeated multipart fields `files`, or JSON `{"images": [...]}`.

        One unusable image refuses the whole batch, naming its index.
        """
        sources = await _read_sources(request, batch=True)
        return BatchPredictionResponse(predictions=await predict_sources(sources), model=identity)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", model=identity)

    @app.head("/health", include_in_schema=False)  # load balancers and uptime monitors ask so
    async def health_probe() -> Response:
        return Response(status_code=200)

    @app.get("/model", response_model=ModelInfo)
    async def model() -> ModelInfo:
        """The served model: digest, stage, epoch, validation accuracy and test metrics."""
        return model_info

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html)

    def openapi() -> dict:
        # The JSON request bodies are parsed by hand (so that one endpoint takes multipart or
        # JSON); their models are added to the schema here, where `_request_body` refers to them.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for body_model in (ImageInput, BatchInput):
                body_schema = body_model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
                components.update(body_schema.pop("$defs", {}))
                components[body_model.__name__] = body_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


class BodyLimits:
    """Read each request's body once, here, within its limits: framing, size and time.

    - Content-Length together with Transfer-Encoding is refused (400): the two disagree on
      where the body ends, which is what request smuggling relies on (RFC 9112, 6.1).
    - A Content-Length over `max_bytes` is refused (413) before anything is read.
    - The body is then read, counting, whatever the header said: a chunked request or one that
      lies is cut off as soon as it passes the limit (413), and one that has not all arrived
      within `timeout_s` (a stalled upload) is cut off too (408).

    Every refusal closes the connection, so the unread rest of a body is never taken for the
    next request. The counted body (at most `max_bytes`) is handed on to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_names = [name for name, _value in scope["headers"]]
        if b"transfer-encoding" in header_names and b"content-length" in header_names:
            detail = "a request may not have both Content-Length and Transfer-Encoding"
            await _refuse(scope, receive, send, 400, detail)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await _refuse(scope, receive, send, 413, self._too_large())
                return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.timeout_s)
        except asyncio.TimeoutError:
            detail = f"the request body did not arrive within {self.timeout_s:g} s"
            await _refuse(scope, receive, send, 408, detail)
            return
        if body is None:
            return  # the client left; nobody to answer
        if len(body) > self.max_bytes:
            await _refuse(scope, receive, send, 413, self._too_large())
            return
        body_sent = False

        async def receive_counted_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect

        await self.app(scope, receive_counted_body, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The body, or its first `max_bytes` + 1 bytes; None when the client disconnects."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            chunks.append(chunk)
            if received > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> str:
        return (
            f"request body is over the {self.max_bytes:,}-byte limit; send a smaller image "
            "(a digit needs far fewer pixels: crop the photo or scale it down)"
        )


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
    await response(scope, receive, send)


async def _read_sources(request: Request, *, batch: bool) -> list[ImageSource]:
    """The images of a request, parsed and validated; any problem is an HTTPException 4xx."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        body_model: type[BaseModel] = BatchInput if batch else ImageInput
        body = await request.body()
        # JSON may not begin with a byte-order mark, but PowerShell and .NET clients write one
        # before UTF-8 text; RFC 8259 lets a parser ignore it, and so does this one.
        body = body.removeprefix(b"\xef\xbb\xbf")
        try:
            parsed = body_model.model_validate_json(body)
        except ValidationError as error:
            raise _validation_failure(error) from None
        inputs = parsed.images if isinstance(parsed, BatchInput) else [parsed]
        return [_source_from_json(item, index, batch) for index, item in enumerate(inputs)]
    if media_type == "multipart/form-data":
        return await _sources_from_form(request, "files" if batch else "file", batch)
    raise HTTPException(
        415,
        "Content-Type must be multipart/form-data (with a file field) or application/json",
    )


async def _sources_from_form(request: Request, field: str, batch: bool) -> list[ImageSource]:
    # Starlette answers 400 itself for a malformed multipart body or too many files.
    async with request.form(max_files=MAX_BATCH_IMAGES, max_fields=MAX_BATCH_IMAGES) as form:
        uploads = form.getlist(field)
        if not uploads:
            raise HTTPException(422, f"the multipart form needs a file field named {field!r}")
        if not batch and len(uploads) > 1:
            raise HTTPException(422, "POST /predict takes one file; use /predict/batch for more")
        if not all(isinstance(upload, UploadFile) for upload in uploads):
            raise HTTPException(422, f"the form field {field!r} must be a file, not text")
        return [await upload.read() for upload in uploads]


def _source_from_json(item: ImageInput, index: int, batch: bool) -> ImageSource:
    if item.pixels is not None:
        return np.asarray(item.pixels, dtype=np.float64)  # (28, 28), validated
    image = item.image or ""
    prefix = DATA_URL_PREFIX.match(image)
    encoded = image[prefix.end() :] if prefix else image
    # Also as encoders write it: broken into lines (the `base64` command, every 76 characters),
    # URL-safe, or with its "=" padding dropped.
    encoded = "".join(encoded.split()).translate(URL_SAFE_LETTERS)
    encoded += "=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        where = f"images.{index}." if batch else ""
        raise HTTPException(400, f"{where}image is not valid base64") from None


def _validation_failure(error: ValidationError) -> HTTPException:
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    if problems and problems[0]["type"] == "json_invalid":
        return HTTPException(400, problems[0]["msg"])  # e.g. "Invalid JSON: recursion limit..."
    lines = [
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in problems[:MAX_LISTED_PROBLEMS]
    ]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return HTTPException(422, "; ".join(lines))


class _Abandoned(Exception):
    """The request timed out: nobody waits for the rest of its work."""


class _UnusableImage(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _predict(
    predictor: Predictor,
    sources: list[ImageSource],
    dataset: DatasetSpec,
    abandoned: threading.Event,
) -> list[PredictionResult]:
    """Preprocess each image as `mnist predict` does, then one forward pass for all of them.

    Stops before the next image, or before the forward pass, once `abandoned` is set.
    """
    prepare = preprocessing_for(dataset.subject)  # digits, or photos of clothing
    images = []
    for index, source in enumerate(sources):
        if abandoned.is_set():
            raise _Abandoned
        try:
            images.append(prepare(_as_image(source)))
        except ImageError as error:
            raise _UnusableImage(index, str(error)) from None
    if abandoned.is_set():
        raise _Abandoned
    batch = torch.stack(images)  # (B, 28, 28) uint8
    probabilities = np.asarray(predictor.probabilities(batch), dtype=np.float64)
    if probabilities.shape != (len(images), NUM_CLASSES):
        raise RuntimeError(f"predictor answered shape {probabilities.shape}")
    results = []
    for image, row in zip(images, probabilities, strict=True):
        number = int(row.argmax())
        results.append(
            PredictionResult(
                digit=number,
                class_=number,
                label=dataset.class_names[number],
                probabilities=row.tolist(),
                preprocessed=image.tolist(),
            )
        )
    return results


def _as_image(source: ImageSource) -> bytes | Image.Image:
    if isinstance(source, bytes):
        return source
    # JSON pixels: 0..1 when nothing is above 1, else 0..255 (both validated to lie in 0..255).
    scaled = source * 255.0 if source.max() <= 1.0 else source
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _request_body(json_model: str, *, file_field: str, many: bool) -> dict:
    """OpenAPI for a body that is either multipart files or a JSON document."""
    file_schema = {"type": "string", "format": "binary"}
    if many:
        file_schema = {"type": "array", "items": file_schema, "maxItems": MAX_BATCH_IMAGES}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {file_field: file_schema},
                        "required": [file_field],
                    }
                },
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model}"}},
            },
        }
    }
