"""Multiscale levels built blockwise: resumable, shard-safe, any shape.

Level ``k`` is the block mean of level ``k - 1`` over the factors between
their shapes (2 in y and x, and 2 in z once z is no coarser; see
:func:`pipeline.volume._level_factors`), cast back to the volume's dtype the
way :meth:`pipeline.volume.Volume.write_pyramid` does (truncating), so both
give identical levels where both apply. Unlike that method this one handles
shapes that are not multiples of the factors (an edge window averages the
voxels it has), runs on the configured executor with done-markers (a killed
run resumes), and never lets two writers share a shard.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from pipeline.blocks import Block, BlockGrid
from pipeline.runner import Executor, run_blockwise

__all__ = ["build_pyramid", "downsample_mean", "choose_block_shape"]


def choose_block_shape(shape, unit, itemsize: int, budget_mib: float) -> tuple[int, int, int]:
    """The largest block (a multiple of ``unit``) within ``budget_mib`` per channel.

    Grows x, then y, then z by doubling, so a block spans whole planes when
    they fit: planar sources (TIFF) then decode each plane once.
    """
    budget = budget_mib * (1 << 20)
    block = [int(u) for u in unit]
    full = [math.ceil(s / u) * u for s, u in zip(shape, unit)]
    for axis in (2, 1, 0):
        while block[axis] < full[axis]:
            grown = list(block)
            grown[axis] = min(block[axis] * 2, full[axis])
            if math.prod(grown) * itemsize > budget:
                break
            block = grown
    return tuple(block)


def downsample_mean(data: np.ndarray, factors) -> np.ndarray:
    """Mean over ``factors`` windows of the last three axes; edge windows use the voxels they have."""
    out = data.astype(np.float64)
    for axis, f in zip(range(data.ndim - 3, data.ndim), factors):
        if f == 1:
            continue
        n = out.shape[axis]
        starts = np.arange(0, n, f)
        out = np.add.reduceat(out, starts, axis=axis)
        counts = np.minimum(starts + f, n) - starts
        shape = [1] * out.ndim
        shape[axis] = len(counts)
        out /= counts.reshape(shape)
    return out


def _pyramid_block(block: Block, *, path: str, level: int, factors) -> None:
    import zarr

    group = zarr.open_group(path, mode="r+")
    src, dst = group[str(level - 1)], group[str(level)]
    region = tuple(
        slice(w.start * f, min(w.stop * f, n)) for w, f, n in zip(block.write, factors, src.shape[1:])
    )
    for c in range(src.shape[0]):
        mean = downsample_mean(src[(c,) + region], factors)
        dst[(c,) + block.write] = mean.astype(dst.dtype)
    return None


def build_pyramid(volume, *, state_dir, executor: Executor | None = None, progress: bool = True,
                  block_mib: float = 32.0, params: dict | None = None) -> None:
    """Fill levels ``1..volume.levels-1`` from level 0, one block at a time."""
    for level in range(1, volume.levels):
        src, dst = volume.level(level - 1), volume.level(level)
        factors = tuple(max(1, round(p / t)) for p, t in zip(src.shape[1:], dst.shape[1:]))
        shards = getattr(dst, "shards", None)
        unit = tuple((shards or dst.chunks)[1:])
        shape = tuple(dst.shape[1:])
        block_shape = choose_block_shape(shape, unit, np.dtype(dst.dtype).itemsize * math.prod(factors), block_mib)
        grid = BlockGrid(shape, block_shape, chunks=unit)
        run_blockwise(
            partial(_pyramid_block, path=str(volume.path), level=level, factors=factors),
            list(grid), name=f"pyramid{level}", state_dir=state_dir, executor=executor,
            params={**(params or {}), "level": level, "factors": factors, "block_shape": block_shape},
            progress=progress,
        )
