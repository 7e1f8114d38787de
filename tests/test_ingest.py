"""Ingest readers and output: every format written here, ingested, compared voxel for voxel."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import tifffile
import zarr

from ingest import ChannelSpec, ingest, is_complete, load_channel_spec, open_source
from ingest.pyramid import downsample_mean
from pipeline import Channel, Volume
from pipeline.errors import InputError

RNG = np.random.default_rng(7)
SMALL = dict(chunks=(4, 16, 16), progress=False)


def _data(shape, dtype="uint16", high=4000):
    return RNG.integers(0, high, size=shape).astype(dtype)


def _spec(*entries):
    return {"channels": [dict(e) for e in entries]}


def _ingest(sources, out, spec, **kw):
    args = dict(SMALL)
    args.update(kw)
    return ingest(sources, out, spec, **args)


# -- TIFF -----------------------------------------------------------------------------------------


def test_imagej_hyperstack_memmapped_with_voxel_size(tmp_path):
    data = _data((10, 2, 40, 50))  # z c y x
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.5, "unit": "um"},
                     resolution=(1 / 0.25, 1 / 0.25))
    assert open_source(path).extra["memmap"]
    vol = _ingest([path], tmp_path / "out.zarr",
                  _spec({"name": "fill", "role": "fill", "channel": 0}, {"name": "pre", "role": "pre", "channel": 1}))
    np.testing.assert_array_equal(vol.image[:], data.transpose(1, 0, 2, 3))
    assert vol.voxel_size == pytest.approx((0.5, 0.25, 0.25))
    assert vol.unit == "micrometer"
    assert [(c.name, c.role) for c in vol.channels] == [("fill", "fill"), ("pre", "pre")]
    assert is_complete(vol.path)
    assert not (vol.path / ".ingest_state").exists()


def test_ome_tiff_channel_names_and_physical_size(tmp_path):
    data = _data((2, 6, 30, 20))
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 120.0, "PhysicalSizeY": 120.0, "PhysicalSizeZ": 400.0,
        "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm", "PhysicalSizeZUnit": "nm",
        "Channel": {"Name": ["DAPI", "PSD95"]}})
    vol = _ingest([path], tmp_path / "out.zarr", _spec({"name": "post", "role": "post", "channel": "PSD95"}))
    np.testing.assert_array_equal(vol.image[0], data[1])
    assert vol.voxel_size == pytest.approx((0.4, 0.12, 0.12))  # nm converted to micrometer
    # taking every channel: names come from the OME metadata
    vol = _ingest([path], tmp_path / "all.zarr", _spec({"role": "marker"}), unit="nm")
    assert vol.channel_names == ["DAPI", "PSD95"]
    assert vol.unit == "nanometer" and vol.voxel_size == pytest.approx((400, 120, 120))


def test_compressed_tiff_read_page_by_page_in_tiles(tmp_path):
    data = _data((9, 37, 45))
    path = tmp_path / "comp.tif"
    tifffile.imwrite(path, data, compression="zlib")
    assert not open_source(path).extra["memmap"]
    spec = {"channels": [{"name": "fill", "role": "fill"}], "block_mib": 0.001}  # blocks smaller than a plane
    vol = _ingest([path], tmp_path / "out.zarr", spec, chunks=(2, 8, 8))
    np.testing.assert_array_equal(vol.image[0], data)
    # pages enumerate two axes (z and c) in a compressed hyperstack
    stack = _data((5, 3, 20, 24))
    tifffile.imwrite(tmp_path / "zc.tif", stack, compression="zlib", photometric="minisblack",
                     metadata={"axes": "ZCYX"})
    assert open_source(tmp_path / "zc.tif").extra["page_ndim"] == 2
    spec = {"channels": [{"name": "c2", "role": "marker", "channel": 2}, {"name": "c0", "role": "fill", "channel": 0}],
            "block_mib": 0.001}
    vol = _ingest([tmp_path / "zc.tif"], tmp_path / "zc.zarr", spec, chunks=(2, 8, 8))
    np.testing.assert_array_equal(vol.image[:], stack[:, [2, 0]].transpose(1, 0, 2, 3))


def test_folder_of_planes_sorted_naturally(tmp_path):
    data = _data((12, 24, 33))
    folder = tmp_path / "planes"
    folder.mkdir()
    for z in range(12):  # z2 must come before z10
        tifffile.imwrite(folder / f"z{z}.tif", data[z])
    src = open_source(folder)
    assert src.extra["offsets"] is not None  # uncompressed: rows read directly
    spec = {"channels": [{"name": "fill", "role": "fill"}], "block_mib": 0.002}
    vol = _ingest([folder], tmp_path / "out.zarr", spec)
    np.testing.assert_array_equal(vol.image[0], data)


def test_folder_of_channel_folders_and_compressed_planes(tmp_path):
    a, b = _data((5, 20, 20)), _data((5, 20, 20))
    for name, arr, comp in (("ch0", a, None), ("ch1", b, "zlib")):
        (tmp_path / "raw" / name).mkdir(parents=True)
        for z in range(5):
            tifffile.imwrite(tmp_path / "raw" / name / f"p{z:03d}.tif", arr[z], compression=comp)
    vol = _ingest([tmp_path / "raw"], tmp_path / "out.zarr", _spec({"name": "bc{i:02d}", "role": "barcode"}))
    assert vol.channel_names == ["bc00", "bc01"]
    np.testing.assert_array_equal(vol.image[:], np.stack([a, b]))
    # a glob pattern of planes is a source too
    pattern = str(tmp_path / "raw" / "ch1" / "p*.tif")
    vol = _ingest([pattern], tmp_path / "glob.zarr", _spec({"name": "x", "role": "fill"}))
    np.testing.assert_array_equal(vol.image[0], b)


def test_paths_with_glob_characters_are_taken_literally(tmp_path):
    """A folder named ``exp[1]`` holds files and planes; ``[1]`` is not a character class there."""
    data = _data((4, 12, 10))
    folder = tmp_path / "exp[1]?" / "ch0"
    folder.mkdir(parents=True)
    for z in range(4):
        tifffile.imwrite(folder / f"p{z:03d}.tif", data[z])
    np.save(folder.parent / "volume.npy", data)
    spec = _spec({"name": "fill", "role": "fill"})
    for k, source in enumerate([folder, str(folder / "p*.tif"), folder.parent / "volume.npy"]):
        vol = _ingest([source], tmp_path / f"out{k}.zarr", spec)
        np.testing.assert_array_equal(vol.image[0], data, err_msg=str(source))
    with pytest.raises(InputError, match="no files match"):
        _ingest([str(folder / "q*.tif")], tmp_path / "none.zarr", spec)


# -- HDF5, Zarr, N5, precomputed, npy -------------------------------------------------------------


def test_hdf5_dataset_and_group_of_channels(tmp_path):
    h5py = pytest.importorskip("h5py")
    fill, bcs = _data((6, 20, 30)), _data((3, 6, 20, 30), "uint8", 255)
    path = tmp_path / "reg.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("volumes/fill", data=fill, chunks=(2, 8, 8))
        d.attrs["element_size_um"] = [0.4, 0.1, 0.1]
        for i in range(3):
            f.create_dataset(f"barcodes/b{i}", data=bcs[i])
    vol = _ingest([path], tmp_path / "out.zarr", _spec(
        {"name": "fill", "role": "fill", "dataset": "volumes/fill"},
        {"role": "barcode", "dataset": "barcodes"}))
    assert vol.channel_names == ["fill", "b0", "b1", "b2"]
    assert vol.dtype == np.uint16  # uint8 + uint16 promoted losslessly
    np.testing.assert_array_equal(vol.image[0], fill)
    np.testing.assert_array_equal(vol.image[1:], bcs)
    assert vol.voxel_size == pytest.approx((0.4, 0.1, 0.1))


def _prism_store(path, n_raw=3, n_markers=2, shape=(8, 24, 20)):
    """A PRISM-like Zarr v3 store: raw/<barcode>/s0,s1 and markers/s0 (c, z, y, x) as OME-Zarr."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    raw = _data((n_raw,) + shape)
    markers = _data((n_markers,) + shape)
    for i in range(n_raw):
        g = root.create_group(f"raw/bc{i:02d}")
        g.create_array("s0", data=raw[i], chunks=(4, 8, 8))
        g.create_array("s1", data=raw[i][:, ::2, ::2].copy(), chunks=(4, 8, 8))
    m = root.create_group("markers")
    m.create_array("s0", data=markers, chunks=(1, 4, 8, 8))
    m.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}]
        + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.2, 0.2]}]}]}],
        "omero": {"channels": [{"label": f"m{i}"} for i in range(n_markers)]}}
    return raw, markers


