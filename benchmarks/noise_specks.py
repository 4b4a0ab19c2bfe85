"""Noise and shading taken for digits: preprocess.SPECKS_* and SHADING_*.

    python benchmarks/noise_specks.py [--images 500] [--scans 10000] [--noisy 100] [--blank 40]
        [--without-shading]

Over a blank picture's noise, the digit preprocess_image finds is one speck among thousands:
`preprocess.measure_specks` weighs it against the other marks clear of the picture's edge
(its share of their ink, its mean ink over theirs), and the image is refused as specks when
both are low. Over blank paper under a shadow, the mark found is the band the picture-wide
paper leaves along the shadow's edge: `preprocess.measure_shading` measures the paper again at
the mark's scale, and the mark is shading when it fades (keeps little of its ink) and holds
little. This prints, for pictures with no digit (blank photo-like JPEGs with the usual and with
stronger sensor noise, blank paper under a lighting gradient, pictures of pure noise) and for
pictures of digits (the first --images MNIST test digits in photo_accuracy.py's four forms,
--scans test digits as scans, pairs side by side, --noisy photos with sensor noise 10-40), how
each was answered and what the rules saw; then the margins: the noise nearest to passing for a
digit, the digits nearest to being refused as noise, and the same for shading.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test sets' generators

from images import as_file  # noqa: E402
from photo_accuracy import page_drawing  # noqa: E402  (this folder is on sys.path when run)
from photo_digits import lighting_gradient, photo_like  # noqa: E402
from realistic_digits import realistic_variant, side_by_side  # noqa: E402
from train_speed import _machine  # noqa: E402

from mnist_classifier import preprocess  # noqa: E402
from mnist_classifier.data import load_split  # noqa: E402

# Standard deviations, 0-255: a phone gives up to ~20; None is photo_like's usual 2-7.
SENSOR_NOISE = (None, 10, 15, 20, 30, 45, 60)
DIGIT_NOISE = (10, 20, 30, 40)
ANSWERS = {  # the start of each refusal, for counting
    preprocess.ONLY_SPECKS: "specks",
    preprocess.SEVERAL_DIGITS: "several digits",
    preprocess.NO_INK: "no ink",
    preprocess.A_DOT: "a dot",
    preprocess.ONLY_SHADING: "shading",
}


def answered(source) -> tuple[str, preprocess.Specks | None, preprocess.Shading | None]:
    """How preprocess_image answered `source`, what measure_specks saw on its first look and
    measure_shading on its second (None where it was refused before, or had no second look)."""
    seen: dict[str, list] = {"measure_specks": [], "measure_shading": []}

    def recording(name):
        measure = getattr(preprocess, name)

        def record(*args, **kwargs):
            seen[name].append(measure(*args, **kwargs))
            return seen[name][-1]

        return mock.patch.object(preprocess, name, record)

    with recording("measure_specks"), recording("measure_shading"):
        try:
            preprocess.preprocess_image(source)
            answer = "read"
        except preprocess.ImageError as error:
            answer = ANSWERS.get(str(error), str(error).split(":")[0])
    specks, shading = (seen[name][0] if seen[name] else None for name in seen)
    return answer, specks, shading


def noise_sets(count: int, seed: int) -> dict[str, list]:
    """Pictures with no digit: `count` of each kind."""
    rng = np.random.default_rng(seed)
    blank = np.zeros((28, 28), dtype=np.uint8)
    sets = {
        f"blank photos, noise {noise or 'usual'}": [
            photo_like(blank, index, np.random.default_rng([seed, noise or 0, index]), noise)
            for index in range(count)
        ]
        for noise in SENSOR_NOISE
    }
    gradient = []  # tests/test_preprocess.py's property: paper, a gradient, noise 0-60
    for index in range(2 * count):
        height, width = (int(side) for side in rng.integers(200, 901, size=2))
        angle, paper = rng.uniform(0, 2 * np.pi), rng.uniform(150, 245)
        lit = paper * lighting_gradient(height, width, angle, rng.uniform(0.55, 0.85))
        noisy = lit + rng.normal(0, rng.uniform(0, 60), lit.shape)
        gradient.append(as_file(noisy, [None, 55, 75, 90][index % 4]))
    sets["blank paper, gradient, noise 0-60"] = gradient
    shapes = [tuple(int(side) for side in rng.integers(200, 1500, size=2)) for _ in range(count)]
    sets["uniform noise"] = [
        as_file(rng.uniform(0, 256, shape), [None, 75][index % 2])
        for index, shape in enumerate(shapes)
    ]
    sets["paper with noise 8-70"] = [
        as_file(rng.uniform(120, 245) + rng.normal(0, rng.uniform(8, 70), shape), [None, 75][i % 2])
        for i, shape in enumerate(shapes)
    ]
    salt_and_pepper = []
    for index, shape in enumerate(shapes):
        grey, speckled = np.full(shape, 230.0), rng.uniform(size=shape)
        share = rng.uniform(0.005, 0.2)
        grey[speckled < share / 2], grey[speckled > 1 - share / 2] = 0, 255
        salt_and_pepper.append(as_file(grey, [None, 75][index % 2]))
    sets["salt and pepper"] = salt_and_pepper
    return sets


def digit_sets(digits: list[np.ndarray], scans: list[np.ndarray], noisy: int, seed: int):
    """Pictures of digits (or of numbers, which must stay refused as several digits)."""
    forms = {
        "MNIST crops": lambda digit, index, rng: Image.fromarray(digit),
        "photo-like JPEGs": photo_like,
        "realistic scans": realistic_variant,
        "drawing page": lambda digit, index, rng: page_drawing(digit),
    }
    sets = {}
    for name, make in forms.items():
        rng = np.random.default_rng(seed)
        sets[name] = [make(digit, index, rng) for index, digit in enumerate(digits)]
    sets["MNIST test digits as scans"] = [Image.fromarray(255 - digit) for digit in scans]
    rng = np.random.default_rng(seed)
    sets["pairs side by side"] = [
        side_by_side(digits[2 * index], digits[2 * index + 1], int(rng.integers(1, 17)))
        for index in range(len(digits) // 2)
    ]
    for noise in DIGIT_NOISE:
        rng = np.random.default_rng(seed)
        sets[f"photos with noise {noise}"] = [
            photo_like(digit, index, rng, noise) for index, digit in enumerate(digits[:noisy])
        ]
    return sets


def report(name: str, sources: list) -> tuple[list, list]:
    """Prints how `sources` were answered; returns (specks, name, index) for each first look
    and (shading, name, index) for each second look."""
    results = [answered(source) for source in sources]
    answers = Counter(answer for answer, _, _ in results)
    seen = [(specks, name, index) for index, (_, specks, _) in enumerate(results) if specks]
    looked = [(shading, name, i) for i, (_, _, shading) in enumerate(results) if shading]
    under = [specks.contrast for specks, _, _ in seen if is_low_share(specks)]
    shares = [specks.digit_share for specks, _, _ in seen]
    faded = [shading.ink for shading, _, _ in looked if is_faded(shading)]
    print(
        f"  {name:34s} {len(sources):6,}: "
        + ", ".join(f"{count} {answer}" for answer, count in answers.most_common())
        + f"; digit share {min(shares, default=1):.3f}..{max(shares, default=1):.3f}"
        + (f"; under {preprocess.SPECKS_DIGIT_SHARE}: {len(under)}" if under else "")
        + (f", contrast {min(under):.2f}..{max(under):.2f}" if under else "")
        + (f"; faded: {len(faded)}, ink {min(faded):.2f}..{max(faded):.2f}" if faded else "")
    )
    return seen, looked


def is_faded(shading: preprocess.Shading) -> bool:
    return shading.kept < preprocess.SHADING_KEPT


def is_low_share(specks: preprocess.Specks) -> bool:
    return specks.digit_share < preprocess.SPECKS_DIGIT_SHARE


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--noisy", type=int, default=100)
    parser.add_argument("--blank", type=int, default=40, help="pictures of each kind of noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    parser.add_argument(
        "--without-shading", action="store_true", help="switch the shading rule off, to compare"
    )
    arguments = parser.parse_args()
    if arguments.without_shading:
        preprocess.SHADING_KEPT = 0.0  # no mark keeps under none of its ink

    images, _labels = load_split(arguments.data_dir, train=False)
    digits = [image.numpy() for image in images[: arguments.images]]
    scans = [image.numpy() for image in images[: arguments.scans]]
    print(f"Machine: {_machine()}")
    print(
        f"Refused as specks: digit share < {preprocess.SPECKS_DIGIT_SHARE} and contrast < "
        f"{preprocess.SPECKS_CONTRAST}"
    )
    print("No digit:")
    blank_sets = noise_sets(arguments.blank, arguments.seed)
    reports = [report(name, sources) for name, sources in blank_sets.items()]
    noise = [seen for specks, _ in reports for seen in specks]
    noise_looks = [looked for _, shading in reports for looked in shading]
    print("Digits:")
    sets = digit_sets(digits, scans, arguments.noisy, arguments.seed)
    reports = [report(name, sources) for name, sources in sets.items()]
    written = [seen for specks, _ in reports for seen in specks]
    written_looks = [looked for _, shading in reports for looked in shading]

    def described(item) -> str:
        specks, name, index = item
        return f"{specks.contrast:.2f} ({name} #{index}, share {specks.digit_share:.3f})"

    low_noise = sorted((item for item in noise if is_low_share(item[0])), key=lambda i: -i[0][1])
    low_digits = sorted((item for item in written if is_low_share(item[0])), key=lambda i: i[0][1])
    print("Margins:")
    passed = sum(not is_low_share(item[0]) for item in noise)
    print(f"  noise, digit share above {preprocess.SPECKS_DIGIT_SHARE}: {passed} of {len(noise)}")
    print("  noise, highest contrast: " + ", ".join(map(described, low_noise[:3])))
    lowest_share = sorted(written, key=lambda item: item[0].digit_share)[:3]
    print(
        "  digits, lowest share: "
        + ", ".join(f"{s.digit_share:.3f} ({name} #{i})" for s, name, i in lowest_share)
    )
    print(
        "  digits under that share, lowest contrast: " + ", ".join(map(described, low_digits[:3]))
    )

    def faded(items, key) -> str:
        chosen = sorted((item for item in items if is_faded(item[0])), key=key)[:3]
        return ", ".join(f"{s.ink:.2f} ({name} #{i}, kept {s.kept:.2f})" for s, name, i in chosen)

    print(f"  shading: marks keeping under {preprocess.SHADING_KEPT} of their ink, then holding")
    print("    no digit, most ink: " + faded(noise_looks, lambda item: -item[0].ink))
    print("    digits, least ink: " + faded(written_looks, lambda item: item[0].ink))


if __name__ == "__main__":
    main()
