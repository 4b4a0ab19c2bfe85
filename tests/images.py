"""Image files for tests of more than one module: encoded bytes, header-only bombs, odd images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def as_file(grey: np.ndarray, quality: int | None) -> bytes:
    """A grey picture (float, 0-255) as a PNG (`quality` None) or a JPEG of that quality."""
    image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    return encode(image, "PNG") if quality is None else encode(image, "JPEG", quality=quality)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


PNG_SIGNATURE_AND_HEADER = 8 + 25  # the signature, then the IHDR chunk


def with_exif_chunk(png: bytes, exif: bytes) -> bytes:
    """`png` with an eXIf chunk holding `exif` right after its header, as cameras place it."""
    cut = PNG_SIGNATURE_AND_HEADER
    return png[:cut] + png_chunk(b"eXIf", exif) + png[cut:]


def png_text_bomb() -> bytes:
    """A small white PNG whose comment decompresses to 16 MiB: more than Pillow reads."""
    png = encode(Image.new("L", (50, 50), 255), "PNG")
    comment = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 2**24))
    cut = PNG_SIGNATURE_AND_HEADER
    return png[:cut] + comment + png[cut:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height greyscale pixels, with data for only a few rows."""
    chunk = png_chunk
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows: the rest is "missing"
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _tiff(image: Image.Image) -> bytes:
    return encode(image, "TIFF")


def _float_tiff(value: float) -> bytes:
    values = np.zeros((64, 64), dtype=np.float32)
    values[20:40, 30:34] = value
    return _tiff(Image.fromarray(values, "F"))


# Odd but legal images: name -> (make the file's bytes, what its one-line error says).
ODD_IMAGES = {
    "float-nan": (lambda: _float_tiff(float("nan")), "NaN or infinity"),
    "float-inf": (lambda: _float_tiff(float("inf")), "NaN or infinity"),
    "lab": (lambda: _tiff(Image.new("LAB", (64, 64), (50, 0, 0))), "colour mode LAB"),
    "1000000x1": (lambda: png_header_only(1_000_000, 1), "times the other"),
    "1x60": (lambda: encode(Image.new("L", (1, 60)), "PNG"), "times the other"),
    # Pillow's refusal named its own constant, PngImagePlugin.MAX_TEXT_CHUNK.
    "text-bomb": (png_text_bomb, "its PNG text metadata would decompress to over the size read"),
}
