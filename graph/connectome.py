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
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
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
]

logger = logging.getLogger(__name__)

NEURONS_FILE = "neurons.parquet"
SYNAPSES_FILE = "synapses.parquet"
EDGES_FILE = "edges.parquet"
RUN_FILE = "run.json"

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
    """Call ``write(tmp_path)`` then atomically move the temp file onto ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        self._views: dict[str, nx.Graph] = {}
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
        if present, ``run.json`` (into :attr:`meta`).

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

        Returns
        -------
        pandas.DataFrame
            Matching rows of the neurons table (all columns), sorted by ``neuron_id``.
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
        return df[mask].reset_index(drop=True)

    def synapses(
        self,
        pre: Any = None,
        post: Any = None,
        min_confidence: float | None = None,
    ) -> pd.DataFrame:
        """Select synapses by partner neurons and confidence.

        Parameters
        ----------
        pre, post : int or list of int, optional
            Presynaptic / postsynaptic neuron id(s); unknown ids raise :class:`KeyError`.
        min_confidence : float, optional
            Minimum ``confidence`` (inclusive), in [0, 1].

        Returns
        -------
        pandas.DataFrame
            Matching rows of the synapses table (all columns), sorted by ``synapse_id``.
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
