"""Turn any user image of one digit into a 28x28 MNIST-style image: the one preprocessing path.

MNIST itself was made this way (LeCun et al.): the digit's bounding box was scaled to fit a
20x20 box keeping its aspect ratio, anti-aliased to grey levels, then placed in a 28x28 image so
that its centre of mass sits at the centre. MNIST digits are light ink on a black background.
A model trained on MNIST sees only such images, so user images must be made to look the same.

Photos need one more step first: their paper is not one colour. A lighting gradient or a
shadow edge darkens the paper more than faint ink does, so a fixed threshold calls it ink.
So the paper's brightness is estimated at every point, at a scale larger than a stroke (a
morphological closing, which fills dark strokes but keeps shadow edges and gradients), and
divided out; the ink threshold is then chosen from the image (Otsu), and only the digit's
connected components are kept: not specks, not marks far from it, not a band along the
picture's side (a scanner's lid, the desk) nor a box or circle drawn around it. A photo
taken in poor light is smoothed for its sensor noise, at a fraction of the strokes' width,
before the paper is estimated at their scale. The image operations are scipy.ndimage's.

This module is shared by `mnist predict` and `mnist serve`: `preprocess_image` accepts raw
bytes (an upload) or a PIL image and returns uint8 (28, 28), or raises `ImageError` with one
clear reason. Untrusted bytes are checked before Pillow decodes them: size, magic bytes (so
PostScript/PDF never reach Pillow's Ghostscript plugin), the declared pixel count and aspect
ratio (so a decompression bomb is refused from its header, before its pixels are allocated).
JPEGs are decoded at a reduced scale when they are larger than the analysis needs.
"""

from __future__ import annotations

import ctypes
import functools
import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_classifier.datasets import IMAGE_SIDE
from mnist_classifier.messages import first_line

MAX_FILE_BYTES = 5 * 1024 * 1024
# A 12-megapixel phone photo (4032x3024) fits with room for 16 MP cameras (4608x3456); the
# page sends 280x280. A bigger declared size is refused from the header, before decoding.
MAX_IMAGE_PIXELS = 16_000_000
# Pillow's own guard (it warns above this and refuses above twice this) as a second line.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Pillow warns on stderr, with its own source line, about damaged metadata that it then skips
# (corrupt EXIF, odd TIFF tags): the image still decodes, and an image that cannot be used is
# reported on one line, so these say nothing a user could act on.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
# Wider or taller than this is a strip, not a digit (a 1,000,000x1 PNG asks for gigabytes in
# later steps); refused from the header too.
MAX_ASPECT_RATIO = 50

