"""`mnist predict` on realistic user images, its bad-input handling, and `mnist export` parity."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from images import ODD_IMAGES
from photo_digits import photo_like
from realistic_digits import realistic_variant, side_by_side
from trained_model import tiny_checkpoint
from typer.testing import CliRunner

from mnist_classifier.batching import normalize
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.cli import app
from mnist_classifier.data import load_split
from mnist_classifier.files import sha256_of
from mnist_classifier.preprocess import ImageError, preprocess_image

pytestmark = pytest.mark.slow  # trains a tiny model on the real MNIST files

runner = CliRunner()
REALISTIC_IMAGES = 150
# Measured with the tiny model (1 epoch on 4,096 images, seed 0): 95.3% on these 150 MNIST
# test crops as they are, 96.0% on their realistic versions; on the first 300, 94.0% and 92.0%
# (90.0% before photos were handled), when the floor was 0.86: the floor keeps that 6-point margin.
# With a 2-epoch lab model the first 500 realistic versions score 96.8% (README).
MIN_REALISTIC_ACCURACY = 0.90
MAX_ACCURACY_LOSS = 0.08  # realistic vs the same digits as MNIST crops
PHOTO_IMAGES = 100
# Measured with the same tiny model on the first 100 photo-like versions (tests/photo_digits.py,
# seed 0): 95.0%, as on the same digits as MNIST crops; 89.0% while shadows along the picture's
# edge still read as ink and a shadowed border could flip the ink. Before the paper's lighting
# was divided out, such photos scored 28.8% even with a 2-epoch model (README).
MIN_PHOTO_ACCURACY = 0.90


@pytest.fixture(scope="module")
def checkpoint(mnist_dir):
    return tiny_checkpoint(mnist_dir)


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    return load_split(mnist_dir, train=False)


def test_realistic_images_are_classified_nearly_as_well_as_mnist_crops(checkpoint, test_digits):
    images, labels = test_digits[0][:REALISTIC_IMAGES], test_digits[1][:REALISTIC_IMAGES]
    rng = np.random.default_rng(0)
    realistic = torch.stack(
        [
            preprocess_image(realistic_variant(image.numpy(), i, rng))
            for i, image in enumerate(images)
        ]
    )
    model = load_checkpoint(checkpoint).model
    with torch.inference_mode():
        crop_accuracy = (model(normalize(images)).argmax(1) == labels).float().mean().item()
        realistic_accuracy = (model(normalize(realistic)).argmax(1) == labels).float().mean().item()
    assert realistic_accuracy >= MIN_REALISTIC_ACCURACY
    assert realistic_accuracy >= crop_accuracy - MAX_ACCURACY_LOSS


NUMBERS = 40
# Measured on 300 pairs of test digits 1-40 pixels apart at MNIST's scale (a digit 20 high): 5
# of 30 refused 1 pixel apart (too close to tell from one digit's pieces), 16 of 30 at 2, and
# 29 or 30 of 30 at each of 3, 5, 9, 12, 16, 20, 30 and 40. These pairs stand 3 to 20 apart.
MIN_NUMBERS_REFUSED = 0.9


def test_two_digits_side_by_side_are_refused_not_read_as_one(test_digits):
    rng = np.random.default_rng(0)
    refused = 0
    for index in range(NUMBERS):
        first, second = (test_digits[0][2 * index + k].numpy() for k in (0, 1))
        try:
            preprocess_image(side_by_side(first, second, gap=int(rng.integers(3, 21))))
        except ImageError as error:
            refused += "several digits side by side" in str(error)
    assert refused >= MIN_NUMBERS_REFUSED * NUMBERS


@pytest.fixture(scope="module")
def user_images(tmp_path_factory, test_digits):
    folder = tmp_path_factory.mktemp("user-images")
    rng = np.random.default_rng(1)
    for index in range(10):
        data = realistic_variant(test_digits[0][index].numpy(), index, rng)
        suffix = ".jpg" if data.startswith(b"\xff\xd8") else ".png"
        (folder / f"digit{index}{suffix}").write_bytes(data)
    return folder


def test_photos_with_lighting_gradients_and_shadows_are_read(checkpoint, test_digits):
    images, labels = test_digits[0][:PHOTO_IMAGES], test_digits[1][:PHOTO_IMAGES]
    rng = np.random.default_rng(0)
    photos = torch.stack(
        [preprocess_image(photo_like(image.numpy(), i, rng)) for i, image in enumerate(images)]
    )
    model = load_checkpoint(checkpoint).model.eval()
    with torch.inference_mode():
        photo_accuracy = (model(normalize(photos)).argmax(1) == labels).float().mean().item()
    assert photo_accuracy >= MIN_PHOTO_ACCURACY


def test_odd_images_get_one_error_line_each_and_the_others_are_predicted(
    checkpoint, user_images, tmp_path
):
    for name, (make, _reason) in ODD_IMAGES.items():
        (tmp_path / f"{name}.tif").write_bytes(make())
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # listed, then refused
    (tmp_path / "notes.txt").write_text("not an image, and not listed")
    named_empty_folder = tmp_path / "empty"
    named_empty_folder.mkdir()
    too_long = tmp_path / ("a" * 300 + ".png")  # pathlib raises for it: it lost every file
    result = runner.invoke(
        app,
        [
            "predict",
            str(user_images),
            str(tmp_path),
            str(named_empty_folder),
            str(too_long),
            "--checkpoint",
            str(checkpoint),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert len(errors) == len(ODD_IMAGES) + 3
    assert (
        f"error: {named_empty_folder}: a folder holding no PNG, JPEG, BMP, GIF or TIFF files"
        in (errors)
    )
    assert f"error: {too_long}: cannot be read (File name too long)" in errors
    heic_error = f"error: {tmp_path / 'phone.heic'}: HEIC images are not supported"
    assert any(line.startswith(heic_error) for line in errors)
    for name, (_make, reason) in ODD_IMAGES.items():
        assert any(
            line.startswith(f"error: {tmp_path / name}.tif: ") and reason in line for line in errors
        )
    answered = [entry for entry in json.loads(result.stdout) if "error" not in entry]
    assert len(answered) == 10


def test_predict_text_names_the_model_that_answered(checkpoint, user_images):
    result = runner.invoke(app, ["predict", str(user_images), "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    first_line = result.stdout.splitlines()[0]
    assert first_line == f"Model: {checkpoint}, SHA-256 {sha256_of(checkpoint)[:12]}"


def test_many_files_show_a_bar_on_a_terminal_that_counts_each_and_leaves_no_trace(
    checkpoint, user_images, tmp_path, monkeypatch
):
    import io

    from rich.console import Console

    from mnist_classifier import reporting

    for copy in range(3):  # 30 images, above the bar's threshold, and one file that fails
        for image in user_images.iterdir():
            (tmp_path / f"{copy}-{image.name}").write_bytes(image.read_bytes())
    (tmp_path / "empty.png").write_bytes(b"")
    arguments = ["predict", str(tmp_path), "--checkpoint", str(checkpoint)]
    piped = runner.invoke(app, arguments)  # stderr is no terminal here: no bar

    terminal = io.StringIO()
    monkeypatch.setattr(
        reporting,
        "error_console",
        Console(file=terminal, force_terminal=True, width=120, highlight=False),
    )
    shown = runner.invoke(app, arguments)

    assert "Preparing images" not in piped.output
    assert shown.exit_code == piped.exit_code == 2
    assert shown.stdout == piped.stdout  # the table is the same, bar or no bar
    drawn, error = terminal.getvalue().split("error: ")
    assert "31/31" in drawn and "32/31" not in drawn  # every file counted, the failing one too
    assert drawn.endswith("\x1b[2K")  # the bar's line is erased before the error line
    assert error.startswith(f"{tmp_path / 'empty.png'}: empty file")


def test_predict_json_lists_every_file_and_reports_each_failure_on_one_line(
    checkpoint, user_images, tmp_path, monkeypatch
):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "figure.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    locked = tmp_path / "locked.png"  # another user's file, without read permission for us
    locked.write_bytes((user_images / sorted(os.listdir(user_images))[0]).read_bytes())
    access, read_bytes = os.access, Path.read_bytes
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: str(path) != str(locked) and access(path, mode, **kw)
    )

    def refuse_locked(path):
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse_locked)
    arguments = ["predict", str(user_images), str(tmp_path / "empty.png"), str(tmp_path / "no.png")]
    arguments += [str(tmp_path / "figure.eps"), str(locked), "--checkpoint", str(checkpoint)]
    arguments += ["--format", "json", "--save-preprocessed", str(tmp_path / "seen")]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    listed = json.loads(result.stdout)
    assert len(listed) == 14
    good = [entry for entry in listed if "error" not in entry]
    assert len(good) == 10
    digest = sha256_of(checkpoint)
    for entry in good:
        assert set(entry) == {"file", "digit", "label", "probability", "top3", "model"}
        assert entry["label"] == str(entry["digit"])  # MNIST names its classes by their digit
        assert entry["model"] == {"file": str(checkpoint), "stage": None, "digest": digest}
        assert entry["top3"][0]["digit"] == entry["digit"]
        assert entry["probability"] >= entry["top3"][1]["probability"] >= 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and len(result.stderr.splitlines()) == 4
    assert any("empty.png: empty file" in line for line in errors)
    assert any("no.png: no such file" in line for line in errors)
    assert f"error: {locked}: cannot be read (Permission denied)" in errors
    assert len(list((tmp_path / "seen").glob("*.png"))) == 10


def test_exports_match_the_eager_model_and_onnxruntime_predicts_the_same(
    checkpoint, mnist_dir, user_images, tmp_path
):
    for export_format, name in [
        ("onnx", "model.onnx"),
        ("torchscript", "model.pt"),
        ("safetensors", "model.safetensors"),
    ]:
        output = tmp_path / name
        result = runner.invoke(
            app,
            [
                "export",
                "--checkpoint",
                str(checkpoint),
                "--format",
                export_format,
                "--output",
                str(output),
                "--data-dir",
                str(mnist_dir),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "Parity on 1000 test images" in result.output
        assert "predictions identical: yes" in result.output
        assert output.is_file()
    sidecar = json.loads((tmp_path / "model.safetensors.json").read_text())

    assert sidecar["weights_sha256"] == sha256_of(tmp_path / "model.safetensors")
    assert sidecar["normalization"] == {
        "mean": 0.1307,
        "std": 0.3081,
        "formula": sidecar["normalization"]["formula"],
    }

    def predict(*backend):
        result = runner.invoke(app, ["predict", str(user_images), "--format", "json", *backend])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    with_torch = predict("--checkpoint", str(checkpoint))
    with_onnx = predict("--backend", "onnxruntime", "--model", str(tmp_path / "model.onnx"))
    assert [entry["digit"] for entry in with_onnx] == [entry["digit"] for entry in with_torch]
    for onnx_entry, torch_entry in zip(with_onnx, with_torch, strict=True):
        assert onnx_entry["probability"] == pytest.approx(torch_entry["probability"], abs=1e-5)


def test_export_refuses_a_model_that_differs_from_the_eager_one(checkpoint, test_digits, tmp_path):
    from mnist_classifier.export import ExportError, compare_logits, export_model

    model = load_checkpoint(checkpoint).model
    logits = np.zeros((4, 10), dtype=np.float32)
    logits[:, 3] = 1
    shifted = logits.copy()
    shifted[0, 3] += 2e-4
    assert not compare_logits(logits, shifted).passed  # over 1e-4, same predictions
    assert compare_logits(logits, logits + 5e-5).passed
    with pytest.raises(ExportError, match="format must be one of"):
        export_model(model, "tflite", tmp_path / "model.tflite", test_digits[0][:10])
