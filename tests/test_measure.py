"""Blockwise per-neuron measurement equals the whole-volume measurement."""

import numpy as np
import pandas as pd
import pytest

from graph.measure import label_sums, measure_array, measure_neurons, reduce_label_sums
from pipeline.blocks import BlockGrid
from pipeline.errors import InputError
from pipeline.volume import Channel, Volume, create_label_image

SHAPE = (24, 40, 48)
VOXEL = (0.4, 0.1, 0.1)
CHUNKS = (8, 8, 16)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    rng = np.random.default_rng(7)
    # random blobs of labels, some spanning many blocks, some tiny, one absent id
    labels = np.zeros(SHAPE, dtype=np.uint64)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    for neuron in range(1, 12):
        c = rng.uniform([0, 0, 0], SHAPE)
        r = rng.uniform(2, 12)
        inside = ((zz - c[0]) * 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r ** 2
        labels[inside] = neuron * 1000 + 7  # large, non-consecutive ids
    labels[0, 0, 0] = 2 ** 40  # a one-voxel neuron with a huge id
    channels = [Channel("fill", "fill"), Channel("bc00", "barcode"), Channel("vgat", "marker")]
    data = rng.integers(0, 60000, (3,) + SHAPE).astype(np.uint16)
    vol = Volume.create(root / "v.zarr", shape_zyx=SHAPE, channels=channels, voxel_size=VOXEL,
                        chunks_zyx=CHUNKS)
    vol.write(tuple(slice(0, s) for s in SHAPE), data)
    arr = create_label_image(root / "run" / "labels.zarr", "neurons", shape_zyx=SHAPE,
                             voxel_size=VOXEL, chunks_zyx=CHUNKS)
    arr[...] = labels
    return vol, arr, labels, data


def _reference(labels, data, names):
    """Straightforward per-label statistics with NumPy, independent of the kernel."""
    rows = []
    for lab in np.unique(labels[labels != 0]):
        idx = np.argwhere(labels == lab)
        row = {"neuron_id": np.uint64(lab), "size_voxels": len(idx)}
        row.update(dict(zip("zyx", idx.mean(axis=0))))
        row.update({f"bbox_min_{a}": int(v) for a, v in zip("zyx", idx.min(axis=0))})
        row.update({f"bbox_max_{a}": int(v) + 1 for a, v in zip("zyx", idx.max(axis=0))})
        mask = labels == lab
        row.update({f"mean_{n}": data[i][mask].astype(np.float64).mean() for i, n in enumerate(names)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_whole_array_matches_reference(sample):
    vol, _, labels, data = sample
    got = measure_array(labels, data, vol.channel_names, VOXEL)
    ref = _reference(labels, data, vol.channel_names)
    assert got["neuron_id"].tolist() == ref["neuron_id"].tolist()
    for column in ref.columns:
        np.testing.assert_allclose(got[column].to_numpy(dtype=float), ref[column].to_numpy(dtype=float),
                                   rtol=1e-12, err_msg=column)
    np.testing.assert_allclose(got["y_um"], got["y"] * VOXEL[1])
    assert got["neuron_id"].dtype == np.uint64
    assert got["size_voxels"].dtype == np.int64
    assert got["bbox_max_x"].dtype == np.int64


@pytest.mark.parametrize("block_shape", [(8, 8, 16), (16, 24, 32), (24, 40, 48), (8, 40, 16)])
def test_blockwise_equals_whole_volume(sample, tmp_path, block_shape):
    vol, arr, labels, data = sample
    whole = measure_array(labels, data, vol.channel_names, VOXEL)
    grid = BlockGrid(SHAPE, block_shape, chunks=CHUNKS)
    got = measure_neurons(vol, arr, grid=grid, state_dir=tmp_path / "work")
    assert list(got.columns) == list(whole.columns)
    # integer sums are exact in float64: the tables are identical
    pd.testing.assert_frame_equal(got, whole, check_exact=False, rtol=1e-13, atol=0)
    # the background (label 0) means are reduced the same way
    background = labels == 0
    assert got.attrs["background_voxels"] == int(background.sum())
    for i, name in enumerate(vol.channel_names):
        assert got.attrs["background"][name] == pytest.approx(data[i][background].mean(), rel=1e-12)
    assert {f"mean_{c}" for c in vol.channel_names} <= set(got.columns)


def test_label_sums_offset_and_errors():
    labels = np.zeros((2, 3, 4), dtype=np.uint32)
    labels[1, 2, 3] = 5
    table = label_sums(labels, offset=(10, 20, 30))
    assert table["neuron_id"].tolist() == [0, 5]  # the background is summed too
    assert table[["min_z", "min_y", "min_x"]].values.tolist()[1] == [11, 22, 33]
    assert table["sum_x"].tolist()[1] == 33.0
    with pytest.raises(InputError, match="channels"):
        label_sums(labels, np.zeros((1, 2, 3, 3)))
    empty = reduce_label_sums([label_sums(np.zeros((2, 2, 2), np.uint8), np.full((1, 2, 2, 2), 3))], ["a"])
    assert empty.empty and "mean_a" in empty.columns
    assert empty.attrs["background"] == {"a": 3.0} and empty.attrs["background_voxels"] == 8


def test_array_program_path_equals_the_cpu_path():
    # the whole-array steps CuPy runs (sorted segmented sums), checked on NumPy
    from graph.measure import _label_sums_array, _label_sums_cpu

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, (20, 40, 40)).astype(np.uint32)
    labels[labels == 5] = 0
    channels = (rng.random((3, 20, 40, 40)) * 1000).astype(np.float32)
    ours = _label_sums_array(labels, channels, (3, 4, 5))
    reference = _label_sums_cpu(labels, channels, (3, 4, 5))
    assert list(ours.columns) == list(reference.columns)
    for column in reference.columns:
        np.testing.assert_allclose(ours[column].to_numpy(np.float64), reference[column].to_numpy(np.float64),
                                   rtol=1e-9, err_msg=column)


def test_histograms_go_to_files_and_only_this_grids_blocks_count(sample, tmp_path):
    vol, arr, labels, data = sample
    whole = measure_array(labels, data, vol.channel_names, VOXEL)
    work = tmp_path / "work"
    first = BlockGrid(SHAPE, (8, 8, 16), chunks=CHUNKS)
    measure_neurons(vol, arr, grid=first, state_dir=work)
    files = sorted((work / "measure_histograms").glob("*.parquet"))
    assert len(files) == len(first)
    # a stale file of a block id the next grid does not have must not be summed
    stale = pd.read_parquet(files[0])
    stale["count"] *= 1000
    stale.to_parquet(work / "measure_histograms" / f"{len(first) + 5}.parquet")
    got = measure_neurons(vol, arr, grid=BlockGrid(SHAPE, (16, 24, 32), chunks=CHUNKS), state_dir=work)
    pd.testing.assert_frame_equal(got, whole, check_exact=False, rtol=1e-13, atol=0)
