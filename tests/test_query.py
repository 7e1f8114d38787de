"""Connectome query API additions (where, within, shortest_paths, subgraph) and provenance."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest

import graph.connectome as connectome_module
from graph.connectome import FORMAT_VERSION, Connectome, _example_connectome


@pytest.fixture
def conn() -> Connectome:
    return _example_connectome()


def test_docstring_examples_run():
    result = doctest.testmod(connectome_module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= 15


# ------------------------------------------------------------------ neurons(where=)


def test_neurons_where(conn):
    assert conn.neurons(where="size_voxels > 1000")["neuron_id"].tolist() == [2, 3]
    assert conn.neurons(where="size_voxels >= 500 and cell_type == 'exc'")[
        "neuron_id"].tolist() == [1, 3]
    assert conn.neurons(ids=[1, 2, 3], where="x > 15")["neuron_id"].tolist() == [2, 3]
    assert conn.neurons(where="size_voxels > 10**6").empty
    out = conn.neurons(where="barcode.str.startswith('1')", min_size=2000)
    assert out["neuron_id"].tolist() == [3]
    assert list(out.columns) == list(conn.neuron_table.columns)


def test_neurons_where_missing_values_follow_pandas_query():
    conn = _example_connectome()
    n = conn.neuron_table.copy()
    n["cell_type"] = pd.array(["exc", None, "exc", "inh"], dtype="string")
    c2 = Connectome(n, conn.synapse_table)
    assert c2.neurons(where="cell_type == 'exc'")["neuron_id"].tolist() == [1, 3]
    # As in DataFrame.query, a missing value compares unequal to everything.
    assert c2.neurons(where="cell_type != 'exc'")["neuron_id"].tolist() == [2, 4]
    assert c2.neurons(where="cell_type.isna()")["neuron_id"].tolist() == [2]


@pytest.mark.parametrize(
    "expr, match",
    [
        ("size_voxel > 3", "bad where expression 'size_voxel > 3'.*size_voxels"),
        ("size_voxels >", "bad where expression"),
        ("size_voxels + 1", "must be boolean"),
    ],
)
def test_neurons_where_bad_expression(conn, expr, match):
    with pytest.raises(ValueError, match=match):
        conn.neurons(where=expr)


def test_neurons_where_type_errors_and_no_side_effects(conn):
    with pytest.raises(TypeError, match="where"):
        conn.neurons(where=3)
    with pytest.raises(TypeError, match="where"):
        conn.neurons(where="  ")
    before = conn.neuron_table.copy()
    with pytest.raises(ValueError):
        conn.neurons(where="new = size_voxels * 2")
    pd.testing.assert_frame_equal(conn.neuron_table, before)


# ------------------------------------------------------------------ synapses(within=)


def test_synapses_within_half_open(conn):
    # Midpoints: synapse k (1-based) at z = k - 1, y = x = 4 (k - 1) + 1.
    assert conn.synapses(within=((0, 0, 0), (3, 100, 100)))["synapse_id"].tolist() == [1, 2, 3]
    # Upper bound exclusive: z = 3 is out, lower bound inclusive: z = 1 is in.
    assert conn.synapses(within=((1, 0, 0), (3, 100, 100)))["synapse_id"].tolist() == [2, 3]
    # y/x bounds: midpoint y of synapse 2 is 5.0; [0, 5) excludes it, [0, 5.5) includes it.
    assert conn.synapses(within=((0, 0, 0), (100, 5, 100)))["synapse_id"].tolist() == [1]
    assert conn.synapses(within=((0, 0, 0), (100, 5.5, 100)))["synapse_id"].tolist() == [1, 2]
    # Empty box.
    assert conn.synapses(within=((2, 2, 2), (2, 50, 50))).empty


def test_synapses_within_sites_and_combination(conn):
    box = ((0, 0, 0), (100, 6, 6))  # pre y/x = 4k', post = 4k' + 2
    assert conn.synapses(within=box, site="pre")["synapse_id"].tolist() == [1, 2]
    assert conn.synapses(within=box, site="post")["synapse_id"].tolist() == [1]
    assert conn.synapses(within=((0, 0, 0), (100, 5, 5)), site="both")["synapse_id"].tolist() == [1]
    assert conn.synapses(within=((0, 0, 0), (100, 5, 5)), site="post")["synapse_id"].tolist() == [1]
    assert conn.synapses(pre=1, min_confidence=0.5,
                         within=((0, 0, 0), (100, 100, 100)))["synapse_id"].tolist() == [1, 2, 4]
    assert conn.synapses(post=4, within=((6, 0, 0), (10, 100, 100)))[
        "synapse_id"].tolist() == [7, 8, 9]


@pytest.mark.parametrize(
    "within, exc, match",
    [
        (((0, 0), (1, 1)), ValueError, "shape"),
        ((0, 0, 0, 1, 1, 1), ValueError, "shape"),
        (((5, 0, 0), (1, 1, 1)), ValueError, "below its lower corner"),
        (((0, 0, 0), (np.nan, 1, 1)), ValueError, "finite"),
        ((("a", 0, 0), (1, 1, 1)), TypeError, "within"),
    ],
)
def test_synapses_within_errors(conn, within, exc, match):
    with pytest.raises(exc, match=match):
        conn.synapses(within=within)


def test_synapses_within_bad_site(conn):
    with pytest.raises(ValueError, match="site"):
        conn.synapses(within=((0, 0, 0), (1, 1, 1)), site="middle")


# ------------------------------------------------------------------ shortest_paths


def _paths(df: pd.DataFrame) -> list[list[int]]:
    return [g.sort_values("hop")["neuron_id"].tolist() for _, g in df.groupby("path")]


def test_shortest_paths_exact(conn):
    p = conn.shortest_paths(1, 4)
    assert list(p.columns) == ["path", "hop", "neuron_id"]
    assert p.dtypes.tolist() == [np.dtype("int64"), np.dtype("int64"), np.dtype("uint64")]
    assert p["path"].tolist() == [0, 0, 0, 1, 1, 1]
    assert p["hop"].tolist() == [0, 1, 2, 0, 1, 2]
    assert p["neuron_id"].tolist() == [1, 2, 4, 1, 3, 4]
    assert _paths(conn.shortest_paths(1, 3)) == [[1, 3]]
    assert _paths(conn.shortest_paths(1, 4, min_weight=2)) == [[1, 2, 4]]
    assert _paths(conn.shortest_paths(1, 3, min_weight=2)) == []
    assert _paths(conn.shortest_paths(2, 2)) == [[2]]
    empty = conn.shortest_paths(4, 1)
    assert empty.empty and list(empty.columns) == ["path", "hop", "neuron_id"]


def test_shortest_paths_matches_networkx_and_max_paths():
    import networkx as nx

    rng = np.random.default_rng(0)
    n = 60
    ids = np.arange(1, n + 1, dtype="uint64") * 3  # non-consecutive ids
    neurons = pd.DataFrame({
        "neuron_id": ids, "size_voxels": np.ones(n, dtype="int64"),
        "z": 0.0, "y": 0.0, "x": 0.0, "barcode": "0", "barcode_confidence": 1.0,
        "cell_type": "a", "cell_type_confidence": 1.0,
    })
    m = 240
    pre = rng.choice(ids, m)
    post = rng.choice(ids, m)
    synapses = pd.DataFrame({
        "synapse_id": np.arange(m), "pre_neuron": pre, "post_neuron": post,
        "pre_z": 0.0, "pre_y": 0.0, "pre_x": 0.0, "post_z": 0.0, "post_y": 0.0, "post_x": 0.0,
        "confidence": 1.0,
    })
    c = Connectome(neurons, synapses)
    g = c.edge_graph()
    for a, b in [(ids[0], ids[-1]), (ids[5], ids[17]), (ids[9], ids[40])]:
        try:
            want = sorted(nx.all_shortest_paths(g, int(a), int(b)))
        except nx.NetworkXNoPath:
            want = []
        assert _paths(c.shortest_paths(int(a), int(b))) == want
    a, b = int(ids[0]), int(ids[-1])
    full = _paths(c.shortest_paths(a, b))
    if len(full) > 1:
        assert _paths(c.shortest_paths(a, b, max_paths=1)) == full[:1]


def test_shortest_paths_errors(conn):
    with pytest.raises(KeyError, match="99"):
        conn.shortest_paths(1, 99)
    with pytest.raises(TypeError):
        conn.shortest_paths([1, 2], 3)
    with pytest.raises(ValueError, match="min_weight"):
        conn.shortest_paths(1, 2, min_weight=0)
    with pytest.raises(ValueError, match="max_paths"):
        conn.shortest_paths(1, 2, max_paths=0)


# ------------------------------------------------------------------ subgraph


def test_subgraph_ids(conn):
    sub = conn.subgraph(ids=[1, 2, 4])
    assert isinstance(sub, Connectome) and sub is not conn
    assert sub.neuron_ids.tolist() == [1, 2, 4]
    assert sub.synapse_table["synapse_id"].tolist() == [1, 2, 3, 6, 7, 10]
    assert sub.edge_table[["pre", "post", "synapse_count"]].values.tolist() == [
        [1, 2, 3], [2, 4, 2]]
    pd.testing.assert_frame_equal(
        sub.edge_table, connectome_module.edges_from_synapses(sub.synapse_table))
    assert sub.meta["subgraph"] == {"ids": [1, 2, 4], "type": None, "n_neurons": 3}
    assert sub.meta["voxel_size"] == conn.meta["voxel_size"]
    assert "subgraph" not in conn.meta
    assert len(conn.neuron_table) == 4  # parent untouched


def test_subgraph_type_and_combined(conn):
    inh = conn.subgraph(type="inh")
    assert inh.neuron_ids.tolist() == [2, 4]
    assert inh.synapse_table["synapse_id"].tolist() == [6, 7, 10]
    assert inh.adjacencies()[["pre", "post", "weight"]].values.tolist() == [[2, 4, 2]]
    both = conn.subgraph(ids=[1, 2, 3], type="exc")
    assert both.neuron_ids.tolist() == [1, 3]
    assert both.edge_table[["pre", "post"]].values.tolist() == [[1, 3]]
    everything = conn.subgraph()
    pd.testing.assert_frame_equal(everything.synapse_table, conn.synapse_table)
    none = conn.subgraph(type="nope")
    assert len(none.neuron_table) == 0 and len(none.synapse_table) == 0
    with pytest.raises(KeyError):
        conn.subgraph(ids=[99])


# ------------------------------------------------------------------ provenance and old runs


def test_provenance_from_run_json(conn, tmp_path):
    conn.save(tmp_path)
    record = {
        "format_version": 1, "status": "complete", "config": {"name": "x", "seed": 3},
        "versions": {"optical-connectome": "0.1.0", "numpy": "2.0"},
        "n_blocks": 4, "block_shape": [8, 16, 16], "started": "2026-01-01T00:00:00+0000",
        "counts": {"neurons": 4},
    }
    (tmp_path / "run.json").write_text(json.dumps(record))
    step = tmp_path / "work" / "blocks" / "segment_relabel"
    step.mkdir(parents=True)
    (step / "_params.json").write_text("{}")
    for i in range(3):
        (step / f"{i}.pkl").write_bytes(b"")
    loaded = Connectome.load(tmp_path)
    assert loaded.meta == record
    p = loaded.provenance
    assert p["format_version"] == 1 == FORMAT_VERSION
    assert p["code_version"] == "0.1.0"
    assert p["parameters"] == {"name": "x", "seed": 3}
    assert p["blocks"] == {"n_blocks": 4, "block_shape": [8, 16, 16],
                           "done": {"blocks/segment_relabel": 3}}
    assert p["status"] == "complete" and p["counts"] == {"neurons": 4}
    assert p["run_dir"] == str(tmp_path)


def test_load_without_run_json_is_format_0(conn, tmp_path):
    conn.save(tmp_path)
    loaded = Connectome.load(tmp_path)
    p = loaded.provenance
    assert p["format_version"] == 0
    assert p["code_version"] is None and p["parameters"] is None
    assert p["blocks"] == {"n_blocks": None, "block_shape": None, "done": {}}
    pd.testing.assert_frame_equal(loaded.neuron_table, conn.neuron_table)


@pytest.mark.parametrize("record", [{}, {"format_version": 0}, {"format_version": "junk"},
                                    {"version": "0.0.1"}])
def test_load_old_format_fills_missing_annotations(conn, tmp_path, record):
    conn.save(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(record))
    old = conn.neuron_table.drop(
        columns=["barcode", "barcode_confidence", "cell_type", "cell_type_confidence"])
    old.to_parquet(tmp_path / "neurons.parquet")
    loaded = Connectome.load(tmp_path)
    assert loaded.provenance["format_version"] == 0
    n = loaded.neuron_table
    assert n["barcode"].tolist() == [""] * 4
    assert n["cell_type"].isna().all() and n["barcode_confidence"].isna().all()
    assert loaded.cell_types == []
    assert loaded.adjacencies()["weight"].tolist() == conn.adjacencies()["weight"].tolist()
    if "version" in record:
        assert loaded.provenance["code_version"] == "0.0.1"


def test_load_current_format_still_requires_columns(conn, tmp_path):
    conn.save(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format_version": 1}))
    conn.neuron_table.drop(columns=["cell_type"]).to_parquet(tmp_path / "neurons.parquet")
    with pytest.raises(ValueError, match=r"neurons\.parquet.*cell_type"):
        Connectome.load(tmp_path)


def test_load_newer_format_warns(conn, tmp_path, caplog):
    conn.save(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with caplog.at_level("WARNING", logger="graph.connectome"):
        loaded = Connectome.load(tmp_path)
    assert loaded.provenance["format_version"] == FORMAT_VERSION + 1
    assert "newer" in caplog.text
