"""Tests for graph.connectome and graph.export on small hand-made tables."""

from __future__ import annotations

import io
import json

import networkx as nx
import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from graph import Connectome, edges_from_synapses, write_graphml
from graph.export import _graphml_value

U64 = "uint64"

# Neurons 1,2 excitatory, 3,4 inhibitory, 5 pv (isolated).
NEURONS = pd.DataFrame(
    {
        "neuron_id": np.array([1, 2, 3, 4, 5], dtype=U64),
        "size_voxels": np.array([100, 200, 300, 400, 50], dtype="int64"),
        "z": [1.0, 2.0, 3.0, 4.0, 5.0],
        "y": [10.0, 20.0, 30.0, 40.0, 50.0],
        "x": [0.5, 1.5, 2.5, 3.5, 4.5],
        "barcode": ["01", "10", "11", "00", "01"],
        "barcode_confidence": [0.9, 0.8, 0.7, 0.6, 0.5],
        "cell_type": ["exc", "exc", "inh", "inh", "pv"],
        "cell_type_confidence": [0.95, 0.85, 0.75, 0.65, 0.55],
        "mean_fill": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
)

# (synapse_id, pre, post, confidence); id 9 is an autapse, id 10 has post 0.
_SYN = [
    (1, 1, 2, 0.9),
    (2, 1, 2, 0.7),
    (3, 1, 3, 0.5),
    (4, 2, 1, 0.8),
    (5, 3, 4, 0.6),
    (6, 3, 4, 0.4),
    (7, 3, 4, 1.0),
    (8, 4, 1, 0.25),
    (9, 2, 2, 0.9),
    (10, 1, 0, 0.95),
    (11, 4, 2, 0.5),
]


def _synapses() -> pd.DataFrame:
    sid, pre, post, conf = map(list, zip(*_SYN))
    n = len(sid)
    base = np.arange(n, dtype="float64")
    return pd.DataFrame(
        {
            "synapse_id": np.array(sid, dtype="int64"),
            "pre_neuron": np.array(pre, dtype=U64),
            "post_neuron": np.array(post, dtype=U64),
            "pre_z": base,
            "pre_y": base + 0.25,
            "pre_x": base + 0.5,
            "post_z": base + 1.0,
            "post_y": base + 1.25,
            "post_x": base + 1.5,
            "z_um": base * 2,
            "y_um": base * 0.5,
            "x_um": base * 0.5,
            "confidence": np.array(conf, dtype="float64"),
        }
    )


SYNAPSES = _synapses()

EXPECTED_EDGES = pd.DataFrame(
    {
        "pre": np.array([1, 1, 2, 3, 4, 4], dtype=U64),
        "post": np.array([2, 3, 1, 4, 1, 2], dtype=U64),
        "synapse_count": np.array([2, 1, 1, 3, 1, 1], dtype="int64"),
        "confidence_sum": [1.6, 0.5, 0.8, 2.0, 0.25, 0.5],
        "confidence_mean": [0.8, 0.5, 0.8, 2.0 / 3.0, 0.25, 0.5],
    }
)

TYPES = {1: "exc", 2: "exc", 3: "inh", 4: "inh", 5: "pv"}


def _adj(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    """Expected adjacencies frame from (pre, post, weight, confidence_mean) rows."""
    pre = [r[0] for r in rows]
    post = [r[1] for r in rows]
    return pd.DataFrame(
        {
            "pre": np.array(pre, dtype=U64),
            "post": np.array(post, dtype=U64),
            "weight": np.array([r[2] for r in rows], dtype="int64"),
            "confidence_mean": np.array([r[3] for r in rows], dtype="float64"),
            "pre_type": pd.Series([TYPES[p] for p in pre], dtype="str"),
            "post_type": pd.Series([TYPES[p] for p in post], dtype="str"),
        }
    )


@pytest.fixture
def conn() -> Connectome:
    return Connectome.from_tables(NEURONS, SYNAPSES, meta={"name": "toy"})


# --------------------------------------------------------------------------- edges


def test_edges_from_synapses_drops_zero_and_autapses():
    pdt.assert_frame_equal(edges_from_synapses(SYNAPSES), EXPECTED_EDGES)


def test_edges_from_synapses_empty():
    out = edges_from_synapses(SYNAPSES[SYNAPSES["synapse_id"].isin([9, 10])])
    assert list(out.columns) == list(EXPECTED_EDGES.columns)
    assert len(out) == 0
    pdt.assert_series_equal(out.dtypes, EXPECTED_EDGES.dtypes)


def test_edges_from_synapses_missing_column():
    with pytest.raises(ValueError, match="confidence"):
        edges_from_synapses(SYNAPSES.drop(columns="confidence"))


def test_from_tables_computes_edges_and_keeps_meta(conn):
    pdt.assert_frame_equal(conn.edge_table, EXPECTED_EDGES)
    assert conn.meta == {"name": "toy"}
    assert repr(conn) == "Connectome(neurons=5, synapses=11, edges=6, cell_types=3)"
    assert conn.cell_types == ["exc", "inh", "pv"]
    np.testing.assert_array_equal(conn.neuron_ids, np.array([1, 2, 3, 4, 5], dtype=U64))


def test_from_tables_normalises_dtypes_and_order():
    neurons = NEURONS.iloc[::-1].astype({"neuron_id": "int64"})
    synapses = SYNAPSES.iloc[::-1].astype({"pre_neuron": "int64", "post_neuron": "int64"})
    c = Connectome.from_tables(neurons, synapses)
    pdt.assert_frame_equal(c.neuron_table, NEURONS)
    pdt.assert_frame_equal(c.synapse_table, SYNAPSES)
    pdt.assert_frame_equal(c.edge_table, EXPECTED_EDGES)


def test_from_tables_uses_given_edges():
    edges = EXPECTED_EDGES.iloc[:2]
    c = Connectome.from_tables(NEURONS, SYNAPSES, edges)
    pdt.assert_frame_equal(c.edge_table, edges)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"neurons": NEURONS.drop(columns=["cell_type", "z"])},
            ValueError,
            r"\['z', 'cell_type'\]",
        ),
        ({"synapses": SYNAPSES.drop(columns="post_x")}, ValueError, "post_x"),
        ({"neurons": NEURONS.iloc[[0, 0, 1, 2, 3, 4]]}, ValueError, r"duplicate neuron_id.*\[1\]"),
        ({"synapses": SYNAPSES.assign(synapse_id=1)}, ValueError, "duplicate synapse_id"),
        (
            {"synapses": SYNAPSES.assign(post_neuron=np.uint64(99))},
            ValueError,
            r"post_neuron.*\[99\]",
        ),
        ({"synapses": SYNAPSES.assign(confidence=1.5)}, ValueError, "confidence"),
        ({"neurons": NEURONS.assign(neuron_id=np.arange(5))}, ValueError, "neuron_id 0"),
        ({"neurons": "nope"}, TypeError, "neurons table"),
    ],
)
def test_from_tables_validation(kwargs, exc, match):
    args = {"neurons": NEURONS, "synapses": SYNAPSES, **kwargs}
    with pytest.raises(exc, match=match):
        Connectome.from_tables(**args)


