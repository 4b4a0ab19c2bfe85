"""The evaluation report's figures, drawn to PNG files: part of the reporting layer.

matplotlib with the Agg backend (files only, no display needed); image grids are tiled here, as
`torchvision.utils.make_grid` would tile them (importing torchvision would cost each training
run 1.4 s for it), with each cell's caption drawn in a band above the digit.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: draw to files, never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mnist_classifier.datasets import IMAGE_SIDE, class_noun  # noqa: E402
from mnist_classifier.files import contents_if_regular  # noqa: E402
from mnist_classifier.metrics import Calibration  # noqa: E402

DPI = 120
# Every figure saved here carries this title in its metadata, so that a file at a figure's name
# can be told to be one of ours (and replaced) or someone else's (and kept).
FIGURE_MARKER = "mnist-classifier figure"
PLOT_FORMATS = ("png", "svg", "pdf")  # what `mnist runs --plot` draws, by file extension
MAX_FIGURE_BYTES = 64 << 20  # our figures are well under 1 MB
# Where each format keeps the title, as matplotlib writes it.
_MARKER_IN_FORMAT = {
    "png": b"tEXtTitle\x00" + FIGURE_MARKER.encode(),
    "svg": b"<title>" + FIGURE_MARKER.encode() + b"</title>",
    "pdf": b"/Title (" + FIGURE_MARKER.encode() + b")",
}
CAPTION_BAND = 14  # pixels above each 28x28 digit for its caption
GRID_PADDING = 2


def short_class_name(name: str) -> str:
    """A grid caption has room for about 5 characters a side: "T-shirt/top" -> "T-shi"."""
    return name[:5]


def save_confusion_heatmap(
    confusion: torch.Tensor, path: Path, class_names: list[str] | None = None
) -> None:
    """Counts in every cell; colour for the mistakes only. The diagonal (thousands of right
    answers) is masked in grey, or its scale would wash out the off-diagonal handfuls."""
    num_classes = confusion.shape[0]
    class_names = class_names or [str(number) for number in range(num_classes)]
    noun = class_noun(class_names)
    counts = confusion.numpy()
    mistakes = np.ma.masked_where(np.eye(num_classes, dtype=bool), counts)
    colour_map = matplotlib.colormaps["Reds"].with_extremes(bad="#d9d9d9")
    largest_mistake = max(int(mistakes.max() or 0), 1)
    figure, axes = plt.subplots(figsize=(7.5, 6.5), dpi=DPI)
    image = axes.imshow(mistakes, cmap=colour_map, vmin=0, vmax=largest_mistake)
    for true in range(num_classes):
        for predicted in range(num_classes):
            count = int(counts[true, predicted])
            dark_cell = true != predicted and count > largest_mistake / 2
            colour = "white" if dark_cell else "black"
            weight = "bold" if true == predicted else "normal"
            axes.text(
                predicted,
                true,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                c=colour,
                fontweight=weight,
            )
    axes.set_xticks(range(num_classes), class_names, rotation=0 if noun == "digit" else 45)
    axes.set_yticks(range(num_classes), class_names)
    axes.set_xlabel(f"Predicted {noun}")
    axes.set_ylabel(f"True {noun}")
    axes.set_title("Confusion matrix (test set); diagonal = correct, in grey")
    figure.colorbar(image, ax=axes, label="Misclassified images")
    _save(figure, path)


def save_reliability_diagram(calibration: Calibration, path: Path) -> None:
    edges = calibration.bin_edges
    width = edges[1] - edges[0]
    centres = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:], strict=True)]
    filled = [count > 0 for count in calibration.bin_count]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.5, 7), dpi=DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(
        [c for c, f in zip(centres, filled, strict=True) if f],
        [a for a, f in zip(calibration.bin_accuracy, filled, strict=True) if f],
        width=width * 0.95,
        edgecolor="black",
        label="Accuracy in bin",
    )
    top.plot([0, 1], [0, 1], "--", c="grey", label="Perfect calibration")
    top.set_ylabel("Accuracy")
    top.set_ylim(0, 1)
    top.set_title(
        "Reliability diagram "
        f"(ECE = {100 * calibration.expected_calibration_error:.2f}%, "
        f"{len(calibration.bin_count)} bins)"
    )
    top.legend(loc="upper left")
    bottom.bar(centres, calibration.bin_count, width=width * 0.95, color="grey")
    bottom.set_yscale("log")
    bottom.set_ylabel("Images (log)")
    bottom.set_xlabel("Confidence (top-class probability)")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def save_digit_grid(
    images: torch.Tensor, captions: list[str], colours: list[str], title: str, path: Path
) -> None:
    """uint8 (N, 28, 28) digits in a grid, each with a one-line caption above it."""
    _save(digit_grid_figure(images, captions, colours, title), path)


def save_notice(text: str, path: Path) -> None:
    """A figure that is one line of text, for where a figure has nothing to draw (no
    misclassified images): the file is still there for whoever expects it, and says why."""
    figure, axes = plt.subplots(figsize=(5, 0.6), dpi=DPI)
    axes.set_axis_off()
    axes.set_title(text, fontsize=10)
    _save(figure, path)


def tile(cells: torch.Tensor, columns: int, padding: int) -> torch.Tensor:
    """(N, H, W) cells in rows of `columns`, each with `padding` white (1.0) pixels around it
    and the gaps not doubled: one image, laid out as torchvision's make_grid lays it out."""
    count, height, width = cells.shape
    rows = math.ceil(count / columns)
    padded = torch.ones(rows * columns, height + padding, width + padding)
    padded[:count, padding:, padding:] = cells
    # (rows, columns, h, w) -> (rows, h, columns, w): row by row, cells side by side.
    grid = padded.view(rows, columns, height + padding, width + padding).permute(0, 2, 1, 3)
    grid = grid.reshape(rows * (height + padding), columns * (width + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=1.0)


def digit_grid_figure(images: torch.Tensor, captions: list[str], colours: list[str], title: str):
    """The figure `save_digit_grid` writes, for TensorBoard's add_figure (which closes it)."""
    count = len(images)
    columns = min(count, 8) or 1
    rows = max(math.ceil(count / columns), 1)
    # A white band above each digit holds its caption.
    cells = torch.ones(max(count, 1), CAPTION_BAND + IMAGE_SIDE, IMAGE_SIDE)
    if count:
        cells[:, CAPTION_BAND:, :] = 1.0 - images.float() / 255  # dark ink on white: legible
    grid = tile(cells, columns, GRID_PADDING)
    cell_height = CAPTION_BAND + IMAGE_SIDE + GRID_PADDING
    cell_width = IMAGE_SIDE + GRID_PADDING
    figure, axes = plt.subplots(figsize=(1.35 * columns + 0.4, 1.7 * rows + 0.6), dpi=DPI)
    axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for index, (caption, colour) in enumerate(zip(captions, colours, strict=True)):
        row, column = divmod(index, columns)
        axes.text(
            GRID_PADDING + column * cell_width + 14,
            GRID_PADDING + row * cell_height + CAPTION_BAND / 2,
            caption,
            ha="center",
            va="center",
            fontsize=7.5,
            color=colour,
        )
    axes.set_axis_off()
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def _save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, metadata={"Title": FIGURE_MARKER})
    plt.close(figure)


