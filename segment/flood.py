"""Seeded watershed as a level-synchronous flood: one array program for NumPy and CuPy.

scikit-image's watershed is a priority queue: one voxel at a time, on the
host. A GPU wants whole-array steps instead. :func:`flood` quantises the
landscape to ``levels`` grey levels (a bucket queue with one bucket per
level) and, level by level, lets every labelled voxel at or below the level
claim its unlabelled masked neighbours, one voxel layer per sweep, until no
voxel changes (a claimed voxel spreads further once the level reaches its
own value; claiming on contact is what scikit-image's queue does when it
pushes a voxel)::

    level 0:   A A . . . . B B        sweep after sweep, basins grow through
    level 1:   A A A . . B B B        the voxels whose level is <= the
    level 2:   A A A A B B B B        current one; then the next level opens

Inside one level the growth is breadth-first, exactly as the queue's
first-in-first-out order on a plateau, so the result equals scikit-image's
watershed on the same quantised landscape and 6-connectivity except where
two basins reach a voxel in the same sweep: there the larger label wins
(scikit-image takes the one queued first). Tested against scikit-image on
random scenes in ``tests/test_flood.py``.

Every step is ``xp`` array arithmetic (``xp = pipeline.array_module(x)``), so
on the GPU the labels never leave the device.
"""

from __future__ import annotations

import numpy as np

from pipeline import array_module

__all__ = ["flood", "quantise"]


def quantise(landscape, mask, levels: int = 256):
    """Map ``landscape`` inside ``mask`` linearly onto integer levels ``0 .. levels - 1``.

    The minimum and maximum over the masked voxels become 0 and ``levels - 1``;
    a constant landscape is all 0.
    """
    if not 2 <= int(levels) <= 65536:
        raise ValueError(f"quantise: levels must be in 2..65536, got {levels}")
    xp = array_module(landscape)
    land = landscape.astype(xp.float32, copy=False)
    dtype = xp.uint8 if levels <= 256 else xp.uint16
    if not bool(mask.any()):
        return xp.zeros(land.shape, dtype=dtype)
    lo = land[mask].min()
    hi = land[mask].max()
    span = float(hi - lo)
    if span <= 0:
        return xp.zeros(land.shape, dtype=dtype)
    # in place on one temporary: the same float32 operations as rint((land - lo) * k), clipped
    q = land - lo
    q *= np.float32((int(levels) - 1) / span)
    xp.rint(q, out=q)
    xp.clip(q, 0, int(levels) - 1, out=q)
    return q.astype(dtype)


# One CUDA kernel for the gather step on CuPy arrays (the same arithmetic as
# _gather_generic, fused into one pass over the candidates). Built on first use.
_GATHER_SOURCE = r"""
long long r = idx;
const long long x = r % nx; r /= nx;
const long long y = r % ny;
const long long z = r / ny;
const long long sy = nx, sz = nx * ny;
L best = 0;
if (x > 0)      { L v = labels[idx - 1];  if (v > best && (int)q[idx - 1] <= level) best = v; }
if (x < nx - 1) { L v = labels[idx + 1];  if (v > best && (int)q[idx + 1] <= level) best = v; }
if (y > 0)      { L v = labels[idx - sy]; if (v > best && (int)q[idx - sy] <= level) best = v; }
if (y < ny - 1) { L v = labels[idx + sy]; if (v > best && (int)q[idx + sy] <= level) best = v; }
if (z > 0)      { L v = labels[idx - sz]; if (v > best && (int)q[idx - sz] <= level) best = v; }
if (z < nz - 1) { L v = labels[idx + sz]; if (v > best && (int)q[idx + sz] <= level) best = v; }
out = best;
"""
_gather_kernel = None


def _gather_cupy(candidates, labels, q, level, shape):
    global _gather_kernel
    import cupy

    if _gather_kernel is None:
        _gather_kernel = cupy.ElementwiseKernel(
            "int64 idx, raw L labels, raw Q q, int32 level, int64 nz, int64 ny, int64 nx", "L out",
            _GATHER_SOURCE, "connectome_flood_gather")
    out = cupy.empty(candidates.shape, dtype=labels.dtype)
    nz, ny, nx = shape
    return _gather_kernel(candidates, labels, q, np.int32(level), nz, ny, nx, out)


