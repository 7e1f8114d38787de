"""Ingest on bad input (one-line errors naming the culprit, nothing marked complete) and resume."""

import json

import numpy as np
import pytest
import tifffile

import ingest.sources as sources_mod
from ingest import STATE_DIR, ingest, is_complete, load_channel_spec
from pipeline import Channel, ConfigError, InputError, PipelineError, Volume

RNG = np.random.default_rng(3)
_ORIGINAL_READ = sources_mod.ArraySource.read


def _data(shape):
    return RNG.integers(0, 4000, size=shape).astype(np.uint16)


def _run(sources, out, spec, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("chunks", (2, 8, 8))
    return ingest(sources, out, spec, **kw)


def _fails(exc_type, match, sources, out, spec, **kw):
    with pytest.raises(exc_type, match=match) as info:
        _run(sources, out, spec, **kw)
    assert "\n" not in str(info.value), str(info.value)
    assert not is_complete(out)
    return str(info.value)


ONE = {"channels": [{"name": "fill", "role": "fill"}]}


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _data((4, 16, 16)))
    return path


def test_missing_file(tmp_path):
    msg = _fails(InputError, "no such file or directory", [tmp_path / "nope.tif"], tmp_path / "o.zarr", ONE)
    assert "nope.tif" in msg
    assert not (tmp_path / "o.zarr").exists()


def test_truncated_tiffs(tmp_path):
    data = _data((6, 40, 50))
    for name, comp in (("plain.tif", None), ("comp.tif", "zlib")):
        for keep in (0.98, 0.5):  # lose the last page directories; lose image data too
            path = tmp_path / name
            tifffile.imwrite(path, data, compression=comp)
            raw = path.read_bytes()
            path.write_bytes(raw[: int(len(raw) * keep)])
            msg = _fails(InputError, "truncated", [path], tmp_path / f"{name}.zarr", ONE)
            assert name in msg
    folder = tmp_path / "planes"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"z{z}.tif", data[z])
    raw = (folder / "z1.tif").read_bytes()
    (folder / "z1.tif").write_bytes(raw[:1000])
    msg = _fails(InputError, "truncated TIFF", [folder], tmp_path / "planes.zarr", ONE)
    assert "z1.tif" in msg


def test_unreadable_tiff_page_stops_without_marking_complete(tmp_path):
    data = _data((6, 40, 50))
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[3].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset + 10: offset + 60] = bytes(50)
    path.write_bytes(bytes(raw))
    msg = _fails(InputError, "unreadable TIFF page 3", [path], tmp_path / "o.zarr", ONE)
    assert "bad.tif" in msg
    assert (tmp_path / "o.zarr").exists()  # partly written, resumable, not complete


def test_not_a_tiff(tmp_path):
    path = tmp_path / "junk.tif"
    path.write_bytes(b"not a tiff at all")
    _fails(InputError, "junk.tif: unreadable TIFF", [path], tmp_path / "o.zarr", ONE)


