"""SWC export: one skeleton file per neuron (kimimaro TEASAR skeletons).

Output directory::

    OUT/<neuron_id>.swc   one per neuron that has a skeleton
    OUT/index.csv         neuron_id, file, n_nodes, n_roots, cell_type, barcode

Units: x, y, z and radius in micrometres, in the tables' convention (a voxel
centre ``v`` (z, y, x) is at ``v * voxel_size``). Each file's header comments
state the units, neuron id, cell type and barcode.

Structure: nodes are numbered from 1 in breadth-first order, so every parent
precedes its children. A neuron whose segmentation is in several pieces has
one tree per piece (several roots with parent -1). The root of the largest
piece is its thickest node and is typed 1 (soma); every other node is typed 3
(dendrite: our skeletons do not tell axon from dendrite).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from graph.connectome import Connectome
from graph.export_common import (
    label_image,
    resolve_connectome,
    skeletonize_labels,
    voxel_size_um,
    write_output,
)

__all__ = ["write_swc", "skeleton_to_swc_table"]

logger = logging.getLogger(__name__)

SWC_COLUMNS = ["node_id", "type", "x", "y", "z", "radius", "parent_id"]


def skeleton_to_swc_table(vertices_nm: np.ndarray, edges: np.ndarray, radii_nm: np.ndarray) -> pd.DataFrame:
    """Order a skeleton as an SWC table (micrometres).

    Parameters
    ----------
    vertices_nm : numpy.ndarray
        ``(n, 3)`` vertex positions ``x, y, z`` in nanometres.
    edges : numpy.ndarray
        ``(m, 2)`` vertex index pairs (an undirected forest).
    radii_nm : numpy.ndarray
        ``(n,)`` radii in nanometres.

    Returns
    -------
    pandas.DataFrame
        Columns ``node_id`` (1-based), ``type``, ``x``, ``y``, ``z``, ``radius``
        (µm) and ``parent_id`` (-1 for roots); parents precede children.
    """
    n = len(vertices_nm)
    if n == 0:
        return pd.DataFrame({c: pd.Series([], dtype="float64") for c in SWC_COLUMNS})
    radii = np.asarray(radii_nm, dtype="float64").reshape(-1)
    if radii.shape[0] != n:
        radii = np.zeros(n)
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in np.asarray(edges, dtype="int64").reshape(-1, 2).tolist():
        if a != b:
            adj[a].append(b)
            adj[b].append(a)
    seen = np.zeros(n, dtype=bool)
    components: list[list[int]] = []
    for start in range(n):
        if seen[start]:
            continue
        comp = []
        stack = [start]
        seen[start] = True
        while stack:
            v = stack.pop()
            comp.append(v)
            for w in adj[v]:
                if not seen[w]:
                    seen[w] = True
                    stack.append(w)
        components.append(comp)
    components.sort(key=len, reverse=True)
    order: list[int] = []
    parent_of: dict[int, int] = {}
    root_set = set()
    for comp in components:
        root = max(comp, key=lambda v: (radii[v], -v))
        root_set.add(root)
        parent_of[root] = -1
        queue = deque([root])
        visited = {root}
        while queue:
            v = queue.popleft()
            order.append(v)
            for w in sorted(adj[v]):
                if w not in visited:
                    visited.add(w)
                    parent_of[w] = v
                    queue.append(w)
    new_id = {v: i + 1 for i, v in enumerate(order)}
    verts = np.asarray(vertices_nm, dtype="float64")[order] / 1000.0
    first_root = order[0]
    return pd.DataFrame(
        {
            "node_id": np.arange(1, n + 1, dtype="int64"),
            "type": [1 if v == first_root else 3 for v in order],
            "x": verts[:, 0],
            "y": verts[:, 1],
            "z": verts[:, 2],
            "radius": radii[order] / 1000.0,
            "parent_id": [new_id[parent_of[v]] if parent_of[v] >= 0 else -1 for v in order],
        }
    )


def _swc_text(table: pd.DataFrame, header: list[str]) -> str:
    lines = [f"# {h}" for h in header]
    lines.append("# " + " ".join(SWC_COLUMNS))
    for row in table.itertuples(index=False):
        lines.append(
            f"{row.node_id} {row.type} {row.x:.5f} {row.y:.5f} {row.z:.5f} "
            f"{row.radius:.5f} {row.parent_id}"
        )
    return "\n".join(lines) + "\n"


def write_swc(
    connectome: Connectome | str | os.PathLike,
    output: str | os.PathLike,
    *,
    labels: Any = None,
    voxel_size: Any = None,
    skeletons: Mapping[int, Any] | None = None,
    teasar_params: dict | None = None,
    dust_threshold: int = 1000,
    overwrite: bool = False,
) -> Path:
    """Write one SWC file per neuron into a new directory.

    Parameters
    ----------
    connectome : Connectome or path
        The connectome, or a run directory.
    output : str or os.PathLike
        Directory to create.
    labels : array-like or path, optional
        Label image ``(z, y, x)``; defaults to ``run_dir/labels.zarr/neurons/0``.
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` in µm; defaults to ``run.json``'s ``voxel_size``.
    skeletons : mapping, optional
        Precomputed ``{neuron_id: skeleton}`` (vertices in nm, ``x, y, z``),
        e.g. from :func:`graph.export_common.skeletonize_labels`; computed from
        the label image when None.
    teasar_params : dict, optional
        kimimaro TEASAR parameter overrides.
    dust_threshold : int, default 1000
        Pieces smaller than this many voxels get no skeleton.
    overwrite : bool, default False
        Replace an existing ``output``.

    Returns
    -------
    pathlib.Path
        The output directory.

    Examples
    --------
    >>> write_swc("runs/sample", "exports/swc")  # doctest: +SKIP
    >>> import navis; navis.read_swc("exports/swc/1.swc")  # doctest: +SKIP
    """
    conn = resolve_connectome(connectome)
    vs = voxel_size_um(conn, voxel_size)
    neurons = conn.neuron_table
    ids = [int(i) for i in neurons["neuron_id"].tolist()]
    if skeletons is None:
        lab = label_image(conn, labels)
        volume = np.asarray(lab[...])
        present = np.intersect1d(np.unique(volume), np.asarray(ids, dtype=volume.dtype)).tolist()
        skeletons = skeletonize_labels(
            volume, vs, present, teasar_params=teasar_params, dust_threshold=dust_threshold
        )
    info = neurons.set_index("neuron_id")

    def write(tmp: Path) -> None:
        tmp.mkdir()
        rows = []
        for nid in ids:
            skel = skeletons.get(nid)
            if skel is None or len(skel.vertices) == 0:
                continue
            table = skeleton_to_swc_table(skel.vertices, skel.edges, skel.radii)
            cell_type = info.at[np.uint64(nid), "cell_type"]
            barcode = info.at[np.uint64(nid), "barcode"]
            cell_type = cell_type if isinstance(cell_type, str) else ""
            barcode = barcode if isinstance(barcode, str) else ""
            header = [
                f"neuron_id {nid}",
                f"cell_type {cell_type}",
                f"barcode {barcode}",
                "units micrometers (x, y, z, radius)",
                "voxel_size_um_zyx " + " ".join(f"{v:g}" for v in vs),
                "skeletonizer kimimaro TEASAR",
            ]
            name = f"{nid}.swc"
            (tmp / name).write_text(_swc_text(table, header))
            rows.append(
                (nid, name, len(table), int((table["parent_id"] == -1).sum()), cell_type, barcode)
            )
        pd.DataFrame(
            rows, columns=["neuron_id", "file", "n_nodes", "n_roots", "cell_type", "barcode"]
        ).to_csv(tmp / "index.csv", index=False)

    out = write_output(output, write, overwrite=overwrite)
    logger.info("wrote SWC files to %s", out)
    return out