def is_our_figure(path: Path) -> bool:
    """Whether `path` is a PNG, SVG or PDF figure that this project drew (its title says so)."""
    marker = _MARKER_IN_FORMAT.get(path.suffix.lower().removeprefix("."))
    data = contents_if_regular(path, MAX_FIGURE_BYTES)
    return marker is not None and data is not None and marker in data


def save_learning_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Loss and accuracy against epoch; one line pair per run in `curves` (name -> metric rows)."""
    _save(learning_curves_figure(curves), path)


def learning_curves_figure(curves: dict[str, list[dict]]):
    """The figure `save_learning_curves` writes. Each run's name is drawn as typed: a run may be
    named run-$x$ or run-$\\frac$, which matplotlib would draw as math or fail to parse."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=DPI)
    for run_index, (name, rows) in enumerate(curves.items()):
        colour = f"C{run_index % 10}"
        epochs = [int(row["epoch"]) for row in rows]
        for axes, metric, scale in ((loss_axes, "loss", 1.0), (accuracy_axes, "accuracy", 100.0)):
            for split, style in (("train", "--"), ("validation", "-")):
                values = [float(row[f"{split}_{metric}"]) * scale for row in rows]
                label = f"{name} {split}" if len(curves) > 1 else split
                axes.plot(
                    epochs, values, style, color=colour, marker="o", markersize=3, label=label
                )
    loss_axes.set_title("Cross-entropy loss")
    loss_axes.set_ylabel("loss")
    accuracy_axes.set_title("Accuracy")
    accuracy_axes.set_ylabel("accuracy (%)")
    every_epoch = [int(row["epoch"]) for rows in curves.values() for row in rows]
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        for text in axes.legend(fontsize=8).get_texts():
            text.set_parse_math(False)
        # Whole epochs only, even when the axis has room for one alone (it would fall back
        # to fractions for want of a second): around the one point of a single epoch, the
        # axis went from 0.96 to 1.04, ticked in hundredths. Half an epoch of room at least
        # either side, too.
        axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
        if every_epoch:
            low, high = axes.get_xlim()
            axes.set_xlim(min(low, min(every_epoch) - 0.5), max(high, max(every_epoch) + 0.5))
    return figure
