"""Score a pipeline run directory against a synthetic sample's ground truth.

:func:`evaluate_run` reads the run outputs (``labels.zarr/neurons``,
``neurons.parquet``, ``synapses.parquet``, ``edges.parquet``, ``run.json``) and the
sample's truth (``volume.zarr/labels/truth``, ``truth/neurons.parquet``,
``truth/synapses.parquet``, ``truth/meta.json``) as laid out in ``docs/contracts.md`` and
returns a flat dict of metrics; :func:`format_report` renders it as a table.

The command line front end is ``connectome evaluate`` (:mod:`workflows.cli`).
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from pipeline.errors import InputError, PipelineError
from workflows.metrics import (
    adapted_rand_error,
    detection_scores,
    edge_scores,
    map_edges,
    match_labels,
    match_points,
    match_truth_labels,
    variation_of_information,
)

__all__ = [
    "METRIC_KEYS",
    "MissingOutputError",
    "evaluate_run",
    "format_report",
]

logger = logging.getLogger(__name__)

#: Keys of the dict returned by :func:`evaluate_run`, in report order.
METRIC_KEYS = (
    "voi_split",
    "voi_merge",
    "arand",
    "synapse_precision",
    "synapse_recall",
    "synapse_f1",
    "edge_precision",
    "edge_recall",
    "edge_f1",
    "edge_weight_correlation",
    "partner_accuracy",
    "cell_type_accuracy",
    "barcode_accuracy",
    "n_neurons_pred",
    "n_neurons_true",
    "n_synapses_pred",
    "n_synapses_true",
)

_SECTIONS = (
    ("Segmentation", ("voi_split", "voi_merge", "arand")),
    ("Synapses", ("synapse_precision", "synapse_recall", "synapse_f1", "partner_accuracy")),
    ("Edges", ("edge_precision", "edge_recall", "edge_f1", "edge_weight_correlation")),
    ("Neuron identity", ("cell_type_accuracy", "barcode_accuracy")),
    ("Counts", ("n_neurons_pred", "n_neurons_true", "n_synapses_pred", "n_synapses_true")),
)

_SYNAPSE_COLUMNS = ("pre_neuron", "post_neuron", "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")


class MissingOutputError(PipelineError, FileNotFoundError):
    """A run or sample directory lacks a file the evaluation needs."""


def _required_paths(run_dir: Path, truth_dir: Path) -> dict[str, Path]:
    return {
        "run.json": run_dir / "run.json",
        "predicted labels": run_dir / "labels.zarr" / "neurons" / "0",
        "predicted neurons": run_dir / "neurons.parquet",
        "predicted synapses": run_dir / "synapses.parquet",
        "predicted edges": run_dir / "edges.parquet",
        "truth labels": truth_dir / "volume.zarr" / "labels" / "truth" / "0",
        "truth neurons": truth_dir / "truth" / "neurons.parquet",
        "truth synapses": truth_dir / "truth" / "synapses.parquet",
    }


def _find_key(document, key: str):
    """Breadth-first search of nested dicts for `key`; None when absent."""
    queue = deque([document])
    while queue:
        node = queue.popleft()
        if isinstance(node, dict):
            if key in node:
                return node[key]
            queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def _parse_voxel_size(value, source: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(
            f"{source}: voxel_size must be 3 positive numbers [z, y, x] (micrometres), got {value!r}"
        )
    return arr


def _ome_label_voxel_size(label_group: Path) -> np.ndarray | None:
    """Level-0 scale of an OME-Zarr image-label, or None if unreadable."""
    try:
        attrs = zarr.open_group(str(label_group), mode="r").attrs.asdict()
        ome = attrs.get("ome", attrs)
        dataset = ome["multiscales"][0]["datasets"][0]
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                return _parse_voxel_size(transform["scale"][-3:], str(label_group))
    except (KeyError, IndexError, TypeError, ValueError, FileNotFoundError) as exc:
        logger.debug("no voxel size in %s: %s", label_group, exc)
    return None


def _voxel_size(run_json: dict, run_json_path: Path, truth_dir: Path) -> np.ndarray:
    value = _find_key(run_json, "voxel_size")
    if value is not None:
        return _parse_voxel_size(value, str(run_json_path))
    meta_path = truth_dir / "truth" / "meta.json"
    if meta_path.exists():
        value = _find_key(json.loads(meta_path.read_text()), "voxel_size")
        if value is not None:
            logger.info("voxel_size not in %s; using %s", run_json_path, meta_path)
            return _parse_voxel_size(value, str(meta_path))
    label_group = truth_dir / "volume.zarr" / "labels" / "truth"
    found = _ome_label_voxel_size(label_group)
    if found is not None:
        logger.info("voxel_size not in run.json or meta.json; using %s metadata", label_group)
        return found
    raise InputError(
        f"no voxel_size found in {run_json_path}, {meta_path} or {label_group} metadata"
    )


def _read_table(path: Path, columns, what: str) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} table {path} lacks column(s) {missing}; has {list(frame.columns)}")
    return frame


def _midpoints_um(synapses: pd.DataFrame, voxel_size: np.ndarray) -> np.ndarray:
    pre = synapses[["pre_z", "pre_y", "pre_x"]].to_numpy(dtype=np.float64)
    post = synapses[["post_z", "post_y", "post_x"]].to_numpy(dtype=np.float64)
    return (pre + post) / 2.0 * voxel_size


def _ratio(numerator: int, denominator: int, *, empty_truth: bool) -> float:
    """``numerator / denominator``; for 0/0, 1.0 if there was nothing to find else 0.0."""
    if denominator:
        return numerator / denominator
    return 1.0 if empty_truth else 0.0


def evaluate_run(
    run_dir,
    truth_dir,
    *,
    synapse_radius_um: float = 1.0,
    min_overlap_fraction: float = 0.5,
) -> dict:
    """Score a run directory against a sample directory's ground truth.

    Both label volumes are loaded whole into memory: samples are small (up to
    ~10 M voxels, i.e. ~160 MB for two uint64 arrays). Larger volumes would need
    a block-wise contingency table.

    Parameters
    ----------
    run_dir : str or Path
        Run directory written by ``connectome run``.
    truth_dir : str or Path
        Sample directory written by ``sample_data.write_sample``.
    synapse_radius_um : float, optional
        Synapse matching radius in micrometres (inclusive), > 0.
    min_overlap_fraction : float, optional
        Majority threshold for matching truth neurons to predicted neurons.

    Returns
    -------
    dict
        Exactly the keys of :data:`METRIC_KEYS`; counts are ``int``, the rest
        ``float``.

    Raises
    ------
    MissingOutputError
        (a ``FileNotFoundError``) naming every missing file when the run or the
        truth is incomplete.
    InputError
        (a ``ValueError``) if a table lacks columns, the label volumes differ in
        shape, or no valid voxel size is found.
    ValueError
        If `synapse_radius_um` is not positive.

    Notes
    -----
    Metric definitions:

    * ``voi_split``, ``voi_merge`` (bits) and ``arand``: see
      :func:`workflows.metrics.variation_of_information` and
      :func:`workflows.metrics.adapted_rand_error`; only truth-foreground voxels count.
    * Synapses are points at their midpoint ``(pre + post) / 2``, converted from voxel
      coordinates to micrometres with the voxel size (both sides use the same
      conversion), matched one-to-one within ``synapse_radius_um`` by
      :func:`workflows.metrics.match_points` (globally optimal).
    * ``partner_accuracy``: among matched synapses, the fraction whose predicted
      (pre, post) neurons, mapped to truth ids by
      :func:`workflows.metrics.match_labels`, equal the truth synapse's
      (pre, post). With no matched synapse it is 1.0 if the truth has no synapse,
      else 0.0.
    * Edges: predicted ``edges.parquet`` mapped to truth ids with
      :func:`workflows.metrics.map_edges` (edges with an end mapped to 0 or both ends
      on one truth neuron are dropped, duplicates summed); truth edges are the truth
      synapses counted per (pre, post), ignoring neuron 0. Scores from
      :func:`workflows.metrics.edge_scores`.
    * ``cell_type_accuracy`` / ``barcode_accuracy``: over the truth neurons of
      ``truth/neurons.parquet``, each matched to a predicted neuron by
      :func:`workflows.metrics.match_truth_labels` (the predicted label covering
      more than ``min_overlap_fraction`` of the truth neuron's voxels); the
      fraction whose predicted ``cell_type`` / ``barcode`` string equals the truth.
      Unmatched truth neurons, and matches absent from the predicted table, count
      as wrong. 1.0 if the truth has no neuron.
    * ``n_neurons_*`` / ``n_synapses_*``: rows of the neuron / synapse tables.

    The voxel size ([z, y, x] micrometres) is the first ``voxel_size`` key found
    (breadth-first, nested dicts included) in ``run.json``, else in
    ``truth/meta.json``, else the level-0 scale of the truth label image's OME-Zarr
    metadata. The synapse tables' ``z_um``/``y_um``/``x_um`` columns are not used.
    """
    run_dir = Path(run_dir)
    truth_dir = Path(truth_dir)
    radius = float(synapse_radius_um)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"synapse_radius_um must be a positive number, got {synapse_radius_um!r}")

    paths = _required_paths(run_dir, truth_dir)
    missing = [f"{what}: {path}" for what, path in paths.items() if not path.exists()]
    if missing:
        raise MissingOutputError("cannot evaluate, missing " + "; ".join(missing))

    run_json = json.loads(paths["run.json"].read_text())
    voxel_size = _voxel_size(run_json, paths["run.json"], truth_dir)

    seg = zarr.open_array(str(paths["predicted labels"]), mode="r")[...]
    truth = zarr.open_array(str(paths["truth labels"]), mode="r")[...]
    if seg.shape != truth.shape:
        raise InputError(
            f"predicted labels {paths['predicted labels']} have shape {seg.shape} but "
            f"truth labels {paths['truth labels']} have shape {truth.shape}"
        )
    logger.info("evaluating %s against %s (%d voxels)", run_dir, truth_dir, seg.size)

    voi_split, voi_merge = variation_of_information(seg, truth)
    arand, _, _ = adapted_rand_error(seg, truth)
    pred_to_truth = match_labels(seg, truth)
    truth_to_pred = match_truth_labels(seg, truth, min_overlap_fraction=min_overlap_fraction)

    neuron_columns = ("neuron_id", "cell_type", "barcode")
    pred_neurons = _read_table(paths["predicted neurons"], neuron_columns, "predicted neuron")
    true_neurons = _read_table(paths["truth neurons"], neuron_columns, "truth neuron")
    pred_syn = _read_table(paths["predicted synapses"], _SYNAPSE_COLUMNS, "predicted synapse")
    true_syn = _read_table(paths["truth synapses"], _SYNAPSE_COLUMNS, "truth synapse")
    pred_edges = _read_table(
        paths["predicted edges"], ("pre", "post", "synapse_count"), "predicted edge"
    )

    _warn_id_mismatch("predicted", pred_neurons["neuron_id"], pred_to_truth.index)
    _warn_id_mismatch("truth", true_neurons["neuron_id"], truth_to_pred.index)

    # -- synapses ----------------------------------------------------------
    pairs, _, _ = match_points(
        _midpoints_um(pred_syn, voxel_size), _midpoints_um(true_syn, voxel_size), radius
    )
    syn = detection_scores(len(pairs), len(pred_syn), len(true_syn))
    lookup = pd.Series(
        pred_to_truth.to_numpy(dtype=np.uint64), index=pred_to_truth.index.to_numpy(dtype=np.uint64)
    )

    def to_truth(ids) -> np.ndarray:
        return lookup.reindex(np.asarray(ids, dtype=np.uint64), fill_value=0).to_numpy(np.uint64)

    p_rows, t_rows = pairs[:, 0], pairs[:, 1]
    mapped_pre = to_truth(pred_syn["pre_neuron"].to_numpy()[p_rows])
    mapped_post = to_truth(pred_syn["post_neuron"].to_numpy()[p_rows])
    true_pre = true_syn["pre_neuron"].to_numpy(dtype=np.uint64)[t_rows]
    true_post = true_syn["post_neuron"].to_numpy(dtype=np.uint64)[t_rows]
    n_partner_ok = int(np.count_nonzero((mapped_pre == true_pre) & (mapped_post == true_post)))
    partner_accuracy = _ratio(n_partner_ok, len(pairs), empty_truth=len(true_syn) == 0)

    # -- edges -------------------------------------------------------------
    mapped_edges = map_edges(pred_edges, pred_to_truth)
    true_edges = (
        pd.DataFrame(
            {
                "pre": true_syn["pre_neuron"].to_numpy(dtype=np.uint64),
                "post": true_syn["post_neuron"].to_numpy(dtype=np.uint64),
            }
        )
        .query("pre != 0 and post != 0")
        .groupby(["pre", "post"], as_index=False)
        .size()
        .rename(columns={"size": "synapse_count"})
    )
    edges = edge_scores(mapped_edges, true_edges)

    # -- neuron identity ---------------------------------------------------
    pred_by_id = pred_neurons.set_index(pred_neurons["neuron_id"].to_numpy(dtype=np.uint64))
    best_pred = pd.Series(
        truth_to_pred.to_numpy(dtype=np.uint64), index=truth_to_pred.index.to_numpy(dtype=np.uint64)
    ).reindex(true_neurons["neuron_id"].to_numpy(dtype=np.uint64), fill_value=0)
    cell_ok = barcode_ok = 0
    for pred_id, true_type, true_barcode in zip(
        best_pred.to_numpy(), true_neurons["cell_type"], true_neurons["barcode"]
    ):
        if pred_id == 0 or pred_id not in pred_by_id.index:
            continue
        row = pred_by_id.loc[pred_id]
        if isinstance(row, pd.DataFrame):  # duplicated id in the predicted table
            row = row.iloc[0]
        cell_ok += str(row["cell_type"]) == str(true_type)
        barcode_ok += str(row["barcode"]) == str(true_barcode)
    n_true_neurons = len(true_neurons)

    metrics = {
        "voi_split": float(voi_split),
        "voi_merge": float(voi_merge),
        "arand": float(arand),
        "synapse_precision": syn.precision,
        "synapse_recall": syn.recall,
        "synapse_f1": syn.f1,
        "edge_precision": edges.precision,
        "edge_recall": edges.recall,
        "edge_f1": edges.f1,
        "edge_weight_correlation": edges.weight_correlation,
        "partner_accuracy": float(partner_accuracy),
        "cell_type_accuracy": float(_ratio(cell_ok, n_true_neurons, empty_truth=True)),
        "barcode_accuracy": float(_ratio(barcode_ok, n_true_neurons, empty_truth=True)),
        "n_neurons_pred": int(len(pred_neurons)),
        "n_neurons_true": int(n_true_neurons),
        "n_synapses_pred": int(len(pred_syn)),
        "n_synapses_true": int(len(true_syn)),
    }
    logger.debug("evaluation of %s: %s", run_dir, metrics)
    return metrics


def _warn_id_mismatch(which: str, table_ids: pd.Series, volume_ids: pd.Index) -> None:
    in_table = set(table_ids.to_numpy(dtype=np.uint64).tolist())
    in_volume = set(np.asarray(volume_ids, dtype=np.uint64).tolist())
    if in_table != in_volume:
        logger.warning(
            "%s neuron table and label volume disagree: %d id(s) only in the table, "
            "%d only in the volume",
            which, len(in_table - in_volume), len(in_volume - in_table),
        )


def _format_value(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):d}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}" if math.isfinite(value) else str(float(value))
    return str(value)


def format_report(metrics: dict) -> str:
    """Render a metrics dict as an aligned, sectioned plain-text table.

    Parameters
    ----------
    metrics : dict
        Output of :func:`evaluate_run` (keys outside :data:`METRIC_KEYS` are listed
        under "Other"; missing keys are skipped).

    Returns
    -------
    str
        Lines ``<metric>  <value>`` with metric names left-aligned and values
        right-aligned (floats to 4 decimals, integers exact), grouped under section
        headings; no trailing newline.
    """
    known = {k for _, keys in _SECTIONS for k in keys}
    sections = [(title, [k for k in keys if k in metrics]) for title, keys in _SECTIONS]
    other = [k for k in metrics if k not in known]
    if other:
        sections.append(("Other", other))
    sections = [(title, keys) for title, keys in sections if keys]
    if not sections:
        return "(no metrics)"
    rendered = {k: _format_value(metrics[k]) for _, keys in sections for k in keys}
    name_w = max(len(k) for k in rendered)
    value_w = max(len(v) for v in rendered.values())
    lines = []
    for title, keys in sections:
        if lines:
            lines.append("")
        lines.append(title)
        lines.append("-" * (name_w + 2 + value_w))
        lines.extend(f"{k:<{name_w}}  {rendered[k]:>{value_w}}" for k in keys)
    return "\n".join(lines)
