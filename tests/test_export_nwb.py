"""NWB export read back with pynwb (NWBHDF5IO) and checked by pynwb's validator."""

from __future__ import annotations

import numpy as np
import pytest

from graph import Connectome
from graph.export import export
from test_export_fixtures import VOXEL_SIZE, make_connectome, make_labels, make_run_dir

pynwb = pytest.importorskip("pynwb")


def _validate(path) -> list:
    errors = pynwb.validate(path=str(path))
    # pynwb < 3 returned (errors, status); >= 3 returns the list.
    if isinstance(errors, tuple):
        errors = errors[0]
    return list(errors)


def test_nwb_round_trip_and_validate(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "nwb", tmp_path / "c.nwb")
    assert out.is_file()
    assert _validate(out) == []
    conn = make_connectome()
    lab = make_labels()
    vz, vy, vx = VOXEL_SIZE
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        # Segmentation: one ROI per neuron (id = neuron_id), voxel masks rebuild the labels.
        ps = nwb.processing["ophys"]["ImageSegmentation"]["neurons"]
        assert ps.id.data[:].tolist() == [1, 2, 3, 4]
        plane = ps.imaging_plane
        assert list(plane.grid_spacing) == pytest.approx([vx, vy, vz])
        assert plane.grid_spacing_unit == "micrometers"
        rebuilt = np.zeros(lab.shape, dtype="uint64")
        for row in range(len(ps)):
            vm = np.asarray(ps["voxel_mask"][row])
            nid = ps.id.data[row]
            if len(vm):
                rebuilt[vm["z"], vm["y"], vm["x"]] = nid
                assert np.all(vm["weight"] == 1)
        np.testing.assert_array_equal(rebuilt, lab)
        assert len(ps["voxel_mask"][3]) == 0  # neuron 4 has no voxels
        assert list(ps["cell_type"].data[:]) == ["exc", "inh", "exc", ""]
        assert list(ps["barcode"].data[:]) == ["0101", "1100", "0011", "1111"]

        neurons = nwb.processing["connectome"]["neurons"].to_dataframe()
        src = conn.neuron_table
        assert neurons.index.tolist() == [1, 2, 3, 4]
        assert neurons["cell_type"].tolist() == ["exc", "inh", "exc", ""]
        assert neurons["barcode"].tolist() == src["barcode"].tolist()
        assert neurons["size_voxels"].tolist() == src["size_voxels"].tolist()
        assert neurons["x_um"].to_numpy() == pytest.approx(src["x"].to_numpy() * vx)
        assert neurons["z_um"].to_numpy() == pytest.approx(src["z"].to_numpy() * vz)
        assert neurons["cell_type_confidence"].to_numpy() == pytest.approx(
            src["cell_type_confidence"].to_numpy())
        table = nwb.processing["connectome"]["neurons"]
        assert "micrometers" in table["x_um"].description

        syn = nwb.processing["connectome"]["synapses"].to_dataframe()
        ssrc = conn.synapse_table
        assert syn.index.tolist() == ssrc["synapse_id"].tolist()
        assert syn["pre_neuron"].tolist() == ssrc["pre_neuron"].tolist()
        assert syn["post_neuron"].tolist() == ssrc["post_neuron"].tolist()
        assert syn["confidence"].to_numpy() == pytest.approx(ssrc["confidence"].to_numpy())
        assert syn["post_y_um"].to_numpy() == pytest.approx(ssrc["post_y"].to_numpy() * vy)
        assert syn["pre_z_um"].to_numpy() == pytest.approx(ssrc["pre_z"].to_numpy() * vz)

        edges = nwb.processing["connectome"]["edges"].to_dataframe()
        esrc = conn.edge_table
        assert list(zip(edges.pre, edges.post, edges.synapse_count)) == list(
            zip(esrc.pre, esrc.post, esrc.synapse_count))


def test_nwb_reader_helper_and_cli_validator(tmp_path):
    import subprocess
    import sys

    from graph.export_nwb import read_label_image

    run = make_run_dir(tmp_path / "run")
    out = export(run, "nwb", tmp_path / "c.nwb", slab=3)
    np.testing.assert_array_equal(read_label_image(out, make_labels().shape), make_labels())
    from pathlib import Path

    cli = Path(sys.executable).with_name("pynwb-validate")
    if not cli.exists():
        pytest.skip("pynwb-validate CLI not installed next to the interpreter")
    proc = subprocess.run([str(cli), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.lower().replace("no errors", ""), proc.stdout


def test_nwb_empty_and_tables_only(tmp_path):
    conn = make_connectome()
    empty = Connectome(conn.neuron_table.iloc[:0], conn.synapse_table.iloc[:0],
                       meta={"voxel_size": list(VOXEL_SIZE)})
    out = export(empty, "nwb", tmp_path / "e.nwb", labels=np.zeros((4, 5, 6), dtype="uint64"))
    assert _validate(out) == []
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert len(nwb.processing["ophys"]["ImageSegmentation"]["neurons"]) == 0
        assert len(nwb.processing["connectome"]["neurons"]) == 0
        assert len(nwb.processing["connectome"]["synapses"]) == 0
    # Without a label image only the tables are written.
    out2 = export(conn, "nwb", tmp_path / "t.nwb", segmentation=False)
    assert _validate(out2) == []
    with pynwb.NWBHDF5IO(str(out2), "r") as io:
        nwb = io.read()
        assert "ophys" not in nwb.processing
        assert len(nwb.processing["connectome"]["synapses"]) == 7


def test_nwb_bad_input(tmp_path):
    from graph.export_common import ExportError

    conn = make_connectome()
    with pytest.raises(ExportError, match="label image"):
        export(conn, "nwb", tmp_path / "x.nwb")
    with pytest.raises(ExportError, match="voxel size"):
        export(make_connectome(with_meta=False), "nwb", tmp_path / "x.nwb", segmentation=False)
    with pytest.raises(ExportError, match="slab"):
        export(conn, "nwb", tmp_path / "x.nwb", labels=make_labels(), slab=0)
    path = export(conn, "nwb", tmp_path / "x.nwb", labels=make_labels())
    with pytest.raises(FileExistsError):
        export(conn, "nwb", path, labels=make_labels())
    export(conn, "nwb", path, labels=make_labels(), overwrite=True)
    assert not list(tmp_path.glob(".*tmp*"))
