"""Photo-like images made from MNIST test digits: a digit on paper, photographed with a phone.

Each digit becomes ink on a paper-coloured sheet of 300-900 px a side, 25-60% of the short side
tall, off-centre and slightly tilted; then the photo's faults: a lighting gradient whose darkest
corner is 55-85% of the brightest, a soft-edged shadow darkening 20-45% of part of the sheet
(over the digit in 60% of images), sensor noise, and JPEG at quality 55-90. Every tenth image
is chalk (light ink on a dark board) and every tenth another one carries an EXIF orientation
(stored sideways, as phones do). Seeded: the same seed gives the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

# (paper RGB, ink RGB) of each kind of sheet: white paper with graphite, cream with a blue
# pen, squared-paper grey with black ink, and a chalkboard.
PAPER_AND_INK = [
    ((236, 236, 232), (45, 45, 50)),
    ((240, 228, 200), (35, 55, 150)),
    ((214, 218, 222), (20, 20, 25)),
]
CHALKBOARD = ((40, 62, 52), (225, 228, 220))
EXIF_ORIENTATION = 0x0112
ROTATED_90_CLOCKWISE = 6  # the EXIF value a phone writes when held upright for a landscape sensor


def lighting_gradient(height: int, width: int, angle: float, darkest: float) -> np.ndarray:
    """Light falling off across a (height, width) sheet from one side, at `angle` (radians):
    1.0 at the brightest corner, `darkest` at the opposite one."""
    rows, columns = np.mgrid[0:height, 0:width]
    along = np.cos(angle) * columns / width + np.sin(angle) * rows / height
    along = (along - along.min()) / (along.max() - along.min())
    return 1.0 - (1.0 - darkest) * along


def photo_like(
    digit: np.ndarray, index: int, rng: np.random.Generator, sensor_noise: float | None = None
) -> bytes:
    """One MNIST digit (uint8 28x28, light on black) -> the bytes of a photo-like JPEG.

    `sensor_noise`: the noise's standard deviation (0-255) in place of the usual 2-7, for a
    photo taken in poor light; the same seed gives the same photo otherwise."""
    width, height = (int(side) for side in rng.integers(300, 901, size=2))
    digit_side = int(min(width, height) * rng.uniform(0.25, 0.60))
    ink = Image.fromarray(digit).resize((digit_side, digit_side), Image.Resampling.BICUBIC)
    ink = ink.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR)
    left = int(rng.integers(0, width - digit_side + 1))
    top = int(rng.integers(0, height - digit_side + 1))
    coverage = np.zeros((height, width))
    coverage[top : top + digit_side, left : left + digit_side] = np.asarray(ink) / 255.0

    paper, pen = CHALKBOARD if index % 10 == 9 else PAPER_AND_INK[index % len(PAPER_AND_INK)]
    paper = np.array(paper) + rng.uniform(-8, 8, size=3)
    pen = np.array(pen) + rng.uniform(-10, 10, size=3)
    colour = paper + (pen - paper) * coverage[..., None]  # (H, W, 3)

    rows, columns = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * np.pi)
    lighting = lighting_gradient(height, width, angle, rng.uniform(0.55, 0.85))

    # The shadow's edge is a straight line, through the digit in 60% of images.
    if rng.uniform() < 0.6:
        through = (
            left + digit_side * rng.uniform(0.2, 0.8),
            top + digit_side * rng.uniform(0.2, 0.8),
        )
    else:
        through = (rng.uniform(0, width), rng.uniform(0, height))
    edge_angle = rng.uniform(0, 2 * np.pi)
    side = (columns - through[0]) * np.cos(edge_angle) + (rows - through[1]) * np.sin(edge_angle)
    shadow = Image.fromarray(((side > 0) * 255).astype(np.uint8))
    softness = float(rng.uniform(3, 0.05 * min(width, height)))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(softness))) / 255.0
    lighting = lighting * (1.0 - rng.uniform(0.20, 0.45) * shadow)

    usual_noise = rng.uniform(2, 7)  # drawn either way, so the draws after it stay the same
    noise = usual_noise if sensor_noise is None else sensor_noise
    photo = colour * lighting[..., None] + rng.normal(0, noise, (height, width, 3))
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    quality = int(rng.integers(55, 91))
    if index % 10 == 4:  # stored sideways; the EXIF tag says how to turn it upright
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATED_90_CLOCKWISE
        image.transpose(Image.Transpose.ROTATE_90).save(
            buffer, format="JPEG", quality=quality, exif=exif
        )
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