DIGIT_BOX = 20  # MNIST scales each digit's bounding box to fit 20x20
# Images are analysed at about this many pixels on their long side (1-2x it): a 20x20 digit
# needs far less, and a 12 MP photo is prepared in a fraction of a second at this size.
ANALYSIS_SIDE = 1000
# The paper's brightness is estimated with a closing this share of the short side: wider than
# any pen stroke of a digit that fills the picture, so strokes are filled in and measured.
PAPER_SCALE = 0.5
# ... and then, once the digit is found, with a closing this many of its strokes wide.
PAPER_STROKE_WIDTHS = 4
PAPER_GRID = 16  # the paper filters are about this many cells of the coarse grid wide
MIN_PAPER_LEVEL = 64.0
# Less ink contrast than this (a share of the paper's brightness): a blank image.
MIN_INK_CONTRAST = 32 / 255
# ... measured on this many of the image's strongest ink pixels (a thin short stroke has more).
INK_STRENGTH_PIXELS = 50
# Otsu's threshold is never put below this: under it lies paper texture and JPEG noise.
MIN_INK_THRESHOLD = 0.1
# Sensor noise (a phone in poor light: a standard deviation of up to about 20 of 255) defeated
# the finer look. Its closing, a few strokes wide on a grid of single pixels, took the noise's
# brightest specks for the paper, some 3 deviations above it; divided by shaded paper's lower
# brightness that is more ink than on the lit side, so a shadow's half joined the digit (a "3"
# read as a triangle). And the specks fringe the strokes with hairs, which halve the stroke
# width measured, widen the box and grey its edges. So the finer look sees the picture smoothed
# by a Gaussian that leaves about NOISE_LEFT grey levels of the noise (a sigma of s pixels
# divides white noise by 2 sqrt(pi) s), at most SMOOTHING_STROKE_SHARE of a stroke's width (a
# stroke 4 sigmas wide keeps 95% of its ink at its core, its edges in place); under
# MIN_SMOOTHING pixels, not at all. As the hairs halve the stroke width measured, it is
# measured again on the picture smoothed as that allows, before the finer look (else a closing
# of four such widths can be narrower than a broad stroke, read then as its edges: a
# 100-pixel bar under noise 40). The noise is the median difference of neighbouring pixels
# (`_sensor_noise`): through JPEG, photo_like's usual noise (2-7) and the realistic scans
# measure at most 4.2 grey levels, noise 20 about 14, noise 30 about 21. Smoothing from 1.8
# grey levels on (NOISE_LEFT 1, MIN_SMOOTHING 0.5) cost one realistic scan in 500; from 5.3
# on, the clean pictures are read exactly as before. `python benchmarks/photo_accuracy.py
# --images 500` (the 2-core Xeon, AVX-512 without bf16): photos at sensor noise 20 were read
# 83.8% right, at 30 72.2%; smoothed, 96.4% and 96.2%, and every other row as before.
NOISE_LEFT = 2.0
SMOOTHING_STROKE_SHARE = 0.25
MIN_SMOOTHING = 0.75
# Components smaller than this share of the digit's largest one are specks; components
# further from the digit than this share of its size belong to something else.
MIN_COMPONENT_SHARE = 0.05
MAX_COMPONENT_GAP = 0.5
# A component on the picture's edge is the digit only if nothing clear of the edge has this
# share of its ink.
EDGE_COMPONENT_SHARE = 0.25
# A band along a side of the picture (touching it along at least BAND_LENGTH of its length and
# at most BAND_DEPTH of the picture deep) is a scanner's lid, the desk or the sheet's edge.
BAND_LENGTH = 0.9
BAND_DEPTH = 0.1
# A component with another one in a hole of its own, at least this share of its size across,
# is a printed box or a circle around the digit.
ENCLOSED_SHARE = 0.25
MAX_FRAME_CANDIDATES = 16
# Marks of the digit at least this share of its height tall and this share of the heaviest
# one's ink, side by side (columns apart by this share of the height, rows overlapping by half
# the shorter one's), are several digits: a number, which a model of single digits would read
# as one garbled digit. (A 6 whose loop stops a pixel short of its stem is one digit.)
SIDE_BY_SIDE_HEIGHT = 0.6
SIDE_BY_SIDE_WEIGHT = 0.2
SIDE_BY_SIDE_GAP = 0.1
# A printed line (a form's underline, ruled paper, a notebook's margin) is straight, within
# MAX_LINE_TILT degrees of level or upright, inked along at least LINE_COVERAGE of the
# picture's width (or height) and at most BAND_DEPTH of it deep. It is cleared from the ink,
# but where the digit's strokes cross it, when two things say it is not the digit's own long
# stroke (a 7's bar or a 2's base in a tight crop): the rest of the ink spans at most
# LINE_DIGIT_SHARE of its length, and it is at most LINE_STROKE_SHARE of the rest's stroke
# width deep (as `_stroke_width` measures it: forms print finer lines than pens write). In tight
# crops of all 10,000 MNIST test digits, 141 strokes ran across the picture as a line would,
# and none passes both: a 5's rest spanned 0.54 of its stroke, but that was 1.57 stroke widths
# deep; a 9's stroke was 0.66 deep, but its rest spanned 1.04 of it (`python
# benchmarks/printed_lines.py`). Lines are looked for on a grid of about LINE_SEARCH_SIDE
# cells on the long side, then placed to the pixel; more than MAX_PRINTED_LINES are a pattern.
MAX_LINE_TILT = 12.0
LINE_COVERAGE = 0.75
LINE_DIGIT_SHARE = 0.6
LINE_STROKE_SHARE = 1.0
LINE_SEARCH_SIDE = 128
MAX_PRINTED_LINES = 40  # a ruled page has about 30
LINE_COUNT_BATCH = 2_000_000
# Only brightness is read: a pen of another colour but the paper's brightness does not show.
NO_INK = "no ink: the image is blank, or its marks are barely darker or lighter than the paper"
# A digit's strokes run several times their width: the longest side of its box measures at
# least 3.39 stroke widths in all 10,000 MNIST test digits as scans (the boldest, an 8;
# benchmarks/digit_extent.py), while a dot or blob (a tap on the drawing page) measures about
# 2.5 and a filled square 2. Such a mark alone is refused rather than blown up to 20x20.
MIN_EXTENT_IN_STROKE_WIDTHS = 3.0
A_DOT = "no digit: the only mark is a dot or a blob, not a digit's strokes; write or draw one"
SEVERAL_DIGITS = (
    "looks like several digits side by side: the model reads one digit per image; crop or "
    "draw just one"
)
ONLY_SPECKS = (
    "no digit found: only specks scattered over the picture (sensor noise or the paper's "
    "grain); photograph the digit closer, with more light"
)
# A blank picture's sensor noise or grain, where Otsu's threshold falls inside the noise, passes
# it in thousands of specks: the heaviest was taken for the digit, and specks its size beside
# it for more digits. A digit found (on the first look) that holds under SPECKS_DIGIT_SHARE of
# the ink of the marks clear of the picture's edge, its own included, and whose mean ink is
# under SPECKS_CONTRAST times the other marks' (`measure_specks`), is only a speck among them.
# `python benchmarks/noise_specks.py` (the 2-core Xeon, AVX-512 without bf16): a digit holds
# at least 0.587 of that ink in all 10,000 MNIST test digits as scans, 0.79 in the first 500
# of each photo-accuracy form, 0.5 in a number of two far apart; in photos of digits under
# sensor noise 30-40 (of 255; photo_digits.py's usual is 2-7) as little as 0.035, but with
# 1.89 times the noise's mean ink or more. In 400 of 428 pictures of noise reaching this step
# the "digit" held under 0.1, with at most 1.51 times the other specks' mean ink; the other 28
# are blank photos where a shadow's edge is left as ink and taken for a mark, as before.
SPECKS_DIGIT_SHARE = 0.1
SPECKS_CONTRAST = 1.7
ONLY_SHADING = (
    "no digit found: only shading (a shadow's edge or uneven light), no pen strokes; check "
    "that the digit is in the picture and darker than the paper"
)
# On paper under a shadow or uneven light, the first look's paper (a closing half the picture
# wide, on a coarse grid) lags behind a shadow's edge, and the band it leaves reads as a mark.
# Measured again at a few of that mark's stroke widths, the paper follows the shading and the
# mark fades into the paper's noise, while a pen's strokes keep their ink. A mark keeping under
# SHADING_KEPT of its ink that then holds under SHADING_INK (its 75th percentile, a share of
# the paper's brightness) is shading: the digit is looked for again on that finer paper, and
# with nothing but shading the picture is refused. `python benchmarks/noise_specks.py` (the
# 2-core Xeon, AVX-512 without bf16): of digits' marks that faded, the least ink held was 0.67
# in the first 500 of each photo-accuracy form, 0.71 in the 10,000 MNIST test digits as scans
# and 0.36 in photos under sensor noise 20-40, but for one under noise 20 (0.26; a 1 misread as
# an 8 before, now refused) and the shadow's band found before the digit in 3 photos (0.05-0.06:
# the digit was then found, and read right). Shading on blank photos held at most 0.23.
SHADING_KEPT = 0.9
SHADING_INK = 0.3
SHADING_LOOKS = 3  # shading found on every look: refused
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
# Image formats phones and browsers save that are not read here: named in the error, and
# reported when met in a folder rather than skipped without a word.
UNSUPPORTED_IMAGE_SUFFIXES = {
    ".webp": "WebP",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".svg": "SVG",
}
# Colour modes whose brightness we know how to read; others (LAB, HSV, premultiplied La...)
# are refused by name rather than misread.
NUMERIC_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
TRANSPARENT_MODES = {"RGBA", "RGBa", "LA", "PA"}
SUPPORTED_MODES = (
    {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"} | TRANSPARENT_MODES | NUMERIC_MODES
)


class ImageError(ValueError):
    """An image that cannot be used, with one line saying why (the caller adds the file name)."""


def read_image_file(path: Path | str) -> bytes:
    """The bytes of an image file, after the checks that need no decoding."""
    path = Path(path)
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise ImageError(f"{path.suffix} files are refused: only PNG, JPEG, BMP, GIF, TIFF")
    if path.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
        raise ImageError(_unsupported(UNSUPPORTED_IMAGE_SUFFIXES[path.suffix.lower()]))
    try:  # pathlib raises for a name too long, or a folder on the way that cannot be searched
        if not path.exists():
            missing = "a broken link or a symlink loop" if path.is_symlink() else "no such file"
            raise ImageError(missing)
        if path.is_dir():  # a folder named that held no images (predict lists a folder's)
            raise ImageError("a folder holding no PNG, JPEG, BMP, GIF or TIFF files")
        if not path.is_file():
            raise ImageError("not a regular file")
        size = path.stat().st_size
    except OSError as error:
        raise ImageError(f"cannot be read ({error.strerror or first_line(error)})") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"file is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit; "
            "crop the photo to the digit or scale it down"
        )
    try:
        return path.read_bytes()
    except OSError as error:  # no read permission, an I/O error, a file gone since listed
        raise ImageError(f"cannot be read ({error.strerror or first_line(error)})") from None


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
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            raise ImageError(_unsupported("WebP"))
        if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
            raise ImageError(_unsupported("AVIF" if data[8:12] == b"avif" else "HEIC"))
        if data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
            raise ImageError(_unsupported("JPEG 2000"))
        if b"<svg" in data[:1024].lower():  # an upload has no file name to go by
            raise ImageError(_unsupported("SVG"))
        raise ImageError("not an image (not PNG, JPEG, BMP, GIF or TIFF)")
    if formats == ["TIFF"]:
        _silence_libtiff()
    try:
        # Lazy: reads the header only. `formats` stops Pillow trying any other decoder.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse it next
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as error:
        # Pillow's message quotes its own limit (twice ours); ours is the one that applies.
        raise ImageError(_too_many_pixels(f"declares {bomb_pixels(error):,} pixels")) from None
    except UnidentifiedImageError:  # its message names an in-memory object, not the file
        raise ImageError(f"not a valid {formats[0]} file (its header cannot be read)") from None
    except Exception as error:
        if "MAX_TEXT_CHUNK" in str(error):  # Pillow's own limit, named by its constant
            raise ImageError(
                f"its {formats[0]} text metadata would decompress to over the size read "
                "(refused, as a decompression bomb is); save the picture again without it"
            ) from None
        raise ImageError(f"unreadable {formats[0]} header ({first_line(error)})") from None
    _check_dimensions(image)
    if image.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT data, keeping at least
        # ANALYSIS_SIDE pixels on the long side: a 12 MP photo decodes as about 1 MP.
        scale = ANALYSIS_SIDE / max(image.size)
        if scale < 1:
            wanted = (int(np.ceil(image.width * scale)), int(np.ceil(image.height * scale)))
            image.draft("L" if image.mode in ("RGB", "L") else None, wanted)
    try:
        image.seek(0)  # an animated GIF or multi-page TIFF: the first frame
        image.load()
    except Exception as error:  # truncated data fails as OSError, SyntaxError, ValueError...
        raise ImageError(
            f"truncated or corrupt {image.format} data ({first_line(error)})"
        ) from None
    return image


