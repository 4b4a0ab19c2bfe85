"""User-image preprocessing: geometry against hand-made images, and every kind of bad input."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from image_files import png_header_only
from PIL import Image, ImageFile

from mnist_classifier.preprocess import (
    MAX_IMAGE_PIXELS,
    ImageError,
    open_image,
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


@pytest.mark.parametrize(
    "size", [(10_000, 10_000), (7_000, 7_000)], ids=["pillow-limit", "our-limit"]
)
def test_decompression_bomb_is_refused_from_its_header_without_decoding(size, monkeypatch):
    assert size[0] * size[1] > MAX_IMAGE_PIXELS

    def never_load(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_load)
    data = png_header_only(*size)
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
        "bomb.png": png_header_only(10_000, 10_000),
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


# --- Photos: the paper's lighting is divided out before the ink is looked for ---------------


def _lit_and_shadowed(grey: np.ndarray) -> np.ndarray:
    """A lighting gradient to 60% across the sheet and a 40% shadow over its left part."""
    height, width = grey.shape
    lighting = np.linspace(1.0, 0.6, width)[None, :] * np.ones((height, 1))
    columns = np.arange(width)[None, :]
    shadow = 1.0 - 0.4 / (1.0 + np.exp((columns - 0.62 * width) / 6.0))  # soft edge over the bar
    return np.clip(grey * lighting * shadow, 0, 255)


def _similar(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two 28x28 images: 1.0 for the same picture."""
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def test_a_lighting_gradient_and_a_shadow_edge_are_not_taken_for_ink():
    clean = np.asarray(_bar_on_white(), dtype=np.float64) * 0.9  # the bar on off-white paper
    photo = _lit_and_shadowed(clean)
    expected = preprocess_image(Image.fromarray(clean.astype(np.uint8)))
    seen = preprocess_image(Image.fromarray(photo.astype(np.uint8)))
    assert _similar(seen, expected) > 0.97


def test_chalk_on_a_dark_board_blue_ink_on_tinted_paper_and_exif_rotation():
    bar = np.asarray(_bar_on_white(), dtype=np.float64) / 255.0  # 1 on paper, 0 on ink
    expected = preprocess_image(_bar_on_white())
    chalk = _lit_and_shadowed(60 + 170 * (1.0 - bar))  # light strokes on a dark, shaded board
    assert _similar(preprocess_image(Image.fromarray(chalk.astype(np.uint8))), expected) > 0.97
    paper, pen = np.array([240, 226, 196]), np.array([40, 60, 160])  # cream paper, a blue pen
    coloured = pen + (paper - pen) * bar[..., None]
    blue = Image.fromarray(coloured.astype(np.uint8), "RGB")
    assert _similar(preprocess_image(_encode(blue, "JPEG")), expected) > 0.97

    upright = np.full((600, 400), 255, dtype=np.uint8)
    upright[100:500, 150:190] = 0  # an "L": tall stroke and a foot to the right
    upright[460:500, 150:320] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone writes it
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif)
    expected = preprocess_image(Image.fromarray(upright))
    assert _similar(preprocess_image(buffer.getvalue()), expected) > 0.97


def test_specks_and_the_sheets_border_are_dropped():
    sheet = np.asarray(_bar_on_white(), dtype=np.uint8).copy()
    sheet[:, :60] = 30  # the dark table beside the sheet, along the picture's edge
    sheet[700:704, 100:104] = 0  # a speck of dust far from the digit
    sheet[50:53, 900:903] = 0
    assert torch.equal(preprocess_image(Image.fromarray(sheet)), preprocess_image(_bar_on_white()))


def test_a_12_megapixel_jpeg_is_decoded_at_a_reduced_scale():
    photo = _bar_on_white(canvas=(4000, 3000), box=(2400, 400, 2800, 1200)).convert("RGB")
    image = open_image(_encode(photo, "JPEG"))
    assert image.size == (1000, 750)  # 1/4 scale straight from the JPEG's DCT data


