"""Tabular connectome store with neuPrint-style queries and networkx views.

The three tables of a run directory (``neurons.parquet``, ``synapses.parquet``,
``edges.parquet``; schemas in ``docs/contracts.md``) are the store.  All queries
return fresh :class:`pandas.DataFrame` objects.  networkx graphs are derived,
cached, read-only views of those tables.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from pipeline.storage import atomic_path
import numpy as np
import pandas as pd

__all__ = [
    "Connectome",
    "edges_from_synapses",
    "NEURON_COLUMNS",
    "SYNAPSE_COLUMNS",
    "EDGE_COLUMNS",
    "NEURONS_FILE",
    "SYNAPSES_FILE",
    "EDGES_FILE",
    "RUN_FILE",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

NEURONS_FILE = "neurons.parquet"
SYNAPSES_FILE = "synapses.parquet"
EDGES_FILE = "edges.parquet"
RUN_FILE = "run.json"
#: Newest run-directory ``format_version`` this module knows (``run.json``); a run
#: without ``run.json`` or without the key is format 0 (pre-provenance).
FORMAT_VERSION = 1
# Annotation columns older (format 0) runs may lack, with the value filled on load.
_LEGACY_NEURON_DEFAULTS = {
    "barcode": "",
    "barcode_confidence": float("nan"),
    "cell_type": None,
    "cell_type_confidence": float("nan"),
}

#: Columns every neurons table must have (others, e.g. ``mean_<channel>``, are kept).
NEURON_COLUMNS = (
    "neuron_id",
    "size_voxels",
    "z",
    "y",
    "x",
    "barcode",
    "barcode_confidence",
    "cell_type",
    "cell_type_confidence",
)
#: Columns every synapses table must have (``z_um``, ``y_um``, ``x_um`` are optional).
SYNAPSE_COLUMNS = (
    "synapse_id",
    "pre_neuron",
    "post_neuron",
    "pre_z",
    "pre_y",
    "pre_x",
    "post_z",
    "post_y",
    "post_x",
    "confidence",
)
#: Columns of an edges table, in order.
EDGE_COLUMNS = ("pre", "post", "synapse_count", "confidence_sum", "confidence_mean")

# Attributes copied onto networkx nodes / synapse edges (when present in the table).
_NODE_ATTRS = (
    "cell_type",
    "barcode",
    "size_voxels",
    "z",
    "y",
    "x",
    "barcode_confidence",
    "cell_type_confidence",
)
_SYNAPSE_EDGE_ATTRS = (
    "pre_z",
    "pre_y",
    "pre_x",
    "post_z",
    "post_y",
    "post_x",
    "z_um",
    "y_um",
    "x_um",
    "confidence",
)
_ADJ_COLUMNS = ["pre", "post", "weight", "confidence_mean", "pre_type", "post_type"]
_ID_DTYPE = np.dtype("uint64")


# --------------------------------------------------------------------------- helpers


def _require_columns(df: Any, required: Iterable[str], what: str) -> None:
    """Raise if ``df`` is not a DataFrame or lacks any of ``required``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} is missing required columns {missing} "
            f"(has {list(map(str, df.columns))})"
        )


