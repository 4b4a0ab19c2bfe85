"""How well `mnist predict`'s preprocessing serves a model on photos, scans and the drawing page.

    python benchmarks/photo_accuracy.py --checkpoint PATH [--images 500] [--seed 0]
                                        [--sensor-noise 20 30] [--save-examples DIR]

Takes the first N MNIST test digits (never training images) and predicts each in four forms,
with the same checkpoint: as the MNIST crop itself (the reference, then prepared as any
upload is), as a photo-like JPEG (tests/photo_digits.py: paper, lighting gradient, shadow,
noise, tilt; a tenth chalk, a tenth EXIF-rotated), as the same photos taken in poor light (each
--sensor-noise level, a standard deviation of 0-255 in place of the usual 2-7; a phone gives up
to about 20), as a realistic scan (tests/realistic_digits.py: scaled, thick or thin,
off-centre, PNG/JPEG/transparent PNG) and as the drawing page sends it (280x280 PNG, dark on
white). Every image goes through `preprocess_image`, the function `mnist predict` and `mnist
serve` share. Prints the accuracy of each, how many were refused (and of those, as several
digits side by side), and the mean preparation time; then how many of N/2 pairs of those
digits, written side by side on the drawing page, are refused as several digits.
--save-examples writes a strip of the first photos above the 28x28 images the model saw.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test sets' generators

from photo_digits import photo_like  # noqa: E402
from realistic_digits import realistic_variant, side_by_side  # noqa: E402
from train_speed import _machine  # noqa: E402  (this folder is on sys.path when run)

from mnist_classifier.batching import normalize  # noqa: E402
from mnist_classifier.checkpoint import load_checkpoint  # noqa: E402
from mnist_classifier.data import load_split  # noqa: E402
from mnist_classifier.preprocess import ImageError, preprocess_image  # noqa: E402

PAGE_CANVAS = 280  # the drawing page's canvas size
# Photos in poor light: a phone gives sensor noise up to about 20 (of 255), 30 is a dark room.
POOR_LIGHT_NOISE = [20.0, 30.0]
NAME_WIDTH = 34  # "photo-like JPEGs, sensor noise 20" and a space
EXAMPLES = 8
EXAMPLE_SIDE = 112


def page_drawing(digit: np.ndarray) -> bytes:
    """A digit as the drawing page sends it: dark ink on a white 280x280 canvas, as a PNG."""
    drawn = Image.fromarray(255 - digit).resize(
        (PAGE_CANVAS, PAGE_CANVAS), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return buffer.getvalue()


def count_numbers_refused(digits: list[np.ndarray], seed: int) -> dict[int, tuple[int, int]]:
    """Pairs of consecutive digits written side by side 1-16 pixels apart (at MNIST's scale):
    for each gap, how many were refused as several digits, of how many."""
    rng = np.random.default_rng(seed)
    refused, written = Counter(), Counter()
    for index in range(len(digits) // 2):
        gap = int(rng.integers(1, 17))
        written[gap] += 1
        try:
            preprocess_image(side_by_side(digits[2 * index], digits[2 * index + 1], gap))
        except ImageError as error:
            refused[gap] += "several digits" in str(error)
    return {gap: (refused[gap], written[gap]) for gap in sorted(written)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    parser.add_argument(
        "--sensor-noise",
        type=float,
        nargs="*",
        default=POOR_LIGHT_NOISE,
        help="noise levels (0-255) of the photos in poor light; none: skip them",
    )
    parser.add_argument("--save-examples", type=Path, help="folder for photos-and-seen.png")
    arguments = parser.parse_args()

    model = load_checkpoint(arguments.checkpoint).model.eval()
    images, labels = load_split(arguments.data_dir, train=False)
    digits = [image.numpy() for image in images[: arguments.images]]
    labels = labels[: arguments.images]
    forms = {
        "MNIST crops, prepared": lambda digit, index, rng: Image.fromarray(digit),
        "photo-like JPEGs": photo_like,
        **{
            f"photo-like JPEGs, sensor noise {noise:g}": functools.partial(
                photo_like, sensor_noise=noise
            )
            for noise in arguments.sensor_noise
        },
        "realistic scans": realistic_variant,
        "drawing page (280x280)": lambda digit, index, rng: page_drawing(digit),
    }
    print(f"Machine: {_machine()}")
    print(f"Checkpoint: {arguments.checkpoint}; first {len(digits)} MNIST test digits")
    with torch.inference_mode():
        reference = (model(normalize(images[: len(digits)])).argmax(1) == labels).float().mean()
    print(f"{'MNIST crops, as they are':{NAME_WIDTH}s} accuracy {100 * reference.item():6.2f}%")
    for name, make in forms.items():
        rng = np.random.default_rng(arguments.seed)
        sources = [make(digit, index, rng) for index, digit in enumerate(digits)]
        prepared, several, started = [], 0, time.perf_counter()
        for source in sources:
            try:
                prepared.append(preprocess_image(source))
            except ImageError as error:
                prepared.append(None)  # refused: counted as wrong
                several += "several digits" in str(error)
        seconds = (time.perf_counter() - started) / len(sources)
        usable = [index for index, image in enumerate(prepared) if image is not None]
        with torch.inference_mode():
            logits = model(normalize(torch.stack([prepared[index] for index in usable])))
        correct = (logits.argmax(1) == labels[usable]).sum().item()
        print(
            f"{name:{NAME_WIDTH}s} accuracy {100 * correct / len(sources):6.2f}%  "
            f"({len(sources) - len(usable)} refused, {several} of them as several digits)  "
            f"{1000 * seconds:6.1f} ms per image"
        )
        if name == "photo-like JPEGs" and arguments.save_examples:
            save_examples(sources[:EXAMPLES], prepared[:EXAMPLES], arguments.save_examples)
    by_gap = count_numbers_refused(digits, arguments.seed)
    refused, pairs = (sum(counts[k] for counts in by_gap.values()) for k in (0, 1))
    gaps = ", ".join(f"{gap} px {counts[0]}/{counts[1]}" for gap, counts in by_gap.items())
    print(
        f"{'pairs side by side':{NAME_WIDTH}s} {refused} of {pairs} refused as several digits "
        f"({gaps})"
    )


def save_examples(photos: list[bytes], seen: list[torch.Tensor | None], folder: Path) -> None:
    """A strip of photos (upright, as a viewer shows them) above what the model saw."""
    strip = Image.new("RGB", (EXAMPLE_SIDE * len(photos), 2 * EXAMPLE_SIDE), "white")
    for column, (photo, image) in enumerate(zip(photos, seen, strict=True)):
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGB")
        upright.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
        strip.paste(upright, (column * EXAMPLE_SIDE, 0))
        pixels = image.numpy() if image is not None else np.zeros((28, 28), np.uint8)
        model_view = Image.fromarray(pixels).resize(
            (EXAMPLE_SIDE, EXAMPLE_SIDE), Image.Resampling.NEAREST
        )
        strip.paste(model_view.convert("RGB"), (column * EXAMPLE_SIDE, EXAMPLE_SIDE))
    folder.mkdir(parents=True, exist_ok=True)
    strip.save(folder / "photos-and-seen.png", optimize=True)
    print(f"Wrote {folder / 'photos-and-seen.png'}")


if __name__ == "__main__":
    main()
