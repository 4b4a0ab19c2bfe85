"""`mnist serve`'s API through FastAPI's TestClient: every endpoint and every kind of bad input.

Most tests use `ChecksumPredictor`, a fake whose answer is a known function of the exact image
it receives, so they check that the API hands the model `preprocess_image`'s output (the oracle)
and reports the model's answer unchanged. The tests marked slow use the tiny trained model and
compare against its own logits.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
from conftest import checkpoint_payload
from fastapi.testclient import TestClient
from images import ODD_IMAGES, png_header_only, with_exif_chunk
from PIL import Image
from serving import (
    DIGEST,
    MODEL_INFO,
    SEVEN_PNG,
    ChecksumPredictor,
    assert_clean_error,
    checksum_digit,
    drawn_seven,
    local_client,
    png_bytes,
    upload,
)
from trained_model import tiny_checkpoint
from typer.testing import CliRunner

from mnist_classifier.batching import normalize
from mnist_classifier.checkpoint import load_checkpoint, save_checkpoint
from mnist_classifier.cli import app as cli_app
from mnist_classifier.data import load_split
from mnist_classifier.preprocess import preprocess_image
from mnist_classifier.serve.app import create_app
from mnist_classifier.serve.limits import DEFAULT_LIMITS
from mnist_classifier.serve.loading import load_checkpoint_model, stage_checkpoint
from mnist_classifier.serve.schemas import MAX_BATCH_IMAGES

MAX_BODY_BYTES = DEFAULT_LIMITS.max_body_bytes


class BlockedPredictor:
    """Never answers until released: a model stuck on a request."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        self.release.wait(timeout=30)
        return np.full((len(images), 10), 0.1)


SEVEN_SEEN = preprocess_image(SEVEN_PNG)  # the oracle: what the model must be given
SEVEN_ROWS = SEVEN_SEEN.tolist()


@pytest.fixture(scope="module")
def client() -> TestClient:
    return local_client(create_app(ChecksumPredictor(), MODEL_INFO))


def post_file(client: TestClient, data: bytes, content_type: str = "image/png"):
    return client.post("/predict", files={"file": ("digit.png", data, content_type)})


