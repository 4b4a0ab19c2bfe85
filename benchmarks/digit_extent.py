"""How far a digit's strokes run, in stroke widths: preprocess.MIN_EXTENT_IN_STROKE_WIDTHS.

    python benchmarks/digit_extent.py [--images 10000]

Measures, for the first --images MNIST test digits written as scans (dark ink on white, at
MNIST's 28x28), the longest side of the digit's bounding box over its strokes' mean width, as
preprocess_image does before it refuses a lone dot or blob; then the same for drawn marks
that are no digit. Prints the lowest digits (which the threshold must stay under) and the marks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnist_classifier.data import load_split
from mnist_classifier.preprocess import (
    MIN_EXTENT_IN_STROKE_WIDTHS,
    _dark_ink_on_light_paper,
    _extent_in_stroke_widths,
    _find_digit,
    _upright_grey,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# Marks on a 280x280 drawing page (a brush 20 px wide, as the page's): none is a digit.
MARKS = {
    "a tap (dot 20 px)": lambda draw: draw.ellipse((130, 130, 150, 150), fill=0),
    "a blob 40 px": lambda draw: draw.ellipse((120, 120, 160, 160), fill=0),
    "a filled square": lambda draw: draw.rectangle((120, 120, 150, 150), fill=0),
}


def extent(image: Image.Image) -> float:
    _ink, strokes, box = _find_digit(_dark_ink_on_light_paper(_upright_grey(image)))
    return _extent_in_stroke_widths(strokes[box])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    arguments = parser.parse_args()

    images, labels = load_split(arguments.data_dir, train=False)
    measured = sorted(
        (extent(Image.fromarray(255 - images[index].numpy())), int(labels[index]), index)
        for index in range(min(arguments.images, len(images)))
    )
    values = np.array([value for value, _label, _index in measured])
    print(f"{len(measured):,} MNIST test digits: extent in stroke widths")
    print("  lowest: " + ", ".join(f"{v:.2f} (a {lab}, #{i})" for v, lab, i in measured[:5]))
    print(f"  1st percentile {np.percentile(values, 1):.2f}, median {np.median(values):.2f}")
    for name, draw in MARKS.items():
        page = Image.new("L", (280, 280), 255)
        draw(ImageDraw.Draw(page))
        print(f"{name}: {extent(page):.2f}")
    refused = int((values < MIN_EXTENT_IN_STROKE_WIDTHS).sum())
    print(f"threshold {MIN_EXTENT_IN_STROKE_WIDTHS}: refuses {refused} of the digits")


if __name__ == "__main__":
    main()