def test_prism_like_zarr_group(tmp_path):
    raw, markers = _prism_store(tmp_path / "prism.zarr")
    spec = _spec({"role": "barcode", "dataset": "raw"},
                 {"name": "vglut", "role": "marker", "dataset": "markers", "channel": "m1"},
                 {"name": "fill", "role": "fill", "dataset": "markers", "channel": 0})
    vol = _ingest([tmp_path / "prism.zarr"], tmp_path / "out.zarr", spec)
    assert vol.channel_names == ["bc00", "bc01", "bc02", "vglut", "fill"]
    np.testing.assert_array_equal(vol.image[:3], raw)
    np.testing.assert_array_equal(vol.image[3], markers[1])
    np.testing.assert_array_equal(vol.image[4], markers[0])
    assert vol.voxel_size == pytest.approx((0.5, 0.2, 0.2))  # from the markers' multiscales


def test_zarr_v2_array_and_ome_zarr_input(tmp_path):
    data = _data((2, 6, 18, 22))
    arr = zarr.create_array(str(tmp_path / "v2.zarr"), shape=data.shape, chunks=(1, 3, 9, 11), dtype="uint16",
                            zarr_format=2)
    arr[:] = data
    vol = _ingest([tmp_path / "v2.zarr"], tmp_path / "out.zarr", _spec({"name": "c{i}", "role": "marker"}))
    np.testing.assert_array_equal(vol.image[:], data)
    # our own output is a valid input (OME-Zarr 0.5 with channel labels)
    again = _ingest([vol.path], tmp_path / "again.zarr", _spec({"role": "marker"}))
    assert again.channel_names == ["c0", "c1"]
    np.testing.assert_array_equal(again.image[:], data)


