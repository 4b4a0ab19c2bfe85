"""Turn any user image of one digit into a 28x28 MNIST-style image: the one preprocessing path.

MNIST itself was made this way (LeCun et al.): the digit's bounding box was scaled to fit a
20x20 box keeping its aspect ratio, anti-aliased to grey levels, then placed in a 28x28 image so
that its centre of mass sits at the centre. MNIST digits are light ink on a black background.
A model trained on MNIST sees only such images, so user images must be made to look the same.

This module is shared by `mnist predict` and any future server: `preprocess_image` accepts raw
bytes (an upload) or a PIL image and returns uint8 (28, 28), or raises `ImageError` with one
clear reason. Untrusted bytes are checked before Pillow decodes them: size, magic bytes (so
PostScript/PDF never reach Pillow's Ghostscript plugin) and the declared pixel count (so a
decompression bomb is refused from its header, before its pixels are allocated).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_FILE_BYTES = 5 * 1024 * 1024
# 40 megapixels covers any phone photo; a bigger declared size is refused before decoding.
MAX_IMAGE_PIXELS = 40_000_000
# Pillow's own guard (it warns above this and refuses above twice this) as a second line.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_SIZE = 28
DIGIT_BOX = 20  # MNIST scales each digit's bounding box to fit 20x20
# A pixel is ink when it stands out from the background by this share of the ink's full
# contrast; below it lies paper texture and JPEG noise.
INK_THRESHOLD = 0.2
# Less contrast than this (of 255) between background and darkest/brightest ink: a blank image.
MIN_INK_CONTRAST = 32
# Thin strokes on large canvases shrink to a faint grey line at 20x20; MNIST strokes are about
# 2 pixels wide at that scale, so thinner ones are widened before scaling.
MIN_STROKE_WIDTH_IN_BOX = 2.0
# Larger ink crops are max-pooled to about this size first (8x the final box: no visible loss).
WORKING_SIZE = 8 * DIGIT_BOX

# Magic bytes of the formats we accept; everything else is refused before Pillow sees it.
ACCEPTED_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
# Named, so the error says why: Pillow would hand these to Ghostscript, an external interpreter.
REFUSED_SIGNATURES = {
    b"%!PS": "PostScript/EPS",
    b"\xc5\xd0\xd3\xc6": "EPS",
    b"%PDF": "PDF",
}
REFUSED_SUFFIXES = {".eps", ".epsf", ".epsi", ".ps", ".pdf", ".ai"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


class ImageError(ValueError):
    """An image that cannot be used, with one line saying why (the caller adds the file name)."""


def read_image_file(path: Path | str) -> bytes:
    """The bytes of an image file, after the checks that need no decoding."""
    path = Path(path)
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise ImageError(f"{path.suffix} files are refused: only PNG, JPEG, BMP, GIF, TIFF")
    if not path.exists():
        raise ImageError("no such file")
    if not path.is_file():
        raise ImageError("not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"file is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit"
        )
    return path.read_bytes()


def open_image(data: bytes) -> Image.Image:
    """Decode untrusted bytes into a loaded PIL image, or raise ImageError. GIF: first frame."""
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"over the {MAX_FILE_BYTES // 2**20} MiB limit")
    for signature, kind in REFUSED_SIGNATURES.items():
        if data.startswith(signature):
            raise ImageError(f"{kind} files are refused: only PNG, JPEG, BMP, GIF, TIFF")
    formats = sorted({kind for sig, kind in ACCEPTED_SIGNATURES.items() if data.startswith(sig)})
    if not formats:
        raise ImageError("not an image (not PNG, JPEG, BMP, GIF or TIFF)")
    try:
        # Lazy: reads the header only. `formats` stops Pillow trying any other decoder.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse it next
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as error:
        raise ImageError(f"{_one_line(error)}; refused before decoding") from None
    except Exception as error:
        raise ImageError(f"unreadable {formats[0]} header ({_one_line(error)})") from None
    _check_pixel_count(image)
    try:
        image.seek(0)  # an animated GIF or multi-page TIFF: the first frame
        image.load()
    except Exception as error:  # truncated data fails as OSError, SyntaxError, ValueError...
        raise ImageError(f"truncated or corrupt {image.format} data ({_one_line(error)})") from None
    return image


def preprocess_image(source: bytes | Image.Image) -> torch.Tensor:
    """One digit image (bytes or PIL, any size and mode) -> uint8 (28, 28), light ink on black."""
    image = open_image(source) if isinstance(source, bytes | bytearray) else source
    _check_pixel_count(image)
    image = ImageOps.exif_transpose(image)  # a phone photo taken sideways stands upright
    grey = _to_grey_array(image)  # float64 (H, W), 0..255

    # Polarity: the border is background. Dark ink on light paper is inverted to MNIST's
    # light ink on black.
    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 127:
        grey, background = 255.0 - grey, 255.0 - background
    contrast = float(grey.max()) - background
    if contrast < MIN_INK_CONTRAST:
        raise ImageError("no ink: the image is blank (one flat colour)")
    ink = np.clip((grey - background) / contrast, 0.0, 1.0)
    ink[ink < INK_THRESHOLD] = 0.0

    rows = np.flatnonzero(ink.any(axis=1))
    columns = np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]  # the ink's bounding box
    ink = _widen_thin_strokes(_shrink_large_ink(ink))

    height, width = ink.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
    scaled = Image.fromarray((ink * 255).astype(np.uint8)).resize(new_size, Image.Resampling.BOX)
    digit = np.asarray(scaled, dtype=np.float64)
    if digit.max() > 0:  # a faint stroke after averaging: give it MNIST's full-white core back
        digit = digit * (255.0 / digit.max())
    return torch.from_numpy(_centre_by_mass(digit)).to(torch.uint8)


def _check_pixel_count(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"declares {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit "
            "(refused before decoding)"
        )
    if width == 0 or height == 0:
        raise ImageError("has no pixels")


def _to_grey_array(image: Image.Image) -> np.ndarray:
    """Greyscale 0..255 floats; transparency is composited onto white, as a viewer shows it."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        return (values - low) * (255.0 / (high - low)) if high > low else values * 0
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.float64)


