"""The figures' image grid is laid out exactly as torchvision's make_grid lays it out."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.utils import make_grid

from mnist_classifier.figures import tile


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
