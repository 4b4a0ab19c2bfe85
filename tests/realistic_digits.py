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
