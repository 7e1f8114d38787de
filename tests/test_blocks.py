"""The block grid: write regions tile the volume exactly once; read regions add the halo."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import BlockGrid, ConfigError


def _coverage(grid):
    count = np.zeros(grid.shape, dtype=np.int32)
    for block in grid:
        count[block.write] += 1
    return count


@pytest.mark.parametrize("block_shape", [(4, 8, 8), (8, 8, 16), (10, 20, 30), (3, 5, 7)])
def test_write_regions_tile_exactly_once(block_shape):
    grid = BlockGrid((10, 20, 30), block_shape, halo=2, chunks=block_shape)
    assert (_coverage(grid) == 1).all()
    assert len(list(grid)) == len(grid)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 40)] * 3),
    chunks=st.tuples(*[st.integers(1, 8)] * 3),
    multiple=st.tuples(*[st.integers(1, 4)] * 3),
    halo=st.tuples(*[st.integers(0, 6)] * 3),
)
def test_grid_properties(shape, chunks, multiple, halo):
    block_shape = tuple(c * m for c, m in zip(chunks, multiple))
    grid = BlockGrid(shape, block_shape, halo=halo, chunks=chunks)
    assert (_coverage(grid) == 1).all()
    ids = [b.id for b in grid]
    assert ids == list(range(len(grid)))
    for block in grid:
        for axis, (w, r) in enumerate(zip(block.write, block.read)):
            assert w.start % chunks[axis] == 0
            assert r.start == max(w.start - halo[axis], 0)
            assert r.stop == min(w.stop + halo[axis], shape[axis])
        inner = block.write_in_read
        assert tuple(s.stop - s.start for s in inner) == block.write_shape
        assert grid.block_of(block.write_offset) == block


def test_write_in_read_crops_the_write_region():
    volume = np.arange(12 * 12 * 12).reshape(12, 12, 12)
    grid = BlockGrid(volume.shape, (4, 4, 4), halo=(1, 2, 3))
    for block in grid:
        np.testing.assert_array_equal(volume[block.read][block.write_in_read], volume[block.write])


def test_contains_points():
    grid = BlockGrid((10, 10, 10), (5, 5, 5))
    block = grid.block((1, 0, 1))
    points = np.array([[5, 0, 5], [4, 0, 5], [9, 4, 9], [9, 5, 9]])
    assert block.contains(points).tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(10, 10, 10), block_shape=(0, 4, 4)), "block_shape must be positive"),
        (dict(shape=(10, 10, 10), block_shape=(-4, 4, 4)), "block_shape must be positive"),
        (dict(shape=(10, 10, 10), block_shape=(4, 4, 4), halo=-1), "halo"),
        (dict(shape=(10, 10, 10), block_shape=(6, 4, 4), chunks=(4, 4, 4)), "multiple of the chunk"),
        (dict(shape=(10, 10), block_shape=(4, 4, 4)), "three entries"),
        (dict(shape=(0, 10, 10), block_shape=(4, 4, 4)), "volume shape"),
    ],
)
def test_bad_grids_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BlockGrid(**kwargs)


def test_out_of_grid_index():
    with pytest.raises(IndexError, match="outside grid"):
        BlockGrid((10, 10, 10), (5, 5, 5)).block((2, 0, 0))
