"""Rasterise capsule segments into a segment-id volume, vectorised with NumPy.

A voxel belongs to the segment whose *normalised* distance (distance to the
segment's axis divided by its radius, per axis, so ellipsoidal) is smallest
among the segments that contain it: where two neurites overlap, the voxel goes
to the one whose centreline is relatively nearer. Segments are processed in
batches of equal bounding-box shape; each batch writes packed
``(quantised distance, segment id)`` keys with ``np.minimum.at``, so the
result does not depend on the batching or the order of segments (ties go to
the lower segment id).
"""

from __future__ import annotations

import numpy as np

__all__ = ["paint_segments"]

_ID_BITS = 40
_Q_MAX = (1 << 20) - 1
_EMPTY = np.iinfo(np.int64).max


def paint_segments(shape, p0, p1, radius, max_batch_voxels: int = 4_000_000) -> np.ndarray:
    """Segment id (0-based) owning each voxel, -1 for background.

    Parameters
    ----------
    shape : tuple of int
        Volume shape (z, y, x).
    p0, p1 : ndarray, (S, 3)
        Segment end points in voxel coordinates.
    radius : ndarray, (S, 3)
        Segment semi-axes in voxels.
    max_batch_voxels : int
        Bounding-box voxels evaluated at once (memory bound).

    Returns
    -------
    ndarray of int32, ``shape``
    """
    shape = tuple(int(s) for s in shape)
    p0 = np.asarray(p0, np.float64)
    p1 = np.asarray(p1, np.float64)
    radius = np.asarray(radius, np.float64)
    n_seg = len(p0)
    if not (p1.shape == p0.shape == radius.shape == (n_seg, 3)):
        raise ValueError(
            f"p0, p1 and radius must all have shape (S, 3); got {p0.shape}, {p1.shape}, {radius.shape}"
        )
    if n_seg >= (1 << _ID_BITS):
        raise ValueError(f"too many segments to paint: {n_seg}")
    dims_vol = np.asarray(shape)
    lo = np.floor(np.minimum(p0, p1) - radius).astype(np.int64)
    hi = np.floor(np.maximum(p0, p1) + radius).astype(np.int64) + 1
    lo = np.clip(lo, 0, dims_vol)
    hi = np.clip(hi, 0, dims_vol)
    box = hi - lo
    keep = np.flatnonzero((box > 0).all(axis=1))
    keys = np.full(int(np.prod(shape)), _EMPTY, dtype=np.int64)
    if keep.size == 0:
        return np.full(shape, -1, dtype=np.int32)

    # group segments by bounding-box shape: no padding, no wasted work
    box_k = box[keep]
    order = np.lexsort((box_k[:, 2], box_k[:, 1], box_k[:, 0]))
    keep = keep[order]
    box_k = box_k[order]
    change = np.flatnonzero((np.diff(box_k, axis=0) != 0).any(axis=1)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(keep)]])
    stride_z, stride_y = shape[1] * shape[2], shape[2]

    for start, end in zip(starts, ends):
        bz, by, bx = (int(v) for v in box_k[start])
        per = bz * by * bx
        step = max(1, max_batch_voxels // per)
        for s in range(start, end, step):
            ids = keep[s:min(end, s + step)]
            _paint_batch(keys, ids, lo[ids], (bz, by, bx), p0[ids], p1[ids], radius[ids],
                         stride_z, stride_y)

    seg = np.where(keys == _EMPTY, -1, keys & ((1 << _ID_BITS) - 1)).astype(np.int32)
    return seg.reshape(shape)


def _paint_batch(keys, ids, lo, box, p0, p1, radius, stride_z, stride_y):
    bz, by, bx = box
    f = np.float32
    # voxel coordinates of each box, per axis: (M, B_axis)
    cz = lo[:, 0:1] + np.arange(bz)
    cy = lo[:, 1:2] + np.arange(by)
    cx = lo[:, 2:3] + np.arange(bx)
    inv_r = (1.0 / radius).astype(f)
    # coordinates relative to p0, in units of the radius
    wz = ((cz - p0[:, 0:1]) * inv_r[:, 0:1]).astype(f)[:, :, None, None]
    wy = ((cy - p0[:, 1:2]) * inv_r[:, 1:2]).astype(f)[:, None, :, None]
    wx = ((cx - p0[:, 2:3]) * inv_r[:, 2:3]).astype(f)[:, None, None, :]
    d = ((p1 - p0) * inv_r).astype(f)
    length2 = (d * d).sum(axis=1)
    inv_len2 = np.where(length2 > 0, 1.0 / np.maximum(length2, 1e-30), 0.0).astype(f)
    dz = d[:, 0, None, None, None]
    dy = d[:, 1, None, None, None]
    dx = d[:, 2, None, None, None]
    t = wz * dz + wy * dy + wx * dx
    t *= inv_len2[:, None, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    dist2 = np.square(wz - t * dz)
    dist2 += np.square(wy - t * dy)
    dist2 += np.square(wx - t * dx)
    m, iz, iy, ix = np.nonzero(dist2 <= 1.0)
    if m.size == 0:
        return
    q = (dist2[m, iz, iy, ix] * _Q_MAX).astype(np.int64)
    packed = (q << _ID_BITS) | ids[m].astype(np.int64)
    linear = cz[m, iz] * stride_z + cy[m, iy] * stride_y + cx[m, ix]
    np.minimum.at(keys, linear, packed)