def test_from_tables_rejects_bad_edges():
    with pytest.raises(ValueError, match="edges table is missing required columns"):
        Connectome.from_tables(NEURONS, SYNAPSES, EXPECTED_EDGES.drop(columns="confidence_sum"))
    bad = EXPECTED_EDGES.assign(post=np.uint64(42))
    with pytest.raises(ValueError, match=r"\[42\]"):
        Connectome.from_tables(NEURONS, SYNAPSES, bad)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(conn, tmp_path):
    run = tmp_path / "run"
    conn.save(run)
    assert sorted(p.name for p in run.iterdir()) == [
        "edges.parquet",
        "neurons.parquet",
        "synapses.parquet",
    ]
    (run / "run.json").write_text(json.dumps({"config": {"seed": 3}, "version": "1"}))
    loaded = Connectome.load(run)
    pdt.assert_frame_equal(loaded.neuron_table, conn.neuron_table)
    pdt.assert_frame_equal(loaded.synapse_table, conn.synapse_table)
    pdt.assert_frame_equal(loaded.edge_table, conn.edge_table)
    assert loaded.meta == {"config": {"seed": 3}, "version": "1"}
    assert loaded.run_dir == run


def test_save_overwrites_and_writes_meta(conn, tmp_path):
    conn.save(tmp_path)
    sub = Connectome.from_tables(NEURONS, SYNAPSES.iloc[:3], meta={"a": 1})
    sub.save(tmp_path, write_meta=True)
    loaded = Connectome.load(tmp_path)
    assert len(loaded.synapse_table) == 3
    assert loaded.meta == {"a": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_without_run_json(conn, tmp_path):
    conn.save(tmp_path)
    assert Connectome.load(tmp_path).meta == {}


@pytest.mark.parametrize("name", ["neurons.parquet", "synapses.parquet", "edges.parquet"])
def test_load_missing_file(conn, tmp_path, name):
    conn.save(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        Connectome.load(tmp_path)


def test_load_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        Connectome.load(tmp_path / "nope")


def test_load_missing_column_names_file(conn, tmp_path):
    conn.save(tmp_path)
    SYNAPSES.drop(columns=["confidence"]).to_parquet(tmp_path / "synapses.parquet")
    with pytest.raises(ValueError, match=r"synapses\.parquet.*\['confidence'\]"):
        Connectome.load(tmp_path)
    conn.save(tmp_path)
    EXPECTED_EDGES.drop(columns="synapse_count").to_parquet(tmp_path / "edges.parquet")
    with pytest.raises(ValueError, match=r"edges\.parquet.*\['synapse_count'\]"):
        Connectome.load(tmp_path)


def test_load_bad_run_json(conn, tmp_path):
    conn.save(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="run.json"):
        Connectome.load(tmp_path)


# --------------------------------------------------------------------------- queries


def test_neurons_query(conn):
    pdt.assert_frame_equal(conn.neurons(), NEURONS)
    pdt.assert_frame_equal(conn.neurons(ids=3), NEURONS.iloc[[2]].reset_index(drop=True))
    pdt.assert_frame_equal(
        conn.neurons(ids=[4, np.uint64(1)]), NEURONS.iloc[[0, 3]].reset_index(drop=True)
    )
    pdt.assert_frame_equal(conn.neurons(type="inh"), NEURONS.iloc[[2, 3]].reset_index(drop=True))
    pdt.assert_frame_equal(
        conn.neurons(type=["pv", "exc"]), NEURONS.iloc[[0, 1, 4]].reset_index(drop=True)
    )
    pdt.assert_frame_equal(conn.neurons(barcode="01"), NEURONS.iloc[[0, 4]].reset_index(drop=True))
    pdt.assert_frame_equal(
        conn.neurons(type="exc", min_size=150), NEURONS.iloc[[1]].reset_index(drop=True)
    )
    assert conn.neurons(type="nonexistent").empty
    assert conn.neurons(ids=[]).empty


def test_neurons_query_unknown_id(conn):
    with pytest.raises(KeyError, match="7"):
        conn.neurons(ids=[1, 7])
    with pytest.raises(TypeError):
        conn.neurons(ids="1")


def test_synapses_query(conn):
    def rows(ids):
        return SYNAPSES[SYNAPSES["synapse_id"].isin(ids)].reset_index(drop=True)

    pdt.assert_frame_equal(conn.synapses(), SYNAPSES)
    pdt.assert_frame_equal(conn.synapses(pre=1), rows([1, 2, 3, 10]))
    pdt.assert_frame_equal(conn.synapses(post=[1, 2]), rows([1, 2, 4, 8, 9, 11]))
    pdt.assert_frame_equal(conn.synapses(pre=3, post=4), rows([5, 6, 7]))
    pdt.assert_frame_equal(conn.synapses(pre=3, min_confidence=0.6), rows([5, 7]))
    pdt.assert_frame_equal(conn.synapses(min_confidence=0.9), rows([1, 7, 9, 10]))
    with pytest.raises(KeyError, match="99"):
        conn.synapses(pre=99)
    with pytest.raises(KeyError, match="0"):
        conn.synapses(post=0)
    with pytest.raises(ValueError, match="min_confidence"):
        conn.synapses(min_confidence=2)


def test_adjacencies(conn):
    all_rows = [
        (1, 2, 2, 0.8),
        (1, 3, 1, 0.5),
        (2, 1, 1, 0.8),
        (3, 4, 3, 2.0 / 3.0),
        (4, 1, 1, 0.25),
        (4, 2, 1, 0.5),
    ]
    pdt.assert_frame_equal(conn.adjacencies(), _adj(all_rows))
    pdt.assert_frame_equal(conn.adjacencies(min_weight=2), _adj([all_rows[0], all_rows[3]]))
    pdt.assert_frame_equal(conn.adjacencies(sources=[1, 2]), _adj(all_rows[:3]))
    pdt.assert_frame_equal(
        conn.adjacencies(sources=4, targets=[2, 3]), _adj([all_rows[5]])
    )
    pdt.assert_frame_equal(conn.adjacencies(sources=5), _adj([]))
    # min_confidence filters synapses before aggregation.
    pdt.assert_frame_equal(
        conn.adjacencies(min_confidence=0.6),
        _adj([(1, 2, 2, 0.8), (2, 1, 1, 0.8), (3, 4, 2, 0.8)]),
    )
    with pytest.raises(KeyError, match="8"):
        conn.adjacencies(targets=[1, 8])
    with pytest.raises(ValueError, match="min_weight"):
        conn.adjacencies(min_weight=0)


def test_upstream_downstream(conn):
    pdt.assert_frame_equal(
        conn.upstream(1), _adj([(2, 1, 1, 0.8), (4, 1, 1, 0.25)])
    )
    pdt.assert_frame_equal(
        conn.upstream(2), _adj([(1, 2, 2, 0.8), (4, 2, 1, 0.5)])
    )
    pdt.assert_frame_equal(conn.upstream(2, min_weight=2), _adj([(1, 2, 2, 0.8)]))
    pdt.assert_frame_equal(
        conn.downstream(1), _adj([(1, 2, 2, 0.8), (1, 3, 1, 0.5)])
    )
    pdt.assert_frame_equal(
        conn.downstream(4), _adj([(4, 1, 1, 0.25), (4, 2, 1, 0.5)])
    )
    pdt.assert_frame_equal(conn.downstream(5), _adj([]))
    # Weight-descending order.
    pdt.assert_frame_equal(
        conn.downstream(4, min_confidence=0.3), _adj([(4, 2, 1, 0.5)])
    )
    with pytest.raises(KeyError, match="6"):
        conn.upstream(6)
    with pytest.raises(KeyError, match="0"):
        conn.downstream(0)
    with pytest.raises(TypeError):
        conn.downstream([1, 2])


def test_upstream_sorted_by_weight():
    extra = SYNAPSES.iloc[[0]].assign(synapse_id=12, pre_neuron=np.uint64(4))
    extra2 = extra.assign(synapse_id=13)
    c = Connectome.from_tables(NEURONS, pd.concat([SYNAPSES, extra, extra2]))
    # 4->2 now has 3 synapses, 1->2 has 2.
    pdt.assert_frame_equal(
        c.upstream(2), _adj([(4, 2, 3, (0.5 + 0.9 + 0.9) / 3), (1, 2, 2, 0.8)])
    )


def _type_matrix(values) -> pd.DataFrame:
    types = ["exc", "inh", "pv"]
    return pd.DataFrame(
        np.array(values, dtype="int64"),
        index=pd.Index(types, name="pre_type"),
        columns=pd.Index(types, name="post_type"),
    )


def test_connectivity_by_type(conn):
    pdt.assert_frame_equal(
        conn.connectivity_by_type(), _type_matrix([[3, 1, 0], [2, 3, 0], [0, 0, 0]])
    )
    pdt.assert_frame_equal(
        conn.connectivity_by_type(min_weight=2), _type_matrix([[2, 0, 0], [0, 3, 0], [0, 0, 0]])
    )
    pdt.assert_frame_equal(
        conn.connectivity_by_type(min_confidence=0.6),
        _type_matrix([[3, 0, 0], [0, 2, 0], [0, 0, 0]]),
    )


# --------------------------------------------------------------------------- networkx views


def test_to_networkx(conn):
    g = conn.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert sorted(g.nodes) == [1, 2, 3, 4, 5]
    assert all(type(n) is int for n in g.nodes)
    assert g.nodes[3] == {
        "cell_type": "inh",
        "barcode": "11",
        "size_voxels": 300,
        "z": 3.0,
        "y": 30.0,
        "x": 2.5,
        "barcode_confidence": 0.7,
        "cell_type_confidence": 0.75,
    }
    # 11 synapses minus the one with post 0; the autapse is a self-loop.
    assert g.number_of_edges() == 10
    assert sorted(k for _, _, k in g.edges(keys=True)) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert g.has_edge(2, 2, key=9)
    assert g.number_of_edges(3, 4) == 3
    assert g.edges[1, 2, 2] == {
        "pre_z": 1.0,
        "pre_y": 1.25,
        "pre_x": 1.5,
        "post_z": 2.0,
        "post_y": 2.25,
        "post_x": 2.5,
        "z_um": 2.0,
        "y_um": 0.5,
        "x_um": 0.5,
        "confidence": 0.7,
    }
    assert all(type(v) is float for v in g.edges[1, 2, 2].values())
    assert type(g.nodes[3]["size_voxels"]) is int


def test_edge_graph(conn):
    g = conn.edge_graph()
    assert isinstance(g, nx.DiGraph) and not g.is_multigraph()
    assert g.number_of_nodes() == 5
    assert g.nodes[5]["cell_type"] == "pv"
    weights = {(u, v): d["weight"] for u, v, d in g.edges(data=True)}
    assert weights == {(1, 2): 2, (1, 3): 1, (2, 1): 1, (3, 4): 3, (4, 1): 1, (4, 2): 1}
    assert g.edges[3, 4]["confidence_mean"] == pytest.approx(2.0 / 3.0)
    assert not any(u == v for u, v in g.edges)


def test_views_cached_frozen_and_invalidated(conn):
    g = conn.to_networkx()
    e = conn.edge_graph()
    assert conn.to_networkx() is g
    assert conn.edge_graph() is e
    with pytest.raises(nx.NetworkXError):
        g.add_node(99)
    assert conn.to_networkx().copy().number_of_nodes() == 5

    conn.synapse_table = SYNAPSES[SYNAPSES["pre_neuron"] == 3]
    assert conn.to_networkx() is not g
    assert conn.to_networkx().number_of_edges() == 3
    assert list(conn.edge_graph().edges) == [(3, 4)]
    pdt.assert_frame_equal(conn.edge_table, EXPECTED_EDGES.iloc[[3]].reset_index(drop=True))

    g2 = conn.to_networkx()
    conn.neuron_table = NEURONS.assign(cell_type="x")
    assert conn.to_networkx() is not g2
    assert conn.to_networkx().nodes[1]["cell_type"] == "x"

    e2 = conn.edge_graph()
    conn.edge_table = EXPECTED_EDGES
    assert conn.edge_graph() is not e2
    assert conn.edge_graph().number_of_edges() == 6


# --------------------------------------------------------------------------- GraphML


def _assert_digraph_equal(read: nx.Graph, conn: Connectome) -> None:
    view = conn.edge_graph()
    assert set(read.nodes) == {str(n) for n in view.nodes}
    assert set(read.edges) == {(str(u), str(v)) for u, v in view.edges}
    for u, v, d in view.edges(data=True):
        got = read.edges[str(u), str(v)]
        assert got["weight"] == d["weight"]
        assert got["confidence_mean"] == pytest.approx(d["confidence_mean"])
    for n, d in view.nodes(data=True):
        assert read.nodes[str(n)] == pytest.approx(d)


def test_write_graphml_path(conn, tmp_path):
    path = tmp_path / "c.graphml"
    write_graphml(conn, path)
    read = nx.read_graphml(path)
    assert isinstance(read, nx.DiGraph) and not read.is_multigraph()
    _assert_digraph_equal(read, conn)
    write_graphml(conn, str(tmp_path / "c2.graphml"))
    _assert_digraph_equal(nx.read_graphml(tmp_path / "c2.graphml"), conn)


def test_write_graphml_file_object(conn, tmp_path):
    buf = io.BytesIO()
    write_graphml(conn, buf)
    assert not buf.closed
    buf.seek(0)
    _assert_digraph_equal(nx.read_graphml(buf), conn)

    path = tmp_path / "c.graphml"
    with open(path, "wb") as fh:
        write_graphml(conn, fh)
        assert not fh.closed
    _assert_digraph_equal(nx.read_graphml(path, node_type=str), conn)


def test_write_graphml_multigraph(conn, tmp_path):
    path = tmp_path / "m.graphml.gz"
    write_graphml(conn, path, multigraph=True)
    read = nx.read_graphml(path, node_type=int, force_multigraph=True)
    view = conn.to_networkx()
    assert isinstance(read, nx.MultiDiGraph)
    assert sorted(read.nodes) == sorted(view.nodes)
    assert sorted(read.edges(keys=True)) == sorted(view.edges(keys=True))
    for u, v, k, d in view.edges(keys=True, data=True):
        assert read.edges[u, v, k] == pytest.approx(d)


def test_missing_cell_type_omitted_from_views_and_graphml(tmp_path):
    neurons = NEURONS.copy()
    neurons.loc[4, "cell_type"] = None
    c = Connectome.from_tables(neurons, SYNAPSES)
    assert "cell_type" not in c.to_networkx().nodes[5]
    assert c.cell_types == ["exc", "inh"]
    assert list(c.connectivity_by_type().index) == ["exc", "inh"]
    path = tmp_path / "c.graphml"
    write_graphml(c, path)
    read = nx.read_graphml(path)
    assert "cell_type" not in read.nodes["5"]
    assert read.nodes["1"]["cell_type"] == "exc"


def test_write_graphml_type_errors(tmp_path):
    with pytest.raises(TypeError, match="Connectome"):
        write_graphml(nx.DiGraph(), tmp_path / "x.graphml")


def test_graphml_value_casts():
    assert type(_graphml_value(np.int64(3))) is int
    assert type(_graphml_value(np.uint64(3))) is int
    assert type(_graphml_value(np.float32(0.5))) is float
    assert type(_graphml_value(np.bool_(True))) is bool
    assert type(_graphml_value(np.str_("a"))) is str
    assert _graphml_value(None) is None
    assert _graphml_value(pd.NA) is None
    assert _graphml_value(b"ab") == "ab"
    assert _graphml_value([1, 2]) == "[1, 2]"
