"""SONATA export: nodes and edges HDF5 files plus a circuit config.

Output directory::

    OUT/nodes.h5               /nodes/<population>/ (one node per neuron)
    OUT/edges.h5               /edges/<population>__<population>/ (one edge per
                               synapse between two different neurons), with
                               source->target and target->source indices
    OUT/circuit_config.json    SONATA circuit config naming both files

Node ids are 0-based row positions (SONATA's rule); ``neuron_id`` is an
attribute. Node attributes (group ``0``): ``neuron_id``, ``model_type``
("biophysical" is not claimed: "virtual"), ``cell_type``, ``barcode``,
``size_voxels``, ``x``, ``y``, ``z`` (centroid), ``barcode_confidence``,
``cell_type_confidence``. Edge attributes: ``synapse_id``, ``confidence``,
``afferent_center_x/y/z`` (post site) and ``efferent_center_x/y/z`` (pre
site).

Units: positions in micrometres (SONATA's convention), voxel centre ``v``
at ``v * voxel_size``; stated in the ``units`` attribute of every position
dataset and in ``circuit_config.json`` (``components.units``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from graph.connectome import Connectome
from graph.export_common import (
    ExportError,
    resolve_connectome,
    synapse_points_um,
    valid_synapses,
    voxel_size_um,
    write_output,
)

__all__ = ["write_sonata"]

logger = logging.getLogger(__name__)


def _strings(values: Any) -> np.ndarray:
    return np.array([v if isinstance(v, str) else "" for v in values], dtype=object)


def write_sonata(
    connectome: Connectome | str | os.PathLike,
    output: str | os.PathLike,
    *,
    population: str = "neurons",
    voxel_size: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write SONATA nodes/edges HDF5 files into a new directory.

    Parameters
    ----------
    connectome : Connectome or path
        The connectome, or a run directory.
    output : str or os.PathLike
        Directory to create.
    population : str, default "neurons"
        Node population name; the edge population is ``{population}__{population}``.
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` in µm; defaults to ``run.json``'s ``voxel_size``.
    overwrite : bool, default False
        Replace an existing ``output``.

    Returns
    -------
    pathlib.Path
        The output directory.

    Examples
    --------
    >>> write_sonata("runs/sample", "exports/sonata")  # doctest: +SKIP
    >>> import libsonata
    >>> libsonata.NodeStorage("exports/sonata/nodes.h5").open_population("neurons")  # doctest: +SKIP
    """
    import h5py
    import libsonata

    conn = resolve_connectome(connectome)
    vs = voxel_size_um(conn, voxel_size)
    if not isinstance(population, str) or not population or "/" in population:
        raise ExportError(f"population must be a non-empty name without '/', got {population!r}")
    edge_pop = f"{population}__{population}"
    neurons = conn.neuron_table
    ids = neurons["neuron_id"].to_numpy(dtype="uint64")
    syn = valid_synapses(conn)
    pos = {nid: i for i, nid in enumerate(ids.tolist())}
    src = np.array([pos[int(v)] for v in syn["pre_neuron"].tolist()], dtype="uint64")
    tgt = np.array([pos[int(v)] for v in syn["post_neuron"].tolist()], dtype="uint64")
    pre_um, post_um = synapse_points_um(syn, vs)
    centroid_um = neurons[["z", "y", "x"]].to_numpy(dtype="float64") * vs
    str_dt = h5py.string_dtype("utf-8")
    n, m = len(ids), len(syn)

    def write(tmp: Path) -> None:
        tmp.mkdir()
        with h5py.File(tmp / "nodes.h5", "w") as f:
            f.attrs["version"] = np.array([0, 1], dtype="uint32")
            f.attrs["magic"] = np.uint32(0x0A7A)
            g = f.create_group(f"nodes/{population}")
            g.create_dataset("node_type_id", data=np.full(n, -1, dtype="int64"))
            g.create_dataset("node_group_id", data=np.zeros(n, dtype="uint32"))
            g.create_dataset("node_group_index", data=np.arange(n, dtype="uint64"))
            a = g.create_group("0")
            a.create_dataset("neuron_id", data=ids)
            a.create_dataset("model_type", data=np.array(["virtual"] * n, dtype=object),
                             dtype=str_dt)
            a.create_dataset("cell_type", data=_strings(neurons["cell_type"].tolist()),
                             dtype=str_dt)
            a.create_dataset("barcode", data=_strings(neurons["barcode"].tolist()), dtype=str_dt)
            a.create_dataset("size_voxels", data=neurons["size_voxels"].to_numpy(dtype="int64"))
            for k, axis in enumerate("zyx"):
                d = a.create_dataset(axis, data=centroid_um[:, k])
                d.attrs["units"] = "um"
            for col in ("barcode_confidence", "cell_type_confidence"):
                a.create_dataset(col, data=neurons[col].to_numpy(dtype="float64"))
        with h5py.File(tmp / "edges.h5", "w") as f:
            f.attrs["version"] = np.array([0, 1], dtype="uint32")
            f.attrs["magic"] = np.uint32(0x0A7A)
            g = f.create_group(f"edges/{edge_pop}")
            s = g.create_dataset("source_node_id", data=src)
            s.attrs["node_population"] = population
            t = g.create_dataset("target_node_id", data=tgt)
            t.attrs["node_population"] = population
            g.create_dataset("edge_type_id", data=np.full(m, -1, dtype="int64"))
            g.create_dataset("edge_group_id", data=np.zeros(m, dtype="uint32"))
            g.create_dataset("edge_group_index", data=np.arange(m, dtype="uint64"))
            a = g.create_group("0")
            a.create_dataset("synapse_id", data=syn["synapse_id"].to_numpy(dtype="int64"))
            a.create_dataset("confidence", data=syn["confidence"].to_numpy(dtype="float64"))
            for k, axis in enumerate("zyx"):
                d = a.create_dataset(f"afferent_center_{axis}", data=post_um[:, k])
                d.attrs["units"] = "um"
                d = a.create_dataset(f"efferent_center_{axis}", data=pre_um[:, k])
                d.attrs["units"] = "um"
        libsonata.EdgePopulation.write_indices(str(tmp / "edges.h5"), edge_pop, n, n)
        config = {
            "version": 2,
            "manifest": {"$BASE_DIR": "."},
            "components": {"units": {"position": "um"}},
            "networks": {
                "nodes": [{"nodes_file": "$BASE_DIR/nodes.h5",
                           "populations": {population: {"type": "virtual"}}}],
                "edges": [{"edges_file": "$BASE_DIR/edges.h5",
                           "populations": {edge_pop: {"type": "chemical"}}}],
            },
        }
        (tmp / "circuit_config.json").write_text(json.dumps(config, indent=2))

    out = write_output(output, write, overwrite=overwrite)
    logger.info("wrote SONATA circuit %s (%d nodes, %d edges)", out, n, m)
    return out
