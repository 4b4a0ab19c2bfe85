"""Printed lines under, through and beside digits: preprocess.LINE_DIGIT_SHARE and _STROKE_SHARE.

    python benchmarks/printed_lines.py [--images 3000] [--checkpoint PATH --lined 400]

First the digits' own long strokes: the first --images MNIST test digits, each cropped to its
ink (tests/realistic_digits.py `tight_crop`), where a 7's bar or a 1's stem runs across the
picture as a printed line would. Every straight line `preprocess.line_candidates` finds there
is a stroke, so none may pass both thresholds: prints how many were found, how many would be
cleared (must be 0), and the ones nearest to passing. Then, with --checkpoint, the first --lined
test digits written on printed lines (`on_printed_line`: an underline, a line through, ruled
paper, a margin): the model's accuracy on each kind with the lines cleared, against the same
images prepared with no line ever cleared (the preprocessing before the lines were looked for).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test sets' generators

from realistic_digits import PRINTED_LINE_KINDS, on_printed_line, tight_crop  # noqa: E402
from train_speed import _machine  # noqa: E402  (this folder is on sys.path when run)

from mnist_classifier import preprocess  # noqa: E402
from mnist_classifier.batching import normalize  # noqa: E402
from mnist_classifier.checkpoint import load_checkpoint  # noqa: E402
from mnist_classifier.data import load_split  # noqa: E402


def candidates_in(source: bytes) -> list[preprocess.LineCandidate]:
    """The straight lines preprocess_image weighs in an image, as it finds them."""
    grey = preprocess._dark_ink_on_light_paper(preprocess._upright_grey(source))
    ink = preprocess._ink_map(grey, preprocess.PAPER_SCALE * min(grey.shape))
    marks = ink > max(preprocess._otsu_threshold(ink), preprocess.MIN_INK_THRESHOLD)
    return preprocess.line_candidates(marks)


def cleared(found: preprocess.LineCandidate) -> bool:
    return (
        found.digit_share <= preprocess.LINE_DIGIT_SHARE
        and found.depth_in_strokes <= preprocess.LINE_STROKE_SHARE
    )


def own_strokes(images: torch.Tensor, labels: torch.Tensor) -> None:
    found = [
        (candidate, int(labels[index]), index)
        for index in range(len(images))
        for candidate in candidates_in(tight_crop(images[index].numpy()))
    ]
    print(
        f"{len(images):,} MNIST test digits cropped to their ink: {len(found)} strokes run "
        f"across the picture; {sum(cleared(c) for c, _, _ in found)} would be cleared as lines "
        f"(thresholds: digit share <= {preprocess.LINE_DIGIT_SHARE}, depth <= "
        f"{preprocess.LINE_STROKE_SHARE} stroke widths)"
    )
    for title, key in (
        ("lowest digit share", lambda item: item[0].digit_share),
        ("shallowest (in stroke widths)", lambda item: item[0].depth_in_strokes),
    ):
        nearest = ", ".join(
            f"share {c.digit_share:.2f}, {c.depth_in_strokes:.2f} deep (a {label}, #{index})"
            for c, label, index in sorted(found, key=key)[:4]
        )
        print(f"  {title}: {nearest}")


def lined_accuracy(images: torch.Tensor, labels: torch.Tensor, checkpoint: Path, seed: int) -> None:
    model = load_checkpoint(checkpoint).model.eval()
    rng = np.random.default_rng(seed)
    sources = [on_printed_line(image.numpy(), index, rng) for index, image in enumerate(images)]
    never_cleared = mock.patch.object(preprocess, "_printed_lines", lambda ink: None)
    print(f"\nThe first {len(images)} test digits on printed lines; checkpoint {checkpoint}")
    for offset, kind in enumerate(PRINTED_LINE_KINDS):
        indices = range(offset, len(sources), len(PRINTED_LINE_KINDS))
        figures = []
        for lines_cleared in (True, False):
            with contextlib.nullcontext() if lines_cleared else never_cleared:
                prepared = torch.stack([preprocess.preprocess_image(sources[i]) for i in indices])
            with torch.inference_mode():
                predicted = model(normalize(prepared)).argmax(dim=1)
            figures.append((predicted == labels[list(indices)]).float().mean().item())
        print(f"  {kind:10s} {figures[0]:7.1%} with lines cleared, {figures[1]:7.1%} without")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--lined", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"))
    arguments = parser.parse_args()

    images, labels = load_split(arguments.data_dir, train=False)
    print(f"Machine: {_machine()}")
    own_strokes(images[: arguments.images], labels[: arguments.images])
    if arguments.checkpoint:
        count = arguments.lined
        lined_accuracy(images[:count], labels[:count], arguments.checkpoint, arguments.seed)


if __name__ == "__main__":
    main()
