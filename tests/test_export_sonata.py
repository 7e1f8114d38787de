"""SONATA nodes/edges read back with libsonata."""

from __future__ import annotations

import pytest

from graph import Connectome
from graph.export import export
from test_export_fixtures import VOXEL_SIZE, make_connectome, make_run_dir

libsonata = pytest.importorskip("libsonata")


def test_sonata_read_by_libsonata(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "sonata", tmp_path / "sonata")
    conn = make_connectome()
    nodes = libsonata.NodeStorage(str(out / "nodes.h5")).open_population("neurons")
    assert nodes.size == 4
    sel = nodes.select_all()
    assert nodes.get_attribute("neuron_id", sel).tolist() == [1, 2, 3, 4]
    assert list(nodes.get_attribute("cell_type", sel)) == ["exc", "inh", "exc", ""]
    assert list(nodes.get_attribute("barcode", sel)) == ["0101", "1100", "0011", "1111"]
    vz, vy, vx = VOXEL_SIZE
    assert nodes.get_attribute("x", sel) == pytest.approx(conn.neuron_table["x"] * vx)
    assert nodes.get_attribute("z", sel) == pytest.approx(conn.neuron_table["z"] * vz)

    edges = libsonata.EdgeStorage(str(out / "edges.h5")).open_population("neurons__neurons")
    assert edges.source == "neurons" and edges.target == "neurons"
    esel = edges.select_all()
    ids = nodes.get_attribute("neuron_id", sel)
    pairs = sorted(zip(ids[edges.source_nodes(esel)].tolist(), ids[edges.target_nodes(esel)].tolist()))
    syn = conn.synapse_table
    keep = (syn.pre_neuron != 0) & (syn.post_neuron != 0) & (syn.pre_neuron != syn.post_neuron)
    assert pairs == sorted(zip(syn.pre_neuron[keep].tolist(), syn.post_neuron[keep].tolist()))
    # Rebuilt neuron-level weights equal the edges table.
    weights = {}
    for p in pairs:
        weights[p] = weights.get(p, 0) + 1
    e = conn.edge_table
    assert weights == dict(zip(zip(e.pre.tolist(), e.post.tolist()), e.synapse_count.tolist()))
    # Indices work: afferent edges of node 1 (neuron 2) are synapses 10 and 11.
    aff = edges.afferent_edges([1])
    assert sorted(edges.get_attribute("synapse_id", aff).tolist()) == [10, 11]
    conf = edges.get_attribute("confidence", esel)
    sid = edges.get_attribute("synapse_id", esel)
    assert dict(zip(sid.tolist(), conf.tolist())) == pytest.approx(
        dict(zip(syn.synapse_id[keep].tolist(), syn.confidence[keep].tolist())))
    post_x = edges.get_attribute("afferent_center_x", esel)
    want = dict(zip(syn.synapse_id[keep].tolist(), (syn.post_x[keep] * vx).tolist()))
    assert post_x.tolist() == pytest.approx([want[s] for s in sid.tolist()])

    cfg = libsonata.CircuitConfig.from_file(str(out / "circuit_config.json"))
    assert "neurons" in cfg.node_populations and "neurons__neurons" in cfg.edge_populations


def test_sonata_empty(tmp_path):
    conn = make_connectome()
    empty = Connectome(conn.neuron_table.iloc[:0], conn.synapse_table.iloc[:0],
                       meta={"voxel_size": list(VOXEL_SIZE)})
    out = export(empty, "sonata", tmp_path / "s")
    nodes = libsonata.NodeStorage(str(out / "nodes.h5")).open_population("neurons")
    edges = libsonata.EdgeStorage(str(out / "edges.h5")).open_population("neurons__neurons")
    assert nodes.size == 0 and edges.size == 0
    # libsonata raises on select_all() of an empty population: check the attributes.
    assert {"cell_type", "barcode", "neuron_id"} <= set(nodes.attribute_names)