def _write_n5(root, key, data, block_zyx, compression="gzip"):
    """Write an N5 dataset by the spec: x-first dimensions, big-endian blocks with a header."""
    root.mkdir(exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    ds = root / key
    ds.mkdir(parents=True)
    (ds / "attributes.json").write_text(json.dumps({
        "dimensions": list(data.shape[::-1]), "blockSize": list(block_zyx[::-1]), "dataType": data.dtype.name,
        "compression": {"type": compression, **({"level": 1} if compression == "gzip" else {})},
        "resolution": [0.1, 0.1, 0.3]}))
    grid = [range(0, s, b) for s, b in zip(data.shape, block_zyx)]
    for z0 in grid[0]:
        for y0 in grid[1]:
            for x0 in grid[2]:
                blk = data[z0:z0 + block_zyx[0], y0:y0 + block_zyx[1], x0:x0 + block_zyx[2]]
                body = blk.astype(blk.dtype.newbyteorder(">")).tobytes()
                body = gzip.compress(body) if compression == "gzip" else body
                header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *blk.shape[::-1])
                cell = ds / str(x0 // block_zyx[2]) / str(y0 // block_zyx[1])
                cell.mkdir(parents=True, exist_ok=True)
                (cell / str(z0 // block_zyx[0])).write_bytes(header + body)


def test_n5_datasets(tmp_path):
    pytest.importorskip("zarr_n5")
    a, b = _data((7, 19, 23)), _data((7, 19, 23))
    _write_n5(tmp_path / "reg.n5", "setup0/s0", a, (3, 8, 8), "gzip")
    _write_n5(tmp_path / "reg.n5", "setup1/s0", b, (4, 16, 16), "raw")
    vol = _ingest([tmp_path / "reg.n5"], tmp_path / "out.zarr", _spec(
        {"name": "fill", "role": "fill", "dataset": "setup0"},  # a group of scales: s0 is used
        {"name": "pre", "role": "pre", "dataset": "setup1/s0"}))
    np.testing.assert_array_equal(vol.image[0], a)
    np.testing.assert_array_equal(vol.image[1], b)
    assert vol.voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_neuroglancer_precomputed_file_url(tmp_path):
    cloudvolume = pytest.importorskip("cloudvolume")
    data = _data((2, 9, 21, 17))  # c z y x
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=2, layer_type="image", data_type="uint16", encoding="raw", resolution=[100, 100, 300],
        voxel_offset=[3, 4, 5], chunk_size=[8, 8, 4], volume_size=[17, 21, 9])
    url = (tmp_path / "layer").as_uri()
    cv = cloudvolume.CloudVolume(url, info=info, progress=False)
    cv.commit_info()
    cv[:, :, :] = data.transpose(3, 2, 1, 0)
    vol = _ingest([url], tmp_path / "out.zarr", _spec({"name": "m{i}", "role": "marker"}))
    np.testing.assert_array_equal(vol.image[:], data)
    assert vol.voxel_size == pytest.approx((0.3, 0.1, 0.1))  # nanometres converted to micrometres


def test_npy_memmapped_and_several_sources_assembled(tmp_path):
    a = _data((5, 16, 16))
    b = _data((3, 5, 16, 16))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    tifffile.imwrite(tmp_path / "c.tif", a[::-1].copy())
    spec = _spec({"name": "fill", "role": "fill", "source": "a.npy"},
                 {"name": "bc{i}", "role": "barcode", "source": 1},
                 {"name": "pre", "role": "pre", "source": str(tmp_path / "c.tif")})
    vol = _ingest([tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.tif"], tmp_path / "out.zarr", spec,
                  voxel_size=(0.5, 0.2, 0.2))
    assert vol.channel_names == ["fill", "bc0", "bc1", "bc2", "pre"]
    np.testing.assert_array_equal(vol.image[0], a)
    np.testing.assert_array_equal(vol.image[1:4], b)
    np.testing.assert_array_equal(vol.image[4], a[::-1])


def test_sources_pickle_and_read_after_unpickling(tmp_path):
    """Blocks may run in other processes: sources travel as paths, not handles."""
    data = _data((4, 10, 12))
    tifffile.imwrite(tmp_path / "t.tif", data, compression="zlib", photometric="minisblack")
    np.save(tmp_path / "n.npy", data)
    for path in (tmp_path / "t.tif", tmp_path / "n.npy"):
        src = open_source(path)
        src.read(0, (slice(0, 1),) * 3)  # opens and caches a handle
        copy = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(copy.read(0, (slice(1, 3), slice(2, 9), slice(0, 12))), data[1:3, 2:9])


# -- output metadata, validators, pyramid, dtype -------------------------------------------------


def test_output_is_valid_ome_zarr_with_roles_windows_and_units(tmp_path):
    data = _data((2, 16, 32, 32))
    np.save(tmp_path / "x.npy", data)
    spec = _spec({"name": "fill", "role": "fill", "channel": 0, "color": "#00ff00"},
                 {"name": "bc0", "role": "barcode", "channel": 1, "window": [10, 20]})
    out = tmp_path / "out.zarr"
    vol = _ingest([tmp_path / "x.npy"], out, spec, voxel_size=(0.4, 0.1, 0.1), unit="um", levels=3)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    ms = attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer", "micrometer"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([1, 0.4, 0.1, 0.1])
    channels = attrs["ome"]["omero"]["channels"]
    assert channels[0]["color"] == "00FF00"
    lo, hi = np.percentile(data[0], [1, 99.9])
    assert channels[0]["window"]["start"] == pytest.approx(lo, abs=60)
    assert channels[0]["window"]["end"] == pytest.approx(hi, abs=60)
    assert (channels[1]["window"]["start"], channels[1]["window"]["end"]) == (10, 20)
    assert attrs["connectome"]["channels"] == [{"name": "fill", "role": "fill"}, {"name": "bc0", "role": "barcode"}]
    assert attrs["connectome"]["ingest"]["complete"] is True

    models = pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image

    assert isinstance(models.open_ome_zarr(zarr.open_group(str(out), mode="r")), Image)
    ngff_zarr = pytest.importorskip("ngff_zarr")
    image = ngff_zarr.from_ngff_zarr(str(out), validate=True).images[0]
    assert image.dims == ("c", "z", "y", "x") and image.scale["z"] == pytest.approx(0.4)
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    assert len(node.data) == 3
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert node.metadata["channel_names"] == ["fill", "bc0"]
    assert vol.levels == 3


def test_pyramid_matches_engine_and_handles_odd_shapes(tmp_path):
    data = _data((2, 16, 32, 32))
    np.save(tmp_path / "x.npy", data)
    vol = _ingest([tmp_path / "x.npy"], tmp_path / "out.zarr", _spec({"name": "c{i}", "role": "marker"}), levels=3)
    ref = Volume.create(tmp_path / "ref.zarr", shape_zyx=(16, 32, 32), chunks_zyx=(4, 16, 16), levels=3,
                        channels=[Channel("a", "marker"), Channel("b", "marker")])
    ref.image[:] = data
    ref.write_pyramid()
    for level in (1, 2):
        np.testing.assert_array_equal(vol.level(level)[:], ref.level(level)[:])
    odd = _data((1, 7, 13, 11))
    np.save(tmp_path / "odd.npy", odd)
    vol = _ingest([tmp_path / "odd.npy"], tmp_path / "odd.zarr", _spec({"name": "a", "role": "fill", "axes": "czyx"}),
                  voxel_size=(0.2, 0.2, 0.2), levels=2, chunks=(2, 4, 4))
    expected = downsample_mean(odd[0].astype(float), vol_factors := (2, 2, 2)).astype(np.uint16)
    assert vol.level(1).shape == (1, 4, 7, 6) and vol_factors == (2, 2, 2)
    np.testing.assert_array_equal(vol.level(1)[0], expected)
    assert expected[-1, -1, -1] == odd[0, 6, 12, 10]  # a corner window of one voxel is that voxel


def test_dtype_rule(tmp_path):
    data = np.array([0, 1, 255, 256, 1000, 65535], dtype=np.uint16).reshape(1, 2, 3)
    np.save(tmp_path / "x.npy", data)
    src = [tmp_path / "x.npy"]
    spec = _spec({"name": "a", "role": "fill"})
    vol = _ingest(src, tmp_path / "f.zarr", spec, dtype="float32")  # lossless: values unchanged
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol.image[0], data.astype(np.float32))
    from pipeline import ConfigError

    with pytest.raises(ConfigError, match="uint16 to uint8 can lose values; choose a scaling"):
        _ingest(src, tmp_path / "lossy.zarr", spec, dtype="uint8")
    assert not (tmp_path / "lossy.zarr").exists()
    vol = _ingest(src, tmp_path / "clip.zarr", spec, dtype="uint8", scaling="clip")
    np.testing.assert_array_equal(vol.image[0].ravel(), [0, 1, 255, 255, 255, 255])
    vol = _ingest(src, tmp_path / "range.zarr", spec, dtype="uint8", scaling="range")
    np.testing.assert_array_equal(vol.image[0].ravel(), np.rint(data.ravel().astype(float) * 255 / 65535))
    vol = _ingest(src, tmp_path / "win.zarr", spec, dtype="uint8", scaling="window")
    assert vol.image[0].min() == 0 and vol.image[0].max() == 255


def test_expansion_factor_records_both_coordinate_systems(tmp_path):
    np.save(tmp_path / "x.npy", _data((4, 8, 8)))
    vol = _ingest([tmp_path / "x.npy"], tmp_path / "out.zarr", _spec({"name": "a", "role": "fill"}),
                  voxel_size=(0.8, 0.4, 0.4), expansion_factor=4.0)
    assert vol.voxel_size == pytest.approx((0.2, 0.1, 0.1))  # biological
    expansion = vol.group.attrs["connectome"]["expansion"]
    assert expansion["factor"] == 4.0
    assert expansion["expanded_voxel_size"] == pytest.approx([0.8, 0.4, 0.4])
    assert expansion["biological_voxel_size"] == pytest.approx([0.2, 0.1, 0.1])


def test_sharded_blosc_output(tmp_path):
    data = _data((1, 12, 40, 40))
    np.save(tmp_path / "x.npy", data)
    vol = _ingest([tmp_path / "x.npy"], tmp_path / "out.zarr", _spec({"name": "a", "role": "fill"}),
                  chunks=(4, 8, 8), shards=(4, 16, 16), compression="blosc", levels=2)
    assert vol.image.shards == (1, 4, 16, 16)
    assert "blosc" in json.dumps(json.loads((vol.path / "0" / "zarr.json").read_text())["codecs"])
    np.testing.assert_array_equal(vol.image[:], data)
    expected = downsample_mean(data[0].astype(float), (2, 2, 2)).astype(np.uint16)
    np.testing.assert_array_equal(vol.level(1)[0], expected)


def test_channel_spec_yaml_relative_sources(tmp_path):
    np.save(tmp_path / "x.npy", _data((3, 2, 8, 8)))
    spec = tmp_path / "CHANNELS.yaml"
    spec.write_text(
        "sources: [x.npy]\n"
        "voxel_size: [1.0, 0.5, 0.5]\n"
        "channels:\n"
        "  - {name: fill, role: fill, channel: 0}\n"
        "  - {role: barcode, channel: 2, name: bc, color: FF00FF}\n"
    )
    config = load_channel_spec(spec)
    assert config.sources == [str(tmp_path / "x.npy")]
    assert isinstance(config.channels[0], ChannelSpec)
    vol = ingest([], tmp_path / "out.zarr", spec, progress=False)
    assert vol.channel_names == ["fill", "bc"]
    assert vol.voxel_size == (1.0, 0.5, 0.5)


def test_cli_parser(tmp_path, capsys):
    import argparse

    from ingest.cli import add_ingest_parser

    data = _data((2, 4, 8, 8))
    np.save(tmp_path / "x.npy", data)
    (tmp_path / "CHANNELS.yaml").write_text("channels:\n  - {name: 'c{i}', role: marker}\n")
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ingest", str(tmp_path / "x.npy"), str(tmp_path / "out.zarr"), "--channels",
                              str(tmp_path / "CHANNELS.yaml"), "--voxel-size", "0.5,0.1,0.1", "--chunks", "2,8,8",
                              "--levels", "2"])
    args.quiet = True
    assert args.func(args) == 0
    assert "ingested" in capsys.readouterr().out
    vol = Volume.open(tmp_path / "out.zarr")
    np.testing.assert_array_equal(vol.image[:], data)
    assert vol.chunks == (2, 8, 8) and vol.levels == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["ingest", "a", "b", "--channels", "c.yaml", "--voxel-size", "0,1,1"])


