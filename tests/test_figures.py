"""The figures: the image grid is laid out exactly as torchvision's make_grid lays it out, and
run names are drawn in the learning curves' legends as typed."""

import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.utils import make_grid

from mnist_classifier.figures import learning_curves_figure, tile


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=2, max_value=70),
    columns=st.integers(min_value=1, max_value=10),
    padding=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_tile_matches_torchvisions_make_grid(count, columns, padding, seed):
    cells = torch.rand(count, 42, 28, generator=torch.Generator().manual_seed(seed))
    columns = min(columns, count)  # make_grid never makes more columns than cells

    expected = make_grid(cells[:, None], nrow=columns, padding=padding, pad_value=1.0)[0]

    assert torch.equal(tile(cells, columns, padding), expected)


def test_a_single_cell_keeps_its_padding():
    # make_grid returns a lone image unpadded; the grid's captions are placed for padded cells.
    cell = torch.zeros(1, 3, 2)

    grid = tile(cell, 1, 2)

    assert grid.shape == (3 + 4, 2 + 4)
    assert torch.equal(grid[2:5, 2:4], cell[0])
    assert grid.sum() == grid.numel() - cell.numel()


# Run names as `mnist runs --plot` labels them (the folder name), with what mathtext reads: a
# command that does not exist, a formula, an empty formula, a backslash, a lone dollar.
ODD_RUN_NAMES = [
    "20260101-000000-run-$\\frac$",
    "20260101-000000-run-$x$",
    "20260101-000000-$$",
    "20260101-000000-back\\slash",
    "20260101-000000-$5 and 100% ^_{}",
]
EPOCH_ROWS = [
    {
        "epoch": epoch,
        "train_loss": 0.5 / epoch,
        "train_accuracy": 0.8,
        "validation_loss": 0.4 / epoch,
        "validation_accuracy": 0.9,
    }
    for epoch in (1.0, 2.0)
]


def _legends_show_as_typed(names: list[str]) -> None:
    """Each name is in both legends as typed, drawn as plain text (not as math)."""
    figure = learning_curves_figure({name: EPOCH_ROWS for name in names})
    try:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axes in figure.axes:
            texts = axes.get_legend().get_texts()
            expected = [f"{name} {split}" for name in names for split in ("train", "validation")]
            assert [text.get_text() for text in texts] == expected
            for text in texts:
                # The oracle: the width of the label laid out as plain text, as if no $ were there.
                plain_width, _, _ = renderer.get_text_width_height_descent(
                    text.get_text(), text.get_fontproperties(), ismath=False
                )
                assert text.get_window_extent(renderer).width == pytest.approx(plain_width)
    finally:
        plt.close(figure)


@pytest.mark.parametrize("name", ODD_RUN_NAMES)
def test_a_run_name_is_drawn_in_the_legend_as_typed(name):
    _legends_show_as_typed([name, "20260101-000000-run"])


# What a name is made of: what mathtext reads, and characters from space to Latin Extended-A.
NAME_PIECES = st.sampled_from(["$", "$", "\\frac", "\\", "x", "^", "_", "{", "}"]) | st.characters(
    min_codepoint=0x20, max_codepoint=0x17F
)


@settings(max_examples=20, deadline=None)
@given(
    names=st.lists(
        st.lists(NAME_PIECES, min_size=1, max_size=10)
        .map("".join)
        .filter(lambda name: name.isprintable() and "/" not in name)
        .map(lambda name: f"20260101-000000-{name}"),
        min_size=2,
        max_size=3,
        unique=True,
    )
)
def test_any_printable_run_name_is_drawn_in_the_legend_as_typed(names):
    _legends_show_as_typed(names)


@pytest.mark.parametrize("epochs", [[1], [3], [1, 2, 3], [4, 5]])
def test_the_epoch_axis_has_whole_epochs_and_room_for_each(epochs):
    """A run of a single epoch was drawn on an axis from 0.96 to 1.04, ticked in hundredths."""
    rows = [{**EPOCH_ROWS[0], "epoch": float(epoch)} for epoch in epochs]
    figure = learning_curves_figure({"run": rows})
    try:
        figure.canvas.draw()
        for axes in figure.axes:
            low, high = axes.get_xlim()
            ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
            assert ticks == list(range(epochs[0], epochs[-1] + 1))  # each epoch, and only those
            assert low <= epochs[0] - 0.25 and high >= epochs[-1] + 0.25  # each marker in full
    finally:
        plt.close(figure)
