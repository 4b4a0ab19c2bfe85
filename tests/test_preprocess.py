"""User-image preprocessing: geometry against hand-made images, and every kind of bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from mnist_classifier.preprocess import (
    MAX_IMAGE_PIXELS,
    ImageError,
    preprocess_image,
    read_image_file,
)


def _encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _bar_on_white(canvas=(1000, 800), box=(600, 100, 700, 300)) -> Image.Image:
    """A black 100x200 bar, off-centre on a large white canvas."""
    array = np.full((canvas[1], canvas[0]), 255, dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 0
    return Image.fromarray(array)


def test_dark_on_light_is_inverted_cropped_scaled_to_20_and_centred_by_mass():
    digit = preprocess_image(_bar_on_white()).numpy()
    assert digit.dtype == np.uint8 and digit.shape == (28, 28)
    rows, columns = np.nonzero(digit)
    assert rows.max() - rows.min() + 1 == 20  # the long side fits 20 pixels
    assert columns.max() - columns.min() + 1 == 10  # aspect ratio 1:2 kept
    mass = digit.astype(float)
    centre_row = (mass.sum(axis=1) * np.arange(28)).sum() / mass.sum()
    centre_column = (mass.sum(axis=0) * np.arange(28)).sum() / mass.sum()
    assert centre_row == pytest.approx(13.5, abs=0.5) and centre_column == pytest.approx(
        13.5, abs=0.5
    )
    assert digit.max() == 255 and digit[0, 0] == 0  # white ink on black, as MNIST


def test_polarity_and_transparency_do_not_change_the_result():
    dark_on_light = _bar_on_white()
    light_on_dark = Image.eval(dark_on_light, lambda value: 255 - value)
    ink = np.asarray(light_on_dark)
    transparent = np.zeros((*ink.shape, 4), dtype=np.uint8)
    transparent[..., 3] = ink  # black strokes on a transparent layer, as drawing apps export
    expected = preprocess_image(dark_on_light)
    assert torch.equal(preprocess_image(light_on_dark), expected)
    assert torch.equal(preprocess_image(Image.fromarray(transparent, "RGBA")), expected)


@pytest.mark.parametrize("format", ["PNG", "BMP", "GIF", "TIFF", "JPEG"])
def test_every_accepted_format_from_bytes(format):
    image = _bar_on_white().convert("RGB")
    expected = preprocess_image(image).float()
    got = preprocess_image(_encode(image, format)).float()
    assert (got - expected).abs().mean() < (3 if format == "JPEG" else 0.01)


def test_an_animated_gif_uses_its_first_frame():
    first = _bar_on_white()
    second = Image.new("L", first.size, 255)  # blank: would fail with "no ink"
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second])
    assert torch.equal(preprocess_image(buffer.getvalue()), preprocess_image(first))


def test_thin_strokes_on_a_large_canvas_stay_visible():
    array = np.full((2000, 2000), 255, dtype=np.uint8)
    array[500:1500, 1000:1003] = 0  # a 3-pixel line, 1000 pixels long: 0.06 pixels at 20/1000
    digit = preprocess_image(Image.fromarray(array)).numpy()
    assert digit.max() == 255 and (digit > 128).sum() >= 20  # a solid line, not a faint trace


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows: the rest is "missing"
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "size", [(10_000, 10_000), (7_000, 7_000)], ids=["pillow-limit", "our-limit"]
)
def test_decompression_bomb_is_refused_from_its_header_without_decoding(size, monkeypatch):
    assert size[0] * size[1] > MAX_IMAGE_PIXELS

    def never_load(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_load)
    data = _png_header_only(*size)
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        preprocess_image(data)


def _bad_files(folder):
    good_png = _encode(_bar_on_white(), "PNG")
    good_jpeg = _encode(_bar_on_white().convert("RGB"), "JPEG")
    files = {
        "empty.png": b"",
        "notes.png": b"these are my notes, not a picture\n",
        "cut.png": good_png[: len(good_png) // 2],
        "cut.jpg": good_jpeg[: len(good_jpeg) // 2],
        "blank.png": _encode(Image.new("L", (64, 64), 240), "PNG"),
        "figure.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "disguised.png": b"%!PS-Adobe-3.0\nshowpage\n",
        "scan.pdf": b"%PDF-1.7\n",
        "huge.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * (5 * 1024 * 1024 + 1),
        "bomb.png": _png_header_only(10_000, 10_000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


BAD_INPUT_REASONS = {
    "empty.png": "empty file (0 bytes)",
    "notes.png": "not an image",
    "cut.png": "truncated or corrupt PNG",
    "cut.jpg": "truncated or corrupt JPEG",
    "blank.png": "no ink",
    "figure.eps": ".eps files are refused",
    "disguised.png": "PostScript/EPS files are refused",
    "scan.pdf": ".pdf files are refused",
    "huge.png": "over the 5 MiB limit",
    "bomb.png": "refused before decoding",
    "missing.png": "no such file",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT_REASONS))
def test_each_bad_input_is_one_clear_image_error(name, tmp_path, monkeypatch):
    _bad_files(tmp_path)
    opened = []
    original_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or original_open(*a, **k))
    with pytest.raises(ImageError) as error:
        preprocess_image(read_image_file(tmp_path / name))
    assert BAD_INPUT_REASONS[name] in str(error.value)
    assert "\n" not in str(error.value)
    if name in ("figure.eps", "disguised.png", "scan.pdf"):
        assert not opened  # PostScript and PDF never reach Pillow (its Ghostscript plugin)
