"""neuPrint CSV bundle: published Neo4j headers, and a graph rebuilt from the files."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from graph import Connectome
from graph.export import export
from graph.export_neuprint import write_neuprint
from test_export_fixtures import VOXEL_SIZE, make_connectome, make_run_dir

# Headers as printed by neuPrint's build scripts (neuPrint-Build-Update,
# flyemflows' neuprint export); written out here independently of the module.
PUBLISHED = {
    "Neuprint_Meta.csv": "voxelSize:float[],voxelUnits:string,info:string,logo:string,"
    "postHighAccuracyThreshold:float,preHPThreshold:float,postHPThreshold:float,meshHost:string,"
    "uuid:string,neuroglancerInfo:string,neuroglancerMeta:string,statusDefinitions:string,"
    "latestMutationId:int,totalPreCount:int,totalPostCount:int,lastDatabaseEdit:string,"
    "superLevelRois:string[],primaryRois:string[],nonHierarchicalROIs:string[],roiInfo:string,"
    "roiHierarchy:string,dataset:string,:LABEL",
    "Neuprint_Neurons.csv": ":ID(Body-ID),bodyId:long,pre:int,post:int,upstream:int,"
    "downstream:int,status:string,statusLabel:string,cropped:boolean,instance:string,"
    "notes:string,type:string,cellBodyFiber:string,somaLocation:point{srid:9157},"
    "somaRadius:float,size:long,roiInfo:string,:LABEL",
    "Neuprint_Neuron_Connections.csv": ":START_ID(Body-ID),weightHR:int,weight:int,"
    "weightHP:int,:END_ID(Body-ID),roiInfo:string",
    "Neuprint_SynapseSet.csv": ":ID(SynSet-ID),:Label",
    "Neuprint_SynapseSet_to_SynapseSet.csv": ":START_ID(SynSet-ID),:END_ID(SynSet-ID)",
    "Neuprint_Neuron_to_SynapseSet.csv": ":START_ID(Body-ID),:END_ID(SynSet-ID)",
    "Neuprint_Synapses.csv": ":ID(Syn-ID),type:string,confidence:float,"
    "location:point{srid:9157},:Label",
    "Neuprint_Synapse_Connections.csv": ":START_ID(Syn-ID),:END_ID(Syn-ID)",
    "Neuprint_SynapseSet_to_Synapses.csv": ":START_ID(SynSet-ID),:END_ID(Syn-ID)",
}


def _header(path):
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _parse_point(text):
    inner = text.strip().strip("{}")
    parts = dict(p.split(":") for p in inner.replace(" ", "").split(","))
    return float(parts["x"]), float(parts["y"]), float(parts["z"])


def _read(path):
    return {name: pd.read_csv(path / name, dtype=str, keep_default_na=False) for name in PUBLISHED}


def test_headers_match_published_spec(tmp_path):
    out = write_neuprint(make_connectome(), tmp_path / "np")
    for name, published in PUBLISHED.items():
        header = _header(out / name)
        expected = published.split(",")
        assert header[: len(expected)] == expected, name
        # Extra columns are plain Neo4j property headers "name:type".
        for extra in header[len(expected):]:
            assert ":" in extra and not extra.startswith(":"), (name, extra)
    script = (out / "neo4j_import.sh").read_text()
    for name in PUBLISHED:
        assert name in script
    assert "--relationships=SynapsesTo=Neuprint_Synapse_Connections.csv" in script


def test_graph_rebuilt_from_files_equals_ours(tmp_path):
    conn = make_connectome()
    files = _read(write_neuprint(conn, tmp_path / "np", dataset="syn", hp_threshold=0.5))

    neurons = files["Neuprint_Neurons.csv"]
    ours = conn.neuron_table
    assert neurons[":ID(Body-ID)"].astype("uint64").tolist() == ours["neuron_id"].tolist()
    assert neurons["bodyId:long"].tolist() == neurons[":ID(Body-ID)"].tolist()
    assert neurons["type:string"].tolist() == ["exc", "inh", "exc", ""]
    assert neurons["barcode:string"].tolist() == ours["barcode"].tolist()
    assert neurons["size:long"].astype(int).tolist() == ours["size_voxels"].tolist()
    assert set(neurons[":LABEL"]) == {"Segment;syn_Segment;Neuron;syn_Neuron"}
    # Centroid in nm, x y z.
    cx, cy, cz = _parse_point(neurons.loc[0, "centroid:point{srid:9157}"])
    assert (cx, cy, cz) == pytest.approx((22.5 * 100, 6.5 * 100, 5.5 * 400))

    # Neuron-level graph equals the edges table.
    nc = files["Neuprint_Neuron_Connections.csv"]
    rebuilt = {
        (int(a), int(b)): int(w)
        for a, b, w in zip(nc[":START_ID(Body-ID)"], nc[":END_ID(Body-ID)"], nc["weight:int"])
    }
    edges = conn.edge_table
    assert rebuilt == {
        (int(a), int(b)): int(w)
        for a, b, w in zip(edges["pre"], edges["post"], edges["synapse_count"])
    }
    assert (nc["weightHR:int"] == nc["weight:int"]).all()
    hp = dict(zip(zip(nc[":START_ID(Body-ID)"], nc[":END_ID(Body-ID)"]), nc["weightHP:int"]))
    assert hp[("1", "2")] == "1"  # confidences 0.9 and 0.4, threshold 0.5

    # Synapse-level graph: SynapsesTo pairs, their sets and owning neurons.
    syn_nodes = files["Neuprint_Synapses.csv"].set_index(":ID(Syn-ID)")
    set_of = dict(
        zip(
            files["Neuprint_SynapseSet_to_Synapses.csv"][":END_ID(Syn-ID)"],
            files["Neuprint_SynapseSet_to_Synapses.csv"][":START_ID(SynSet-ID)"],
        )
    )
    owner = dict(
        zip(
            files["Neuprint_Neuron_to_SynapseSet.csv"][":END_ID(SynSet-ID)"],
            files["Neuprint_Neuron_to_SynapseSet.csv"][":START_ID(Body-ID)"],
        )
    )
    set_links = set(
        zip(
            files["Neuprint_SynapseSet_to_SynapseSet.csv"][":START_ID(SynSet-ID)"],
            files["Neuprint_SynapseSet_to_SynapseSet.csv"][":END_ID(SynSet-ID)"],
        )
    )
    assert set(files["Neuprint_SynapseSet.csv"][":ID(SynSet-ID)"]) == set(owner)
    rebuilt_syn = []
    for a, b in zip(
        files["Neuprint_Synapse_Connections.csv"][":START_ID(Syn-ID)"],
        files["Neuprint_Synapse_Connections.csv"][":END_ID(Syn-ID)"],
    ):
        assert syn_nodes.loc[a, "type:string"] == "pre"
        assert syn_nodes.loc[b, "type:string"] == "post"
        assert (set_of[a], set_of[b]) in set_links
        rebuilt_syn.append(
            (
                int(a) // 2,
                int(owner[set_of[a]]),
                int(owner[set_of[b]]),
                float(syn_nodes.loc[a, "confidence:float"]),
                *_parse_point(syn_nodes.loc[a, "location:point{srid:9157}"]),
                *_parse_point(syn_nodes.loc[b, "location:point{srid:9157}"]),
            )
        )
    syn = conn.synapse_table
    keep = (syn.pre_neuron != 0) & (syn.post_neuron != 0) & (syn.pre_neuron != syn.post_neuron)
    vz, vy, vx = (v * 1000 for v in VOXEL_SIZE)
    expected = [
        (int(r.synapse_id), int(r.pre_neuron), int(r.post_neuron), r.confidence,
         r.pre_x * vx, r.pre_y * vy, r.pre_z * vz, r.post_x * vx, r.post_y * vy, r.post_z * vz)
        for r in syn[keep].itertuples()
    ]
    assert len(rebuilt_syn) == len(expected) == 5
    for got, want in zip(sorted(rebuilt_syn), sorted(expected)):
        assert got[:3] == want[:3]
        assert got[3:] == pytest.approx(want[3:])

    # pre/post counts agree with the synapses.
    counts = neurons.set_index(":ID(Body-ID)")
    assert counts.loc["1", "pre:int"] == "3" and counts.loc["1", "post:int"] == "1"
    meta = files["Neuprint_Meta.csv"]
    assert meta.loc[0, "voxelUnits:string"] == "nanometers"
    assert meta.loc[0, "voxelSize:float[]"] == "1.0;1.0;1.0"
    assert meta.loc[0, "imageVoxelSize:float[]"] == "100;100;400"
    assert meta.loc[0, "totalPreCount:int"] == str(len(expected))
    assert meta.loc[0, ":LABEL"] == "Meta;syn_Meta"


def test_empty_connectome_gives_header_only_files(tmp_path):
    conn = make_connectome()
    empty = Connectome(conn.neuron_table.iloc[:0], conn.synapse_table.iloc[:0],
                       meta={"voxel_size": list(VOXEL_SIZE)})
    out = write_neuprint(empty, tmp_path / "np")
    for name, published in PUBLISHED.items():
        frame = pd.read_csv(out / name, dtype=str)
        assert list(frame.columns[: len(published.split(","))]) == published.split(",")
        assert len(frame) == (1 if name == "Neuprint_Meta.csv" else 0)


def test_export_dispatch_from_run_dir_and_bad_input(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "neuprint", tmp_path / "np", dataset="d1")
    assert (out / "Neuprint_Neurons.csv").is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        export(run, "neuprint", out)
    export(run, "NeuPrint", out, overwrite=True, dataset="d2")
    assert "d2_Meta" in (out / "Neuprint_Meta.csv").read_text()
    with pytest.raises(ValueError, match="unknown export format"):
        export(run, "csv", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown option"):
        export(run, "neuprint", tmp_path / "x", colour="red")
    (run / "edges.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="edges.parquet"):
        export(run, "neuprint", tmp_path / "y")
    no_meta = make_connectome(with_meta=False)
    with pytest.raises(ValueError, match="voxel size unknown"):
        export(no_meta, "neuprint", tmp_path / "z")
    assert not (tmp_path / "z").exists()
    assert np.all([not p.name.endswith(".tmp") for p in tmp_path.iterdir()])