def _to_uint64(values: pd.Series, what: str) -> pd.Series:
    """Cast an id column to uint64, rejecting negative, non-integral or missing ids."""
    if values.isna().any():
        raise ValueError(f"{what} contains missing values")
    arr = np.asarray(values)
    if arr.dtype.kind == "u":
        return values.astype(_ID_DTYPE)
    if arr.dtype.kind == "b":
        raise ValueError(f"{what} must hold integer ids, got booleans")
    try:
        num = pd.to_numeric(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must hold integer ids, got dtype {values.dtype}") from exc
    num_arr = np.asarray(num)
    if num_arr.dtype.kind == "f" and not np.all(np.mod(num_arr, 1) == 0):
        raise ValueError(f"{what} must hold integer ids, got non-integral values")
    if len(num_arr) and np.min(num_arr) < 0:
        raise ValueError(f"{what} contains negative ids (min {np.min(num_arr)})")
    return num.astype(_ID_DTYPE)


def _ids_argument(values: Any, what: str) -> np.ndarray:
    """Normalise a scalar-or-list id argument to a 1-d uint64 array."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be an integer neuron id or a list of them, got {values!r}")
    if np.ndim(values) == 0:
        values = [values]
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.size == 0:
        return np.empty(0, dtype=_ID_DTYPE)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must be integer neuron ids, got {arr.tolist()!r}")
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise TypeError(f"{what} must be integer neuron ids, got {arr.tolist()!r}")
    if np.any(arr < 0):
        raise KeyError(f"unknown neuron id(s) in {what}: {arr[arr < 0].tolist()}")
    return arr.astype(_ID_DTYPE).ravel()


def _strings_argument(values: Any, what: str) -> list[str]:
    """Normalise a scalar-or-list string argument to a list."""
    if isinstance(values, str):
        return [values]
    if not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a string or a list of strings, got {values!r}")
    out = list(values)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{what} must contain only strings, got {bad!r}")
    return out


def _check_min_weight(min_weight: Any) -> int:
    if isinstance(min_weight, bool) or not isinstance(min_weight, (int, np.integer)):
        raise TypeError(f"min_weight must be an integer, got {min_weight!r}")
    if min_weight < 1:
        raise ValueError(f"min_weight must be >= 1, got {min_weight}")
    return int(min_weight)


def _check_min_confidence(min_confidence: Any) -> float | None:
    if min_confidence is None:
        return None
    if isinstance(min_confidence, bool) or not isinstance(
        min_confidence, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"min_confidence must be a number in [0, 1], got {min_confidence!r}")
    value = float(min_confidence)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {value}")
    return value


def _empty_edges() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pre": pd.Series([], dtype=_ID_DTYPE),
            "post": pd.Series([], dtype=_ID_DTYPE),
            "synapse_count": pd.Series([], dtype="int64"),
            "confidence_sum": pd.Series([], dtype="float64"),
            "confidence_mean": pd.Series([], dtype="float64"),
        }
    )


def edges_from_synapses(synapses: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a synapses table into a neuron-to-neuron edges table.

    Synapses whose pre or post partner is 0 ("no neuron") and autapses
    (``pre_neuron == post_neuron``) are dropped.

    Parameters
    ----------
    synapses : pandas.DataFrame
        Must have columns ``pre_neuron``, ``post_neuron`` and ``confidence``.

    Returns
    -------
    pandas.DataFrame
        Columns ``pre`` (uint64), ``post`` (uint64), ``synapse_count`` (int64),
        ``confidence_sum`` (float64), ``confidence_mean`` (float64); one row per
        ordered (pre, post) pair, sorted by ``pre`` then ``post``.

    Raises
    ------
    TypeError
        If ``synapses`` is not a DataFrame.
    ValueError
        If a required column is missing or ids are invalid.
    """
    what = "synapses table"
    _require_columns(synapses, ("pre_neuron", "post_neuron", "confidence"), what)
    pre = _to_uint64(synapses["pre_neuron"], f"{what} column 'pre_neuron'").to_numpy()
    post = _to_uint64(synapses["post_neuron"], f"{what} column 'post_neuron'").to_numpy()
    conf = synapses["confidence"].to_numpy(dtype="float64")
    keep = (pre != 0) & (post != 0) & (pre != post)
    if not keep.any():
        return _empty_edges()
    frame = pd.DataFrame({"pre": pre[keep], "post": post[keep], "confidence": conf[keep]})
    out = (
        frame.groupby(["pre", "post"], sort=True)["confidence"]
        .agg(synapse_count="size", confidence_sum="sum")
        .reset_index()
    )
    out["confidence_mean"] = out["confidence_sum"] / out["synapse_count"]
    return out.astype(
        {
            "pre": _ID_DTYPE,
            "post": _ID_DTYPE,
            "synapse_count": "int64",
            "confidence_sum": "float64",
            "confidence_mean": "float64",
        }
    )[list(EDGE_COLUMNS)]


def _normalise_neurons(df: pd.DataFrame, what: str) -> pd.DataFrame:
    _require_columns(df, NEURON_COLUMNS, what)
    out = df.copy()
    out["neuron_id"] = _to_uint64(out["neuron_id"], f"{what} column 'neuron_id'")
    ids = out["neuron_id"]
    if (ids == 0).any():
        raise ValueError(f"{what} contains neuron_id 0, which means 'no neuron'")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{what} has duplicate neuron_id values {dup[:10]}")
    out["size_voxels"] = out["size_voxels"].astype("int64")
    return out.sort_values("neuron_id", kind="stable").reset_index(drop=True)


def _check_references(ids: pd.Series, known: np.ndarray, what: str) -> None:
    values = ids.to_numpy()
    unknown = np.setdiff1d(values[values != 0], known)
    if unknown.size:
        raise ValueError(
            f"{what} references {unknown.size} neuron id(s) absent from the neurons "
            f"table: {unknown[:10].tolist()}"
        )


def _normalise_synapses(df: pd.DataFrame, known: np.ndarray, what: str) -> pd.DataFrame:
    _require_columns(df, SYNAPSE_COLUMNS, what)
    out = df.copy()
    sid = out["synapse_id"]
    if sid.isna().any():
        raise ValueError(f"{what} column 'synapse_id' contains missing values")
    out["synapse_id"] = sid.astype("int64")
    dup = out["synapse_id"][out["synapse_id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{what} has duplicate synapse_id values {dup[:10]}")
    for col in ("pre_neuron", "post_neuron"):
        out[col] = _to_uint64(out[col], f"{what} column {col!r}")
        _check_references(out[col], known, f"{what} column {col!r}")
    conf = out["confidence"].astype("float64")
    bad = ~conf.between(0.0, 1.0)  # NaN counts as bad
    if bad.any():
        raise ValueError(
            f"{what} column 'confidence' must lie in [0, 1]; {int(bad.sum())} value(s) "
            f"do not, e.g. {conf[bad].head(5).tolist()}"
        )
    out["confidence"] = conf
    return out.sort_values("synapse_id", kind="stable").reset_index(drop=True)


def _normalise_edges(df: pd.DataFrame, known: np.ndarray, what: str) -> pd.DataFrame:
    _require_columns(df, EDGE_COLUMNS, what)
    out = df.copy()
    for col in ("pre", "post"):
        out[col] = _to_uint64(out[col], f"{what} column {col!r}")
        if (out[col] == 0).any():
            raise ValueError(f"{what} column {col!r} contains neuron id 0")
        _check_references(out[col], known, f"{what} column {col!r}")
    dup = out.duplicated(["pre", "post"])
    if dup.any():
        raise ValueError(
            f"{what} has duplicate (pre, post) pairs, e.g. "
            f"{out.loc[dup, ['pre', 'post']].head(5).values.tolist()}"
        )
    out = out.astype(
        {"synapse_count": "int64", "confidence_sum": "float64", "confidence_mean": "float64"}
    )
    return out.sort_values(["pre", "post"], kind="stable").reset_index(drop=True)


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def _node_records(table: pd.DataFrame) -> list[tuple[int, dict[str, Any]]]:
    """(node id, attribute dict) pairs with Python scalars.

    Missing values of non-float columns (e.g. an unknown ``cell_type``) are
    omitted so that every attribute keeps a single type; float NaN is kept.
    """
    cols = [c for c in _NODE_ATTRS if c in table.columns]
    nullable = {c for c in cols if not pd.api.types.is_float_dtype(table[c].dtype)}
    records = table[cols].to_dict("records")
    out = []
    for nid, rec in zip(table["neuron_id"].tolist(), records):
        attrs = {k: v for k, v in rec.items() if not (k in nullable and pd.isna(v))}
        out.append((nid, attrs))
    return out


def _format_version(meta: Mapping[str, Any]) -> int:
    """``meta["format_version"]`` as an int; 0 when missing or unreadable."""
    value = meta.get("format_version", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        logger.warning("run.json format_version %r is not an integer; treating it as 0", value)
        return 0


def _migrate_legacy_neurons(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """Fill annotation columns that format-0 runs may lack."""
    missing = [c for c in _LEGACY_NEURON_DEFAULTS if c not in df.columns]
    if not missing:
        return df
    logger.warning("%s (format 0) lacks %s; filling defaults", what, missing)
    out = df.copy()
    for col in missing:
        value = _LEGACY_NEURON_DEFAULTS[col]
        if col == "cell_type":
            out[col] = pd.array([None] * len(out), dtype="string")
        else:
            out[col] = value
    return out


def _count_done_markers(work: Path) -> dict[str, int]:
    """Per blockwise step (a folder holding ``_params.json``), its done-marker files."""
    counts: dict[str, int] = {}
    if not work.is_dir():
        return counts
    for params in sorted(work.rglob("_params.json")):
        step = params.parent
        n = sum(1 for f in step.iterdir() if f.is_file() and f.name != "_params.json")
        counts[step.relative_to(work).as_posix()] = n
    return counts


def _bbox_argument(within: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``((z0, y0, x0), (z1, y1, x1))`` and return (lo, hi) float arrays."""
    try:
        box = np.asarray(within, dtype="float64")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"within must be ((z0, y0, x0), (z1, y1, x1)) voxel coordinates, got {within!r}"
        ) from exc
    if box.shape != (2, 3):
        raise ValueError(
            f"within must have shape (2, 3): ((z0, y0, x0), (z1, y1, x1)), got shape {box.shape}"
        )
    if not np.all(np.isfinite(box)):
        raise ValueError(f"within must hold finite numbers, got {box.tolist()}")
    if np.any(box[1] < box[0]):
        raise ValueError(f"within's upper corner {box[1].tolist()} is below its lower corner "
                         f"{box[0].tolist()}")
    return box[0], box[1]


def _where_mask(df: pd.DataFrame, where: Any, what: str) -> pd.Series:
    """Evaluate a boolean query expression over ``df``; missing results are False."""
    if not isinstance(where, str) or not where.strip():
        raise TypeError(f"where must be a non-empty query string, got {where!r}")
    try:
        result = df.eval(where, local_dict={}, global_dict={})
    except Exception as exc:  # pandas raises many types (SyntaxError, UndefinedVariableError, ...)
        raise ValueError(
            f"bad where expression {where!r} for the {what}: {type(exc).__name__}: {exc}; "
            f"columns are {list(map(str, df.columns))}"
        ) from exc
    if not isinstance(result, pd.Series) or len(result) != len(df):
        raise ValueError(
            f"where expression {where!r} must give one boolean per row of the {what}, "
            f"got {type(result).__name__}"
        )
    if not (pd.api.types.is_bool_dtype(result.dtype) or len(result) == 0):
        raise ValueError(
            f"where expression {where!r} must be boolean, got dtype {result.dtype}"
        )
    return result.fillna(False).astype(bool)


_PATH_COLUMNS = ("path", "hop", "neuron_id")


def _empty_paths() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": pd.Series([], dtype="int64"),
            "hop": pd.Series([], dtype="int64"),
            "neuron_id": pd.Series([], dtype=_ID_DTYPE),
        }
    )


def _bfs_distances(graph: Any, start: int) -> np.ndarray:
    """Hop distances from ``start`` along a CSR graph (-1 when unreachable)."""
    from scipy.sparse.csgraph import shortest_path

    d = shortest_path(graph, method="D", directed=True, unweighted=True, indices=start)
    out = np.full(d.shape, -1, dtype="int64")
    finite = np.isfinite(d)
    out[finite] = d[finite].astype("int64")
    return out


def _example_connectome() -> Connectome:
    """A 4-neuron connectome used by the docstring examples.

    Neurons 1 (exc, 500 voxels), 2 (inh, 1500), 3 (exc, 2500), 4 (inh, 800);
    connections 1->2 (3 synapses), 1->3 (1), 2->3 (1), 2->4 (2), 3->4 (2),
    plus synapse 10 from 4 to "no neuron" (0).
    """
    neurons = pd.DataFrame(
        {
            "neuron_id": np.array([1, 2, 3, 4], dtype=_ID_DTYPE),
            "size_voxels": np.array([500, 1500, 2500, 800], dtype="int64"),
            "z": [2.0, 4.0, 6.0, 8.0],
            "y": [10.0, 20.0, 30.0, 40.0],
            "x": [10.0, 20.0, 30.0, 40.0],
            "barcode": ["01", "10", "11", "01"],
            "barcode_confidence": [0.9, 0.8, 0.7, 0.6],
            "cell_type": ["exc", "inh", "exc", "inh"],
            "cell_type_confidence": [0.9, 0.9, 0.8, 0.7],
        }
    )
    pairs = [(1, 2), (1, 2), (1, 2), (1, 3), (2, 3), (2, 4), (2, 4), (3, 4), (3, 4), (4, 0)]
    pos = np.arange(len(pairs), dtype="float64")
    synapses = pd.DataFrame(
        {
            "synapse_id": np.arange(1, len(pairs) + 1, dtype="int64"),
            "pre_neuron": np.array([p for p, _ in pairs], dtype=_ID_DTYPE),
            "post_neuron": np.array([q for _, q in pairs], dtype=_ID_DTYPE),
            "pre_z": pos,
            "pre_y": pos * 4,
            "pre_x": pos * 4,
            "post_z": pos,
            "post_y": pos * 4 + 2,
            "post_x": pos * 4 + 2,
            "confidence": [0.9, 0.8, 0.3, 0.9, 0.5, 0.9, 0.95, 0.6, 0.7, 0.4],
        }
    )
    return Connectome(neurons, synapses, meta={"voxel_size": [0.4, 0.1, 0.1]})


# --------------------------------------------------------------------------- Connectome


class Connectome:
    """A connectome: neurons, synapses and aggregated edges as DataFrames.

    Parameters
    ----------
    neurons : pandas.DataFrame
        Neurons table (``neurons.parquet`` schema; at least :data:`NEURON_COLUMNS`).
    synapses : pandas.DataFrame
        Synapses table (``synapses.parquet`` schema; at least :data:`SYNAPSE_COLUMNS`).
        Partner id 0 means "no neuron"; every other partner id must be in ``neurons``.
    edges : pandas.DataFrame, optional
        Edges table (:data:`EDGE_COLUMNS`). Computed with :func:`edges_from_synapses`
        when omitted.
    meta : mapping, optional
        Free-form metadata (the content of ``run.json`` when loaded from a run).

    Attributes
    ----------
    neuron_table, synapse_table, edge_table : pandas.DataFrame
        The stored tables, sorted by ``neuron_id`` / ``synapse_id`` / (``pre``,
        ``post``). Assigning a new DataFrame validates it and invalidates the
        cached graph views; assigning ``synapse_table`` also recomputes
        ``edge_table``. Do not modify them in place.
    meta : dict
        Metadata.
    run_dir : pathlib.Path or None
        Directory the connectome was loaded from, if any.

    Notes
    -----
    The tables are exposed as ``neuron_table`` / ``synapse_table`` /
    ``edge_table`` because ``neurons()`` and ``synapses()`` are query methods;
    calling them without arguments returns a copy of the full table.
    """

    def __init__(
        self,
        neurons: pd.DataFrame,
        synapses: pd.DataFrame,
        edges: pd.DataFrame | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._views: dict[str, Any] = {}
        self.run_dir: Path | None = None
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
        self.meta: dict[str, Any] = dict(meta) if meta is not None else {}
        self._set_tables(neurons, synapses, edges, sources=None)

    # ------------------------------------------------------------------ construction

    def _set_tables(
        self,
        neurons: pd.DataFrame,
        synapses: pd.DataFrame,
        edges: pd.DataFrame | None,
        sources: Mapping[str, str] | None,
    ) -> None:
        src = dict(sources or {})
        neu = _normalise_neurons(neurons, src.get("neurons", "neurons table"))
        known = neu["neuron_id"].to_numpy()
        syn = _normalise_synapses(synapses, known, src.get("synapses", "synapses table"))
        if edges is None:
            edg = edges_from_synapses(syn)
        else:
            edg = _normalise_edges(edges, known, src.get("edges", "edges table"))
        self._neurons, self._synapses, self._edges = neu, syn, edg
        self._views.clear()

    @classmethod
    def from_tables(
        cls,
        neurons: pd.DataFrame,
        synapses: pd.DataFrame,
        edges: pd.DataFrame | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Connectome:
        """Build a connectome from in-memory tables (same as the constructor).

        Parameters
        ----------
        neurons, synapses : pandas.DataFrame
            Neurons and synapses tables.
        edges : pandas.DataFrame, optional
            Edges table; computed from ``synapses`` when None.
        meta : mapping, optional
            Metadata.

        Returns
        -------
        Connectome
        """
        return cls(neurons, synapses, edges, meta)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> Connectome:
        """Load a connectome from a run directory.

        Reads ``neurons.parquet``, ``synapses.parquet``, ``edges.parquet`` and,
        if present, ``run.json`` (into :attr:`meta`; see :attr:`provenance`).

        Runs of format 0 (no ``run.json``, or no ``format_version`` in it: runs
        written before provenance was recorded) load too; if their neurons table
        lacks the annotation columns ``barcode``, ``barcode_confidence``,
        ``cell_type`` or ``cell_type_confidence`` they are filled with ``""``,
        NaN, missing and NaN. A ``format_version`` newer than
        :data:`FORMAT_VERSION` is loaded with a warning.

        Parameters
        ----------
        run_dir : str or os.PathLike
            The run directory.

        Returns
        -------
        Connectome

        Raises
        ------
        FileNotFoundError
            If ``run_dir`` or one of the three parquet files does not exist.
        ValueError
            If a table lacks required columns or is inconsistent, or ``run.json``
            is not a JSON object.
        """
        root = Path(run_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"run directory {str(root)!r} does not exist")
        paths = {
            "neurons": root / NEURONS_FILE,
            "synapses": root / SYNAPSES_FILE,
            "edges": root / EDGES_FILE,
        }
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(
                    f"connectome file {path.name!r} not found in run directory {str(root)!r}"
                )
        tables = {name: pd.read_parquet(path) for name, path in paths.items()}
        meta: dict[str, Any] = {}
        run_json = root / RUN_FILE
        if run_json.is_file():
            try:
                meta = json.loads(run_json.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{str(run_json)!r} is not valid JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise ValueError(
                    f"{str(run_json)!r} must hold a JSON object, got {type(meta).__name__}"
                )
        version = _format_version(meta)
        if version > FORMAT_VERSION:
            logger.warning(
                "%s has format_version %s, newer than this code's %s; loading anyway",
                run_json, version, FORMAT_VERSION,
            )
        if version < 1:
            tables["neurons"] = _migrate_legacy_neurons(
                tables["neurons"], f"{paths['neurons'].name} ({paths['neurons']})"
            )
        self = cls.__new__(cls)
        self._views = {}
        self.meta = meta
        self._set_tables(
            tables["neurons"],
            tables["synapses"],
            tables["edges"],
            sources={name: f"{path.name} ({path})" for name, path in paths.items()},
        )
        self.run_dir = root
        logger.debug("loaded %r from %s", self, root)
        return self

    def save(self, run_dir: str | os.PathLike, *, write_meta: bool = False) -> None:
        """Write the three tables as parquet files into ``run_dir``.

        Each file is written under a temporary name in ``run_dir`` and moved into
        place with :func:`os.replace`, so readers never see a partial file.

        Parameters
        ----------
        run_dir : str or os.PathLike
            Target directory (created if missing).
        write_meta : bool, default False
            Also write :attr:`meta` as ``run.json`` (normally owned by the
            pipeline runner, hence off by default).
        """
        root = Path(run_dir)
        root.mkdir(parents=True, exist_ok=True)
        for name, table in (
            (NEURONS_FILE, self._neurons),
            (SYNAPSES_FILE, self._synapses),
            (EDGES_FILE, self._edges),
        ):
            _atomic_write(root / name, lambda p, t=table: t.to_parquet(p, index=False))
        if write_meta:
            text = json.dumps(self.meta, indent=2, sort_keys=True, default=str)
            _atomic_write(root / RUN_FILE, lambda p: p.write_text(text))
        logger.debug("saved %r to %s", self, root)

    # ------------------------------------------------------------------ tables

    @property
    def neuron_table(self) -> pd.DataFrame:
        """The neurons table (do not modify in place)."""
        return self._neurons

    @neuron_table.setter
    def neuron_table(self, value: pd.DataFrame) -> None:
        self._set_tables(value, self._synapses, self._edges, sources=None)

    @property
    def synapse_table(self) -> pd.DataFrame:
        """The synapses table (do not modify in place); setting it recomputes edges."""
        return self._synapses

    @synapse_table.setter
    def synapse_table(self, value: pd.DataFrame) -> None:
        self._set_tables(self._neurons, value, None, sources=None)

    @property
    def edge_table(self) -> pd.DataFrame:
        """The edges table (do not modify in place)."""
        return self._edges

    @edge_table.setter
    def edge_table(self, value: pd.DataFrame) -> None:
        self._set_tables(self._neurons, self._synapses, value, sources=None)

    @property
    def neuron_ids(self) -> np.ndarray:
        """Sorted neuron ids (uint64 array, a copy)."""
        return self._neurons["neuron_id"].to_numpy(copy=True)

    @property
    def cell_types(self) -> list[str]:
        """Sorted distinct non-missing cell types."""
        return sorted(self._neurons["cell_type"].dropna().unique().tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(neurons={len(self._neurons)}, "
            f"synapses={len(self._synapses)}, edges={len(self._edges)}, "
            f"cell_types={len(self.cell_types)})"
        )

    # ------------------------------------------------------------------ validation

    def _validate_ids(self, values: Any, what: str) -> np.ndarray:
        ids = _ids_argument(values, what)
        unknown = np.setdiff1d(ids, self._neurons["neuron_id"].to_numpy())
        if unknown.size:
            raise KeyError(f"unknown neuron id(s) in {what}: {unknown.tolist()}")
        return ids

    def _validate_id(self, neuron_id: Any) -> int:
        if np.ndim(neuron_id) != 0:
            raise TypeError(f"neuron_id must be a single id, got {neuron_id!r}")
        return int(self._validate_ids(neuron_id, "neuron_id")[0])

    # ------------------------------------------------------------------ queries

    def neurons(
        self,
        ids: Any = None,
        type: str | Iterable[str] | None = None,  # noqa: A002 - neuPrint-style name
        barcode: str | Iterable[str] | None = None,
        min_size: int | None = None,
        where: str | None = None,
    ) -> pd.DataFrame:
        """Select neurons; all criteria are combined with AND.

        Parameters
        ----------
        ids : int or list of int, optional
            Neuron ids; unknown ids raise :class:`KeyError`.
        type : str or list of str, optional
            Cell type(s).
        barcode : str or list of str, optional
            Barcode string(s).
        min_size : int, optional
            Minimum ``size_voxels`` (inclusive).
        where : str, optional
            A boolean :meth:`pandas.DataFrame.query` expression over the neurons
            table's columns, e.g. ``"size_voxels > 1000 and cell_type == 'exc'"``.
            Semantics are those of :meth:`pandas.DataFrame.query` (a missing
            value, e.g. an unknown ``cell_type``, compares unequal to everything;
            test it with ``cell_type.isna()``); a missing result counts as no
            match. ``@variable`` references are not supported.

        Returns
        -------
        pandas.DataFrame
            Matching rows of the neurons table (all columns), sorted by ``neuron_id``.

        Raises
        ------
        ValueError
            If ``where`` is not a valid boolean expression over the columns (the
            message names the expression and lists the columns).

        Examples
        --------
        >>> from graph.connectome import _example_connectome
        >>> c = _example_connectome()
        >>> c.neurons(where="size_voxels > 1000")["neuron_id"].tolist()
        [2, 3]
        >>> c.neurons(type="inh", where="size_voxels < 1000")["neuron_id"].tolist()
        [4]
        >>> c.neurons(where="barcode == '01' and barcode_confidence >= 0.9")["neuron_id"].tolist()
        [1]
        """
        df = self._neurons
        mask = pd.Series(True, index=df.index)
        if ids is not None:
            mask &= df["neuron_id"].isin(self._validate_ids(ids, "ids"))
        if type is not None:
            mask &= df["cell_type"].isin(_strings_argument(type, "type"))
        if barcode is not None:
            mask &= df["barcode"].isin(_strings_argument(barcode, "barcode"))
        if min_size is not None:
            if isinstance(min_size, bool) or not isinstance(
                min_size, (int, float, np.integer, np.floating)
            ):
                raise TypeError(f"min_size must be a number, got {min_size!r}")
            mask &= df["size_voxels"] >= min_size
        if where is not None:
            mask &= _where_mask(df, where, "neurons table")
        return df[mask].reset_index(drop=True)

    def synapses(
        self,
        pre: Any = None,
        post: Any = None,
        min_confidence: float | None = None,
        within: Any = None,
        site: str = "mid",
    ) -> pd.DataFrame:
        """Select synapses by partner neurons, confidence and position.

        Parameters
        ----------
        pre, post : int or list of int, optional
            Presynaptic / postsynaptic neuron id(s); unknown ids raise :class:`KeyError`.
        min_confidence : float, optional
            Minimum ``confidence`` (inclusive), in [0, 1].
        within : ((z0, y0, x0), (z1, y1, x1)), optional
            Box in voxel coordinates, **half-open**: a synapse matches when
            ``z0 <= z < z1`` and likewise for y and x (lower corner inclusive,
            upper corner exclusive, like the neurons table's ``bbox_*`` and
            numpy slices ``[z0:z1, y0:y1, x0:x1]``).
        site : {"mid", "pre", "post", "both"}, default "mid"
            Which position ``within`` tests: the midpoint of the pre and post
            sites, the pre site, the post site, or both sites.

        Returns
        -------
        pandas.DataFrame
            Matching rows of the synapses table (all columns), sorted by ``synapse_id``.

        Examples
        --------
        >>> from graph.connectome import _example_connectome
        >>> c = _example_connectome()
        >>> c.synapses(pre=1, min_confidence=0.5)["synapse_id"].tolist()
        [1, 2, 4]
        >>> box = ((0, 0, 0), (3, 100, 100))  # z in [0, 3)
        >>> c.synapses(within=box)["synapse_id"].tolist()
        [1, 2, 3]
        >>> c.synapses(within=((0, 0, 0), (100, 5, 5)), site="pre")["synapse_id"].tolist()
        [1, 2]
        """
        df = self._synapses
        mask = pd.Series(True, index=df.index)
        if pre is not None:
            mask &= df["pre_neuron"].isin(self._validate_ids(pre, "pre"))
        if post is not None:
            mask &= df["post_neuron"].isin(self._validate_ids(post, "post"))
        threshold = _check_min_confidence(min_confidence)
        if threshold is not None:
            mask &= df["confidence"] >= threshold
        if within is not None:
            lo, hi = _bbox_argument(within)
            pre_pts = df[["pre_z", "pre_y", "pre_x"]].to_numpy(dtype="float64")
            post_pts = df[["post_z", "post_y", "post_x"]].to_numpy(dtype="float64")

            def inside(pts: np.ndarray) -> np.ndarray:
                return np.all((pts >= lo) & (pts < hi), axis=1)

            if site == "mid":
                hit = inside((pre_pts + post_pts) / 2.0)
            elif site == "pre":
                hit = inside(pre_pts)
            elif site == "post":
                hit = inside(post_pts)
            elif site == "both":
                hit = inside(pre_pts) & inside(post_pts)
            else:
                raise ValueError(f"site must be 'mid', 'pre', 'post' or 'both', got {site!r}")
            mask &= hit
        return df[mask].reset_index(drop=True)

    def _edges_for(self, min_confidence: float | None) -> pd.DataFrame:
        threshold = _check_min_confidence(min_confidence)
        if threshold is None:
            return self._edges
        syn = self._synapses
        return edges_from_synapses(syn[syn["confidence"] >= threshold])

    def adjacencies(
        self,
        sources: Any = None,
        targets: Any = None,
        min_weight: int = 1,
        min_confidence: float | None = None,
    ) -> pd.DataFrame:
        """Neuron-to-neuron connections (the edges table, filtered and typed).

        Parameters
        ----------
        sources, targets : int or list of int, optional
            Restrict presynaptic / postsynaptic neurons; unknown ids raise
            :class:`KeyError`.
        min_weight : int, default 1
            Minimum number of synapses per connection (inclusive).
        min_confidence : float, optional
            If given, synapses below this confidence are discarded *before*
            aggregation, so ``weight`` and ``confidence_mean`` only count the
            remaining synapses.

        Returns
        -------
        pandas.DataFrame
            Columns ``pre``, ``post`` (uint64), ``weight`` (int64, synapse count),
            ``confidence_mean`` (float64), ``pre_type``, ``post_type``; sorted by
            ``pre`` then ``post``. Autapses and synapses with partner 0 never appear.
        """
        min_weight = _check_min_weight(min_weight)
        edges = self._edges_for(min_confidence)
        mask = edges["synapse_count"] >= min_weight
        if sources is not None:
            mask &= edges["pre"].isin(self._validate_ids(sources, "sources"))
        if targets is not None:
            mask &= edges["post"].isin(self._validate_ids(targets, "targets"))
        sel = edges[mask]
        types = self._neurons.set_index("neuron_id")["cell_type"]
        out = pd.DataFrame(
            {
                "pre": sel["pre"].to_numpy(),
                "post": sel["post"].to_numpy(),
                "weight": sel["synapse_count"].to_numpy(),
                "confidence_mean": sel["confidence_mean"].to_numpy(),
            }
        )
        out["pre_type"] = out["pre"].map(types)
        out["post_type"] = out["post"].map(types)
        return out.sort_values(["pre", "post"], kind="stable").reset_index(drop=True)[
            _ADJ_COLUMNS
        ]

    def upstream(
        self, neuron_id: int, min_weight: int = 1, min_confidence: float | None = None
    ) -> pd.DataFrame:
        """Inputs of one neuron.

        Parameters
        ----------
        neuron_id : int
            The postsynaptic neuron; unknown ids raise :class:`KeyError`.
        min_weight : int, default 1
            Minimum synapse count per connection.
        min_confidence : float, optional
            See :meth:`adjacencies`.

        Returns
        -------
        pandas.DataFrame
            :meth:`adjacencies` columns, sorted by ``weight`` descending then ``pre``.
        """
        nid = self._validate_id(neuron_id)
        out = self.adjacencies(targets=nid, min_weight=min_weight, min_confidence=min_confidence)
        return out.sort_values(
            ["weight", "pre"], ascending=[False, True], kind="stable"
        ).reset_index(drop=True)

    def downstream(
        self, neuron_id: int, min_weight: int = 1, min_confidence: float | None = None
    ) -> pd.DataFrame:
        """Outputs of one neuron.

        Parameters
        ----------
        neuron_id : int
            The presynaptic neuron; unknown ids raise :class:`KeyError`.
        min_weight : int, default 1
            Minimum synapse count per connection.
        min_confidence : float, optional
            See :meth:`adjacencies`.

        Returns
        -------
        pandas.DataFrame
            :meth:`adjacencies` columns, sorted by ``weight`` descending then ``post``.
        """
        nid = self._validate_id(neuron_id)
        out = self.adjacencies(sources=nid, min_weight=min_weight, min_confidence=min_confidence)
        return out.sort_values(
            ["weight", "post"], ascending=[False, True], kind="stable"
        ).reset_index(drop=True)

    def connectivity_by_type(
        self, min_weight: int = 1, min_confidence: float | None = None
    ) -> pd.DataFrame:
        """Synapse counts summed over cell-type pairs.

        Parameters
        ----------
        min_weight : int, default 1
            Only neuron pairs with at least this many synapses contribute.
        min_confidence : float, optional
            See :meth:`adjacencies`.

        Returns
        -------
        pandas.DataFrame
            Square int64 matrix, index ``pre_type`` x columns ``post_type``, over all
            (non-missing) cell types of the neurons table in sorted order; pairs
            without connections are 0. Neurons with a missing cell type are ignored.
        """
        adj = self.adjacencies(min_weight=min_weight, min_confidence=min_confidence)
        types = self.cell_types
        counts = adj.groupby(["pre_type", "post_type"])["weight"].sum()
        matrix = np.zeros((len(types), len(types)), dtype="int64")
        pos = {t: i for i, t in enumerate(types)}
        for (pre_t, post_t), n in counts.items():
            matrix[pos[pre_t], pos[post_t]] = n
        return pd.DataFrame(
            matrix,
            index=pd.Index(types, name="pre_type"),
            columns=pd.Index(types, name="post_type"),
        )

    def shortest_paths(
        self, a: int, b: int, min_weight: int = 1, max_paths: int | None = 1000
    ) -> pd.DataFrame:
        """All shortest directed paths (fewest hops) from neuron ``a`` to ``b``.

        Only connections with at least ``min_weight`` synapses are traversed
        (the edges table: autapses and partner 0 never count). Runs two
        breadth-first searches in compiled code (:mod:`scipy.sparse.csgraph`),
        then enumerates the paths through the nodes on a shortest path.

        Parameters
        ----------
        a, b : int
            Source and target neuron ids; unknown ids raise :class:`KeyError`.
        min_weight : int, default 1
            Minimum synapse count of a traversed connection.
        max_paths : int or None, default 1000
            Stop after this many paths (the number of shortest paths can grow
            exponentially); None enumerates all. A truncation is logged.

        Returns
        -------
        pandas.DataFrame
            Columns ``path`` (int64, 0-based path index), ``hop`` (int64, 0 for
            ``a`` ... path length for ``b``) and ``neuron_id`` (uint64); one row per
            neuron per path, paths in lexicographic order of their neuron ids.
            Empty when ``b`` is unreachable; a single row when ``a == b``.

        Examples
        --------
        >>> from graph.connectome import _example_connectome
        >>> c = _example_connectome()
        >>> p = c.shortest_paths(1, 4)
        >>> p.groupby("path")["neuron_id"].apply(list).tolist()
        [[1, 2, 4], [1, 3, 4]]
        >>> p.columns.tolist()
        ['path', 'hop', 'neuron_id']
        >>> c.shortest_paths(1, 4, min_weight=2)["neuron_id"].tolist()
        [1, 2, 4]
        >>> len(c.shortest_paths(4, 1))
        0
        """
        min_weight = _check_min_weight(min_weight)
        if max_paths is not None and (
            isinstance(max_paths, bool) or not isinstance(max_paths, (int, np.integer))
            or max_paths < 1
        ):
            raise ValueError(f"max_paths must be a positive integer or None, got {max_paths!r}")
        src = self._validate_ids(a, "a") if np.ndim(a) == 0 else None
        dst = self._validate_ids(b, "b") if np.ndim(b) == 0 else None
        if src is None or dst is None:
            raise TypeError(f"a and b must be single neuron ids, got {a!r}, {b!r}")
        ids = self._neurons["neuron_id"].to_numpy()
        ia = int(np.searchsorted(ids, src[0]))
        ib = int(np.searchsorted(ids, dst[0]))
        if ia == ib:
            return pd.DataFrame({"path": np.zeros(1, "int64"), "hop": np.zeros(1, "int64"),
                                 "neuron_id": ids[[ia]].astype(_ID_DTYPE)})
        fwd, bwd = self._csr(min_weight)
        dist_a = _bfs_distances(fwd, ia)
        if dist_a[ib] < 0:
            return _empty_paths()
        dist_b = _bfs_distances(bwd, ib)
        length = int(dist_a[ib])
        on_path = (dist_a >= 0) & (dist_b >= 0) & (dist_a + dist_b == length)
        indptr, indices = fwd.indptr, fwd.indices
        paths: list[list[int]] = []
        stack = [[ia]]
        truncated = False
        # Depth-first, pushing successors in reverse so paths come out sorted.
        while stack:
            path = stack.pop()
            u = path[-1]
            if u == ib:
                paths.append(path)
                if max_paths is not None and len(paths) >= max_paths:
                    truncated = bool(stack)
                    break
                continue
            nbrs = indices[indptr[u]:indptr[u + 1]]
            nbrs = np.sort(nbrs[on_path[nbrs] & (dist_a[nbrs] == len(path))])
            stack.extend([path + [int(v)] for v in nbrs[::-1]])
        if truncated:
            logger.warning("shortest_paths(%s, %s): stopped after max_paths=%d paths",
                           a, b, max_paths)
        hops = np.tile(np.arange(length + 1, dtype="int64"), len(paths))
        flat = np.concatenate([np.asarray(p, dtype="int64") for p in paths])
        return pd.DataFrame(
            {
                "path": np.repeat(np.arange(len(paths), dtype="int64"), length + 1),
                "hop": hops,
                "neuron_id": ids[flat].astype(_ID_DTYPE),
            }
        )

    def _csr(self, min_weight: int) -> tuple[Any, Any]:
        """Forward and reverse CSR adjacency over neuron row positions (cached)."""
        from scipy.sparse import csr_matrix

        key = f"csr{min_weight}"
        cached = self._views.get(key)
        if cached is None:
            ids = self._neurons["neuron_id"].to_numpy()
            e = self._edges
            e = e[e["synapse_count"] >= min_weight]
            rows = np.searchsorted(ids, e["pre"].to_numpy())
            cols = np.searchsorted(ids, e["post"].to_numpy())
            data = np.ones(len(rows), dtype="int8")
            n = len(ids)
            fwd = csr_matrix((data, (rows, cols)), shape=(n, n))
            bwd = csr_matrix((data, (cols, rows)), shape=(n, n))
            fwd.sort_indices()
            bwd.sort_indices()
            cached = (fwd, bwd)
            self._views[key] = cached  # type: ignore[assignment]
        return cached

    def subgraph(
        self,
        ids: Any = None,
        type: str | Iterable[str] | None = None,  # noqa: A002 - neuPrint-style name
    ) -> Connectome:
        """A new connectome restricted to some neurons (the induced subgraph).

        Parameters
        ----------
        ids : int or list of int, optional
            Neuron ids to keep; unknown ids raise :class:`KeyError`.
        type : str or list of str, optional
            Keep neurons of these cell types. Combined with ``ids`` by AND; with
            neither, every neuron is kept.

        Returns
        -------
        Connectome
            Neurons selected; synapses whose partners are both kept neurons or
            "no neuron" (0), with at least one kept neuron; edges between kept
            neurons. :attr:`meta` is copied with ``meta["subgraph"]`` recording the
            selection; ``run_dir`` is the parent's (so exports can still find the
            label image, which they filter to the kept ids).

        Examples
        --------
        >>> from graph.connectome import _example_connectome
        >>> c = _example_connectome()
        >>> sub = c.subgraph(ids=[1, 2, 4])
        >>> sub.neuron_ids.tolist(), sub.edge_table[["pre", "post"]].values.tolist()
        ([1, 2, 4], [[1, 2], [2, 4]])
        >>> c.subgraph(type="inh").synapse_table["synapse_id"].tolist()  # 2->4 and 4->0
        [6, 7, 10]
        """
        sel = self.neurons(ids=ids, type=type)
        keep = sel["neuron_id"].to_numpy()
        syn = self._synapses
        pre_in = syn["pre_neuron"].isin(keep)
        post_in = syn["post_neuron"].isin(keep)
        smask = (pre_in | (syn["pre_neuron"] == 0)) & (post_in | (syn["post_neuron"] == 0))
        smask &= pre_in | post_in
        e = self._edges
        emask = e["pre"].isin(keep) & e["post"].isin(keep)
        meta = dict(self.meta)
        meta["subgraph"] = {
            "ids": None if ids is None else _ids_argument(ids, "ids").tolist(),
            "type": None if type is None else _strings_argument(type, "type"),
            "n_neurons": int(len(keep)),
        }
        out = self.__class__(sel, syn[smask], e[emask], meta=meta)
        out.run_dir = self.run_dir
        return out

    # ------------------------------------------------------------------ provenance

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the tables came from, read from ``run.json`` (:attr:`meta`).

        Returns
        -------
        dict
            ``format_version`` (int; 0 for runs without ``run.json`` or without
            the key), ``code_version`` (the ``optical-connectome`` package version
            that wrote the run, or None), ``versions`` (all recorded package
            versions), ``parameters`` (the workflow config, or None), ``blocks``
            (``n_blocks``, ``block_shape`` and ``done``: per blockwise step under
            ``work/``, the number of block done-markers found; None values when
            unknown), ``status``, ``started``, ``finished``, ``counts`` (table
            sizes recorded by the run) and ``run_dir`` (str or None).

        Examples
        --------
        >>> from graph.connectome import _example_connectome
        >>> p = _example_connectome().provenance
        >>> p["format_version"], p["code_version"], p["blocks"]["n_blocks"]
        (0, None, None)
        """
        meta = self.meta
        versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
        code_version = versions.get("optical-connectome") or meta.get("version")
        done = _count_done_markers(self.run_dir / "work") if self.run_dir is not None else {}
        return {
            "format_version": _format_version(meta),
            "code_version": code_version,
            "versions": dict(versions),
            "parameters": meta.get("config"),
            "blocks": {
                "n_blocks": meta.get("n_blocks"),
                "block_shape": meta.get("block_shape"),
                "done": done,
            },
            "status": meta.get("status"),
            "started": meta.get("started"),
            "finished": meta.get("finished"),
            "counts": meta.get("counts"),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
        }

    # ------------------------------------------------------------------ graph views

    def to_networkx(self) -> nx.MultiDiGraph:
        """Synapse-level graph view.

        Returns
        -------
        networkx.MultiDiGraph
            Frozen (read-only; use ``.copy()`` to edit) and cached until a table is
            replaced. One node per neuron (Python ``int`` id) with attributes
            ``cell_type``, ``barcode``, ``size_voxels``, ``z``, ``y``, ``x``,
            ``barcode_confidence``, ``cell_type_confidence`` (a missing string value,
            e.g. unknown ``cell_type``, is omitted); one edge per synapse
            whose partners are both neurons (partner 0 omitted, autapses kept as
            self-loops) with key ``synapse_id`` and attributes ``pre_z`` ...
            ``post_x``, ``z_um``/``y_um``/``x_um`` (if present) and ``confidence``.
        """
        graph = self._views.get("multi")
        if graph is None:
            graph = nx.MultiDiGraph()
            graph.add_nodes_from(_node_records(self._neurons))
            syn = self._synapses
            syn = syn[(syn["pre_neuron"] != 0) & (syn["post_neuron"] != 0)]
            cols = [c for c in _SYNAPSE_EDGE_ATTRS if c in syn.columns]
            graph.add_edges_from(
                (u, v, k, attrs)
                for u, v, k, attrs in zip(
                    syn["pre_neuron"].tolist(),
                    syn["post_neuron"].tolist(),
                    syn["synapse_id"].tolist(),
                    syn[cols].to_dict("records"),
                )
            )
            graph = nx.freeze(graph)
            self._views["multi"] = graph
        return graph

    def edge_graph(self) -> nx.DiGraph:
        """Neuron-level weighted graph view.

        Returns
        -------
        networkx.DiGraph
            Frozen and cached like :meth:`to_networkx`; same nodes and node
            attributes, one edge per row of the edges table with attributes
            ``weight`` (synapse count, int) and ``confidence_mean`` (float).
        """
        graph = self._views.get("edge")
        if graph is None:
            graph = nx.DiGraph()
            graph.add_nodes_from(_node_records(self._neurons))
            e = self._edges
            graph.add_edges_from(
                (u, v, {"weight": w, "confidence_mean": c})
                for u, v, w, c in zip(
                    e["pre"].tolist(),
                    e["post"].tolist(),
                    e["synapse_count"].tolist(),
                    e["confidence_mean"].tolist(),
                )
            )
            graph = nx.freeze(graph)
            self._views["edge"] = graph
        return graph
