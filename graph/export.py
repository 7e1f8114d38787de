"""Export a :class:`~graph.connectome.Connectome` to the formats the field uses.

:func:`export` is the single entry point (``connectome export RUN_DIR --format F
--output P``); it dispatches to one writer per format:

============  ==============================================  ==========================
format        writer                                          output
============  ==============================================  ==========================
graphml       :func:`write_graphml`                           file
neuprint      :func:`graph.export_neuprint.write_neuprint`    directory (Neo4j CSVs)
precomputed   :func:`graph.export_precomputed.write_precomputed`  directory
swc           :func:`graph.export_swc.write_swc`              directory (one file/neuron)
sonata        :func:`graph.export_sonata.write_sonata`        directory (nodes/edges HDF5)
nwb           :func:`graph.export_nwb.write_nwb`              file (NWB 2 HDF5)
all           every format above that is available            directory, one entry each
============  ==============================================  ==========================

Units: every export writes physical coordinates and states them (see each
writer); the voxel size comes from ``run.json`` (``voxel_size``, µm, z, y, x).

An export never replaces the run it reads: an ``output`` that resolves (after
``..`` and symbolic links) to the run directory, a folder containing it, or
one of the run's own entries (``work``, ``labels.zarr``, the tables, ...) is an
:class:`ExportPathError`. A new folder inside the run directory is fine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import networkx as nx
import numpy as np
import pandas as pd
from networkx.utils import open_file

from graph.connectome import Connectome
from graph.export_common import ExportError, resolve_connectome, write_output
from pipeline.errors import ConfigError

__all__ = ["write_graphml", "export", "EXPORT_FORMATS", "ExportError", "ExportPathError"]

#: Entries of a run directory an export must never replace (see ``docs/contracts.md``).
_RUN_ENTRIES = ("run.json", "run.lock", "work", "labels.zarr", "neurons.parquet", "synapses.parquet",
                "edges.parquet", "report.html")


class ExportPathError(ExportError, ConfigError):
    """The export output would replace the run directory it reads, or part of it."""


def _check_output_path(output: Path, run_dir: Path | None) -> None:
    """Refuse an ``output`` that is, contains, or is one of the entries of ``run_dir``."""
    if run_dir is None:
        return
    out, run = output.resolve(), Path(run_dir).resolve()
    if out == run or out in run.parents:
        what = "is" if out == run else "contains"
        raise ExportPathError(f"export output {str(output)!r} ({out}) {what} the run directory {run_dir} "
                              "being exported; choose another output")
    if run in out.parents and out.relative_to(run).parts[0] in _RUN_ENTRIES:
        raise ExportPathError(f"export output {str(output)!r} ({out}) would replace the run's own "
                              f"{out.relative_to(run).parts[0]!r}; choose another output")

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


# --------------------------------------------------------------------------- dispatcher


def _export_graphml(conn: Connectome, output: Path, overwrite: bool = False,
                    multigraph: bool = False) -> Path:
    def write(tmp: Path) -> None:
        write_graphml(conn, tmp, multigraph=multigraph)

    return write_output(output, write, overwrite=overwrite)


def _export_neuprint(conn: Connectome, output: Path, **options: Any) -> Path:
    from graph.export_neuprint import write_neuprint

    return write_neuprint(conn, output, **options)


def _export_precomputed(conn: Connectome, output: Path, **options: Any) -> Path:
    from graph.export_precomputed import write_precomputed

    return write_precomputed(conn, output, **options)


def _export_swc(conn: Connectome, output: Path, **options: Any) -> Path:
    from graph.export_swc import write_swc

    return write_swc(conn, output, **options)


def _export_sonata(conn: Connectome, output: Path, **options: Any) -> Path:
    from graph.export_sonata import write_sonata

    return write_sonata(conn, output, **options)


def _export_nwb(conn: Connectome, output: Path, **options: Any) -> Path:
    from graph.export_nwb import write_nwb

    return write_nwb(conn, output, **options)


#: Format name -> (writer, default output name inside an ``all`` export).
EXPORT_FORMATS: dict[str, tuple[Callable[..., Path], str]] = {
    "graphml": (_export_graphml, "connectome.graphml"),
    "neuprint": (_export_neuprint, "neuprint"),
    "precomputed": (_export_precomputed, "precomputed"),
    "swc": (_export_swc, "swc"),
    "sonata": (_export_sonata, "sonata"),
    "nwb": (_export_nwb, "connectome.nwb"),
}


def _export_all(conn: Connectome, output: Path, *, overwrite: bool = False,
                **options: Any) -> Path:
    """Every format into ``output/<name>``; kimimaro skeletons are computed once."""
    needs_labels = {"precomputed", "swc", "nwb"}
    shared: dict[str, Any] = {}
    if options.get("labels") is not None or conn.run_dir is not None:
        from graph.export_common import label_image, skeletonize_labels, voxel_size_um

        lab = label_image(conn, options.get("labels"))
        vs = voxel_size_um(conn, options.get("voxel_size"))
        volume = np.asarray(lab[...])
        ids = conn.neuron_table["neuron_id"].to_numpy()
        present = np.intersect1d(np.unique(volume), ids.astype(volume.dtype)).tolist()
        shared["skeletons"] = skeletonize_labels(
            volume, vs, present, teasar_params=options.get("teasar_params")
        )
        shared["labels"] = volume

    def write(tmp: Path) -> None:
        tmp.mkdir()
        for name, (writer, entry) in EXPORT_FORMATS.items():
            if name in needs_labels and not shared:
                logger.warning("export all: skipping %s (no label image)", name)
                continue
            opts = _options_for(name, {**options, **(shared if name in needs_labels else {})})
            writer(conn, tmp / entry, **opts)

    return write_output(output, write, overwrite=overwrite)


_OPTIONS = {
    "graphml": {"multigraph"},
    "neuprint": {"dataset", "voxel_size", "hp_threshold"},
    "precomputed": {"labels", "voxel_size", "chunk_size", "meshes", "skeletons", "annotations",
                    "mesh_reduction_factor", "mesh_max_error", "teasar_params"},
    "swc": {"labels", "voxel_size", "skeletons", "teasar_params", "dust_threshold"},
    "sonata": {"voxel_size", "population"},
    "nwb": {"labels", "voxel_size", "segmentation", "slab"},
}


def _options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in _OPTIONS[name]}


def export(
    connectome_or_run_dir: Connectome | str | os.PathLike,
    format: str,  # noqa: A002 - the CLI's word
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Export a connectome (or a run directory) to one format, or to all of them.

    Parameters
    ----------
    connectome_or_run_dir : Connectome, str or os.PathLike
        A connectome, or a run directory (``neurons/synapses/edges.parquet``,
        ``run.json``, ``labels.zarr/neurons``).
    format : str
        One of ``graphml``, ``neuprint``, ``precomputed``, ``swc``, ``sonata``, ``nwb``,
        ``all``
        (case-insensitive).
    output : str or os.PathLike
        File (graphml) or directory (other formats, ``all``) to create.
    overwrite : bool, default False
        Replace an existing ``output``; otherwise it is an error.
    **options
        Passed to the format's writer (e.g. ``voxel_size``, ``labels``,
        ``dataset``, ``meshes=False``); with ``all``, each writer gets the
        options it knows.

    Returns
    -------
    pathlib.Path
        ``output``.

    Raises
    ------
    ExportError
        Unknown format, unknown options, or missing data (label image, voxel size).
    ExportPathError
        ``output`` is the run directory, contains it, or is one of its entries.
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    FileNotFoundError
        The run directory or one of its tables is missing.

    Examples
    --------
    >>> from graph.export import export
    >>> export("runs/sample", "neuprint", "exports/neuprint")  # doctest: +SKIP
    >>> export("runs/sample", "all", "exports/all", overwrite=True)  # doctest: +SKIP
    """
    if not isinstance(format, str):
        raise ExportError(f"format must be a string, got {format!r}")
    name = format.strip().lower()
    known = sorted(EXPORT_FORMATS) + ["all"]
    if name not in known:
        raise ExportError(f"unknown export format {format!r}; choose one of {known}")
    allowed = set().union(*_OPTIONS.values()) if name == "all" else _OPTIONS[name]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExportError(
            f"unknown option(s) {unknown} for format {name!r}; known: {sorted(allowed)}"
        )
    out = Path(output)
    if isinstance(connectome_or_run_dir, Connectome):
        _check_output_path(out, connectome_or_run_dir.run_dir)
    elif isinstance(connectome_or_run_dir, (str, os.PathLike)):
        _check_output_path(out, Path(connectome_or_run_dir))
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output {str(out)!r} already exists (pass overwrite=True / --overwrite to replace it)"
        )
    conn = resolve_connectome(connectome_or_run_dir)
    if name == "all":
        return _export_all(conn, out, overwrite=overwrite, **options)
    writer, _ = EXPORT_FORMATS[name]
    return writer(conn, out, overwrite=overwrite, **options)