def assert_predicts_seven_correctly(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    answer = post_file(client, SEVEN_PNG).json()
    assert answer["preprocessed"] == SEVEN_SEEN.tolist()
    assert answer["digit"] == checksum_digit(SEVEN_SEEN)


# --- Answers ----------------------------------------------------------------------------------


def test_predict_gives_the_model_the_preprocessed_image_and_reports_its_answer(client):
    response = post_file(client, SEVEN_PNG)
    assert response.status_code == 200
    answer = response.json()
    assert answer["preprocessed"] == SEVEN_SEEN.tolist()
    expected = checksum_digit(SEVEN_SEEN)
    assert answer["digit"] == expected
    assert answer["probabilities"] == [0.91 if d == expected else 0.01 for d in range(10)]
    assert answer["model"] == {"digest": DIGEST, "stage": "production"}


def test_a_png_with_damaged_exif_is_answered_as_stored(client):
    """Pillow's lazy EXIF parser raised SyntaxError from deep inside: a 500, for an image."""
    response = post_file(client, with_exif_chunk(SEVEN_PNG, b"MM"))
    assert response.status_code == 200, response.text
    assert response.json()["preprocessed"] == SEVEN_SEEN.tolist()


def test_json_base64_as_encoders_write_it_answers_as_the_upload_does(client):
    upload = post_file(client, SEVEN_PNG).json()
    encoded = base64.b64encode(SEVEN_PNG).decode()
    assert "+" in encoded or "/" in encoded  # so the URL-safe form below differs
    variants = [
        encoded,
        "data:image/png;base64," + encoded,  # a canvas's toDataURL()
        "data:application/octet-stream;base64," + encoded,  # a file read as a data URL
        "data:image/png;name=seven.png;base64," + encoded,  # RFC 2397's parameters
        "data:image/png;charset=utf-8;base64," + encoded,
        base64.encodebytes(SEVEN_PNG).decode(),  # lines of 76 characters, as `base64` writes
        base64.urlsafe_b64encode(SEVEN_PNG).decode(),
        encoded.rstrip("="),  # padding dropped
    ]
    for image in variants:
        assert client.post("/predict", json={"image": image}).json() == upload


def test_json_with_a_byte_order_mark_answers_as_without_one(client):
    body = json.dumps({"image": base64.b64encode(SEVEN_PNG).decode()}).encode()
    headers = {"content-type": "application/json"}
    with_mark = client.post("/predict", content=b"\xef\xbb\xbf" + body, headers=headers)
    assert with_mark.status_code == 200, with_mark.text
    assert with_mark.json() == client.post("/predict", content=body, headers=headers).json()


def test_pixels_in_0_255_and_in_0_1_are_the_same_image(client):
    mnist_like = SEVEN_SEEN.numpy()  # light ink on black, 28x28
    as_bytes = client.post("/predict", json={"pixels": mnist_like.tolist()}).json()
    as_fractions = client.post("/predict", json={"pixels": (mnist_like / 255).tolist()}).json()
    assert as_bytes == as_fractions
    assert as_bytes["preprocessed"] == preprocess_image(Image.fromarray(mnist_like)).tolist()


def test_batch_answers_each_image_as_predict_does_in_order(client):
    images = [SEVEN_PNG, png_bytes(255 - drawn_seven().T), png_bytes(drawn_seven()[::-1])]
    singles = [post_file(client, image).json() for image in images]
    files = [("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    batch = client.post("/predict/batch", files=files).json()
    assert batch["model"] == singles[0]["model"]
    assert batch["predictions"] == [
        {key: single[key] for key in ("digit", "class", "label", "probabilities", "preprocessed")}
        for single in singles
    ]
    encoded = [{"image": base64.b64encode(image).decode()} for image in images]
    assert client.post("/predict/batch", json={"images": encoded}).json() == batch


def test_batch_over_the_limit_and_batch_with_one_bad_image_are_refused(client):
    too_many = [{"pixels": SEVEN_SEEN.tolist()}] * (MAX_BATCH_IMAGES + 1)
    assert_clean_error(client.post("/predict/batch", json={"images": too_many}), 422)
    just_enough = client.post("/predict/batch", json={"images": too_many[:MAX_BATCH_IMAGES]})
    assert len(just_enough.json()["predictions"]) == MAX_BATCH_IMAGES
    files = [("files", ("a.png", SEVEN_PNG, "image/png")), ("files", ("b.png", b"nope", "x/y"))]
    detail = assert_clean_error(client.post("/predict/batch", files=files), 400)
    assert detail.startswith("image 1: not an image")


def test_health_model_and_page(client):
    health = client.get("/health").json()
    assert health == {"status": "ok", "model": {"digest": DIGEST, "stage": "production"}}
    probe = client.head("/health")  # as uptime monitors ask
    assert probe.status_code == 200 and probe.content == b""
    assert client.get("/model").json() == MODEL_INFO.model_dump()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and "pointerdown" in page.text
    # Offline: nothing fetched from another origin.
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


def test_openapi_documents_both_body_kinds_the_answers_and_the_errors(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, json_model, answer_model in [
        ("/predict", "ImageInput", "PredictionResponse"),
        ("/predict/batch", "BatchInput", "BatchPredictionResponse"),
    ]:
        operation = schema["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert content["application/json"]["schema"]["$ref"] == f"#/components/schemas/{json_model}"
        assert "multipart/form-data" in content
        responses = operation["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            answer_model
        )
        for status in ("400", "413", "415", "422", "504"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "ErrorResponse"
            )
    assert set(components["ImageInput"]["properties"]) == {"image", "pixels"}
    assert "ImageInput" in json.dumps(components["BatchInput"])
    # Every reference points at a schema that is there.
    for reference in set(_references(schema)):
        assert reference.removeprefix("#/components/schemas/") in components
    assert schema["paths"]["/model"]["get"]["responses"]["200"]["content"]


def _references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


# --- Size limit -------------------------------------------------------------------------------


def json_body_of_size(size: int) -> bytes:
    """A valid predict request padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps({"image": base64.b64encode(SEVEN_PNG).decode()}).encode()
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_1_mib_is_served_and_one_byte_more_is_413(client):
    headers = {"content-type": "application/json"}
    exactly = client.post("/predict", content=json_body_of_size(MAX_BODY_BYTES), headers=headers)
    assert exactly.status_code == 200
    assert exactly.json()["digit"] == checksum_digit(SEVEN_SEEN)
    over = client.post("/predict", content=json_body_of_size(MAX_BODY_BYTES + 1), headers=headers)
    assert_clean_error(over, 413)
    upload = post_file(client, SEVEN_PNG + b"\0" * MAX_BODY_BYTES)
    assert_clean_error(upload, 413)


def test_a_chunked_or_lying_body_over_1_mib_is_413_as_it_streams(client):
    body = json_body_of_size(MAX_BODY_BYTES + 1)
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    chunked = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert_clean_error(chunked, 413)
    lying = client.post(
        "/predict",
        content=body,
        headers={"content-type": "application/json", "content-length": "100"},
    )
    assert_clean_error(lying, 413)
    assert_predicts_seven_correctly(client)


# --- Bad input: never a 5xx, and the server carries on ------------------------------------------


def raw_json(body: bytes) -> dict:
    return {"content": body, "headers": {"content-type": "application/json"}}


def pixels_literal(value: bytes) -> bytes:
    """`{"pixels": 28x28 of value}` written by hand: json.dumps will not write NaN as asked."""
    row = b"[" + b",".join([value] * 28) + b"]"
    return b'{"pixels": [' + b",".join([row] * 28) + b"]}"


BLANK_PNG = png_bytes(np.full((64, 64), 250, dtype=np.uint8))
DEEP_JSON = b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

BAD_REQUESTS = {
    # name: (request keyword arguments, expected status)
    "text/plain": ({"content": b"7", "headers": {"content-type": "text/plain"}}, 415),
    "no content type": ({"content": b"\x89PNG"}, 415),
    "xml": ({"content": b"<digit/>", "headers": {"content-type": "application/xml"}}, 415),
    "not an image": (upload(b"hello, world"), 400),
    "truncated png": (upload(SEVEN_PNG[:200]), 400),
    "blank image": (upload(BLANK_PNG), 400),
    "empty file": (upload(b""), 400),
    "eps": (upload(b"%!PS-Adobe-3.0 EPSF-3.0\n"), 400),
    "bomb": (upload(png_header_only(10_000, 10_000)), 413),  # as any image over the limit
    **{f"odd image {name}": (upload(make()), 400) for name, (make, _) in ODD_IMAGES.items()},
    "form urlencoded": ({"data": {"image": "7"}}, 415),
    "form without file": ({"files": {"picture": ("a.png", SEVEN_PNG, "image/png")}}, 422),
    "file field as text": ({"files": {"other": ("a.png", SEVEN_PNG)}, "data": {"file": "x"}}, 422),
    "invalid json": (raw_json(b"{"), 400),
    "deeply nested json": (raw_json(DEEP_JSON), 400),
    "json list": ({"json": [1, 2, 3]}, 422),
    "neither field": ({"json": {}}, 422),
    "both fields": ({"json": {"image": "AAAA", "pixels": [[0] * 28] * 28}}, 422),
    "unknown field": ({"json": {"picture": "AAAA"}}, 422),
    "bad base64": ({"json": {"image": "not base64!"}}, 400),
    "base64 of text": ({"json": {"image": base64.b64encode(b"hello").decode()}}, 400),
    "27 rows": ({"json": {"pixels": [[0] * 28] * 27}}, 422),
    "29 columns": ({"json": {"pixels": [[0] * 29] * 28}}, 422),
    "flat 784": ({"json": {"pixels": [0] * 784}}, 422),
    "3-d pixels": ({"json": {"pixels": [[[0]] * 28] * 28}}, 422),
    "string pixels": ({"json": {"pixels": [["a"] * 28] * 28}}, 422),
    # A seven's own pixels, but as JSON strings or booleans: not numbers, so refused, not read.
    "numbers as strings": ({"json": {"pixels": [[str(v) for v in r] for r in SEVEN_ROWS]}}, 422),
    "booleans": ({"json": {"pixels": [[v > 0 for v in row] for row in SEVEN_ROWS]}}, 422),
    "NaN": (raw_json(pixels_literal(b"NaN")), 422),
    "Infinity": (raw_json(pixels_literal(b"Infinity")), 422),
    "256": ({"json": {"pixels": [[256] * 28] * 28}}, 422),
    "negative": ({"json": {"pixels": [[-1] * 28] * 28}}, 422),
    "blank pixels": ({"json": {"pixels": [[0] * 28] * 28}}, 400),
    "one lit pixel": (
        {"json": {"pixels": [[0] * 28] * 14 + [[0] * 14 + [255] + [0] * 13] + [[0] * 28] * 13}},
        400,
    ),
    "batch of none": ({"json": {"images": []}}, 422),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_is_a_clean_4xx_and_the_server_still_predicts(client, name):
    request, status = BAD_REQUESTS[name]
    path = "/predict/batch" if "images" in request.get("json", {}) else "/predict"
    assert_clean_error(client.post(path, **request), status)
    assert_predicts_seven_correctly(client)


@pytest.mark.serial  # the answer's deadline is measured against the clock
def test_a_stuck_model_answers_504_in_time_and_health_still_answers():
    predictor = BlockedPredictor()
    limits = dataclasses.replace(DEFAULT_LIMITS, request_timeout_s=0.3)
    client = local_client(create_app(predictor, MODEL_INFO, limits=limits))
    try:
        started = time.perf_counter()
        response = post_file(client, SEVEN_PNG)
        assert time.perf_counter() - started < 5
        assert "0.3 s" in assert_clean_error(response, 504)
        # The worker thread is still stuck, yet the server answers.
        assert client.get("/health").json()["status"] == "ok"
    finally:
        predictor.release.set()


# --- The CLI and the model loader -----------------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--checkpoint", "a.pt", "--stage", "production"],
        ["--backend", "onnxruntime"],
        ["--backend", "onnxruntime", "--model", "m.onnx", "--stage", "staging"],
        ["--model", "m.onnx"],
        ["--backend", "tensorflow"],
    ],
)
def test_serve_refuses_contradictory_options_before_loading_anything(arguments):
    result = runner.invoke(cli_app, ["serve", *arguments])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_serve_names_the_missing_stage_checkpoint(tmp_path):
    result = runner.invoke(cli_app, ["serve", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert str(tmp_path / "production" / "mnist" / "best_model.pt") in result.output


def test_a_port_in_use_or_a_host_not_ours_is_one_line_before_the_model_loads(tmp_path):
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        missing = str(tmp_path / "never-read.pt")  # the address is checked first
        in_use = runner.invoke(cli_app, ["serve", "--checkpoint", missing, "--port", str(port)])
    assert in_use.exit_code == 2
    assert in_use.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use: stop what listens there or "
        "choose another --port"
    ]
    for host in ("not a host", "192.0.2.1"):  # no such name; an address of no interface here
        refused = runner.invoke(cli_app, ["serve", "--checkpoint", missing, "--host", host])
        assert refused.exit_code == 2 and len(refused.stderr.splitlines()) == 1
        assert refused.stderr.startswith("error: ") and host in refused.stderr


def test_a_stage_name_cannot_leave_the_models_folder(tmp_path):
    result = runner.invoke(cli_app, ["serve", "--models-dir", str(tmp_path), "--stage", "../x"])
    assert result.exit_code == 2
    assert "plain name" in result.output


def test_model_shows_the_validation_accuracy_as_counted(tmp_path):
    """9696 of 10000 validation images right was served as 0.9696000000000001."""
    checkpoint = stage_checkpoint(tmp_path, "production")
    save_checkpoint(checkpoint, checkpoint_payload(validation_accuracy=9696 / 10000))
    served = load_checkpoint_model(checkpoint, stage="production")
    answer = local_client(create_app(served.predictor, served.info)).get("/model")
    assert answer.json()["validation_accuracy"] == 9696 / 10000
    assert '"validation_accuracy":0.9696,' in answer.text


@pytest.fixture(scope="module")
def trained_checkpoint(mnist_dir):
    return tiny_checkpoint(mnist_dir)


@pytest.mark.slow
def test_a_stage_is_served_with_its_digest_and_model_card_metrics(trained_checkpoint, tmp_path):
    from mnist_classifier.files import sha256_of

    checkpoint = stage_checkpoint(tmp_path, "production")
    # Saved, not copied, so that whatever the checkpoint format keeps beside the file is there.
    save_checkpoint(checkpoint, torch.load(trained_checkpoint, weights_only=True))
    card = {"stage": "production", "metrics": {"test_accuracy": 0.91, "test_loss": 0.3}}
    (checkpoint.parent / "model_card.json").write_text(json.dumps(card))
    served = load_checkpoint_model(checkpoint, stage="production")
    client = local_client(create_app(served.predictor, served.info))
    model = client.get("/model").json()
    assert model["digest"] == sha256_of(checkpoint)
    assert model["stage"] == "production"
    assert model["metrics"] == {**card["metrics"], "per_class_accuracy": None}
    assert "model_card" not in model
    assert model["epoch"] == 1 and model["file_name"] == "best_model.pt"
    assert str(tmp_path) not in json.dumps(model)  # where the file lives is the operator's business


@pytest.mark.slow
def test_predictions_are_the_trained_models_own(trained_checkpoint, mnist_dir):
    served = load_checkpoint_model(trained_checkpoint)
    client = local_client(create_app(served.predictor, served.info))
    images, labels = load_split(mnist_dir, train=False)
    uploads = [png_bytes(255 - image.numpy()) for image in images[:32]]  # dark ink on white
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]
    answers = client.post("/predict/batch", files=files).json()["predictions"]
    # The oracle: the checkpoint's model on the same preprocessed images, softmax by hand.
    seen = torch.stack([preprocess_image(data) for data in uploads])
    with torch.inference_mode():
        expected = torch.softmax(load_checkpoint(trained_checkpoint).model(normalize(seen)), 1)
    returned = torch.tensor([answer["probabilities"] for answer in answers], dtype=torch.float64)
    torch.testing.assert_close(returned, expected.double(), atol=1e-6, rtol=0)
    assert [answer["digit"] for answer in answers] == expected.argmax(1).tolist()
    assert (expected.argmax(1) == labels[:32]).float().mean() >= 0.8  # a real model, not noise
    single = post_file(client, uploads[0]).json()  # alone, not in a batch of 32
    assert single["digit"] == answers[0]["digit"]
    np.testing.assert_allclose(single["probabilities"], answers[0]["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_the_onnxruntime_backend_serves_what_the_torch_backend_serves(
    trained_checkpoint, mnist_dir, tmp_path
):
    from mnist_classifier.export import export_model
    from mnist_classifier.files import sha256_of
    from mnist_classifier.serve.loading import load_onnx_model

    images, _ = load_split(mnist_dir, train=False)
    onnx_path = tmp_path / "model.onnx"
    export_model(load_checkpoint(trained_checkpoint).model, "onnx", onnx_path, images[:64])
    uploads = [png_bytes(255 - image.numpy()) for image in images[:16]]
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]

    answers = {}
    for served in (load_checkpoint_model(trained_checkpoint), load_onnx_model(onnx_path)):
        client = local_client(create_app(served.predictor, served.info))
        answers[served.info.backend] = client.post("/predict/batch", files=files).json()
    model = client.get("/model").json()  # the onnxruntime server's
    assert model["backend"] == "onnxruntime" and model["digest"] == sha256_of(onnx_path)

    by_torch, by_onnx = answers["torch"]["predictions"], answers["onnxruntime"]["predictions"]
    assert [a["digit"] for a in by_onnx] == [a["digit"] for a in by_torch]
    np.testing.assert_allclose(
        [a["probabilities"] for a in by_onnx], [a["probabilities"] for a in by_torch], atol=1e-5
    )


def test_serve_refuses_a_file_that_is_not_an_onnx_model(tmp_path):
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_bytes(b"these bytes are not a protobuf")
    result = CliRunner().invoke(
        cli_app, ["serve", "--backend", "onnxruntime", "--model", str(not_a_model)]
    )
    assert result.exit_code == 1
    assert "is not a usable exported ONNX model" in result.output
    assert "Traceback" not in result.output