def _gather_generic(candidates, labels, q, level, shape):
    """Largest label among each candidate's face neighbours that are at or below ``level``.

    ``labels`` and ``q`` are flat; ``candidates`` are flat indices into them.
    """
    xp = array_module(labels)
    best = xp.zeros(candidates.shape, dtype=labels.dtype)
    coords = xp.unravel_index(candidates, shape)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        c = coords[axis]
        for step, inside in ((-stride, c > 0), (stride, c < shape[axis] - 1)):
            j = xp.where(inside, candidates + step, candidates)
            v = xp.where(inside & (q[j] <= level), labels[j], 0)
            xp.maximum(best, v, out=best)
        stride *= shape[axis]
    return best


def flood(landscape, markers, mask=None, *, levels: int = 256, max_sweeps: int | None = None):
    """Seeded watershed of ``landscape`` from ``markers`` inside ``mask``.

    Parameters
    ----------
    landscape : array (NumPy or CuPy), float or integer
        Lower values are flooded first. Integer arrays whose values already
        lie in ``0 .. levels - 1`` are used as they are; anything else is
        quantised with :func:`quantise`.
    markers : integer array, same shape
        Seed labels (> 0); 0 elsewhere.
    mask : bool array, same shape, optional
        Voxels that may be labelled (all by default). Markers outside are ignored.
    levels : int
        Grey levels of the quantised landscape (the bucket queue's buckets).
    max_sweeps : int, optional
        Safety bound on the sweeps per level (default: the number of voxels,
        which is never reached: each sweep labels at least one voxel or ends
        the level).

    Returns
    -------
    array of the markers' dtype, on the markers' device
        Masked voxels a basin reaches carry its label; the others 0.
    """
    xp = array_module(markers)
    if landscape.shape != markers.shape or (mask is not None and mask.shape != markers.shape):
        raise ValueError(f"flood: landscape {landscape.shape}, markers {markers.shape} and mask "
                         f"{None if mask is None else mask.shape} must have one shape")
    if markers.dtype.kind not in "iu":
        raise ValueError(f"flood: markers must be integers, got {markers.dtype}")
    mask = xp.ones(markers.shape, dtype=bool) if mask is None else mask.astype(bool, copy=False)
    if landscape.dtype.kind in "iu" and (landscape.size == 0 or int(landscape.max()) < levels) \
            and (landscape.size == 0 or int(landscape.min()) >= 0):
        q = landscape
    else:
        q = quantise(landscape, mask, levels)
    labels = xp.where(mask, markers, 0).astype(markers.dtype).ravel()
    q = xp.ascontiguousarray(q).ravel()
    limit = int(max_sweeps) if max_sweeps is not None else int(labels.size)
    # The voxels still to label: masked and unlabelled. Only they are visited,
    # and each sweep drops the ones it labels, so a sweep costs the candidates
    # left, not the volume (a speck flood has few).
    candidates = xp.flatnonzero(mask.ravel() & (labels == 0))
    gather = _gather_generic
    if xp is not np and labels.ndim == 1 and len(markers.shape) == 3:
        gather = _gather_cupy
    present = xp.unique(q[mask.ravel()]) if labels.size else xp.zeros(0, dtype=q.dtype)
    for level in (int(v) for v in (present.get() if hasattr(present, "get") else present)):
        for _ in range(limit):
            if candidates.size == 0:
                break
            # Labelled voxels at or below the level are "popped": they claim every
            # unlabelled masked neighbour, whatever its level (as the queue labels a
            # voxel when it is pushed); claimed voxels at or below the level go on.
            grown = gather(candidates, labels, q, level, markers.shape)
            fresh = grown > 0
            if not bool(fresh.any()):
                break
            labels[candidates[fresh]] = grown[fresh]
            candidates = candidates[~fresh]
    return labels.reshape(markers.shape)
