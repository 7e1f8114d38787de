"""`export(..., "all", ...)` and GraphML read back by networkx and python-igraph."""

from __future__ import annotations

import networkx as nx
import pytest

from graph.export import EXPORT_FORMATS, export
from test_export_fixtures import make_connectome, make_run_dir


def test_export_all_writes_every_format(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "all", tmp_path / "all", dust_threshold=100)
    for _, entry in EXPORT_FORMATS.values():
        assert (out / entry).exists(), entry
    assert (out / "precomputed" / "segmentation" / "skeletons" / "1").is_file()
    assert (out / "swc" / "1.swc").is_file()
    with pytest.raises(FileExistsError):
        export(run, "all", out)
    export(run, "all", out, overwrite=True, meshes=False)
    assert not (out / "precomputed" / "segmentation" / "mesh").exists()


def test_graphml_read_by_networkx_and_igraph(tmp_path):
    igraph = pytest.importorskip("igraph")
    conn = make_connectome()
    path = export(conn, "graphml", tmp_path / "c.graphml")
    g = nx.read_graphml(path, node_type=int)
    assert sorted(g.nodes) == [1, 2, 3, 4]
    assert g.nodes[2]["cell_type"] == "inh" and g.nodes[2]["barcode"] == "1100"
    assert g.edges[1, 2]["weight"] == 2
    ig = igraph.Graph.Read_GraphML(str(path))
    assert ig.vcount() == 4 and ig.ecount() == len(conn.edge_table)
    by_id = {v["id"]: v for v in ig.vs}
    assert by_id["2"]["cell_type"] == "inh" and by_id["2"]["barcode"] == "1100"
    weights = {(ig.vs[e.source]["id"], ig.vs[e.target]["id"]): e["weight"] for e in ig.es}
    assert weights[("1", "2")] == 2
