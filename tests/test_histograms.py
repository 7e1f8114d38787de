"""Per-label intensity histograms and the quantiles read from them (graph.histograms)."""

import numpy as np
import pandas as pd
import pytest

import graph.histograms as histograms
from graph.histograms import (IntensityBins, histogram_quantiles, label_histograms,
                              reduce_label_histograms)
from graph.measure import measure_array
from pipeline.errors import InputError


def _labels(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, shape).astype(np.uint32)


@pytest.mark.parametrize("dtype, low, high", [
    (np.uint8, 0, 255), (np.uint16, 0, 60000), (np.int16, -3000, 3000), (np.float32, -2.0, 5.0),
    (np.float64, 0.0, 1e5), (np.uint32, 0, 10 ** 6),
])
def test_quantiles_are_within_one_bin_of_numpy(dtype, low, high):
    rng = np.random.default_rng(1)
    labels = _labels((10, 30, 30), 6)
    channels = rng.uniform(low, high, (2, 10, 30, 30)).astype(dtype)
    bins = IntensityBins.for_dtype(dtype)
    table = label_histograms(labels, channels, bins)
    got = histogram_quantiles(table, bins, [0.1, 0.5, 0.9])
    for (label, channel), row in got.iterrows():
        values = np.sort(channels[channel][labels == label])
        for q in (0.1, 0.5, 0.9):
            # between the bins of the order statistics around q * N
            k = q * values.size
            below = values[max(int(np.floor(k)) - 1, 0)]
            above = values[min(int(np.ceil(k)), values.size - 1)]
            lo, _ = bins.bounds(bins.index(np.array([below], dtype=dtype)))
            _, hi = bins.bounds(bins.index(np.array([above], dtype=dtype)))
            assert lo[0] - 1e-9 <= row[q] <= hi[0] + 1e-9, (dtype, label, channel, q)
            assert abs(row[q] - np.quantile(values.astype(np.float64), q)) <= hi[0] - lo[0] + 1e-9


def test_small_integers_have_exact_medians():
    labels = np.array([1, 1, 1, 1, 1, 2, 2, 2], np.uint8).reshape(1, 1, 8)
    channel = np.array([3, 3, 5, 7, 9, 40, 41, 41], np.uint16).reshape(1, 1, 1, 8)
    bins = IntensityBins.for_dtype(np.uint16)
    got = histogram_quantiles(label_histograms(labels, channel, bins), bins, [0.5])
    assert got.loc[(1, 0), 0.5] == 5.0
    assert 40.5 <= got.loc[(2, 0), 0.5] <= 41.5  # 1.5 of 3 voxels: in the bin of 41
    lo, hi = bins.bounds(bins.index(np.array([5, 60000], np.uint16)))
    assert (lo[0], hi[0]) == (4.5, 5.5)           # one integer per bin at low values
    assert (hi[1] - lo[1]) / 60000 < 0.01         # under 1 % of the value at high ones


@pytest.mark.parametrize("splits", [(1, 1, 1), (2, 1, 3), (3, 4, 2), (5, 7, 11)])
def test_block_histograms_sum_to_the_whole_volume_histogram(splits):
    rng = np.random.default_rng(2)
    labels = _labels((15, 28, 33), 9, seed=3)
    channels = rng.integers(0, 4000, (3, 15, 28, 33)).astype(np.uint16)
    bins = IntensityBins.for_dtype(channels.dtype)
    whole = label_histograms(labels, channels, bins)
    parts = []
    edges = [np.array_split(np.arange(s), k) for s, k in zip(labels.shape, splits)]
    for zs in edges[0]:
        for ys in edges[1]:
            for xs in edges[2]:
                region = np.ix_(zs, ys, xs)
                parts.append(label_histograms(labels[region], channels[(slice(None),) + region], bins))
    summed = reduce_label_histograms(parts)
    pd.testing.assert_frame_equal(summed, whole, check_dtype=False)
    pd.testing.assert_frame_equal(histogram_quantiles(summed, bins, [0.25, 0.5]),
                                  histogram_quantiles(whole, bins, [0.25, 0.5]))


def test_sparse_path_equals_dense_path(monkeypatch):
    # the xp.unique path (what CuPy runs) against the host's dense bincount
    rng = np.random.default_rng(4)
    labels = _labels((8, 20, 20), 12)
    channels = (rng.random((2, 8, 20, 20)) * 900).astype(np.float32)
    bins = IntensityBins.for_dtype(channels.dtype)
    dense = label_histograms(labels, channels, bins)
    monkeypatch.setattr(histograms, "_DENSE_CELLS", 0)
    sparse = label_histograms(labels, channels, bins)
    pd.testing.assert_frame_equal(sparse, dense)


def test_nan_is_not_counted_and_bad_input_is_named():
    labels = np.ones((1, 2, 2), np.uint8)
    channel = np.array([[[[1.0, np.nan], [3.0, 5.0]]]], np.float32)
    bins = IntensityBins.for_dtype(np.float32)
    table = label_histograms(labels, channel, bins)
    assert table["count"].sum() == 3
    assert histogram_quantiles(table, bins, [0.5]).loc[(1, 0), 0.5] == pytest.approx(3.0, rel=0.01)
    with pytest.raises(InputError, match="channels"):
        label_histograms(labels, np.zeros((1, 2, 2, 3), np.float32), bins)
    with pytest.raises(InputError, match="dtype"):
        IntensityBins.for_dtype(np.complex64)
    with pytest.raises(ValueError, match="quantiles"):
        histogram_quantiles(table, bins, [1.5])
    assert histogram_quantiles(reduce_label_histograms([]), bins, [0.5]).empty


def test_measured_medians_resist_a_bright_minority():
    # a neuron whose off channel has 10 % voxels of a bright neighbour's spill:
    # the mean moves, the median does not
    rng = np.random.default_rng(5)
    labels = np.ones((10, 20, 20), np.uint32)
    off = rng.normal(150, 5, labels.shape)
    off[:1] += 3000
    channels = np.clip(off, 0, None).astype(np.uint16)[None]
    table = measure_array(labels, channels, ["bc00"])
    assert table["mean_bc00"].item() > 400
    assert table["median_bc00"].item() == pytest.approx(np.median(channels), abs=1.0)
    assert table["q25_bc00"].item() < table["median_bc00"].item() < table["q75_bc00"].item()
