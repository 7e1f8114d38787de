"""Bad-input corpus: every kind of bad input is one exact error naming the culprit, and nothing is done.

Each case runs the workflow (``run_workflow``) and asserts the exact exception
class and the words that name the culprit, then runs the command line and
asserts exit code 2 without a traceback, and finally that the run was not
marked complete (no ``complete`` status, no tables, no done-marker of the
culprit block).

Decisions recorded here:

- *missing chunk*: Zarr v3 does not store chunks equal to the fill value, so a
  missing chunk is how an all-zero region is written; it reads as 0 and the run
  completes (that region has no neurons). It cannot be told from a lost file.
- *empty or constant fill channel*: refused (InputError) before any block runs;
  an empty connectome from it would look like success.
- *block smaller than the halo*: allowed. The read region is the write region
  grown by the halo and may span several neighbouring blocks; results do not
  depend on it (tests/test_blocks.py checks read regions for halos larger than
  the block), only efficiency does.
- *NaN / infinity in a float image*: refused when read (VolumeError naming the
  channels and region); integer and float images are accepted, bool and
  complex images are refused at open.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import Channel, Volume
from pipeline.errors import (ConfigError, InputError, MissingChannelError, PipelineError,
                             VolumeError)
from pipeline.storage import StorageError
from sample_data import SampleConfig, write_sample
from workflows.cli import main
from workflows.run import run_workflow
from workflows.spec import WorkflowConfig, load_workflow

TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
TABLES = ("neurons.parquet", "synapses.parquet", "edges.parquet")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "sample"
    write_sample(path, SampleConfig(**TINY))
    return path / "volume.zarr"


def _copy(sample, tmp_path, name="v.zarr") -> Path:
    dest = tmp_path / name
    shutil.copytree(sample, dest)
    return dest


def _workflow(tmp_path, volume, extra: str = "", block_shape=(16, 48, 48)) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(f"input: {{volume: {volume}}}\noutput: {tmp_path / 'run'}\n"
                    f"compute: {{scheduler: synchronous, device: cpu, block_shape: {list(block_shape)}}}\n"
                    + extra)
    return path


def _not_done(run: Path, culprit_block: int | None = None) -> None:
    """The run is not complete and the culprit block (or, when None, every block) has no done-marker."""
    if (run / "run.json").exists():
        assert json.loads((run / "run.json").read_text())["status"] != "complete"
    assert not any((run / name).exists() for name in TABLES)
    markers = list((run / "work").rglob("*.pkl")) if (run / "work").exists() else []
    if culprit_block is None:
        assert not markers, markers
    else:
        assert not [m for m in markers if m.name == f"{culprit_block}.pkl"]
    assert not (run / "run.lock").exists()


def _expect(workflow: Path, cls, *words, capsys=None):
    """``run_workflow`` raises exactly ``cls`` naming ``words``; the CLI exits 2 without a traceback."""
    with pytest.raises(PipelineError) as info:
        run_workflow(load_workflow(workflow), progress=False)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    for word in words:
        assert str(word) in str(info.value), f"{word!r} not in: {info.value}"
    if capsys is not None:
        capsys.readouterr()
        assert main(["-q", "run", str(workflow)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("connectome run: error:"), err
    return info.value


def _rewrite_attrs(volume: Path, edit) -> None:
    group = zarr.open_group(str(volume), mode="r+")
    attrs = group.attrs.asdict()
    edit(attrs)
    group.attrs.put(attrs)


def _replace_image(volume: Path, data: np.ndarray, chunks=None) -> None:
    group = zarr.open_group(str(volume), mode="r+")
    old = group["0"]
    array = group.create_array("0", shape=data.shape, dtype=data.dtype, overwrite=True,
                               chunks=chunks or tuple(min(c, s) for c, s in zip(old.chunks, data.shape)))
    array[...] = data


# -- damaged or unusual Zarr files -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_chunk_names_the_chunk_file(sample, tmp_path, capsys, damage):
    volume = _copy(sample, tmp_path)
    chunk = volume / "0" / "c" / "0" / "1" / "1" / "1"  # fill channel, block (1, 1, 1) = id 7
    chunk.write_bytes(b"not zstd" * 8 if damage == "corrupt" else chunk.read_bytes()[:16])
    _expect(_workflow(tmp_path, volume), VolumeError, "damaged chunk", str(chunk), "'fill'", capsys=capsys)
    _not_done(tmp_path / "run", culprit_block=7)


def test_missing_chunk_reads_as_zero_and_the_run_completes(sample, tmp_path):
    volume = _copy(sample, tmp_path)
    (volume / "0" / "c" / "0" / "1" / "1" / "1").unlink()  # the fill channel of z 16:32, y 48:96, x 48:96
    assert main(["-q", "run", str(_workflow(tmp_path, volume))]) == 0
    labels = zarr.open_array(str(tmp_path / "run" / "labels.zarr" / "neurons" / "0"), mode="r")[:]
    # The zero fill makes the region background, except where the contact pass grows labels into it from
    # its open faces (z 16, y 48, x 48) along the intact barcodes: at most radius 3 per round, three
    # rounds (measured: 9 voxels deep). Deeper in it is background.
    assert labels.max() > 0 and not labels[16 + 11:32, 48 + 11:96, 48 + 11:96].any()


@pytest.mark.parametrize("dtype", ["bool", "complex64"])
def test_unsupported_dtype(sample, tmp_path, capsys, dtype):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:]
    _replace_image(volume, (image > 500).astype(dtype))
    _expect(_workflow(tmp_path, volume), VolumeError, f"dtype {np.dtype(dtype)}", str(volume), capsys=capsys)
    _not_done(tmp_path / "run")


def test_wrong_number_of_dimensions(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:]
    _replace_image(volume, image[0], chunks=(16, 48, 48))
    _expect(_workflow(tmp_path, volume), VolumeError, "3 dimensions", "expected 4 (c, z, y, x)", capsys=capsys)
    _not_done(tmp_path / "run")


def test_channel_count_differs_from_metadata(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:]
    _replace_image(volume, image[:-2])
    n = image.shape[0]
    _expect(_workflow(tmp_path, volume), VolumeError, f"{n} channels described", f"has {n - 2}", capsys=capsys)
    _not_done(tmp_path / "run")


def test_zero_size_axis(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:]
    _replace_image(volume, image[:, :0], chunks=(1, 1, 48, 48))
    _expect(_workflow(tmp_path, volume), VolumeError, "is empty", capsys=capsys)
    _not_done(tmp_path / "run")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinity_in_float_input(sample, tmp_path, capsys, bad):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:].astype(np.float32)
    image[0, 20, 60, 60] = bad  # fill channel
    _replace_image(volume, image)
    _expect(_workflow(tmp_path, volume), VolumeError, "NaN or infinite", "['fill']", capsys=capsys)
    _not_done(tmp_path / "run")


def test_float_input_without_nan_runs(sample, tmp_path):
    """Float images are accepted: the NaN check passes and the run completes."""
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r")[:].astype(np.float32)
    _replace_image(volume, image)
    assert main(["-q", "run", str(_workflow(tmp_path, volume))]) == 0


@pytest.mark.parametrize("value, words", [(0, "empty (every voxel is 0)"), (700, "constant (every voxel is 700)")])
def test_empty_or_constant_volume(sample, tmp_path, capsys, value, words):
    volume = _copy(sample, tmp_path)
    image = zarr.open_array(str(volume / "0"), mode="r+")
    image[...] = value
    _expect(_workflow(tmp_path, volume), InputError, words, "'fill'", capsys=capsys)
    _not_done(tmp_path / "run")


# -- channel metadata ------------------------------------------------------------------------

def test_missing_role(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: a["connectome"]["channels"][0].update(role="membrane"))
    _expect(_workflow(tmp_path, volume), MissingChannelError, "role 'fill'", capsys=capsys)
    _not_done(tmp_path / "run")


def test_duplicate_channel_names(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: a["connectome"]["channels"][1].update(name="fill"))
    _expect(_workflow(tmp_path, volume), VolumeError, "duplicate channel names ['fill']", capsys=capsys)
    _not_done(tmp_path / "run")


def test_unknown_role(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: a["connectome"]["channels"][1].update(role="nucleus"))
    _expect(_workflow(tmp_path, volume), VolumeError, "unknown role 'nucleus'", capsys=capsys)
    _not_done(tmp_path / "run")


@pytest.mark.parametrize("voxel", [[0.0, 0.1, 0.1], [-1.0, 0.1, 0.1], ["0.3um", 0.1, 0.1], [1.0, 1.0]])
def test_bad_voxel_size(sample, tmp_path, capsys, voxel):
    volume = _copy(sample, tmp_path)

    def edit(attrs):
        attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0] + voxel

    _rewrite_attrs(volume, edit)
    _expect(_workflow(tmp_path, volume), VolumeError, "voxel size must be three positive finite numbers",
            capsys=capsys)
    _not_done(tmp_path / "run")


def test_wrong_ome_version(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: a["ome"].update(version="0.4"))
    _expect(_workflow(tmp_path, volume), VolumeError, "OME-Zarr version '0.4'", capsys=capsys)
    _not_done(tmp_path / "run")


def test_corrupt_group_metadata(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    (volume / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    _expect(_workflow(tmp_path, volume), VolumeError, str(volume), "not a Zarr group", capsys=capsys)
    _not_done(tmp_path / "run")


def test_input_is_a_file(tmp_path, capsys):
    volume = tmp_path / "v.zarr"
    volume.write_text("not a zarr")
    _expect(_workflow(tmp_path, volume), VolumeError, str(volume), capsys=capsys)
    _not_done(tmp_path / "run")


# -- workflow files --------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("input: {volume: v.zarr\ncompute: [", "malformed YAML at line"),
    ("input: {volume: v.zarr}\ncompute: {schedular: local}\n", "compute.schedular: unknown key"),
    ("input: {volume: v.zarr}\ncompute: {block_shape: big}\n", "compute.block_shape"),
    ("input: {volume: v.zarr}\ncompute: {retries: many}\n", "compute.retries"),
    ("input: {volume: v.zarr}\ncompute: 5\n", "compute"),
    ("input: {volume: v.zarr}\ncompute: {block_shape: [0, 64, 64]}\n", "every block size must be positive"),
    ("input: {volume: v.zarr}\ncompute: {block_shape: [-16, 64, 64]}\n", "every block size must be positive"),
    ("input: {volume: v.zarr}\ncompute: {block_shape: [16, 64]}\n", "compute.block_shape"),
    ("input: {volume: v.zarr}\ncompute: {n_workers: -1}\n", "compute.n_workers"),
    ("input: {volume: v.zarr}\ncompute: {device: tpu}\n", "compute.device"),
    ("- input\n- output\n", "the top level must be a mapping"),
    ("", "input: required key is missing"),
    ("input: {volume: v.zarr, sample: {path: s}}\n", "exactly one of 'volume'"),
])
def test_bad_workflow_file(tmp_path, capsys, text, words):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as info:
        load_workflow(path)
    assert type(info.value) is ConfigError and words in str(info.value), str(info.value)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_block_not_a_multiple_of_the_chunks(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _expect(_workflow(tmp_path, volume, block_shape=(16, 40, 48)), ConfigError, "multiple of the volume's chunk",
            "[16, 48, 48]", capsys=capsys)
    _not_done(tmp_path / "run")


# -- the run directory -----------------------------------------------------------------------

def test_output_is_a_file(sample, tmp_path, capsys):
    (tmp_path / "run").write_text("x")
    _expect(_workflow(tmp_path, sample), PipelineError, str(tmp_path / "run"), "not a folder", capsys=capsys)


def test_output_on_a_read_only_path(sample, tmp_path, capsys, monkeypatch):
    """Simulated: creating the run directory fails with EROFS (tests run as root, so chmod cannot)."""
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    _expect(_workflow(tmp_path, sample), PipelineError, str(tmp_path / "run"), "Read-only file system",
            capsys=capsys)
    monkeypatch.undo()
    assert not (tmp_path / "run").exists()


def test_disk_full_while_writing_a_block(sample, tmp_path, capsys, monkeypatch):
    """ENOSPC from a Zarr chunk write inside a block: one line naming the file; that block is not done."""
    from zarr.storage import LocalStore

    real_set = LocalStore.set

    async def full(self, key, value, *args, **kwargs):
        if Path(str(self.root)).name == "fragments" and key.startswith("c/"):
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(str(self.root)) / key))
        return await real_set(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", full)
    error = _expect(_workflow(tmp_path, sample), StorageError, "No space left on device", "work/fragments/c/0/0/0", "block 0",
                    capsys=capsys)
    assert error.errno == errno.ENOSPC
    run = tmp_path / "run"
    assert not list((run / "work" / "blocks" / "segment_fragments").glob("*.pkl"))
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not any((run / name).exists() for name in TABLES) and not (run / "run.lock").exists()


def test_disk_full_while_writing_tables(sample, tmp_path, capsys, monkeypatch):
    original = pd.DataFrame.to_parquet

    def full(self, path, *args, **kwargs):
        # the disk fills up when the final tables are written (work files before that still fit)
        if any(name in str(path) for name in TABLES):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    _expect(_workflow(tmp_path, sample), StorageError, "neurons.parquet", "No space left on device")
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not any((run / name).exists() for name in TABLES) and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("record", [{"format_version": 99, "status": "complete"}, {"status": "complete"}, "{oops"])
def test_run_directory_of_an_incompatible_version(sample, tmp_path, capsys, record):
    run = tmp_path / "run"
    run.mkdir()
    text = record if isinstance(record, str) else json.dumps(record)
    (run / "run.json").write_text(text)
    words = ("unreadable run record",) if isinstance(record, str) else ("format_version", "is not 1")
    _expect(_workflow(tmp_path, sample), PipelineError, str(run / "run.json"), *words, capsys=capsys)
    assert (run / "run.json").read_text() == text, "the old run record was overwritten"
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


# -- label ids beyond 32 bits ----------------------------------------------------------------

def test_huge_label_ids_are_measured_exactly(tmp_path):
    """Ids above 2**32 (and 2**53, where float64 stops being exact) keep their exact value and size."""
    from graph.measure import measure_neurons
    from pipeline import BlockGrid

    volume = Volume.create(tmp_path / "v.zarr", shape_zyx=(8, 32, 32), channels=[Channel("fill", "fill")],
                           chunks_zyx=(8, 16, 16))
    volume.image[...] = 100
    ids = np.array([2**32 + 1, 2**53 + 3, 2**64 - 2], dtype=np.uint64)
    labels = np.zeros((8, 32, 32), dtype=np.uint64)
    labels[:, :10, :10] = ids[0]
    labels[:, 12:30, 12:30] = ids[1]  # spans four blocks
    labels[:4, 30:, :] = ids[2]
    array = zarr.create_array(str(tmp_path / "labels.zarr"), shape=labels.shape, chunks=(8, 16, 16),
                              dtype="uint64", fill_value=0)
    array[...] = labels
    grid = BlockGrid((8, 32, 32), (8, 16, 16), chunks=(8, 16, 16))
    table = measure_neurons(volume, array, grid=grid, state_dir=tmp_path / "work")
    assert table["neuron_id"].dtype == np.uint64
    assert sorted(int(i) for i in table["neuron_id"]) == sorted(int(i) for i in ids)
    sizes = dict(zip((int(i) for i in table["neuron_id"]), table["size_voxels"]))
    assert sizes == {int(ids[0]): 800, int(ids[1]): 8 * 18 * 18, int(ids[2]): 4 * 2 * 32}


# -- property tests: the workflow parser -----------------------------------------------------

_KEYS = st.sampled_from(["scheduler", "n_workers", "threads_per_worker", "device", "block_shape", "retries",
                         "dashboard_address", "memory_limit", "bogus", "blockshape"])
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                    st.text(max_size=5), st.lists(st.integers(-4, 200), max_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compute=st.dictionaries(_KEYS, _VALUES, max_size=4),
       top=st.dictionaries(st.sampled_from(["name", "output", "puncta", "nonsense"]), _VALUES, max_size=2))
def test_parser_accepts_or_names_the_bad_key(tmp_path, compute, top):
    """Any mapping either validates or raises ConfigError naming each bad key path; nothing else escapes."""
    import yaml

    data = {"input": {"volume": "v.zarr"}, "compute": compute, **top}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        config = load_workflow(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: invalid configuration")
        for key in ("bogus", "blockshape"):
            if key in compute:
                assert f"compute.{key}: unknown key" in message
        if "nonsense" in top:
            assert "nonsense: unknown key" in message
    else:
        assert isinstance(config, WorkflowConfig)
        assert all(b > 0 for b in config.compute.block_shape)
        assert not {"bogus", "blockshape"} & set(compute) and "nonsense" not in top


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abc:{}[]-,'\" \n\t!&*#|>%@`01")), max_size=40))
def test_parser_never_crashes_on_garbage_yaml(tmp_path, text):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    try:
        load_workflow(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


# -- paths that would write outside the run directory (workflows.spec.check_write_paths) -----

def _canary(folder: Path) -> Path:
    """A folder outside the run holding one file that must survive the refused run."""
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("precious")
    return folder


def _ingest_workflow(tmp_path, sample, out, overwrite=True) -> Path:
    channels = sample.parent / "raw" / "channels.yaml"
    path = tmp_path / "wf.yaml"
    path.write_text(f"input: {{ingest: {{channels: '{channels}', out: '{out}', overwrite: {str(overwrite).lower()}}}}}\n"
                    f"output: {tmp_path / 'run'}\n"
                    "compute: {scheduler: synchronous, device: cpu, block_shape: [16, 48, 48]}\n")
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_ingest_overwrite_outside_the_run_directory(sample, tmp_path, capsys, how):
    """``input.ingest.overwrite: true`` would delete what is at ``out``: only allowed inside the run directory."""
    victim = _canary(tmp_path / "elsewhere" / "v.zarr")
    run = tmp_path / "run"
    if how == "dotdot":
        out = f"{run}/../elsewhere/v.zarr"          # lexically under run/, resolves beside it
    elif how == "absolute":
        out = str(victim)
    else:
        run.mkdir()
        (run / "data").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        out = f"{run}/data/v.zarr"                  # a link inside the run that leads out of it
    _expect(_ingest_workflow(tmp_path, sample, out), ConfigError, "input.ingest.out", out, str(victim),
            "outside the run directory", capsys=capsys)
    assert (victim / "keep.txt").read_text() == "precious"
    _not_done(run)
    assert not (run / "run.json").exists()


def test_ingest_output_may_not_be_the_run_directory_or_contain_it(sample, tmp_path, capsys):
    run = tmp_path / "run"
    _expect(_ingest_workflow(tmp_path, sample, run, overwrite=False), ConfigError, "input.ingest.out", str(run),
            "is the run directory", capsys=capsys)
    _expect(_ingest_workflow(tmp_path, sample, tmp_path, overwrite=False), ConfigError, "input.ingest.out",
            "contains the run directory", capsys=capsys)
    _expect(_ingest_workflow(tmp_path, sample, run / "work", overwrite=True), ConfigError, "input.ingest.out",
            "'work'", capsys=capsys)
    assert not run.exists()


@pytest.mark.parametrize("entry", ["work", "labels.zarr", "neurons.parquet", "run.lock"])
def test_run_entry_that_is_a_symlink_out_of_the_run_directory(sample, tmp_path, capsys, entry):
    """A run writes its own entries; one that is a symbolic link leading outside is refused before any block."""
    outside = _canary(tmp_path / "outside")
    run = tmp_path / "run"
    run.mkdir()
    (run / entry).symlink_to(outside, target_is_directory=True)
    _expect(_workflow(tmp_path, sample), ConfigError, "output:", str(run / entry), str(outside),
            "outside the run directory", capsys=capsys)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in run.iterdir()) == [entry]


def test_symlink_one_level_down_out_of_the_run_directory(sample, tmp_path, capsys):
    outside = _canary(tmp_path / "outside")
    run = tmp_path / "run"
    (run / "work").mkdir(parents=True)
    (run / "work" / "fragments").symlink_to(outside, target_is_directory=True)
    _expect(_workflow(tmp_path, sample), ConfigError, str(run / "work" / "fragments"), str(outside), capsys=capsys)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_symlink_that_stays_inside_the_run_directory_is_fine(sample, tmp_path):
    run = tmp_path / "run"
    (run / "scratch").mkdir(parents=True)
    (run / "work").symlink_to(run / "scratch", target_is_directory=True)
    assert main(["-q", "run", str(_workflow(tmp_path, sample))]) == 0
    assert (run / "scratch" / "blocks").is_dir()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_sample_path_over_an_existing_folder(tmp_path, capsys, how):
    """The sample is generated where nothing is; an existing folder (any spelling) is never replaced."""
    victim = _canary(tmp_path / "home" / "data")
    run = tmp_path / "run"
    if how == "dotdot":
        given = f"{run}/../home/data"
    elif how == "absolute":
        given = str(victim)
    else:
        (tmp_path / "link").symlink_to(victim, target_is_directory=True)
        given = str(tmp_path / "link")
    path = tmp_path / "wf.yaml"
    path.write_text(f"input: {{sample: {{path: '{given}'}}}}\noutput: {run}\n"
                    "compute: {scheduler: synchronous, device: cpu}\n")
    _expect(path, ConfigError, "input.sample.path", given, str(victim), "not a generated sample", capsys=capsys)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert not run.exists()


def test_cli_output_override_is_checked_too(sample, tmp_path, capsys):
    """``--output`` replaces the YAML's run directory; the rules apply to the run directory it names."""
    outside = _canary(tmp_path / "outside")
    other = tmp_path / "other"
    other.mkdir()
    (other / "work").symlink_to(outside, target_is_directory=True)
    capsys.readouterr()
    assert main(["-q", "run", str(_workflow(tmp_path, sample)), "--output", str(other)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(other / "work") in err and str(outside) in err, err
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("target", [".", "..", "work", "neurons.parquet", "labels.zarr/neurons"])
def test_export_never_replaces_the_run_it_reads(tmp_path, capsys, target):
    from graph.export import ExportError, ExportPathError, export

    run = tmp_path / "runs" / "r"
    (run / "labels.zarr").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    output = run / target
    with pytest.raises(ExportPathError) as info:
        export(run, "graphml", output, overwrite=True)
    assert isinstance(info.value, ExportError) and isinstance(info.value, ConfigError)
    assert str(output) in str(info.value)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "graphml", "--output", str(output), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(output) in err, err
    assert (run / "run.json").read_text() == "{}" and (run / "labels.zarr").is_dir()


# -- what the workflow asks for against what the volume has -----------------------------------

def _set_role(attrs, name, role):
    for channel in attrs["connectome"]["channels"]:
        if channel["name"] == name:
            channel["role"] = role


def test_synapses_without_pre_and_post_channels_fail_before_any_block(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: (_set_role(a, "pre", "marker"), _set_role(a, "post", "marker")))
    error = _expect(_workflow(tmp_path, volume), MissingChannelError, "'pre' or 'post'",
                    "synapses: {enabled: false}", capsys=capsys)
    assert "'pre': 'marker'" in str(error)          # the channels it has, with their roles
    _not_done(tmp_path / "run")


def test_cell_type_rule_naming_an_absent_marker_fails_before_any_block(sample, tmp_path, capsys):
    volume = _copy(sample, tmp_path)
    rules = "cell_types: {rules: [{type: sst, require: {sst: high}}]}\n"
    _expect(_workflow(tmp_path, volume, rules), ConfigError, "unknown marker 'sst'", "'vglut'", capsys=capsys)
    _not_done(tmp_path / "run")
    _expect(_workflow(tmp_path, volume, "cell_types: {normalize_by: nuclei}\n"), ConfigError,
            "normalize_by", "'nuclei'")
    _not_done(tmp_path / "run")


def test_neurons_only_run_needs_no_synapse_channels(sample, tmp_path):
    volume = _copy(sample, tmp_path)
    _rewrite_attrs(volume, lambda a: (_set_role(a, "pre", "marker"), _set_role(a, "post", "marker")))
    run = run_workflow(load_workflow(_workflow(tmp_path, volume, "synapses: {enabled: false}\n")), progress=False)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert len(pd.read_parquet(run / "neurons.parquet")) > 0
    synapses = pd.read_parquet(run / "synapses.parquet")
    edges = pd.read_parquet(run / "edges.parquet")
    assert synapses.empty and {"pre_neuron", "post_neuron", "confidence"} <= set(synapses.columns)
    assert edges.empty and {"pre", "post", "synapse_count"} <= set(edges.columns)
    assert not (run / "work" / "puncta_pre").exists()
