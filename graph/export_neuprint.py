"""neuPrint CSV bundle: the Neo4j bulk-import files that neuPrint is built from.

The files and their headers follow neuPrint's published build scripts
(``neuPrint-Build-Update`` / flyemflows' neuPrint export)::

    Neuprint_Meta.csv                      (:Meta node)
    Neuprint_Neurons.csv                   (:Segment:Neuron nodes, Body-ID space)
    Neuprint_Neuron_Connections.csv        (ConnectsTo, neuron -> neuron, weights)
    Neuprint_SynapseSet.csv                (:SynapseSet nodes, SynSet-ID space)
    Neuprint_SynapseSet_to_SynapseSet.csv  (ConnectsTo, pre set -> post set)
    Neuprint_Neuron_to_SynapseSet.csv      (Contains, neuron -> its sets)
    Neuprint_Synapses.csv                  (:Synapse nodes, Syn-ID space)
    Neuprint_Synapse_Connections.csv       (SynapsesTo, pre point -> post point)
    Neuprint_SynapseSet_to_Synapses.csv    (Contains, set -> synapse points)
    neo4j_import.sh                        (the neo4j-admin import command)

Mapping from our tables: every synapse between two different neurons (the
synapses counted in the edges table) becomes two neuPrint ``Synapse`` points,
``pre`` with ``Syn-ID = 2 * synapse_id`` and ``post`` with
``Syn-ID = 2 * synapse_id + 1``, joined by ``SynapsesTo``. Synapse sets are
named ``{a}_{b}_pre`` (contained by ``a``, synapses onto ``b``) and
``{b}_{a}_post`` (contained by ``b``) as in neuPrint. ``weight`` (and
``weightHR``) is the synapse count of the edges table; ``weightHP`` counts
synapses with ``confidence >= hp_threshold``.

Units: ``location`` / ``centroid`` points are physical coordinates in
nanometres (``x, y, z``); ``Neuprint_Meta`` states it with
``voxelSize = 1;1;1`` and ``voxelUnits = nanometers`` and records the image
voxel size (``x;y;z`` nm) as ``imageVoxelSize``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from graph.connectome import Connectome
from graph.export_common import (
    ExportError,
    resolve_connectome,
    synapse_points_um,
    valid_synapses,
    voxel_size_um,
    write_output,
)

__all__ = ["write_neuprint", "NEUPRINT_HEADERS", "NEUPRINT_FILES", "read_neuprint_bundle"]

logger = logging.getLogger(__name__)

_POINT = "point{srid:9157}"

#: Published header columns of each file (our extra columns follow them).
NEUPRINT_HEADERS: dict[str, list[str]] = {
    "Neuprint_Meta.csv": [
        "voxelSize:float[]", "voxelUnits:string", "info:string", "logo:string",
        "postHighAccuracyThreshold:float", "preHPThreshold:float", "postHPThreshold:float",
        "meshHost:string", "uuid:string", "neuroglancerInfo:string", "neuroglancerMeta:string",
        "statusDefinitions:string", "latestMutationId:int", "totalPreCount:int",
        "totalPostCount:int", "lastDatabaseEdit:string", "superLevelRois:string[]",
        "primaryRois:string[]", "nonHierarchicalROIs:string[]", "roiInfo:string",
        "roiHierarchy:string", "dataset:string", ":LABEL",
    ],
    "Neuprint_Neurons.csv": [
        ":ID(Body-ID)", "bodyId:long", "pre:int", "post:int", "upstream:int", "downstream:int",
        "status:string", "statusLabel:string", "cropped:boolean", "instance:string",
        "notes:string", "type:string", "cellBodyFiber:string", f"somaLocation:{_POINT}",
        "somaRadius:float", "size:long", "roiInfo:string", ":LABEL",
    ],
    "Neuprint_Neuron_Connections.csv": [
        ":START_ID(Body-ID)", "weightHR:int", "weight:int", "weightHP:int", ":END_ID(Body-ID)",
        "roiInfo:string",
    ],
    "Neuprint_SynapseSet.csv": [":ID(SynSet-ID)", ":Label"],
    "Neuprint_SynapseSet_to_SynapseSet.csv": [":START_ID(SynSet-ID)", ":END_ID(SynSet-ID)"],
    "Neuprint_Neuron_to_SynapseSet.csv": [":START_ID(Body-ID)", ":END_ID(SynSet-ID)"],
    "Neuprint_Synapses.csv": [
        ":ID(Syn-ID)", "type:string", "confidence:float", f"location:{_POINT}", ":Label",
    ],
    "Neuprint_Synapse_Connections.csv": [":START_ID(Syn-ID)", ":END_ID(Syn-ID)"],
    "Neuprint_SynapseSet_to_Synapses.csv": [":START_ID(SynSet-ID)", ":END_ID(Syn-ID)"],
}

#: Extra columns we append after the published ones.
_EXTRA = {
    "Neuprint_Meta.csv": ["imageVoxelSize:float[]", "imageVoxelUnits:string"],
    "Neuprint_Neurons.csv": [
        "barcode:string", "barcodeConfidence:float", "typeConfidence:float",
        f"centroid:{_POINT}",
    ],
    "Neuprint_Neuron_Connections.csv": ["confidenceMean:float"],
}

NEUPRINT_FILES = tuple(NEUPRINT_HEADERS)

# (file, neo4j-admin option, label or relationship type)
_IMPORT_ARGS = (
    ("Neuprint_Meta.csv", "nodes", None),
    ("Neuprint_Neurons.csv", "nodes", None),
    ("Neuprint_Neuron_Connections.csv", "relationships", "ConnectsTo"),
    ("Neuprint_SynapseSet.csv", "nodes", None),
    ("Neuprint_SynapseSet_to_SynapseSet.csv", "relationships", "ConnectsTo"),
    ("Neuprint_Neuron_to_SynapseSet.csv", "relationships", "Contains"),
    ("Neuprint_Synapses.csv", "nodes", None),
    ("Neuprint_Synapse_Connections.csv", "relationships", "SynapsesTo"),
    ("Neuprint_SynapseSet_to_Synapses.csv", "relationships", "Contains"),
)


def _points(xyz_nm: np.ndarray) -> list[str]:
    """Neo4j point literals ``{x:.., y:.., z:..}`` for ``(n, 3)`` x, y, z values."""
    return [f"{{x:{x:.3f}, y:{y:.3f}, z:{z:.3f}}}" for x, y, z in xyz_nm.tolist()]


def _str_column(values: pd.Series) -> pd.Series:
    return values.astype("object").where(values.notna(), "").astype(str)


def _write_csv(path: Path, name: str, frame: pd.DataFrame) -> None:
    columns = NEUPRINT_HEADERS[name] + _EXTRA.get(name, [])
    if list(frame.columns) != columns:
        raise RuntimeError(f"internal error: {name} columns {list(frame.columns)} != {columns}")
    frame.to_csv(path / name, index=False, lineterminator="\n")


def _import_script(dataset: str) -> str:
    lines = [
        "#!/bin/sh",
        "# Build a neuPrint Neo4j database from this bundle (Neo4j 4.4 / 5 neo4j-admin).",
        f"# dataset: {dataset}",
        'cd "$(dirname "$0")"',
        'NEO4J_ADMIN="${NEO4J_ADMIN:-neo4j-admin}"',
        '"$NEO4J_ADMIN" database import full "${1:-neo4j}" --overwrite-destination=true \\',
    ]
    args = []
    for file, kind, rel in _IMPORT_ARGS:
        args.append(f"  --{kind}={rel + '=' if rel else ''}{file}")
    lines.append(" \\\n".join(args))
    return "\n".join(lines) + "\n"


def write_neuprint(
    connectome: Connectome | str | os.PathLike,
    output: str | os.PathLike,
    *,
    dataset: str = "connectome",
    voxel_size: Any = None,
    hp_threshold: float = 0.5,
    overwrite: bool = False,
) -> Path:
    """Write a neuPrint CSV bundle (Neo4j import files) into a new directory.

    Parameters
    ----------
    connectome : Connectome or path
        The connectome, or a run directory.
    output : str or os.PathLike
        Directory to create.
    dataset : str, default "connectome"
        neuPrint dataset name (node labels ``{dataset}_Neuron`` etc.).
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` in µm; defaults to ``run.json``'s ``voxel_size``.
    hp_threshold : float, default 0.5
        Confidence threshold for ``weightHP`` and the Meta HP thresholds.
    overwrite : bool, default False
        Replace an existing ``output``.

    Returns
    -------
    pathlib.Path
        The output directory.

    Examples
    --------
    >>> write_neuprint("runs/sample", "exports/neuprint")  # doctest: +SKIP
    >>> # then: sh exports/neuprint/neo4j_import.sh
    """
    conn = resolve_connectome(connectome)
    vs = voxel_size_um(conn, voxel_size)
    if not isinstance(dataset, str) or not dataset or any(c in dataset for c in ",;\"\n"):
        raise ExportError(f"dataset must be a non-empty name without , ; \" or newlines, got {dataset!r}")
    if not 0.0 <= float(hp_threshold) <= 1.0:
        raise ExportError(f"hp_threshold must be in [0, 1], got {hp_threshold!r}")
    vs_nm_xyz = vs[::-1] * 1000.0

    neurons = conn.neuron_table
    syn = valid_synapses(conn)
    edges = conn.edge_table
    ids = neurons["neuron_id"].to_numpy(dtype="uint64")
    id_str = pd.Series(ids.astype(str))

    n_pre = syn.groupby("pre_neuron").size()
    n_post = syn.groupby("post_neuron").size()
    pre_counts = pd.Series(ids).map(n_pre).fillna(0).astype("int64").to_numpy()
    post_counts = pd.Series(ids).map(n_post).fillna(0).astype("int64").to_numpy()
    centroid_nm = neurons[["x", "y", "z"]].to_numpy(dtype="float64") * vs_nm_xyz
    cell_type = _str_column(neurons["cell_type"])
    label = f"Segment;{dataset}_Segment;Neuron;{dataset}_Neuron"
    neuron_frame = pd.DataFrame(
        {
            ":ID(Body-ID)": id_str,
            "bodyId:long": id_str,
            "pre:int": pre_counts,
            "post:int": post_counts,
            "upstream:int": post_counts,
            "downstream:int": pre_counts,
            "status:string": "",
            "statusLabel:string": "",
            "cropped:boolean": "",
            "instance:string": cell_type.to_numpy(),
            "notes:string": "",
            "type:string": cell_type.to_numpy(),
            "cellBodyFiber:string": "",
            f"somaLocation:{_POINT}": "",
            "somaRadius:float": "",
            "size:long": neurons["size_voxels"].to_numpy(dtype="int64"),
            "roiInfo:string": "{}",
            ":LABEL": label,
            "barcode:string": _str_column(neurons["barcode"]).to_numpy(),
            "barcodeConfidence:float": neurons["barcode_confidence"].to_numpy(dtype="float64"),
            "typeConfidence:float": neurons["cell_type_confidence"].to_numpy(dtype="float64"),
            f"centroid:{_POINT}": _points(centroid_nm),
        }
    )

    hp = syn[syn["confidence"] >= float(hp_threshold)].groupby(["pre_neuron", "post_neuron"]).size()
    pair_index = pd.MultiIndex.from_arrays([edges["pre"].to_numpy(), edges["post"].to_numpy()])
    weight_hp = hp.reindex(pair_index).fillna(0).astype("int64").to_numpy()
    conn_frame = pd.DataFrame(
        {
            ":START_ID(Body-ID)": edges["pre"].astype(str).to_numpy(),
            "weightHR:int": edges["synapse_count"].to_numpy(),
            "weight:int": edges["synapse_count"].to_numpy(),
            "weightHP:int": weight_hp,
            ":END_ID(Body-ID)": edges["post"].astype(str).to_numpy(),
            "roiInfo:string": "{}",
            "confidenceMean:float": edges["confidence_mean"].to_numpy(),
        }
    )

    pre_s = edges["pre"].astype(str).to_numpy().astype(object)
    post_s = edges["post"].astype(str).to_numpy().astype(object)
    set_pre = pre_s + "_" + post_s + "_pre"
    set_post = post_s + "_" + pre_s + "_post"
    synset_frame = pd.DataFrame(
        {
            ":ID(SynSet-ID)": np.concatenate([set_pre, set_post]),
            ":Label": f"SynapseSet;{dataset}_SynapseSet",
        }
    )
    set_to_set = pd.DataFrame({":START_ID(SynSet-ID)": set_pre, ":END_ID(SynSet-ID)": set_post})
    neuron_to_set = pd.DataFrame(
        {
            ":START_ID(Body-ID)": np.concatenate([pre_s, post_s]),
            ":END_ID(SynSet-ID)": np.concatenate([set_pre, set_post]),
        }
    )

    sid = syn["synapse_id"].to_numpy(dtype="int64")
    pre_id = (2 * sid).astype(str)
    post_id = (2 * sid + 1).astype(str)
    pre_um, post_um = synapse_points_um(syn, vs)
    n = len(syn)
    conf = syn["confidence"].to_numpy(dtype="float64")
    synapse_frame = pd.DataFrame(
        {
            ":ID(Syn-ID)": np.concatenate([pre_id, post_id]),
            "type:string": ["pre"] * n + ["post"] * n,
            "confidence:float": np.concatenate([conf, conf]),
            f"location:{_POINT}": _points(np.concatenate([pre_um, post_um])[:, ::-1] * 1000.0),
            ":Label": f"Synapse;{dataset}_Synapse",
        }
    )
    syn_conn = pd.DataFrame({":START_ID(Syn-ID)": pre_id, ":END_ID(Syn-ID)": post_id})
    sp = syn["pre_neuron"].astype(str).to_numpy().astype(object)
    so = syn["post_neuron"].astype(str).to_numpy().astype(object)
    set_to_syn = pd.DataFrame(
        {
            ":START_ID(SynSet-ID)": np.concatenate([sp + "_" + so + "_pre", so + "_" + sp + "_post"]),
            ":END_ID(Syn-ID)": np.concatenate([pre_id, post_id]),
        }
    )

    meta = conn.meta
    meta_frame = pd.DataFrame(
        {
            "voxelSize:float[]": ["1.0;1.0;1.0"],
            "voxelUnits:string": ["nanometers"],
            "info:string": [str(meta.get("name", ""))],
            "logo:string": [""],
            "postHighAccuracyThreshold:float": [float(hp_threshold)],
            "preHPThreshold:float": [float(hp_threshold)],
            "postHPThreshold:float": [float(hp_threshold)],
            "meshHost:string": [""],
            "uuid:string": [""],
            "neuroglancerInfo:string": ["{}"],
            "neuroglancerMeta:string": ["[]"],
            "statusDefinitions:string": ["{}"],
            "latestMutationId:int": [0],
            "totalPreCount:int": [n],
            "totalPostCount:int": [n],
            "lastDatabaseEdit:string": [str(meta.get("finished", ""))],
            "superLevelRois:string[]": [""],
            "primaryRois:string[]": [""],
            "nonHierarchicalROIs:string[]": [""],
            "roiInfo:string": ["{}"],
            "roiHierarchy:string": [json.dumps({"name": dataset, "children": []})],
            "dataset:string": [dataset],
            ":LABEL": [f"Meta;{dataset}_Meta"],
            "imageVoxelSize:float[]": [";".join(f"{v:.6g}" for v in vs_nm_xyz)],
            "imageVoxelUnits:string": ["nanometers"],
        }
    )

    frames = {
        "Neuprint_Meta.csv": meta_frame,
        "Neuprint_Neurons.csv": neuron_frame,
        "Neuprint_Neuron_Connections.csv": conn_frame,
        "Neuprint_SynapseSet.csv": synset_frame,
        "Neuprint_SynapseSet_to_SynapseSet.csv": set_to_set,
        "Neuprint_Neuron_to_SynapseSet.csv": neuron_to_set,
        "Neuprint_Synapses.csv": synapse_frame,
        "Neuprint_Synapse_Connections.csv": syn_conn,
        "Neuprint_SynapseSet_to_Synapses.csv": set_to_syn,
    }

    def write(tmp: Path) -> None:
        tmp.mkdir()
        for name, frame in frames.items():
            _write_csv(tmp, name, frame)
        script = tmp / "neo4j_import.sh"
        script.write_text(_import_script(dataset))
        script.chmod(0o755)

    out = write_output(output, write, overwrite=overwrite)
    logger.info(
        "wrote neuPrint bundle %s (%d neurons, %d connections, %d synapses)",
        out, len(neuron_frame), len(conn_frame), n,
    )
    return out


def read_neuprint_bundle(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read the CSV files of a bundle as strings-typed DataFrames (header names kept).

    Parameters
    ----------
    path : str or os.PathLike
        Bundle directory.

    Returns
    -------
    dict
        File name -> DataFrame (all columns as str, empty fields as "").
    """
    root = Path(path)
    out = {}
    for name in NEUPRINT_FILES:
        file = root / name
        if not file.is_file():
            raise FileNotFoundError(f"neuPrint bundle {str(root)!r} lacks {name}")
        out[name] = pd.read_csv(file, dtype=str, keep_default_na=False)
    return out