@functools.cache
def _silence_libtiff() -> None:
    """Stop libtiff printing its own complaint about a damaged TIFF ("tempfile.tif: Using code
    not yet in table.") to the process's stderr, beside the one line ImageError gives for the
    same file. Pillow has no switch for it, so libtiff's handlers are set to none in the copy
    Pillow loaded (found in the process's memory map), once. Where that cannot be done (not
    Linux, no such library), nothing changes."""
    from PIL import _imaging  # noqa: F401  (loads the libtiff it links to)

    try:
        with open("/proc/self/maps") as maps:
            libraries = {line.split()[-1] for line in maps if "/libtiff" in line}
        for path in libraries:
            libtiff = ctypes.CDLL(path)
            for setter in (libtiff.TIFFSetErrorHandler, libtiff.TIFFSetWarningHandler):
                setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
                setter(None)
    except (OSError, AttributeError):
        return


def _unsupported(kind: str) -> str:
    return f"{kind} images are not supported: save it as PNG or JPEG (or BMP, GIF, TIFF)"


def preprocess_image(source: bytes | Image.Image) -> torch.Tensor:
    """One digit image (bytes or PIL, any size and mode) -> uint8 (28, 28), light ink on black."""
    image = open_image(source) if isinstance(source, bytes | bytearray) else source
    grey = _upright_grey(image)  # float32 (H, W), 0..255, long side under 2 * ANALYSIS_SIDE
    if float(grey.max() - grey.min()) < MIN_INK_CONTRAST * 255:
        frames = getattr(image, "n_frames", 1)
        # An animation or a multi-page scan whose first frame is blank: say what was read.
        first_frame = f" (in the first of its {frames} frames, the only one read)"
        raise ImageError(NO_INK + (first_frame if frames > 1 else ""))

    ink, strokes, box = _find_digit(_dark_ink_on_light_paper(grey))
    if _extent_in_stroke_widths(strokes[box]) < MIN_EXTENT_IN_STROKE_WIDTHS:
        raise ImageError(A_DOT)
    if _digits_side_by_side(strokes[box]) > 1:
        raise ImageError(SEVERAL_DIGITS)
    # Soft grey levels as MNIST has them: each pixel's ink relative to the strokes' core, kept
    # within one pixel of the digit's strokes (their anti-aliased edges) and nowhere else.
    core = float(np.percentile(ink[strokes], 75))
    near_strokes = ndimage.binary_dilation(strokes[box], iterations=1)
    digit_ink = np.where(near_strokes, np.clip(ink[box] / core, 0.0, 1.0), 0.0)
    digit_ink = _widen_thin_strokes(_shrink_large_ink(digit_ink))

    height, width = digit_ink.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
    scaled = Image.fromarray((digit_ink * 255).astype(np.uint8)).resize(
        new_size, Image.Resampling.BOX
    )
    digit = np.asarray(scaled, dtype=np.float64)
    if digit.max() == 0:
        raise ImageError("no ink: the marks are too faint or too small to read")
    digit = digit * (255.0 / digit.max())  # a faint stroke after averaging: a full-white core
    return torch.from_numpy(_centre_by_mass(digit)).to(torch.uint8)


