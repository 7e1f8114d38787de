"""Connectome tables, queries and graph export.

The tables of a run directory are the store (:class:`Connectome`); networkx
graphs are derived views; :func:`write_graphml` exports them.
"""

from graph.connectome import Connectome, edges_from_synapses
from graph.export import write_graphml

__all__ = ["Connectome", "edges_from_synapses", "write_graphml"]
