"""Segmentation quality on a small version of the bundled sample (realistic PSF, noise, collisions).

Thresholds leave a margin above what the defaults reach (see the numbers in
the assertions' messages); barcodes must beat the fill-only ablation by far.
"""

import numpy as np
import pytest
import zarr

from pipeline import BlockGrid, Volume
from segment import SegmentConfig, segment_volume

sample_data = pytest.importorskip("sample_data")


def _scores(truth, labels):
    from skimage.metrics import adapted_rand_error, variation_of_information

    fg = truth > 0
    split, merge = variation_of_information(truth[fg], labels[fg])
    return split + merge, adapted_rand_error(truth, labels, ignore_labels=(0,))[0]


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    config = sample_data.SampleConfig(shape=(32, 96, 96), n_neurons=8, seed=1, chunks_zyx=(16, 48, 48))
    out = sample_data.write_sample(tmp_path_factory.mktemp("sample") / "sample", config)
    volume = Volume.open(out / "volume.zarr")
    return volume, volume.labels("truth")[:]


def _run(tmp_path, volume, **overrides):
    grid = BlockGrid(volume.spatial_shape, (16, 48, 48), chunks=volume.chunks)
    summary = segment_volume(volume, tmp_path, SegmentConfig(**overrides), grid=grid)
    return summary, zarr.open_array(summary["labels_path"], mode="r")[:]


def test_small_sample_quality(tmp_path, small_sample):
    volume, truth = small_sample
    summary, labels = _run(tmp_path / "run", volume)
    assert summary["n_blocks"] == 8 and summary["method"] == "codebook"
    voi, arand = _scores(truth, labels)
    assert voi < 0.9, f"VOI {voi:.3f}"
    assert arand < 0.2, f"ARAND {arand:.3f}"
    _, fill_only = _run(tmp_path / "fill_only", volume, use_barcodes=False)
    voi_fill, arand_fill = _scores(truth, fill_only)
    assert voi_fill > voi + 1.0 and arand_fill > arand + 0.3, (voi_fill, arand_fill)
    assert np.unique(labels).size - 1 == summary["n_neurons"]
