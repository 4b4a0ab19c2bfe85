"""Realistic user images made from MNIST test digits: what people upload, not MNIST crops.

Each variant is dark ink on light paper (or on a transparent layer), scaled up 4-14x, with its
strokes thickened or thinned, placed off-centre on a large canvas, and saved as PNG or JPEG.
The label is known, so prediction accuracy on these images measures the preprocessing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def realistic_variant(digit: np.ndarray, index: int, rng: np.random.Generator) -> bytes:
    """One MNIST digit (uint8 28x28, light on black) -> the bytes of a realistic image file."""
    kind = index % 5
    scale = int(rng.integers(4, 15))
    image = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    if kind == 1:  # thick marker: widen the strokes
        image = image.filter(ImageFilter.MaxFilter(2 * (scale // 2) + 1))
    elif kind == 2:  # fine pen: thin the strokes
        image = image.filter(ImageFilter.MinFilter(2 * (scale // 4) + 1))
    width, height = image.size
    canvas_width = int(width * rng.uniform(1.3, 3.0))
    canvas_height = int(height * rng.uniform(1.3, 3.0))
    left = int(rng.integers(0, canvas_width - width + 1))
    top = int(rng.integers(0, canvas_height - height + 1))
    ink = Image.new("L", (canvas_width, canvas_height), 0)
    ink.paste(image, (left, top))
    ink_array = np.asarray(ink, dtype=np.float64) / 255.0

    paper_level = rng.uniform(200, 255)
    pen_level = rng.uniform(0, 70)
    grey = paper_level + (pen_level - paper_level) * ink_array
    grey += rng.normal(0, 4, grey.shape)  # paper texture / sensor noise
    grey = np.clip(grey, 0, 255).astype(np.uint8)

    buffer = io.BytesIO()
    if kind == 3:  # a drawing app's export: black strokes on a transparent layer
        rgba = np.zeros((*grey.shape, 4), dtype=np.uint8)
        rgba[..., 3] = (ink_array * 255).astype(np.uint8)
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    elif kind == 4:  # a photo: blue-ish pen, RGB JPEG
        rgb = np.stack([grey, grey, np.clip(grey.astype(int) + 40, 0, 255)], axis=-1)
        Image.fromarray(rgb.astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=85)
    else:
        Image.fromarray(grey, "L").save(buffer, format="PNG" if kind != 2 else "JPEG")
    return buffer.getvalue()


def side_by_side(first: np.ndarray, second: np.ndarray, gap: int) -> bytes:
    """A two-digit number: MNIST digits written side by side, `gap` pixels apart at MNIST's
    scale (where a digit is 20 pixels high), dark ink on white at 10 times that size, a PNG."""
    first, second = (digit[:, np.flatnonzero(digit.max(axis=0) > 30)] for digit in (first, second))
    pair = np.zeros((28, first.shape[1] + gap + second.shape[1] + 8), np.uint8)
    pair[:, 4 : 4 + first.shape[1]] = first
    pair[:, 4 + first.shape[1] + gap : 4 + first.shape[1] + gap + second.shape[1]] = second
    drawn = Image.fromarray(255 - pair).resize(
        (10 * pair.shape[1], 10 * 28), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return buffer.getvalue()


PRINTED_LINE_KINDS = ("underline", "through", "ruled", "margin")


def on_printed_line(digit: np.ndarray, index: int, rng: np.random.Generator) -> bytes:
    """One MNIST digit written on a printed line across the picture, a PNG: a form's
    underline under it, a line through it, ruled paper (lines a digit's height apart, the
    digit on one), or a notebook's margin down through its left side, by `index` in that order.
    Scaled 6-12x; the line is 0.3-1.0 of a 2-pixel MNIST stroke deep and about as dark as the
    pen; the picture is 1.4-2.5 times the digit's canvas high and 1.6-3 times wide."""
    kind = PRINTED_LINE_KINDS[index % len(PRINTED_LINE_KINDS)]
    scale = int(rng.integers(6, 13))
    ink = (
        np.asarray(
            Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC),
            dtype=np.float64,
        )
        / 255.0
    )
    inked_rows = np.flatnonzero(ink.max(axis=1) > 0.3)
    inked_columns = np.flatnonzero(ink.max(axis=0) > 0.3)
    height = int(ink.shape[0] * rng.uniform(1.4, 2.5))
    width = int(ink.shape[1] * rng.uniform(1.6, 3.0))
    top = int(rng.integers(0, height - ink.shape[0] + 1))
    left = int(rng.integers(0, width - ink.shape[1] + 1))
    coverage = np.zeros((height, width))
    coverage[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    depth = max(1, round(2 * scale * rng.uniform(0.3, 1.0)))
    foot = top + inked_rows[-1]  # the digit's lowest row
    line = np.zeros((height, width), dtype=bool)
    if kind == "underline":
        row = foot + int(rng.integers(-depth, 2))
        line[max(0, row) : row + depth, :] = True
    elif kind == "through":
        row = top + int(rng.integers(inked_rows[0] + 2 * scale, inked_rows[-1] - 2 * scale))
        line[row : row + depth, :] = True
    elif kind == "ruled":
        spacing = int((inked_rows[-1] - inked_rows[0]) * rng.uniform(1.1, 1.5))
        for row in range((foot + int(rng.integers(-depth, 2))) % spacing, height, spacing):
            line[row : row + depth, :] = True
    else:
        column = left + inked_columns[0] + int(rng.integers(-2 * scale, 2 * scale))
        line[:, max(0, column) : column + depth] = True
    paper, pen, printed = rng.uniform(200, 250), rng.uniform(10, 60), rng.uniform(20, 90)
    grey = np.where(line, printed, paper)
    grey = grey + (pen - grey) * coverage  # the pen's ink over the paper and the line
    grey += rng.normal(0, 4, grey.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def tight_crop(digit: np.ndarray) -> bytes:
    """One MNIST digit cropped to its ink and a pixel round it, dark on white at 10x, a PNG:
    its long strokes run across the picture as a printed line would."""
    rows = np.flatnonzero(digit.max(axis=1) > 60)
    columns = np.flatnonzero(digit.max(axis=0) > 60)
    crop = digit[max(0, rows[0] - 1) : rows[-1] + 2, max(0, columns[0] - 1) : columns[-1] + 2]
    drawn = Image.fromarray(255 - crop).resize(
        (10 * crop.shape[1], 10 * crop.shape[0]), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return buffer.getvalue()