# --- Odd but legal images: one ImageError each, never another exception --------------------


def _tiff(image: Image.Image) -> bytes:
    return _encode(image, "TIFF")


def _float_tiff(value: float) -> bytes:
    values = np.zeros((64, 64), dtype=np.float32)
    values[20:40, 30:34] = value
    return _tiff(Image.fromarray(values, "F"))


ODD_IMAGES = {
    "float-nan": (lambda: _float_tiff(float("nan")), "NaN or infinity"),
    "float-inf": (lambda: _float_tiff(float("inf")), "NaN or infinity"),
    "lab": (lambda: _tiff(Image.new("LAB", (64, 64), (50, 0, 0))), "colour mode LAB"),
    "1000000x1": (lambda: png_header_only(1_000_000, 1), "times the other"),
    "1x60": (lambda: _encode(Image.new("L", (1, 60)), "PNG"), "times the other"),
}


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_but_legal_images_are_one_image_error(name):
    make, reason = ODD_IMAGES[name]
    with pytest.raises(ImageError, match=reason):
        preprocess_image(make())


def test_an_extreme_aspect_ratio_is_refused_from_the_header(monkeypatch):
    def never_load(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_load)
    with pytest.raises(ImageError, match="refused before decoding"):
        preprocess_image(png_header_only(1_000_000, 1))


def test_the_bomb_error_quotes_the_limit_that_applies():
    with pytest.raises(ImageError) as error:
        preprocess_image(png_header_only(10_000, 10_000))  # over Pillow's own limit too
    assert f"{MAX_IMAGE_PIXELS:,}-pixel limit" in str(error.value)
    assert "80" not in str(error.value).replace(f"{MAX_IMAGE_PIXELS:,}", "")


# --- Any image at all: a 28x28 uint8 or an ImageError, nothing else ------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]


@st.composite
def any_image(draw):
    mode = draw(st.sampled_from(MODES))
    width = draw(st.integers(1, 120))
    height = draw(st.sampled_from([1, 2, width, draw(st.integers(1, 120)), 5000 // width]))
    bands = len(Image.new(mode, (1, 1)).getbands())
    kind = draw(st.sampled_from(["noise", "flat", "blob", "extreme"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (height, width, bands)
    if kind == "noise":
        values = rng.uniform(0, 255, shape)
    elif kind == "flat":
        values = np.full(shape, rng.uniform(0, 255))
    elif kind == "blob":
        values = np.full(shape, 230.0)
        values[height // 4 : 3 * height // 4 + 1, width // 3 : 2 * width // 3 + 1] = 20.0
    else:
        values = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30], size=shape)
    if mode == "F":
        array = values[..., 0].astype(np.float32)
    elif mode in ("I", "I;16"):
        array = np.nan_to_num(values[..., 0], posinf=65535, neginf=0).clip(0, 65535)
        array = array.astype(np.int32 if mode == "I" else np.uint16)
    else:
        array = np.nan_to_num(values, posinf=255, neginf=0).clip(0, 255).astype(np.uint8)
    if mode in ("F", "I", "I;16"):
        image = Image.fromarray(array)  # the mode follows the dtype: float32, int32, uint16
    elif mode == "1":
        image = Image.fromarray(array[..., 0] > 127)
    else:
        image = Image.frombytes(mode, (width, height), array[..., :bands].tobytes())
    as_bytes = draw(st.sampled_from([None, "PNG", "TIFF", "JPEG", "BMP", "GIF"]))
    if as_bytes is None:
        return image
    try:
        return _encode(image, as_bytes)
    except (OSError, ValueError, KeyError):  # Pillow cannot write this mode in this format
        return image


@settings(max_examples=150, deadline=None)
@given(any_image())
def test_any_image_gives_a_28x28_uint8_or_an_image_error(source):
    try:
        digit = preprocess_image(source)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert digit.dtype == torch.uint8 and tuple(digit.shape) == (28, 28)