def _find_digit(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Dark ink on light paper -> its ink map (0..1), the digit's strokes, their bounding box.

    Printed lines across the picture are cleared from the ink first (`_printed_lines`). The
    paper is estimated twice: first at a scale wider than any stroke, to find the digit;
    then, knowing its strokes' width, at a few times that width, so a shadow's corner or a
    narrow shadow is followed rather than filled in and taken for ink. That finer look sees the
    picture smoothed for its sensor noise (`_smoothing`), at most a quarter of a stroke wide. A
    mark that fades there is shading (`measure_shading`), and the digit is looked for again on
    that finer paper."""
    paper_scale = PAPER_SCALE * min(grey.shape)
    ink = _ink_map(grey, paper_scale)  # float (H, W), 0..1
    printed = _printed_lines(ink)
    ink = _without(printed, ink)
    noise = _sensor_noise(grey)
    for look in range(SHADING_LOOKS):
        try:
            strokes = _digit_strokes(ink)
            stroke_width = _stroke_width(strokes)
            smoothed = grey
            if sigma := _smoothing(noise, stroke_width):
                # The noise's specks fringe the strokes with hairs, which halve the width
                # measured (and a closing that narrow would not fill the strokes): it is
                # measured again on the picture smoothed as that width allows, at this look's
                # wide scale.
                smoothed = ndimage.gaussian_filter(grey, sigma)
                ink = _without(printed, _ink_map(smoothed, paper_scale))
                strokes = _digit_strokes(ink, within=strokes)
                stroke_width = _stroke_width(strokes)
                smoothed = ndimage.gaussian_filter(grey, _smoothing(noise, stroke_width))
            stroke_scale = PAPER_STROKE_WIDTHS * stroke_width
            # A mark as wide as this look's paper is measured for shading at half its scale.
            finer_scale = stroke_scale if stroke_scale < paper_scale else paper_scale / 2
            finer_ink = _without(printed, _ink_map(smoothed, finer_scale))
        except ImageError as error:
            if look > 0 and str(error) in (NO_INK, ONLY_SPECKS):  # nothing but the shading
                raise ImageError(ONLY_SHADING) from None
            raise
        shading = measure_shading(ink[strokes], finer_ink[strokes])
        if shading.kept >= SHADING_KEPT or shading.ink >= SHADING_INK:
            break
        ink, paper_scale = finer_ink, finer_scale
    else:
        raise ImageError(ONLY_SHADING)
    if stroke_scale < paper_scale:
        ink = finer_ink
        strokes = _digit_strokes(ink, within=strokes)
    elif smoothed is not grey:  # a mark as wide as the paper's scale, in a noisy photo
        ink = _without(printed, _ink_map(smoothed, paper_scale))
        strokes = _digit_strokes(ink, within=strokes)
    rows = np.flatnonzero(strokes.any(axis=1))
    columns = np.flatnonzero(strokes.any(axis=0))
    return ink, strokes, np.s_[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def _without(printed: np.ndarray | None, ink: np.ndarray) -> np.ndarray:
    """`ink` with the printed lines' pixels (None: there are none) cleared."""
    return ink if printed is None else np.where(printed, 0.0, ink)


def _sensor_noise(grey: np.ndarray) -> float:
    """The standard deviation of the picture's pixel noise (0..255), from the differences of
    neighbouring pixels: most lie on paper, so their median is the noise's (times sqrt(2) for
    the difference of two, 1.4826 times a median absolute deviation for a normal's)."""
    differences = np.abs(np.diff(grey, axis=1))
    if differences.size == 0:  # a picture one pixel wide
        return 0.0
    return 1.4826 * float(np.median(differences)) / np.sqrt(2)


def _smoothing(noise: float, stroke_width: float) -> float:
    """The Gaussian's sigma (pixels) that leaves about NOISE_LEFT grey levels of `noise`,
    within SMOOTHING_STROKE_SHARE of `stroke_width`; 0 for none."""
    wanted = noise / (2 * np.sqrt(np.pi) * NOISE_LEFT)
    sigma = min(wanted, SMOOTHING_STROKE_SHARE * stroke_width)
    return sigma if sigma >= MIN_SMOOTHING else 0.0


def _printed_lines(ink: np.ndarray) -> np.ndarray | None:
    """The pixels of printed lines across the picture (bool, like `ink`), to be cleared from it;
    None when there are none.

    Left in, a line the digit sits on or is written through joins it into one mark that the
    model reads as something else. Where one of the digit's strokes crosses a line (ink beyond
    it on both sides), the crossing stays.
    """
    marks = ink > max(_otsu_threshold(ink), MIN_INK_THRESHOLD)
    printed = None
    for found in line_candidates(marks):
        if found.digit_share <= LINE_DIGIT_SHARE and found.depth_in_strokes <= LINE_STROKE_SHARE:
            along = marks.T if found.upright else marks
            cleared = found.band & ~_crossings(along, found.line)[None, :]
            printed = np.zeros_like(marks) if printed is None else printed
            (printed.T if found.upright else printed)[...] |= cleared
    return printed


class _Line(NamedTuple):
    """A straight band of a picture: the pixels whose row - slope * column, rounded, lies in
    first..last (level lines; an upright one is found as a level line of the transpose)."""

    slope: float
    first: int
    last: int


class LineCandidate(NamedTuple):
    """A straight line across the picture, and what tells a printed line from a stroke."""

    upright: bool  # found in the transpose: `line` and `band` are the transpose's
    line: _Line
    band: np.ndarray  # its pixels and its soft edge, a row each side (bool)
    digit_share: float  # how far the rest of the ink spans along it, over the line's length
    depth_in_strokes: float  # its depth in stroke widths of the rest of the ink


def line_candidates(marks: np.ndarray) -> list[LineCandidate]:
    """The straight lines across `marks` (bool (H, W), the ink), level and upright, measured
    against the rest of the ink; none when there is no other ink (then they are what to read).
    """
    rows, columns = np.nonzero(marks)
    found = [
        (upright, line, _band(marks.T if upright else marks, line, widen=1))
        for upright in (False, True)
        for line in (
            _straight_lines(columns, rows, marks.shape[::-1])
            if upright
            else _straight_lines(rows, columns, marks.shape)
        )
    ]
    if not found:
        return []
    on_lines = np.zeros_like(marks)
    for upright, _, band in found:
        on_lines |= band.T if upright else band
    rest = marks & ~on_lines
    if not rest.any():
        return []
    stroke_width = _stroke_width(rest)
    candidates = []
    for upright, line, band in found:
        along, rest_along = (marks.T, rest.T) if upright else (marks, rest)
        rest_columns = np.flatnonzero(rest_along.any(axis=0))
        line_columns = np.flatnonzero((along & band).any(axis=0))
        digit_share = (rest_columns[-1] - rest_columns[0] + 1) / (
            line_columns[-1] - line_columns[0] + 1
        )
        depth_in_strokes = (line.last - line.first + 1) / stroke_width
        candidates.append(LineCandidate(upright, line, band, digit_share, depth_in_strokes))
    return candidates


def _band(marks: np.ndarray, line: _Line, widen: int = 0) -> np.ndarray:
    """The pixels of `line`'s band (bool, like `marks`), `widen` rows more on each side."""
    height, width = marks.shape
    band = np.zeros((height, width), dtype=bool)
    first, last = line.first - widen, line.last + widen
    rise = line.slope * (width - 1)  # only the rows the band can reach are looked at
    top = max(0, int(np.floor(first + min(0.0, rise))) - 1)
    bottom = min(height, int(np.ceil(last + max(0.0, rise))) + 2)
    offsets = np.rint(
        np.arange(top, bottom, dtype=np.float32)[:, None]
        - np.arange(width, dtype=np.float32)[None, :] * np.float32(line.slope)
    )
    band[top:bottom] = (offsets >= first) & (offsets <= last)
    return band


def _crossings(marks: np.ndarray, line: _Line) -> np.ndarray:
    """Per column, whether a stroke crosses `line`: marks on both sides of it, within a line's
    depth past it after a pixel's gap (the line's soft edge). A slanted stroke meets the two
    sides in columns apart: a side's columns count where the other side's, widened by a
    line's depth, meet them, so the crossing spans both sides' columns and no more."""
    depth = line.last - line.first + 1
    before, after = (
        (marks & _band(marks, side)).any(axis=0)
        for side in (
            _Line(line.slope, line.first - 1 - depth, line.first - 2),
            _Line(line.slope, line.last + 2, line.last + 1 + depth),
        )
    )
    widened = 2 * depth + 1
    return (before & ndimage.maximum_filter1d(after, size=widened)) | (
        after & ndimage.maximum_filter1d(before, size=widened)
    )


def _straight_lines(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> list[_Line]:
    """The level printed lines among marks at `rows`, `columns` (a picture of `shape`), each
    placed to the pixel.

    On a grid of about LINE_SEARCH_SIDE cells (a cell with any mark counts), slopes within
    MAX_LINE_TILT are tried a cell's rise over the width apart, counting the marks along each:
    lines lie along the slope whose counts are the most concentrated (the largest sum of
    squares), where a count reaches LINE_COVERAGE of the width. Each line is then placed among
    the full-size marks near it: its slope refined the same way a pixel's rise apart, and its
    band the rows along that slope inked on at least half of LINE_COVERAGE of the columns.
    """
    height, width = shape
    factor = max(1, max(height, width) // LINE_SEARCH_SIDE)
    cells = np.zeros((-(-height // factor), -(-width // factor)), dtype=bool)
    cells[rows // factor, columns // factor] = True
    cell_width = cells.shape[1]
    step = np.arctan(1.0 / cell_width)
    slopes = np.tan(np.arange(-np.radians(MAX_LINE_TILT), np.radians(MAX_LINE_TILT), step))
    slope, counts, base = _most_concentrated(
        *np.nonzero(cells), cells.shape, slopes, LINE_COVERAGE * cell_width
    )
    if counts is None:
        return []
    lines = []
    hits = np.flatnonzero(counts >= LINE_COVERAGE * cell_width)
    groups = np.split(hits, np.flatnonzero(np.diff(hits) > 2) + 1)
    # Deeper than a line: a mass (noise, a shadow); more than MAX_PRINTED_LINES: a pattern.
    deepest = BAND_DEPTH * cells.shape[0] + 2
    groups = [group for group in groups if group[-1] - group[0] + 1 <= deepest]
    if len(groups) > MAX_PRINTED_LINES:
        return []
    for group in groups:
        centre = (int(group[np.argmax(counts[group])]) - base) * factor
        reach = (3 + BAND_DEPTH * cells.shape[0]) * factor
        near = np.abs(rows - columns * slope - centre) <= reach
        fine_slopes = np.tan(
            np.arctan(slope) + np.arange(-2 * step, 2 * step, np.arctan(1.0 / width))
        )
        fine_slope, fine_counts, fine_base = _most_concentrated(
            rows[near], columns[near], shape, fine_slopes, 0
        )
        inked = fine_counts >= LINE_COVERAGE * width / 2
        peak = int(np.argmax(fine_counts))
        if not inked[peak]:
            continue
        first = last = peak
        while first > 0 and inked[first - 1]:
            first -= 1
        while last + 1 < inked.size and inked[last + 1]:
            last += 1
        if last - first + 1 <= BAND_DEPTH * height:  # deeper: a shadow's edge, not a line
            lines.append(_Line(float(fine_slope), first - fine_base, last - fine_base))
    return lines


def _most_concentrated(
    rows: np.ndarray,
    columns: np.ndarray,
    shape: tuple[int, int],
    slopes: np.ndarray,
    least_peak: float,
) -> tuple[float, np.ndarray | None, int]:
    """Of `slopes`, the one along which the counts of marks (at `rows`, `columns` of a picture
    of `shape`) per rounded row - slope * column are the most concentrated, among those with a
    count of at least `least_peak`: (slope, the counts, the index of offset 0 in them); counts
    None when no slope has such a count."""
    height, width = shape
    base = int(np.ceil(width * np.abs(slopes).max(initial=0.0))) + 1
    size = height + 2 * base
    counts = np.empty((len(slopes), size), dtype=np.int64)
    # All slopes' counts in one bincount per batch of slopes (a bin per slope and offset),
    # batches of about LINE_COUNT_BATCH marks' offsets, so a picture full of marks stays small.
    batch = max(1, LINE_COUNT_BATCH // max(1, rows.size))
    for first in range(0, len(slopes), batch):
        some = slopes[first : first + batch]
        offsets = np.rint(
            rows.astype(np.float32)[None, :]
            - some.astype(np.float32)[:, None] * columns.astype(np.float32)[None, :]
        ).astype(np.int32)
        offsets += (base + np.arange(len(some)) * size).astype(np.int32)[:, None]
        counts[first : first + batch] = np.bincount(
            offsets.ravel(), minlength=len(some) * size
        ).reshape(len(some), size)
    scores = np.square(counts, dtype=np.float64).sum(axis=1)
    scores[counts.max(axis=1, initial=0) < least_peak] = -1.0
    if not len(slopes) or scores.max() < 0:
        return 0.0, None, base
    best = int(np.argmax(scores))
    return float(slopes[best]), counts[best], base


def _extent_in_stroke_widths(strokes: np.ndarray) -> float:
    """The longest side of the strokes' box (which they fill) in widths of their stroke."""
    return max(strokes.shape) / _stroke_width(np.pad(strokes, 1))  # the box's edge is an edge


def _upright_grey(source: bytes | Image.Image) -> np.ndarray:
    """Any accepted image -> its luminance, upright as its EXIF orientation says, shrunk."""
    image = open_image(source) if isinstance(source, bytes | bytearray) else source
    _check_dimensions(image)
    if image.mode not in SUPPORTED_MODES:
        raise ImageError(f"colour mode {image.mode} is not supported: save it as RGB or greyscale")
    return _to_grey_array(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone photo taken sideways stands up).

    Orientation is advice: EXIF that cannot be parsed (Pillow parses a PNG's lazily, here, and
    a damaged block raises whatever its parser meets: SyntaxError, struct.error and others)
    leaves the picture as stored, as a viewer would show it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": said on stderr, not raised
            return ImageOps.exif_transpose(image)
    except Exception:
        return image


def bomb_pixels(error: Image.DecompressionBombError) -> int:
    """The pixel count Pillow's refusal quotes; at least what Pillow refuses if it quotes none."""
    quoted = re.search(r"\((\d+) pixels\)", str(error))
    return int(quoted.group(1)) if quoted else 2 * MAX_IMAGE_PIXELS + 1


def _too_many_pixels(detail: str) -> str:
    return f"{detail}: over the {MAX_IMAGE_PIXELS:,}-pixel limit (refused before decoding)"


def _check_dimensions(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(_too_many_pixels(f"declares {width}x{height} pixels"))
    if width == 0 or height == 0:
        raise ImageError("has no pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"is {width}x{height} pixels: a side over {MAX_ASPECT_RATIO} times the other is "
            "not one object to classify (refused before decoding)"
        )


def _to_grey_array(image: Image.Image) -> np.ndarray:
    """Luminance 0..255 as float32, shrunk to about ANALYSIS_SIDE; transparency as paper."""
    if image.mode in NUMERIC_MODES:
        image = Image.fromarray(_numeric_to_8_bit(np.asarray(image)))
    elif image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        image = _on_opaque_paper(image.convert("RGBA"))
    grey = image.convert("L")
    factor = max(grey.size) // ANALYSIS_SIDE
    if factor >= 2:
        grey = grey.reduce(factor)  # block means: fast, and thin strokes stay grey, not gone
    return np.asarray(grey, dtype=np.float32)


def _on_opaque_paper(rgba: Image.Image) -> Image.Image:
    """Transparent pixels as white paper, or as black where that is all that shows the ink
    (light strokes on a transparent canvas)."""
    for paper in (255, 0):
        composite = Image.alpha_composite(Image.new("RGBA", rgba.size, (paper,) * 3 + (255,)), rgba)
        darkest, lightest = composite.convert("L").getextrema()
        if lightest - darkest >= MIN_INK_CONTRAST * 255:
            break
    return composite


def _numeric_to_8_bit(values: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit or float pixels as 0..255, read in their kind's full range.

    Integers from 0 to 65535 are 16-bit levels, floats from 0 to 1 are fractions of white: so a
    16-bit scan of a blank page, or its sensor noise, is as blank as in 8 bits. Values outside
    those ranges have no full scale to read them in, and are stretched from darkest to lightest.
    """
    is_float, values = values.dtype.kind == "f", values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageError("pixel values include NaN or infinity")
    low, high = float(values.min()), float(values.max())
    full_scale = 1.0 if is_float else 65535.0
    if low >= 0.0 and high <= full_scale:
        scaled = values * (255.0 / full_scale)
        faint, spread = np.ptp(scaled) < MIN_INK_CONTRAST * 255, high - low
        if not is_float and high < 4096 and faint and spread >= MIN_INK_CONTRAST * 255:
            # 8- or 12-bit data saved as 16-bit (numpy's uint16): blank in 16-bit's range,
            # though its own levels differ. Reading it in another range would be a guess; a
            # blank 16-bit scan (levels near white, differing by its noise) is not this.
            raise ImageError(
                f"its 16-bit levels reach only {high:.0f} of 65535, so it reads as blank; if it "
                "holds 8- or 12-bit data, save it scaled to 16 bits, or as 8-bit"
            )
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
    return np.round(scaled).astype(np.uint8)


def _dark_ink_on_light_paper(grey: np.ndarray) -> np.ndarray:
    """The image with its ink dark: inverted when the ink is light (chalk, a screen).

    The paper is most of the picture and most of its border. Once the lighting is taken out
    (a median wider than the strokes, which follows shadows and gradients in either polarity
    since the ink is a minority), paper nearer the darkest pixels than the brightest means
    light ink on dark paper. Without that step a shadow over most of the border reads as dark
    paper. Each of the two views of the paper can be misled: the border by a sheet lying on a
    dark desk, the picture as a whole by a sharp shadow over half of it; so the ink is taken
    for light only when both say so. The darkest and brightest are looked for away from the
    picture's edge: beside a dark band along one side (a scanner's lid) the median, which sees
    the picture extended by its edges, lies below the paper for a cell or two, and that paper
    would pass for light ink. The rule is symmetric, so a mirror image gives the same result.
    """
    paper_scale = PAPER_SCALE * min(grey.shape)
    flat = grey - _paper_estimate(grey, paper_scale, ndimage.median_filter)
    border = np.concatenate([flat[0, :], flat[-1, :], flat[:, 0], flat[:, -1]])
    margin = 2 * max(1, int(paper_scale) // PAPER_GRID)  # two of the median's cells
    inside = flat[margin:-margin, margin:-margin]
    darkest, middle, brightest = np.percentile(inside if inside.size else flat, [0.1, 50, 99.9])
    halfway = (darkest + brightest) / 2
    light_ink = float(np.median(border)) < halfway and float(middle) < halfway
    return 255.0 - grey if light_ink else grey


def _ink_map(grey: np.ndarray, paper_scale: float) -> np.ndarray:
    """How much darker than its paper each pixel is, 0..1 (dark ink on light paper).

    The paper's brightness is estimated at every point by a closing (a max filter, then a min
    filter) `paper_scale` pixels wide: it fills every mark narrower than that and keeps larger
    shapes (a shadow's edge, a lighting gradient, the sheet's border).
    """
    paper = _paper_estimate(grey, paper_scale, ndimage.grey_closing)
    ink = _darker_than_paper(grey, paper)
    if _ink_strength(ink) < MIN_INK_CONTRAST:
        raise ImageError(NO_INK)
    return ink


def _paper_estimate(
    grey: np.ndarray, scale: float, paper_filter: Callable[..., np.ndarray]
) -> np.ndarray:
    """`paper_filter(image, size)` about `scale` pixels wide, at the size of `grey`.

    The paper varies slowly, so the filter runs on a grid about PAPER_GRID cells across its
    width (block means) and is interpolated back: the same answer for a small share of the
    work. It sees the image extended by its edge values: scipy pads each step of a closing
    separately, so its max filter would wipe out a shadow along the picture's edge before its
    min filter could restore it, and the shadow would read as ink.
    """
    height, width = grey.shape
    size = max(3, int(scale))
    factor = max(1, size // PAPER_GRID)
    coarse = np.asarray(Image.fromarray(grey, "F").reduce(factor))
    coarse_size = -(-size // factor) | 1
    padded = np.pad(coarse, coarse_size, mode="edge")
    coarse_paper = paper_filter(padded, size=coarse_size)[
        coarse_size:-coarse_size, coarse_size:-coarse_size
    ]
    paper = Image.fromarray(coarse_paper, "F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(paper)


def _darker_than_paper(image: np.ndarray, paper: np.ndarray) -> np.ndarray:
    # Divided out, so ink on shaded paper counts as much as ink in the light; on paper darker
    # than MIN_PAPER_LEVEL (a black canvas) the difference is measured against that level.
    return np.clip((paper - image) / np.maximum(paper, MIN_PAPER_LEVEL), 0.0, 1.0)


def _ink_strength(ink: np.ndarray) -> float:
    """The ink level of the INK_STRENGTH_PIXELS-th strongest pixel: never one noisy pixel.

    On small images (under 1,000 pixels per rank) fewer: a thin "1" in 28x28 has 40 pixels.
    """
    values = ink.ravel()
    rank = min(INK_STRENGTH_PIXELS, max(1, values.size // 1000))
    return float(np.partition(values, values.size - rank)[values.size - rank])


def _digit_strokes(ink: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """The pixels of the digit: Otsu's ink threshold, then the components that form the digit.

    `within`: the digit's strokes as a wider look found them. Only components that overlap them
    can be the digit: the finer look separates the digit from what the wider one merged with
    it, and must not take in marks that the wider one had already set apart.
    """
    threshold = max(_otsu_threshold(ink), MIN_INK_THRESHOLD)
    labels, count = ndimage.label(ink > threshold)
    if count == 0:
        raise ImageError(NO_INK)
    weights = np.bincount(labels.ravel(), weights=ink.ravel())[1:]  # each component's ink
    # Each component's bounding box as (top, left, bottom, right), bottom and right exclusive.
    boxes = np.array(
        [
            (rows.start, columns.start, rows.stop, columns.stop)
            for rows, columns in ndimage.find_objects(labels)
        ]
    )
    top, left, bottom, right = boxes.T
    height, width = ink.shape
    tall, wide = bottom - top, right - left
    on_left_or_right = (left == 0) | (right == width)
    on_top_or_bottom = (top == 0) | (bottom == height)
    touches_edge = on_left_or_right | on_top_or_bottom
    band = (on_left_or_right & (tall >= BAND_LENGTH * height) & (wide <= BAND_DEPTH * width)) | (
        on_top_or_bottom & (wide >= BAND_LENGTH * width) & (tall <= BAND_DEPTH * height)
    )
    not_digit = band | _frames(labels, boxes, weights)
    if within is not None:
        overlapping = np.zeros(count + 1, dtype=bool)
        overlapping[np.unique(labels[within])] = True
        not_digit |= ~overlapping[1:]
    # The digit is the heaviest component that is neither a band nor a frame, unless it touches
    # the picture's edge (where the sheet's border and cut-off shadows lie) and a fair-sized one
    # clear of the edge exists; a digit drawn to the edge of a canvas still counts.
    candidates = np.flatnonzero(~not_digit) if not not_digit.all() else np.arange(count)
    main = int(candidates[np.argmax(weights[candidates])])
    clear = np.flatnonzero(~touches_edge & ~not_digit)
    if touches_edge[main] and clear.size:
        heaviest_clear = int(clear[np.argmax(weights[clear])])
        if weights[heaviest_clear] >= EDGE_COMPONENT_SHARE * weights[main]:
            main = heaviest_clear
    # Its other strokes: not specks, not far from it, not on the edge unless it is too.
    reach = MAX_COMPONENT_GAP * max(bottom[main] - top[main], right[main] - left[main])
    gap_rows = np.maximum.reduce([top[main] - bottom, top - bottom[main], np.zeros(count)])
    gap_columns = np.maximum.reduce([left[main] - right, left - right[main], np.zeros(count)])
    keep = (
        (weights >= MIN_COMPONENT_SHARE * weights[main])
        & (np.maximum(gap_rows, gap_columns) <= reach)
        & (~touches_edge | touches_edge[main])
        & ~not_digit
    )
    keep[main] = True
    if within is None:  # the first look: is there a digit at all, or only noise?
        sizes = np.bincount(labels.ravel())[1:]  # each component's pixels
        specks = measure_specks(weights, sizes, keep, ~keep & ~not_digit & ~touches_edge)
        if specks.digit_share < SPECKS_DIGIT_SHARE and specks.contrast < SPECKS_CONTRAST:
            raise ImageError(ONLY_SPECKS)
    # A digit-sized mark too far off to be part of the digit, on its line: another digit.
    if (
        ~keep
        & ~not_digit
        & (~touches_edge | touches_edge[main])
        & _digit_sized(tall, weights, tall[main], weights[main])
        & _on_one_line(top, bottom, top[main], bottom[main])
    ).any():
        raise ImageError(SEVERAL_DIGITS)
    keep = np.concatenate([[False], keep])  # label 0 is the paper
    return keep[labels]


class Specks(NamedTuple):
    """How the digit found stands out from the other marks clear of the picture's edge."""

    digit_share: float  # the digit's share of their ink and its own (1.0: there are none)
    contrast: float  # its mean ink (per pixel) over theirs (inf: there are none)


def measure_specks(
    weights: np.ndarray, sizes: np.ndarray, digit: np.ndarray, rest: np.ndarray
) -> Specks:
    """The digit (its components `digit`, bool) against the `rest` of the marks (bool, like
    `digit`), from each component's ink (`weights`) and pixels (`sizes`).

    Over noise, the digit found is the heaviest speck among thousands of the same ink; a
    pen's strokes are darker than the noise around them, and hold more of the ink."""
    rest_weight = float(weights[rest].sum())
    if rest_weight == 0:
        return Specks(1.0, float("inf"))
    digit_weight = float(weights[digit].sum())
    digit_mean = digit_weight / float(sizes[digit].sum())
    rest_mean = rest_weight / float(sizes[rest].sum())
    return Specks(digit_weight / (digit_weight + rest_weight), digit_mean / rest_mean)


class Shading(NamedTuple):
    """How a mark fares when the paper is measured at a few of its stroke widths."""

    kept: float  # the share of its ink it keeps
    ink: float  # the ink it then holds (75th percentile of its pixels, 0..1)


def measure_shading(coarse_ink: np.ndarray, fine_ink: np.ndarray) -> Shading:
    """A mark's pixels' ink against the picture-wide paper (`coarse_ink`) and against the paper
    at a few of its stroke widths (`fine_ink`): a pen's strokes keep theirs; shading fades."""
    kept = float(fine_ink.sum()) / max(float(coarse_ink.sum()), 1e-9)
    return Shading(kept, float(np.percentile(fine_ink, 75)))


def _digits_side_by_side(strokes: np.ndarray) -> int:
    """How many digits `strokes` (cropped to them) hold side by side: runs of digit-sized marks
    (SIDE_BY_SIDE_*) apart in columns, sharing rows; 1 for one digit. A digit's own pieces (a
    5's bar, a broken stroke) are too small, too close, or above or inside one another."""
    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))  # diagonal touch: one
    if count < 2:
        return 1
    weights = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    marks = sorted(
        (columns.start, columns.stop, rows.start, rows.stop)
        for (rows, columns), weight in zip(boxes, weights, strict=True)
        if _digit_sized(rows.stop - rows.start, weight, len(strokes), weights.max())
    )
    digits, right, top, bottom = 0, -1, 0, 0
    for left, next_right, next_top, next_bottom in marks:
        apart = left - right >= SIDE_BY_SIDE_GAP * len(strokes)
        beside = apart and _on_one_line(top, bottom, next_top, next_bottom)
        if digits == 0 or beside:
            digits += 1
            right, top, bottom = next_right, next_top, next_bottom
        else:  # over or too close to the previous digit's columns: a piece of it
            right = max(right, next_right)
    return digits


def _digit_sized(tall, weight, digit_height, heaviest_weight):
    """Whether marks (arrays, or one) are tall and heavy enough to be a digit of their own:
    SIDE_BY_SIDE_HEIGHT of the digit's height and SIDE_BY_SIDE_WEIGHT of the heaviest's ink."""
    return (tall >= SIDE_BY_SIDE_HEIGHT * digit_height) & (
        weight >= SIDE_BY_SIDE_WEIGHT * heaviest_weight
    )


def _on_one_line(top, bottom, other_top, other_bottom):
    """Whether marks (rows top..bottom, arrays or one) share at least half of the shorter's
    rows with the other: written on one line, as the digits of a number are."""
    shared = np.minimum(bottom, other_bottom) - np.maximum(top, other_top)
    return shared >= np.minimum(bottom - top, other_bottom - other_top) / 2


def _frames(labels: np.ndarray, boxes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Which components enclose another, ENCLOSED_SHARE of their size across: a form's box or
    a circle drawn around the digit. No stroke of a digit holds another in a hole of its own."""
    top, left, bottom, right = boxes.T
    extents = np.maximum(bottom - top, right - left)
    frames = np.zeros(len(boxes), dtype=bool)
    # A frame weighs about as much as the digit in it: only the heaviest few that are not
    # specks are looked at (a photo of noise has thousands of components).
    heaviest = np.argsort(weights)[::-1][:MAX_FRAME_CANDIDATES]
    heaviest = heaviest[weights[heaviest] >= MIN_COMPONENT_SHARE * weights.max()]
    for index in heaviest[extents[heaviest] >= 3]:  # smaller: no room for anything inside
        boxed_in = (
            (top > top[index])
            & (left > left[index])
            & (bottom < bottom[index])
            & (right < right[index])
            & (extents >= ENCLOSED_SHARE * extents[index])
        )
        if not boxed_in.any():  # nothing of that size inside its box: no need to fill holes
            continue
        window = labels[top[index] : bottom[index], left[index] : right[index]]
        own = window == index + 1
        inside = window[ndimage.binary_fill_holes(own) & ~own]
        enclosed = np.unique(inside[inside > 0]) - 1
        frames[index] = bool((extents[enclosed] >= ENCLOSED_SHARE * extents[index]).any())
    return frames


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold for values in 0..1: the cut that maximises the between-class variance."""
    bins = 256
    counts = np.bincount(
        np.minimum(values * bins, bins - 1).astype(np.int32).ravel(), minlength=bins
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts)
    weight_above = weight_below[-1] - weight_below
    sum_below = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = sum_below / weight_below
        mean_above = (sum_below[-1] - sum_below) / weight_above
        between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(edges[1:][np.nanargmax(np.nan_to_num(between, nan=-1.0))])


def _shrink_large_ink(ink: np.ndarray) -> np.ndarray:
    """Max-pool a large crop down to about WORKING_SIZE pixels: fast, and keeps thin strokes."""
    factor = max(ink.shape) // WORKING_SIZE
    if factor < 2:
        return ink
    height, width = (-(-side // factor) * factor for side in ink.shape)  # round up
    padded = np.zeros((height, width))
    padded[: ink.shape[0], : ink.shape[1]] = ink
    return padded.reshape(height // factor, factor, width // factor, factor).max(axis=(1, 3))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width ~ area / half the perimeter (a stroke of length L, width w: Lw / L)."""
    edges = (mask[1:, :] != mask[:-1, :]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    return 2.0 * float(mask.sum()) / max(int(edges), 1)


def _widen_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Dilate strokes that would be under MIN_STROKE_WIDTH_IN_BOX pixels wide after scaling."""
    stroke_width = _stroke_width(ink > 0)
    wanted = MIN_STROKE_WIDTH_IN_BOX * max(ink.shape) / DIGIT_BOX  # in source pixels
    if stroke_width >= wanted:
        return ink
    radius = int(np.ceil((wanted - stroke_width) / 2))
    return ndimage.maximum_filter(np.pad(ink, radius), size=2 * radius + 1)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place the (<=20x20) digit in 28x28 so its centre of mass lands on the centre pixel."""
    height, width = digit.shape
    total = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(height)).sum() / total
    centre_column = (digit.sum(axis=0) * np.arange(width)).sum() / total
    top = int(round((IMAGE_SIDE - 1) / 2 - centre_row))
    left = int(round((IMAGE_SIDE - 1) / 2 - centre_column))
    # The centre of mass can be far from the box's centre (a "7"): clamp so nothing is cut off.
    top = min(max(top, 0), IMAGE_SIDE - height)
    left = min(max(left, 0), IMAGE_SIDE - width)
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float64)
    canvas[top : top + height, left : left + width] = digit
    return np.clip(np.round(canvas), 0, 255)


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
    grey = _upright_grey(source).astype(np.float64)  # (H, W), 0..255, transparency on white

    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 127:  # light background: negate, so the garment is light on black
        grey, background = 255.0 - grey, 255.0 - background
    garment = np.abs(grey - background) > CLOTHING_BACKGROUND_TOLERANCE
    if not garment.any():
        raise ImageError(
            "nothing on the background: the image is blank, or the garment is as bright as it"
        )
    rows, columns = np.flatnonzero(garment.any(axis=1)), np.flatnonzero(garment.any(axis=0))
    crop = grey[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]  # trimmed background
    crop = np.clip(crop - background, 0.0, 255.0)  # the background becomes black

    height, width = crop.shape
    scale = IMAGE_SIDE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
    resized = Image.fromarray(crop.astype(np.uint8)).resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 0)
    canvas.paste(resized, ((IMAGE_SIDE - new_size[0]) // 2, (IMAGE_SIDE - new_size[1]) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())


def preprocessing_for(subject: str):
    """The recipe for a data set's `subject` (datasets.py): digits or clothing."""
    return {"digits": preprocess_image, "clothing": preprocess_clothing}[subject]
