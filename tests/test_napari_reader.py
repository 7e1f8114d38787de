"""The OME-Zarr we write opens in napari with named channels and labels (no display needed).

napari-ome-zarr is a thin layer over ``ome_zarr.reader.Reader``; the test runs
that reader on a tiny volume and label image. When ``napari_ome_zarr`` itself
is importable, its ``napari_get_reader`` is exercised too (otherwise skipped).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.volume import Channel, Volume, create_label_image

ome_zarr_io = pytest.importorskip("ome_zarr.io")
ome_zarr_reader = pytest.importorskip("ome_zarr.reader")

SHAPE = (6, 20, 24)
CHANNELS = [
    Channel(name="fill", role="fill", color="FFFFFF", window=(100.0, 2100.0)),
    Channel(name="bc00", role="barcode"),
    Channel(name="bc01", role="barcode"),
    Channel(name="pre", role="pre"),
    Channel(name="vglut", role="marker"),
]


@pytest.fixture
def volume(tmp_path):
    vol = Volume.create(
        tmp_path / "volume.zarr", shape_zyx=SHAPE, channels=CHANNELS,
        voxel_size=(0.4, 0.1, 0.1), chunks_zyx=(6, 10, 12),
    )
    rng = np.random.default_rng(0)
    vol.level(0)[:] = rng.integers(0, 3000, size=(len(CHANNELS), *SHAPE), dtype=np.uint16)
    labels = vol.create_labels("neurons")
    seg = np.zeros(SHAPE, dtype=np.uint64)
    seg[1:4, 2:9, 3:10] = 1
    seg[2:6, 11:18, 12:22] = 2
    labels[:] = seg
    return vol, seg


def _nodes(path):
    location = ome_zarr_io.parse_url(str(path))
    assert location is not None, f"ome-zarr does not recognise {path} as OME-Zarr"
    return list(ome_zarr_reader.Reader(location)())


def test_channels_are_named(volume):
    vol, _ = volume
    nodes = _nodes(vol.path)
    image = nodes[0]
    assert image.load(ome_zarr_reader.Multiscales) is not None
    meta = image.metadata
    assert meta["channel_names"] == [c.name for c in CHANNELS]
    assert [a["type"] for a in meta["axes"]] == ["channel", "space", "space", "space"]
    assert image.data[0].shape == (len(CHANNELS), *SHAPE)
    # colour and window of the first channel reach the display settings
    assert meta["contrast_limits"][0] == [100.0, 2100.0]
    np.testing.assert_array_equal(np.asarray(image.data[0][0]), vol.level(0)[0])
    # physical voxel size (c, z, y, x)
    scale = meta["coordinateTransformations"][0][0]["scale"]
    assert scale[1:] == pytest.approx([0.4, 0.1, 0.1])


def test_labels_found_from_the_image(volume):
    vol, seg = volume
    labels = [n for n in _nodes(vol.path) if n.load(ome_zarr_reader.Label) is not None]
    assert len(labels) == 1
    node = labels[0]
    assert node.metadata["name"] == "neurons"
    assert node.data[0].shape == SHAPE
    np.testing.assert_array_equal(np.asarray(node.data[0]), seg)


def _label_node(nodes):
    labels = [n for n in nodes if n.load(ome_zarr_reader.Label) is not None]
    assert len(labels) == 1, f"expected one label node, got {nodes}"
    return labels[0]


def test_label_image_opened_directly(volume):
    """As in ``napari --plugin napari-ome-zarr VOLUME.zarr/labels/neurons``."""
    vol, seg = volume
    node = _label_node(_nodes(vol.path / "labels" / "neurons"))
    assert node.metadata["name"] == "neurons"
    assert node.data[0].shape == SHAPE
    np.testing.assert_array_equal(np.asarray(node.data[0]), seg)


def test_run_labels_layout(tmp_path):
    """A run's ``labels.zarr/neurons`` (no parent image) opens as a labels node."""
    labels = create_label_image(
        tmp_path / "labels.zarr", "neurons", shape_zyx=SHAPE, voxel_size=(0.4, 0.1, 0.1),
        unit="micrometer", chunks_zyx=(6, 10, 12), dtype="uint64",
    )
    seg = np.zeros(SHAPE, dtype=np.uint64)
    seg[0:3, 0:5, 0:6] = 7
    labels[:] = seg
    node = _label_node(_nodes(tmp_path / "labels.zarr" / "neurons"))
    assert node.metadata["name"] == "neurons"
    assert node.data[0].shape == SHAPE
    assert np.asarray(node.data[0]).dtype == np.uint64
    np.testing.assert_array_equal(np.asarray(node.data[0]), seg)


def test_napari_ome_zarr_layers(volume):
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
    vol, seg = volume
    reader = napari_ome_zarr.napari_get_reader(str(vol.path))
    assert reader is not None
    layers = reader(str(vol.path))
    images = [(d, m) for d, m, kind in layers if kind == "image"]
    labels = [(d, m) for d, m, kind in layers if kind == "labels"]
    assert len(images) == 1 and len(labels) == 1
    data, meta = images[0]
    assert meta["name"] == [c.name for c in CHANNELS]
    assert meta["channel_axis"] == 0
    assert data[0].shape == (len(CHANNELS), *SHAPE)
    data, meta = labels[0]
    assert meta["name"] == "neurons"
    np.testing.assert_array_equal(np.asarray(data[0]), seg)
