"""SWC export read back with navis and MorphIO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from graph.export import export
from graph.export_swc import skeleton_to_swc_table, write_swc
from test_export_fixtures import VOXEL_SIZE, make_connectome, make_labels, make_run_dir

navis = pytest.importorskip("navis")
morphio = pytest.importorskip("morphio")


def test_swc_read_by_navis_and_morphio(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "swc", tmp_path / "swc", dust_threshold=100)
    index = pd.read_csv(out / "index.csv")
    assert index["neuron_id"].tolist() == [1, 2, 3]  # 4 has no voxels
    labels = make_labels()
    vs = np.array(VOXEL_SIZE)
    for row in index.itertuples():
        path = out / row.file
        text = path.read_text()
        assert "# units micrometers" in text and f"# neuron_id {row.neuron_id}" in text
        nl = navis.read_swc(str(path), units="um")
        assert nl.n_nodes == row.n_nodes
        nodes = nl.nodes
        # Physical coordinates (µm) inside the rod: voxel centre v at v * voxel_size.
        zz, yy, xx = np.nonzero(labels == row.neuron_id)
        lo = np.array([xx.min(), yy.min(), zz.min()]) * vs[::-1]
        hi = np.array([xx.max(), yy.max(), zz.max()]) * vs[::-1]
        xyz = nodes[["x", "y", "z"]].to_numpy()
        assert np.all(xyz >= lo - 1e-4) and np.all(xyz <= hi + 1e-4)
        assert (hi - lo)[np.argmax(np.ptp(xyz, axis=0))] == pytest.approx((hi - lo).max())

        m = morphio.Morphology(str(path))
        assert len(m.soma.points) == 1
        n_points = len(m.soma.points) + sum(len(s.points) - 1 for s in m.root_sections) + sum(
            len(s.points) - 1 for s in m.iter() if not s.is_root)
        assert n_points <= row.n_nodes
        all_pts = np.concatenate([m.soma.points] + [s.points for s in m.iter()])
        assert np.all(all_pts >= lo - 1e-4) and np.all(all_pts <= hi + 1e-4)


def test_swc_table_order_and_roots():
    v = np.array([[0, 0, 0], [1000, 0, 0], [2000, 0, 0], [1000, 1000, 0],
                  [5000, 5000, 5000], [6000, 5000, 5000]], float)
    e = np.array([[0, 1], [1, 2], [1, 3], [4, 5]])
    r = np.array([100, 300, 100, 100, 50, 60.0])
    t = skeleton_to_swc_table(v, e, r)
    assert t["node_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert t["parent_id"].tolist() == [-1, 1, 1, 1, -1, 5]
    assert t["type"].tolist() == [1, 3, 3, 3, 3, 3]
    assert t.loc[0, ["x", "y", "z", "radius"]].tolist() == [1.0, 0.0, 0.0, 0.3]
    assert all(p < n for p, n in zip(t["parent_id"], t["node_id"]))


def test_swc_given_skeletons_and_empty(tmp_path):
    conn = make_connectome()
    out = write_swc(conn, tmp_path / "swc", skeletons={})
    assert pd.read_csv(out / "index.csv").empty
    with pytest.raises(ValueError, match="label image"):
        write_swc(conn, tmp_path / "swc2")
