"""Export a :class:`~graph.connectome.Connectome` to standard graph formats."""

from __future__ import annotations

import logging
import os
from typing import IO, Any

import networkx as nx
import numpy as np
import pandas as pd
from networkx.utils import open_file

from graph.connectome import Connectome

__all__ = ["write_graphml"]

logger = logging.getLogger(__name__)


def _graphml_value(value: Any) -> bool | int | float | str | None:
    """Convert ``value`` to a GraphML-compatible Python scalar, or None to drop it.

    numpy scalars become ``bool``/``int``/``float``/``str``; None and pandas
    missing markers (``pd.NA``, ``NaT``) are dropped; float NaN is kept (GraphML
    ``double`` supports it); bytes are decoded; anything else becomes its ``str``.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        if isinstance(value, (np.datetime64, np.timedelta64)) and np.isnat(value):
            return None
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _graphml_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        clean = _graphml_value(value)
        if clean is not None:
            out[str(key)] = clean
    return out


def _graphml_graph(graph: nx.Graph) -> nx.Graph:
    """Unfrozen copy of ``graph`` with string node ids and sanitised attributes."""
    out = graph.__class__()
    out.add_nodes_from((str(n), _graphml_attrs(d)) for n, d in graph.nodes(data=True))
    if graph.is_multigraph():
        out.add_edges_from(
            (str(u), str(v), k, _graphml_attrs(d))
            for u, v, k, d in graph.edges(keys=True, data=True)
        )
    else:
        out.add_edges_from(
            (str(u), str(v), _graphml_attrs(d)) for u, v, d in graph.edges(data=True)
        )
    for key, value in graph.graph.items():
        clean = _graphml_value(value)
        if clean is not None:
            out.graph[str(key)] = clean
    return out


@open_file(1, mode="wb")
def write_graphml(
    connectome: Connectome,
    path_or_file: str | os.PathLike | IO[bytes],
    *,
    multigraph: bool = False,
) -> None:
    """Write a connectome as GraphML.

    Parameters
    ----------
    connectome : Connectome
        The connectome to export.
    path_or_file : str, os.PathLike or binary file object
        Destination. Paths are opened (and closed) here, with ``.gz``/``.bz2``
        compression inferred from the suffix; open binary files are written to
        and left open.
    multigraph : bool, default False
        False writes :meth:`Connectome.edge_graph` (one edge per connected
        neuron pair with ``weight`` and ``confidence_mean``); True writes
        :meth:`Connectome.to_networkx` (one edge per synapse, GraphML edge id =
        ``synapse_id``).

    Raises
    ------
    TypeError
        If ``connectome`` is not a :class:`Connectome`.

    Notes
    -----
    Node ids are written as decimal strings; read them back with
    ``networkx.read_graphml(path, node_type=int)`` to get integers. Attribute
    values are converted to plain Python ``bool``/``int``/``float``/``str``
    and missing values are omitted.
    """
    if not isinstance(connectome, Connectome):
        raise TypeError(
            f"write_graphml expects a Connectome, got {type(connectome).__name__}"
        )
    view = connectome.to_networkx() if multigraph else connectome.edge_graph()
    nx.write_graphml(_graphml_graph(view), path_or_file)
    logger.debug(
        "wrote GraphML (%s, %d nodes, %d edges)",
        "multigraph" if multigraph else "digraph",
        view.number_of_nodes(),
        view.number_of_edges(),
    )
