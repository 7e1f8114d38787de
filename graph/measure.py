"""Per-neuron measurements, blockwise: size, centroid, bounding box, channel means and quantiles.

Each block reads its write region of the labels and of every channel and
returns a small table of per-label *sums* (voxel count, coordinate sums,
per-plane extents, channel sums); the tables are reduced by label. All sums of
integer quantities (counts, coordinates, integer channel values) are carried
as float64 and stay exact below 2**53, so for integer images the blockwise
result equals the whole-volume result exactly, whatever the block shape.

The kernel :func:`label_sums` runs on NumPy or CuPy arrays; only the small
sum table comes back to the host. On the GPU it is ``xp.unique`` +
``xp.bincount``; on the CPU a few linear passes (``fastremap.renumber``,
``cc3d.statistics``, one ``np.bincount`` per channel) give the same numbers
(see :func:`_label_sums_cpu`).

Robust statistics (``q25_``, ``median_``, ``q75_<channel>``) come from
per-label intensity histograms summed over blocks (:mod:`graph.histograms`):
they are within a fraction of a bin (<= 0.8 % of the value, exact for the
lowest ~128 values of 8/16-bit data) of the whole-volume quantiles, and the
same whatever the block shape. Each block writes its (sparse) histograms to
``<state_dir>/<name>_histograms/<block id>.parquet`` instead of returning
them, and they are summed a few blocks at a time: memory holds one group of
blocks plus the running per-neuron table, whatever the number of blocks.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from graph.histograms import QUANTILES, IntensityBins, histogram_quantiles, label_histograms, reduce_label_histograms
from pipeline.backend import array_module, resolve_device, to_device, to_host
from pipeline.blocks import Block, BlockGrid
from pipeline.errors import InputError
from pipeline.runner import Executor, run_blockwise
from pipeline.storage import write_parquet
from pipeline.volume import Volume

__all__ = ["label_sums", "reduce_label_sums", "add_quantiles", "measure_neurons", "measure_array", "BBOX_COLUMNS"]

log = logging.getLogger(__name__)

#: Bins per label for the channel sums of small-integer images (see :func:`_label_sums_cpu`).
_SPREAD = 4
#: Voxels per piece of those channel sums (64 Ki: bincount's temporaries stay in cache).
_PIECE = 1 << 16

BBOX_COLUMNS = ("bbox_min_z", "bbox_min_y", "bbox_min_x", "bbox_max_z", "bbox_max_y", "bbox_max_x")


def label_sums(labels_zyx, channels_czyx=None, *, offset=(0, 0, 0)) -> pd.DataFrame:
    """Per-label sums of one block (label 0, the background, included).

    Parameters
    ----------
    labels_zyx : ndarray (NumPy or CuPy), 3-D integer
    channels_czyx : ndarray, optional
        Image channels (c, z, y, x) of the same spatial shape, same array kind.
    offset : sequence of int
        Volume coordinates of ``labels_zyx[0, 0, 0]``.

    Returns
    -------
    pandas.DataFrame
        ``neuron_id`` (uint64), ``count``, ``sum_z, sum_y, sum_x`` (coordinate
        sums, volume coordinates), ``min_z .. max_x`` (inclusive extents) and
        ``sum_c<i>`` for every channel ``i``. Sorted by ``neuron_id``.
    """
    xp = array_module(labels_zyx)
    if labels_zyx.ndim != 3:
        raise InputError(f"labels must be 3-D (z, y, x), got shape {labels_zyx.shape}")
    if channels_czyx is not None:
        if channels_czyx.ndim != 4 or tuple(channels_czyx.shape[1:]) != tuple(labels_zyx.shape):
            raise InputError(f"channels {channels_czyx.shape} must be (c,) + labels shape {labels_zyx.shape}")
    if xp is np and labels_zyx.size and labels_zyx.dtype.kind in "iub":
        return _label_sums_cpu(labels_zyx, channels_czyx, offset)
    return _label_sums_array(labels_zyx, channels_czyx, offset)


def _label_sums_array(labels_zyx, channels_czyx, offset) -> pd.DataFrame:
    """:func:`label_sums` as whole-array steps of ``xp`` (the CuPy path; on NumPy, the reference)."""
    xp = array_module(labels_zyx)
    n_channels = 0 if channels_czyx is None else channels_czyx.shape[0]
    ids, inverse = xp.unique(labels_zyx.ravel(), return_inverse=True)
    inverse = inverse.reshape(labels_zyx.shape)
    n = int(ids.size)
    out = {"neuron_id": to_host(ids).astype(np.uint64)}
    count = xp.bincount(inverse.ravel(), minlength=n)
    out["count"] = to_host(count).astype(np.float64)
    for axis, name in enumerate("zyx"):
        size = labels_zyx.shape[axis]
        # per-label histogram along this axis: key = label index * size + coordinate
        shape = [1, 1, 1]
        shape[axis] = size
        coord = xp.arange(size, dtype=xp.int64).reshape(shape)
        key = (inverse.astype(xp.int64) * size + coord).ravel()
        hist = to_host(xp.bincount(key, minlength=n * size)).reshape(n, size)
        positions = np.arange(size, dtype=np.float64) + float(offset[axis])
        out[f"sum_{name}"] = hist @ positions
        present = hist > 0
        first = np.argmax(present, axis=1)
        last = size - 1 - np.argmax(present[:, ::-1], axis=1)
        out[f"min_{name}"] = (first + int(offset[axis])).astype(np.int64)
        out[f"max_{name}"] = (last + int(offset[axis])).astype(np.int64)
    if n_channels:
        # Segmented sums over the voxels sorted by label: one sort for every channel.
        # (A weighted bincount into a few dozen bins is an atomic-add pile-up on a GPU.)
        order = xp.argsort(inverse.ravel())
        last = xp.cumsum(count) - 1  # position of each label's last voxel in that order
        for c in range(n_channels):
            running = xp.cumsum(channels_czyx[c].ravel()[order], dtype=xp.float64)[last]
            running[1:] -= running[:-1].copy()
            out[f"sum_c{c}"] = to_host(running).astype(np.float64)
    return pd.DataFrame(out)


def _label_sums_cpu(labels_zyx: np.ndarray, channels_czyx, offset) -> pd.DataFrame:
    """:func:`label_sums` on the host, the same numbers in a few linear passes.

    ``fastremap.renumber`` maps the labels to ``0..n-1`` (small dtype, no
    sort), ``cc3d.statistics`` gives counts, bounding boxes and centroids in
    one C++ pass, and one ``np.bincount`` per channel (intp keys made once,
    integer weights converted by bincount itself) gives the channel sums.
    Coordinate sums are ``rint(centroid * count)``: the local coordinate sum
    is an integer (< 2**50 for any block) and cc3d's centroid is that double
    sum divided once by the count, so the product is within one rounding of
    the integer and ``rint`` recovers it exactly. Channel sums accumulate in
    double in voxel order, as the generic path does. Rows are sorted by label.
    """
    import cc3d
    import fastremap

    labels = np.ascontiguousarray(labels_zyx)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    inverse, mapping = fastremap.renumber(labels, start=0, preserve_zero=False, in_place=False)
    n = len(mapping)
    ids = np.empty(n, dtype=labels.dtype)
    ids[np.fromiter(mapping.values(), dtype=np.int64, count=n)] = np.fromiter(mapping.keys(), dtype=labels.dtype,
                                                                             count=n)
    order = np.argsort(ids, kind="stable")
    if inverse.dtype.kind == "i":        # renumber keeps signedness; 0..n-1 fits the unsigned twin
        inverse = inverse.view(inverse.dtype.str.replace("i", "u"))
    stats = cc3d.statistics(inverse, no_slice_conversion=True)
    count = np.asarray(stats["voxel_counts"], dtype=np.float64)[:n]
    boxes = np.asarray(stats["bounding_boxes"], dtype=np.int64)[:n]
    centroids = np.asarray(stats["centroids"], dtype=np.float64)[:n]
    out = {"neuron_id": ids[order].astype(np.uint64), "count": count[order]}
    for axis, name in enumerate("zyx"):
        local = np.rint(centroids[:, axis] * count)
        out[f"sum_{name}"] = (local + count * float(offset[axis]))[order]
        out[f"min_{name}"] = (boxes[:, 2 * axis] + int(offset[axis]))[order].astype(np.int64)
        out[f"max_{name}"] = (boxes[:, 2 * axis + 1] + int(offset[axis]))[order].astype(np.int64)
    if channels_czyx is not None and channels_czyx.shape[0]:
        n_channels = channels_czyx.shape[0]
        keys = inverse.reshape(-1).astype(np.intp)
        if channels_czyx.dtype.kind in "iub" and channels_czyx.dtype.itemsize <= 2:
            # Small integers: every partial sum is an exact integer in double, so the order
            # of the additions does not change the result. Two things make bincount ~3x
            # faster then: spread each label over _SPREAD bins by voxel index (neighbouring
            # voxels, mostly of one label, no longer add into one bin back to back: the loop
            # is bound by that dependency), and go through the voxels in pieces of _PIECE
            # (bincount's double copy of the weights stays in cache), adding the pieces up.
            keys *= _SPREAD
            whole = keys.size - keys.size % _SPREAD
            keys[:whole].reshape(-1, _SPREAD)[...] |= np.arange(_SPREAD, dtype=np.intp)
            keys[whole:] |= np.arange(keys.size - whole, dtype=np.intp)
            flat = np.ascontiguousarray(channels_czyx).reshape(n_channels, -1)
            sums = np.zeros((n_channels, n * _SPREAD))
            for start in range(0, keys.size, _PIECE):
                piece = keys[start:start + _PIECE]
                for c in range(n_channels):
                    sums[c] += np.bincount(piece, weights=flat[c, start:start + _PIECE], minlength=n * _SPREAD)
            sums = sums.reshape(n_channels, n, _SPREAD).sum(axis=2)
        else:
            # Floats (or wide integers): one pass per channel in voxel order, as the generic path.
            sums = np.empty((n_channels, n))
            for c in range(n_channels):
                values = np.ascontiguousarray(channels_czyx[c]).reshape(-1)
                if values.dtype.kind not in "iufb" or values.dtype.itemsize > 8:
                    values = values.astype(np.float64)
                sums[c] = np.bincount(keys, weights=values, minlength=n)
        for c in range(n_channels):
            out[f"sum_c{c}"] = sums[c][order]
    return pd.DataFrame(out)


def reduce_label_sums(tables, channel_names=(), voxel_size=(1.0, 1.0, 1.0)) -> pd.DataFrame:
    """Combine per-block :func:`label_sums` tables into the per-neuron table.

    Returns
    -------
    pandas.DataFrame
        ``neuron_id`` (uint64), ``size_voxels`` (int64), ``z, y, x`` (centroid,
        voxels), ``z_um, y_um, x_um``, ``bbox_min_z .. bbox_max_x`` (int64,
        max exclusive) and ``mean_<channel>`` per channel, sorted by
        ``neuron_id``. Label 0 is not a row: ``attrs["background"]`` holds
        its mean per channel (the background level that
        :mod:`graph.annotate` subtracts) and ``attrs["background_voxels"]``
        its size.
    """
    tables = [t for t in tables if len(t)]
    channel_names = list(channel_names)
    sum_cols = ["count", "sum_z", "sum_y", "sum_x"] + [f"sum_c{i}" for i in range(len(channel_names))]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"neuron_id": []})
    is_bg = table["neuron_id"].to_numpy() == 0
    background, n_background = {}, 0
    if is_bg.any():
        bg = table.loc[is_bg, sum_cols].sum()
        n_background = int(round(float(bg["count"])))
        background = {c: float(bg[f"sum_c{i}"] / bg["count"]) for i, c in enumerate(channel_names)}
    table = table.loc[~is_bg]
    attrs = {"background": background, "background_voxels": n_background}
    if table.empty:
        columns = {"neuron_id": pd.Series(dtype=np.uint64), "size_voxels": pd.Series(dtype=np.int64)}
        columns.update({c: pd.Series(dtype=np.float64) for c in ("z", "y", "x", "z_um", "y_um", "x_um")})
        columns.update({c: pd.Series(dtype=np.int64) for c in BBOX_COLUMNS})
        columns.update({f"mean_{c}": pd.Series(dtype=np.float64) for c in channel_names})
        empty = pd.DataFrame(columns)
        empty.attrs.update(attrs)
        return empty
    grouped = table.groupby("neuron_id", sort=True)
    sums = grouped[sum_cols].sum()
    mins = grouped[["min_z", "min_y", "min_x"]].min()
    maxs = grouped[["max_z", "max_y", "max_x"]].max()
    count = sums["count"].to_numpy()
    out = pd.DataFrame({"neuron_id": sums.index.to_numpy().astype(np.uint64),
                        "size_voxels": np.rint(count).astype(np.int64)})
    for name in "zyx":
        out[name] = sums[f"sum_{name}"].to_numpy() / count
    for axis, name in enumerate("zyx"):
        out[f"{name}_um"] = out[name] * float(voxel_size[axis])
    for name in "zyx":
        out[f"bbox_min_{name}"] = mins[f"min_{name}"].to_numpy().astype(np.int64)
    for name in "zyx":
        out[f"bbox_max_{name}"] = maxs[f"max_{name}"].to_numpy().astype(np.int64) + 1
    for i, channel in enumerate(channel_names):
        out[f"mean_{channel}"] = sums[f"sum_c{i}"].to_numpy() / count
    out = out.reset_index(drop=True)
    out.attrs.update(attrs)
    return out


def add_quantiles(frame: pd.DataFrame, histograms: pd.DataFrame, bins: IntensityBins,
                  channel_names) -> pd.DataFrame:
    """Add ``<prefix>_<channel>`` quantile columns (:data:`graph.histograms.QUANTILES`) to a neuron table.

    ``frame`` is a :func:`reduce_label_sums` table; ``histograms`` the summed
    :func:`graph.histograms.label_histograms` of the same labels. Label 0's
    quantiles go to ``attrs["background_<prefix>"]`` (channel name -> value).
    Returns a new frame.
    """
    channel_names = list(channel_names)
    out = frame.copy()                    # copies attrs too
    values = histogram_quantiles(histograms, bins, list(QUANTILES.values())).reset_index()
    ids = out["neuron_id"].to_numpy(np.uint64)
    for c, channel in enumerate(channel_names):
        per_channel = values[values["channel"] == c].set_index("neuron_id")
        for prefix, q in QUANTILES.items():
            column = per_channel[q]
            out[f"{prefix}_{channel}"] = column.reindex(ids).to_numpy(np.float64)
            if 0 in column.index:
                out.attrs.setdefault(f"background_{prefix}", {})[channel] = float(column.loc[0])
    return out


def measure_array(labels_zyx, channels_czyx=None, channel_names=None, voxel_size=(1.0, 1.0, 1.0)) -> pd.DataFrame:
    """Whole-array measurement (no blocks): the reference for :func:`measure_neurons`."""
    n_channels = 0 if channels_czyx is None else channels_czyx.shape[0]
    names = list(channel_names) if channel_names is not None else [f"c{i}" for i in range(n_channels)]
    if len(names) != n_channels:
        raise InputError(f"{len(names)} channel names for {n_channels} channels")
    frame = reduce_label_sums([label_sums(labels_zyx, channels_czyx)], names, voxel_size)
    if not n_channels:
        return frame
    bins = IntensityBins.for_dtype(channels_czyx.dtype)
    return add_quantiles(frame, label_histograms(labels_zyx, channels_czyx, bins), bins, names)


#: Blocks whose histogram files are summed together at once (see :func:`_sum_histogram_files`).
_HISTOGRAM_GROUP = 8


def _measure_block(block: Block, *, volume_path: str, labels, device: str, histogram_dir: str) -> pd.DataFrame:
    """Block task: per-label sums of the write region (returned) and its histograms (written)."""
    volume = Volume.open(volume_path, mode="r")
    labels_block = to_device(np.asarray(labels[block.write]), device)
    channels = to_device(np.asarray(volume.read(block.write)), device)
    sums = label_sums(labels_block, channels, offset=block.write_offset)
    if channels.shape[0]:
        histograms = label_histograms(labels_block, channels, IntensityBins.for_dtype(volume.dtype))
        write_parquet(Path(histogram_dir) / f"{block.id}.parquet", histograms)
    return sums


def _sum_histogram_files(paths) -> pd.DataFrame:
    """:func:`reduce_label_histograms` of the files, read :data:`_HISTOGRAM_GROUP` at a time."""
    paths = list(paths)
    total = reduce_label_histograms([])
    for start in range(0, len(paths), _HISTOGRAM_GROUP):
        group = [pd.read_parquet(p) for p in paths[start:start + _HISTOGRAM_GROUP]]
        total = reduce_label_histograms([total] + group)
    return total


def measure_neurons(
    volume: Volume,
    labels_array,
    *,
    grid: BlockGrid,
    executor: Executor | None = None,
    state_dir,
    device: str = "cpu",
    name: str = "measure",
    progress: bool = False,
) -> pd.DataFrame:
    """Per-neuron statistics of a label image over a volume, computed blockwise.

    Parameters
    ----------
    volume : Volume
        Every channel is measured (``mean_<channel name>``).
    labels_array : zarr.Array or array-like
        Neuron labels (z, y, x), same spatial shape as the volume, 0 = background.
        Must be picklable when an executor with workers is used (a Zarr array is).
    grid : BlockGrid
        Block layout (only write regions are read; the halo is ignored).
    executor : Executor, optional
    state_dir : path
        Where block done-markers go (``state_dir/<name>``).
    device : {"cpu", "gpu", "auto"}
    name : str
        Step name.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        ``neuron_id, size_voxels, z, y, x, z_um, y_um, x_um, bbox_min_z ..
        bbox_max_x (max exclusive), mean_<channel>..., q25_<channel>...,
        median_<channel>..., q75_<channel>...``, one row per non-zero
        label, sorted by ``neuron_id``; ``attrs["background"]`` is the mean of
        every channel over label 0 (channel name -> float; empty when the
        labels have no background), ``attrs["background_median"]`` (etc.)
        its quantiles.
    """
    device = resolve_device(device)
    if tuple(labels_array.shape) != tuple(volume.spatial_shape):
        raise InputError(f"labels shape {tuple(labels_array.shape)} differs from the volume's "
                         f"spatial shape {volume.spatial_shape}")
    if tuple(grid.shape) != tuple(volume.spatial_shape):
        raise InputError(f"grid shape {grid.shape} does not match the volume's {volume.spatial_shape}")
    histogram_dir = Path(state_dir) / f"{name}_histograms"
    histogram_dir.mkdir(parents=True, exist_ok=True)
    step = functools.partial(_measure_block, volume_path=str(volume.path), labels=labels_array, device=device,
                             histogram_dir=str(histogram_dir))
    store = getattr(labels_array, "store", None)
    params = {"volume": str(volume.path), "labels": str(getattr(labels_array, "path", "")) + str(store),
              "block_shape": grid.block_shape, "shape": grid.shape, "channels": volume.channel_names,
              "histograms": "asinh-v1-files"}
    blocks = list(grid)
    tables = run_blockwise(step, blocks, name=name, state_dir=Path(state_dir), executor=executor,
                           params=params, progress=progress)
    frame = reduce_label_sums(tables, volume.channel_names, volume.voxel_size)
    if volume.channel_names:
        # only this grid's blocks: files of an earlier run with other blocks are not summed
        histograms = _sum_histogram_files(histogram_dir / f"{b.id}.parquet" for b in blocks)
        frame = add_quantiles(frame, histograms, IntensityBins.for_dtype(volume.dtype), volume.channel_names)
    log.info("measured %d neurons over %d blocks", len(frame), len(tables))
    return frame