def test_shapes_differ(tmp_path):
    np.save(tmp_path / "a.npy", _data((4, 16, 16)))
    np.save(tmp_path / "b.npy", _data((4, 16, 15)))
    spec = {"channels": [{"name": "a", "role": "fill", "source": "a.npy"},
                         {"name": "b", "role": "pre", "source": "b.npy"}]}
    msg = _fails(InputError, "different shapes", [tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "o.zarr", spec)
    assert "(4, 16, 15)" in msg and "b.npy" in msg


def test_channel_that_does_not_exist(tmp_path):
    tifffile.imwrite(tmp_path / "img.ome.tif", _data((2, 3, 8, 8)), ome=True,
                     metadata={"axes": "CZYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    spec = {"channels": [{"name": "post", "role": "post", "channel": "PSD95"}]}
    msg = _fails(InputError, "no channel named 'PSD95'", [tmp_path / "img.ome.tif"], tmp_path / "o.zarr", spec)
    assert "'post'" in msg and "DAPI" in msg
    spec = {"channels": [{"name": "post", "role": "post", "channel": 5}]}
    _fails(InputError, "no channel 5", [tmp_path / "img.ome.tif"], tmp_path / "o.zarr", spec)
    import zarr

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    root.create_array("raw/bc00", data=_data((3, 8, 8)))
    spec = {"channels": [{"name": "bc9", "role": "barcode", "dataset": "raw/bc09"}]}
    msg = _fails(InputError, "no dataset 'raw/bc09'", [tmp_path / "p.zarr"], tmp_path / "o.zarr", spec)
    assert "bc00" in msg and "'bc9'" in msg


def test_duplicate_names_unknown_role_and_unknown_keys(tmp_path, npy):
    spec = {"channels": [{"name": "a", "role": "fill"}, {"name": "a", "role": "pre"}]}
    _fails(ConfigError, "two channels are named 'a'", [npy], tmp_path / "o.zarr", spec)
    spec = {"channels": [{"name": "a", "role": "axon"}]}
    msg = _fails(ConfigError, "unknown role 'axon'", [npy], tmp_path / "o.zarr", spec)
    assert "channels.0.role" in msg
    spec = {"channels": [{"name": "a", "role": "fill", "colour": "FF0000"}]}
    _fails(ConfigError, "channels.0.colour: unknown key", [npy], tmp_path / "o.zarr", spec)
    bad = tmp_path / "CHANNELS.yaml"
    bad.write_text("channels:\n  - {name: a, role: dendrite}\n")
    with pytest.raises(ConfigError, match="CHANNELS.yaml: channels.0.role: unknown role 'dendrite'"):
        load_channel_spec(bad)


def test_zero_size_volume(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((0, 16, 16), np.uint16))
    _fails(InputError, r"z.npy: zero-size volume", [tmp_path / "z.npy"], tmp_path / "o.zarr", ONE)


def test_voxel_size_must_be_positive(tmp_path, npy):
    _fails(ConfigError, "voxel size must be three positive numbers", [npy], tmp_path / "o.zarr", ONE,
           voxel_size=(0.0, 0.1, 0.1))
    _fails(ConfigError, "voxel size must be three positive numbers", [npy], tmp_path / "o.zarr",
           {**ONE, "voxel_size": [1, -1, 1]})
    _fails(ConfigError, "unknown length unit 'parsec'", [npy], tmp_path / "o.zarr", ONE, unit="parsec")
    _fails(ConfigError, "expansion factor must be a positive number", [npy], tmp_path / "o.zarr", ONE,
           expansion_factor=0)


def test_output_that_is_not_ours_is_refused_unless_overwrite(tmp_path, npy):
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _fails(InputError, "exists and is not an ingest output", [npy], out, ONE)
    assert (out / "precious.txt").exists()
    Volume.create(tmp_path / "other.zarr", shape_zyx=(4, 16, 16), channels=[Channel("x", "fill")])
    _fails(InputError, "not an ingest output", [npy], tmp_path / "other.zarr", ONE)
    vol = _run([npy], out, ONE, overwrite=True)
    assert not (out / "precious.txt").exists() and is_complete(out)
    np.testing.assert_array_equal(vol.image[0], np.load(npy))
    _fails(ConfigError, "must not contain or lie inside a source", [npy], tmp_path, ONE, overwrite=True)
    assert npy.exists()


def test_other_errors_are_pipeline_errors(tmp_path, npy):
    spec = {"channels": [{"name": "a", "role": "fill", "source": 3}]}
    _fails(ConfigError, "source index 3 is out of range", [npy], tmp_path / "o.zarr", spec)
    np.save(tmp_path / "y.npy", _data((4, 16, 16)))
    _fails(ConfigError, "2 sources are given; set 'source'", [npy, tmp_path / "y.npy"], tmp_path / "o.zarr", ONE)
    spec = {"channels": [{"name": "a", "role": "fill", "source": "x.npy"}]}
    _fails(ConfigError, r"not used by any channel", [npy, tmp_path / "y.npy"], tmp_path / "o.zarr", spec)
    np.save(tmp_path / "four.npy", _data((2, 4, 16, 16)))
    _fails(ConfigError, "has 2 channels", [tmp_path / "four.npy"], tmp_path / "o.zarr", ONE)
    assert issubclass(InputError, PipelineError) and issubclass(ConfigError, PipelineError)


# -- resume -----------------------------------------------------------------------------------------


class _Interrupt:
    """Wrap ArraySource.read: count calls and press Ctrl-C after ``after`` of them."""

    def __init__(self, monkeypatch, after=None):
        self.calls, self.after = 0, after

        def read(src, channel, region):
            self.calls += 1
            if self.after is not None and self.calls > self.after:
                raise KeyboardInterrupt
            return _ORIGINAL_READ(src, channel, region)

        monkeypatch.setattr(sources_mod.ArraySource, "read", read)


def test_interrupted_ingest_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    data = _data((2, 16, 32, 32))
    np.save(tmp_path / "x.npy", data)
    spec = {"channels": [{"name": "c{i}", "role": "marker"}], "block_mib": 0.002}  # one chunk per block
    kw = dict(chunks=(4, 16, 16), levels=2)
    reference = _run([tmp_path / "x.npy"], tmp_path / "ref.zarr", spec, **kw)
    n_blocks = 16 * 32 * 32 // (4 * 16 * 16)
    out = tmp_path / "o.zarr"

    counter = _Interrupt(monkeypatch, after=2 * 5 + 1)  # 5 blocks of 2 channels, then one read into block 6
    with pytest.raises(KeyboardInterrupt):
        _run([tmp_path / "x.npy"], out, spec, **kw)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["connectome"]["ingest"]["complete"] is False
    assert len(list((out / STATE_DIR / "ingest").glob("*.pkl"))) == 5

    # another spec cannot take over the unfinished output
    with pytest.raises(InputError, match="unfinished ingest of other sources or options"):
        _run([tmp_path / "x.npy"], out, spec, chunks=(4, 16, 16), levels=3)

    counter = _Interrupt(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the same source named another way is the same ingest
    vol = _run(["x.npy"], out, spec, **kw)
    assert counter.calls == 2 * (n_blocks - 5)  # finished blocks are not read again
    assert is_complete(out) and not (out / STATE_DIR).exists()
    for level in range(2):
        np.testing.assert_array_equal(vol.level(level)[:], reference.level(level)[:])
    assert vol.group.attrs["ome"]["omero"] == reference.group.attrs["ome"]["omero"]

    counter = _Interrupt(monkeypatch)
    _run([tmp_path / "x.npy"], out, spec, **kw)  # finished: nothing to do
    assert counter.calls == 0
