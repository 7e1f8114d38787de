"""The block grid: how a volume is cut into independent pieces of work.

Each block has a *write* region and a *read* region::

        read = write grown by the halo, clipped at the volume edge
      +-------------------------------+
      |   halo                        |
      |    +---------------------+    |
      |    |                     |    |
      |    |   write region      |    |      write regions of all blocks tile
      |    |   (a whole number   |    |      the volume exactly once and are
      |    |    of Zarr chunks)  |    |      multiples of the chunk shape, so
      |    |                     |    |      no two blocks write one chunk
      |    +---------------------+    |
      |                               |
      +-------------------------------+

A block's ``index`` is its position in the grid, ``(iz, iy, ix)``; its ``id``
is that position in row-major order. Both are stable across runs, which is
what makes done-markers and resume work.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["Block", "BlockGrid"]

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Block:
    """One piece of work on the grid.

    Attributes
    ----------
    index : tuple of int
        Grid position (iz, iy, ix).
    id : int
        Row-major position in the grid: the block's stable identifier.
    write : tuple of slice
        Region this block owns and writes, in volume coordinates.
    read : tuple of slice
        Region this block reads: ``write`` grown by the halo, clipped.
    """

    index: tuple[int, int, int]
    id: int
    write: Region
    read: Region

    @property
    def write_in_read(self) -> Region:
        """The write region in the coordinates of an array read from ``read``."""
        return tuple(
            slice(w.start - r.start, w.stop - r.start) for w, r in zip(self.write, self.read)
        )

    @property
    def read_offset(self) -> tuple[int, int, int]:
        return tuple(r.start for r in self.read)

    @property
    def write_offset(self) -> tuple[int, int, int]:
        return tuple(w.start for w in self.write)

    @property
    def write_shape(self) -> tuple[int, int, int]:
        return tuple(w.stop - w.start for w in self.write)

    @property
    def read_shape(self) -> tuple[int, int, int]:
        return tuple(r.stop - r.start for r in self.read)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask: which (n, 3) voxel ``points`` lie in the write region."""
        points = np.asarray(points)
        inside = np.ones(len(points), dtype=bool)
        for axis, w in enumerate(self.write):
            inside &= (points[:, axis] >= w.start) & (points[:, axis] < w.stop)
        return inside

    def __str__(self):
        spans = ", ".join(f"{w.start}:{w.stop}" for w in self.write)
        return f"block {self.id} {self.index} [{spans}]"


class BlockGrid:
    """Cut a volume of ``shape`` into blocks of ``block_shape`` with a ``halo``.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape (z, y, x) of the volume.
    block_shape : sequence of int
        Write-region shape; must be a positive multiple of ``chunks``
        (the last block along an axis may be smaller: it stops at the edge).
    halo : int or sequence of int, optional
        Context added on each side of the write region to form the read region.
    chunks : sequence of int, optional
        Zarr chunk shape of the arrays that blocks write; defaults to ``block_shape``.
    """

    def __init__(self, shape: Sequence[int], block_shape: Sequence[int], halo=0, chunks=None):
        shape = tuple(int(s) for s in shape)
        block_shape = tuple(int(b) for b in block_shape)
        halo = (int(halo),) * 3 if np.isscalar(halo) else tuple(int(h) for h in halo)
        chunks = block_shape if chunks is None else tuple(int(c) for c in chunks)
        for name, value in (("shape", shape), ("block_shape", block_shape), ("halo", halo), ("chunks", chunks)):
            if len(value) != 3:
                raise ConfigError(f"{name} must have three entries (z, y, x), got {value}")
        if any(s <= 0 for s in shape):
            raise ConfigError(f"volume shape must be positive, got {shape}")
        if any(b <= 0 for b in block_shape):
            raise ConfigError(f"block_shape must be positive, got {block_shape}")
        if any(h < 0 for h in halo):
            raise ConfigError(f"halo must be >= 0, got {halo}")
        if any(c <= 0 for c in chunks):
            raise ConfigError(f"chunks must be positive, got {chunks}")
        for b, c, s in zip(block_shape, chunks, shape):
            # A block covering the whole axis needs no alignment: nobody shares its chunks.
            if b % c and b < s:
                raise ConfigError(
                    f"block_shape {block_shape} must be a multiple of the chunk shape {chunks}"
                )
        self.shape, self.block_shape, self.halo, self.chunks = shape, block_shape, halo, chunks
        self.grid_shape = tuple(math.ceil(s / b) for s, b in zip(shape, block_shape))

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape))

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.block(index)

    def block(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index``."""
        index = tuple(int(i) for i in index)
        if any(not 0 <= i < n for i, n in zip(index, self.grid_shape)):
            raise IndexError(f"block index {index} outside grid {self.grid_shape}")
        write = tuple(
            slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block_shape, self.shape)
        )
        read = tuple(
            slice(max(w.start - h, 0), min(w.stop + h, s)) for w, h, s in zip(write, self.halo, self.shape)
        )
        return Block(index=index, id=int(np.ravel_multi_index(index, self.grid_shape)), write=write, read=read)

    def block_of(self, point: Sequence[int]) -> Block:
        """The block whose write region holds voxel ``point``."""
        return self.block(tuple(int(p) // b for p, b in zip(point, self.block_shape)))

    def __repr__(self):
        return (
            f"BlockGrid(shape={self.shape}, block_shape={self.block_shape}, "
            f"halo={self.halo}, grid={self.grid_shape})"
        )