def _codecs(vol, level=0):
    return json.loads((vol.path / str(level) / "zarr.json").read_text())["codecs"]


def _blosc(codecs):
    return next(c["configuration"] for c in codecs if c["name"] == "blosc")


def test_default_codec_is_blosc_zstd_with_byte_shuffle(tmp_path):
    data = _data((2, 4, 16, 16))
    np.save(tmp_path / "x.npy", data)
    spec = _spec({"name": "a", "role": "fill", "channel": 0}, {"name": "b", "role": "barcode", "channel": 1})
    vol = _ingest([tmp_path / "x.npy"], tmp_path / "out.zarr", spec, levels=2)
    for level in (0, 1):
        blosc = _blosc(_codecs(vol, level))
        assert (blosc["cname"], blosc["clevel"], blosc["shuffle"], blosc["typesize"]) == ("zstd", 3, "shuffle", 2)
    np.testing.assert_array_equal(vol.image[:], data)


@pytest.mark.parametrize("compression, expected", [
    ("zstd", {"name": "zstd", "configuration": {"level": 1, "checksum": False}}),
    ("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}),
])
def test_compression_level(tmp_path, compression, expected):
    data = _data((1, 4, 16, 16))
    np.save(tmp_path / "x.npy", data)
    spec = _spec({"name": "a", "role": "fill"})
    vol = _ingest([tmp_path / "x.npy"], tmp_path / "out.zarr", spec, compression=compression, compression_level=1)
    codecs = _codecs(vol)
    if compression == "zstd":
        assert expected in codecs
    else:
        assert expected.items() <= _blosc(codecs).items()
    np.testing.assert_array_equal(vol.image[:], data)


def test_blocks_on_a_dask_cluster(tmp_path):
    """Sources and steps travel to worker processes; the result is the same."""
    from pipeline import ComputeConfig, Executor

    data = _data((3, 8, 32, 32))
    tifffile.imwrite(tmp_path / "x.tif", data.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "ZCYX"})
    spec = {"channels": [{"name": "c{i}", "role": "marker"}], "block_mib": 0.004}
    config = ComputeConfig(scheduler="local", n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with Executor(config) as executor:
        vol = _ingest([tmp_path / "x.tif"], tmp_path / "out.zarr", spec, levels=2, executor=executor)
    np.testing.assert_array_equal(vol.image[:], data)
    assert is_complete(vol.path)
