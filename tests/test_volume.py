"""OME-Zarr volumes: creation, validation with precise messages, labels, pyramid."""

import json

import numpy as np
import pytest
import zarr

from pipeline import Channel, MissingChannelError, Volume, VolumeError


def _channels():
    return [Channel("fill", "fill"), Channel("bc00", "barcode"), Channel("bc01", "barcode"), Channel("pre", "pre")]


def _make(tmp_path, **kw):
    args = dict(shape_zyx=(8, 32, 32), channels=_channels(), voxel_size=(0.4, 0.1, 0.1), chunks_zyx=(4, 16, 16))
    args.update(kw)
    return Volume.create(tmp_path / "v.zarr", **args)


def test_create_open_roundtrip(tmp_path):
    vol = _make(tmp_path)
    data = np.random.default_rng(0).integers(0, 4000, size=vol.shape, dtype=np.uint16)
    vol.write((slice(None),) * 3, data)
    again = Volume.open(tmp_path / "v.zarr")
    assert again.shape == (4, 8, 32, 32)
    assert again.chunks == (4, 16, 16)
    assert again.voxel_size == (0.4, 0.1, 0.1)
    assert again.unit == "micrometer"
    assert again.channel_names == ["fill", "bc00", "bc01", "pre"]
    assert again.channels_with_role("barcode") == [1, 2]
    np.testing.assert_array_equal(again.read((slice(2, 6), slice(0, 10), slice(5, 9)), [1, 2]), data[1:3, 2:6, 0:10, 5:9])
    np.testing.assert_array_equal(again.read((slice(None),) * 3, [0, 3]), data[[0, 3]])


def test_ome_metadata_is_ngff_05(tmp_path):
    vol = _make(tmp_path)
    meta = json.loads((vol.path / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.4, 0.1, 0.1]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["fill", "bc00", "bc01", "pre"]
    assert meta["attributes"]["connectome"]["channels"][3] == {"name": "pre", "role": "pre"}


def test_labels(tmp_path):
    vol = _make(tmp_path)
    labels = vol.create_labels("neurons")
    labels[:] = 7
    assert vol.label_names() == ["neurons"]
    assert vol.labels("neurons").dtype == np.uint64
    assert vol.labels("neurons")[0, 0, 0] == 7
    group = zarr.open_group(str(vol.path / "labels" / "neurons"), mode="r")
    assert "image-label" in group.attrs["ome"]
    with pytest.raises(VolumeError, match="no label image 'truth'"):
        vol.labels("truth")


def test_images_and_labels_use_the_pipeline_codec_and_tensorstore_reads_them(tmp_path):
    ts = pytest.importorskip("tensorstore")
    from pipeline.volume import COMPRESSORS

    vol = _make(tmp_path)
    image = np.random.default_rng(0).integers(0, 4000, vol.shape, dtype=np.uint16)
    vol.write((slice(None),) * 3, image)
    labels = vol.create_labels("neurons")
    labels[:] = np.arange(np.prod(vol.spatial_shape), dtype=np.uint64).reshape(vol.spatial_shape) // 5
    for array, path in ((vol.image, vol.path / "0"), (labels, vol.path / "labels" / "neurons" / "0")):
        (blosc,) = array.compressors
        expected = COMPRESSORS[0]
        assert (blosc.cname, blosc.clevel, blosc.shuffle) == (expected.cname, expected.clevel, expected.shuffle)
        assert (blosc.cname.value, blosc.shuffle.value) == ("zstd", "shuffle")
        assert blosc.typesize == array.dtype.itemsize
        read = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result()
        np.testing.assert_array_equal(read.read().result(), array[:])
    np.testing.assert_array_equal(vol.image[:], image)


def test_pyramid(tmp_path):
    vol = _make(tmp_path, levels=3, shape_zyx=(8, 32, 32))
    vol.write((slice(None),) * 3, np.full(vol.shape, 100, dtype=np.uint16))
    vol.write_pyramid()
    assert vol.level(1).shape == (4, 8, 16, 16)  # z (0.4) is coarser than x/y (0.2): kept
    assert vol.level(2).shape == (4, 4, 8, 8)  # now 0.4 <= 0.4*2: halved too
    assert (vol.level(2)[:] == 100).all()


def test_missing_role_names_the_channels(tmp_path):
    vol = _make(tmp_path)
    with pytest.raises(MissingChannelError, match="role 'post'.*'fill': 'fill'"):
        vol.channels_with_role("post", required=True)
    with pytest.raises(MissingChannelError, match="no channel named 'PSD95'"):
        vol.channel_index("PSD95")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=[Channel("a", "fill"), Channel("a", "barcode")]), "duplicate channel names"),
        (dict(channels=[]), "at least one channel"),
        (dict(voxel_size=(0.0, 0.1, 0.1)), "voxel size"),
        (dict(voxel_size=(float("nan"), 0.1, 0.1)), "voxel size"),
        (dict(unit="parsec"), "unit 'parsec'"),
        (dict(shape_zyx=(0, 4, 4)), "spatial shape"),
    ],
)
def test_bad_create(tmp_path, kwargs, message):
    with pytest.raises(VolumeError, match=message):
        _make(tmp_path, **kwargs)


def test_bad_role():
    with pytest.raises(VolumeError, match="unknown role 'nucleus'"):
        Channel("dapi", "nucleus")


def test_open_validation(tmp_path):
    with pytest.raises(VolumeError, match="no such volume"):
        Volume.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(VolumeError, match="missing OME-Zarr"):
        Volume.open(tmp_path / "plain.zarr")
    vol = _make(tmp_path)
    attrs = vol.group.attrs.asdict()
    attrs["connectome"]["channels"] = attrs["connectome"]["channels"][:2]
    vol.group.attrs.update(attrs)
    with pytest.raises(VolumeError, match="2 channels described but the image has 4"):
        Volume.open(vol.path)


def test_refuses_to_overwrite(tmp_path):
    _make(tmp_path)
    with pytest.raises(VolumeError, match="already exists"):
        _make(tmp_path)
    _make(tmp_path, overwrite=True)