def _shrink_large_ink(ink: np.ndarray) -> np.ndarray:
    """Max-pool a large crop down to about WORKING_SIZE pixels: fast, and keeps thin strokes."""
    factor = max(ink.shape) // WORKING_SIZE
    if factor < 2:
        return ink
    height, width = (-(-side // factor) * factor for side in ink.shape)  # round up
    padded = np.zeros((height, width))
    padded[: ink.shape[0], : ink.shape[1]] = ink
    return padded.reshape(height // factor, factor, width // factor, factor).max(axis=(1, 3))


def _widen_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Dilate strokes that would be under MIN_STROKE_WIDTH_IN_BOX pixels wide after scaling."""
    mask = ink > 0
    # Mean stroke width ~ area / half the perimeter (a stroke of length L, width w: Lw / L).
    edges = (mask[1:, :] != mask[:-1, :]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    stroke_width = 2.0 * mask.sum() / max(int(edges), 1)
    wanted = MIN_STROKE_WIDTH_IN_BOX * max(ink.shape) / DIGIT_BOX  # in source pixels
    if stroke_width >= wanted:
        return ink
    radius = int(np.ceil((wanted - stroke_width) / 2))
    widened = np.pad(ink, radius)
    # A square maximum filter is separable: the maximum over rows, then over columns.
    for axis in (0, 1):
        source = widened.copy()
        for shift in range(1, radius + 1):
            np.maximum(widened, np.roll(source, shift, axis=axis), out=widened)
            np.maximum(widened, np.roll(source, -shift, axis=axis), out=widened)
    return widened


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place the (<=20x20) digit in 28x28 so its centre of mass lands on the centre pixel."""
    height, width = digit.shape
    total = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(height)).sum() / total
    centre_column = (digit.sum(axis=0) * np.arange(width)).sum() / total
    top = int(round((IMAGE_SIZE - 1) / 2 - centre_row))
    left = int(round((IMAGE_SIZE - 1) / 2 - centre_column))
    # The centre of mass can be far from the box's centre (a "7"): clamp so nothing is cut off.
    top = min(max(top, 0), IMAGE_SIZE - height)
    left = min(max(left, 0), IMAGE_SIZE - width)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    canvas[top : top + height, left : left + width] = digit
    return np.clip(np.round(canvas), 0, 255)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# Clothing photos: Fashion-MNIST's own recipe

# A pixel belongs to the garment when it differs from the background by more than this (0..255);
# JPEG noise and paper grain stay below it.
CLOTHING_BACKGROUND_TOLERANCE = 24


def preprocess_clothing(source: bytes | Image.Image) -> torch.Tensor:
    """A photo of one garment -> uint8 (28, 28), light garment on black, as Fashion-MNIST made
    its images: trim the background, fit the longest side to 28, centre, negate.

    Fashion-MNIST's products were photographed on a light background; its images are the
    negative (light garment, black background), and unlike MNIST digits they fill the frame.
    The background is the border's median; a dark background is kept as it is.
    """
    image = open_image(source) if isinstance(source, bytes | bytearray) else source
    _check_pixel_count(image)
    image = ImageOps.exif_transpose(image)
    grey = _to_grey_array(image)  # float64 (H, W), 0..255, transparency on white

    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 127:  # light background: negate, so the garment is light on black
        grey, background = 255.0 - grey, 255.0 - background
    garment = np.abs(grey - background) > CLOTHING_BACKGROUND_TOLERANCE
    if not garment.any():
        raise ImageError("nothing on the background: the image is blank (one flat colour)")
    rows, columns = np.flatnonzero(garment.any(axis=1)), np.flatnonzero(garment.any(axis=0))
    crop = grey[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]  # trimmed background
    crop = np.clip(crop - background, 0.0, 255.0)  # the background becomes black

    height, width = crop.shape
    scale = IMAGE_SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
    resized = Image.fromarray(crop.astype(np.uint8)).resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(resized, ((IMAGE_SIZE - new_size[0]) // 2, (IMAGE_SIZE - new_size[1]) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())


def preprocessing_for(subject: str):
    """The recipe for a data set's `subject` (datasets.py): digits or clothing."""
    return {"digits": preprocess_image, "clothing": preprocess_clothing}[subject]
