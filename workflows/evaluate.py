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
    _non_negative,
    detection_scores,
    edge_scores,
    map_edges,
    match_points,
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
    "foreground_precision",
    "foreground_recall",
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
    ("Segmentation", ("voi_split", "voi_merge", "arand", "foreground_precision", "foreground_recall")),
    ("Synapses", ("synapse_precision", "synapse_recall", "synapse_f1", "partner_accuracy")),
    ("Edges", ("edge_precision", "edge_recall", "edge_f1", "edge_weight_correlation")),
    ("Neuron identity", ("cell_type_accuracy", "barcode_accuracy")),
    ("Counts", ("n_neurons_pred", "n_neurons_true", "n_synapses_pred", "n_synapses_true")),
)

_SYNAPSE_COLUMNS = ("pre_neuron", "post_neuron", "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")


class MissingOutputError(PipelineError, FileNotFoundError):
    """A run or sample directory lacks a file the evaluation needs."""


#: Voxels of each label volume the evaluation reads at once (whole z planes, at
#: least one); about 50 bytes per voxel of working memory.
EVAL_SLAB_VOXELS = 1 << 20


class _OverlapCounter:
    """Voxel overlaps of two label volumes, accumulated slab by slab in raster order.

    Holds what :mod:`workflows.metrics` derives from the whole arrays (so the
    metrics come out bit for bit the same) without holding more than one slab:
    per (segmentation, truth) pair its voxel count and the raster index of its
    first voxel. The first indices give the first-appearance (``pd.factorize``)
    order of labels and pairs over the truth-foreground voxels, which fixes the
    order of the floating-point sums of the information metrics.
    """

    def __init__(self, seg_dtype, truth_dtype):
        self.seg_dtype, self.truth_dtype = np.dtype(seg_dtype), np.dtype(truth_dtype)
        self.pairs: dict[tuple, list[int]] = {}     # (seg id, truth id) -> [voxels, first raster index]
        self.voxels = 0

    def add(self, seg: np.ndarray, truth: np.ndarray) -> None:
        """Count the next slab (the voxels that follow the previous slab in raster order)."""
        s = seg.reshape(-1)
        t = truth.reshape(-1)
        offset, self.voxels = self.voxels, self.voxels + s.size
        if s.size == 0:
            return
        key, s_ids = pd.factorize(s)
        t_code, t_ids = pd.factorize(t)
        n_t = len(t_ids)
        key = key.astype(np.int64, copy=False)
        key *= n_t
        key += t_code
        del t_code
        codes, cells = pd.factorize(key)           # cells in order of first appearance
        del key
        counts = np.bincount(codes, minlength=len(cells)).tolist()
        # codes grow by one at each new cell's first voxel
        first = np.flatnonzero(np.diff(np.maximum.accumulate(codes)) > 0) + 1
        first = ([0] + first.tolist()) if len(cells) else []
        del codes
        s_list, t_list = s_ids.tolist(), t_ids.tolist()
        pairs = self.pairs
        for cell, c, f in zip(np.asarray(cells, np.int64).tolist(), counts, first):
            pair = (s_list[cell // n_t], t_list[cell % n_t])
            found = pairs.get(pair)
            if found is None:
                pairs[pair] = [c, offset + f]
            else:
                found[0] += c

    def table(self) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
        """``(n_seg, n_truth, seg_code, truth_code, count)`` of the truth-foreground cells,
        in the order :func:`workflows.metrics.contingency_table`'s internal table has them."""
        fg = sorted((f, sid, tid, c) for (sid, tid), (c, f) in self.pairs.items() if tid != 0)
        seg_code: dict = {}
        truth_code: dict = {}
        codes = [(seg_code.setdefault(sid, len(seg_code)), truth_code.setdefault(tid, len(truth_code)))
                 for _, sid, tid, _ in fg]
        n_s, n_t = len(seg_code), len(truth_code)
        if not fg:
            empty = np.zeros(0, np.int64)
            return n_s, n_t, empty, empty, empty
        codes = np.array(codes, dtype=np.int64).reshape(-1, 2)
        count = np.array([c for *_, c in fg], dtype=np.int64)
        if n_s * n_t <= max(1 << 22, 2 * int(count.sum())):
            # metrics' dense path: cells in order of seg code * n_truth + truth code
            order = np.argsort(codes[:, 0] * np.int64(n_t) + codes[:, 1], kind="stable")
            codes, count = codes[order], count[order]
        return n_s, n_t, codes[:, 0].copy(), codes[:, 1].copy(), count

    def contingency(self, foreground_only: bool) -> pd.DataFrame:
        """As :func:`workflows.metrics.contingency_table` on the whole arrays."""
        items = [(k, v[0]) for k, v in self.pairs.items() if not foreground_only or k[1] != 0]
        seg = np.array([k[0] for k, _ in items], dtype=self.seg_dtype)
        truth = np.array([k[1] for k, _ in items], dtype=self.truth_dtype)
        count = np.array([c for _, c in items], dtype=np.int64)
        frame = pd.DataFrame({"segmentation": seg, "truth": truth, "count": count})
        return frame.sort_values(["segmentation", "truth"], ignore_index=True)


def _count_overlaps(seg_array, truth_array, slab_voxels: int = EVAL_SLAB_VOXELS) -> _OverlapCounter:
    """Read both label volumes slab by slab (whole z planes) into an :class:`_OverlapCounter`."""
    for name, arr in (("segmentation", seg_array), ("truth", truth_array)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise InputError(f"{name} labels must be integers, got dtype {arr.dtype} with shape {arr.shape}")
    counter = _OverlapCounter(seg_array.dtype, truth_array.dtype)
    shape = tuple(seg_array.shape)
    if len(shape) == 0 or 0 in shape:
        return counter
    plane = int(np.prod(shape[1:], dtype=np.int64))
    planes = max(1, int(slab_voxels) // max(plane, 1))
    chunk_z = int((getattr(seg_array, "chunks", None) or (1,))[0])
    if planes > chunk_z:
        planes -= planes % chunk_z
    for z in range(0, shape[0], planes):
        counter.add(np.asarray(seg_array[z:z + planes]), np.asarray(truth_array[z:z + planes]))
    return counter


def _information_metrics(counter: _OverlapCounter) -> tuple[float, float, float]:
    """``voi_split, voi_merge, arand`` as :func:`workflows.metrics.variation_of_information`
    and :func:`workflows.metrics.adapted_rand_error` compute them (truth background ignored)."""
    n_s, n_t, seg_code, truth_code, count = counter.table()
    n = count.sum()
    if n == 0:
        voi_split = voi_merge = 0.0
    else:
        p = count / n
        p_seg = np.bincount(seg_code, weights=p, minlength=n_s)
        p_truth = np.bincount(truth_code, weights=p, minlength=n_t)
        voi_split = _non_negative(-np.sum(p * np.log2(p / p_truth[truth_code])))
        voi_merge = _non_negative(-np.sum(p * np.log2(p / p_seg[seg_code])))
    weights = count.astype(np.float64)
    total = weights.sum()
    seg_sizes = np.bincount(seg_code, weights=weights, minlength=n_s)
    truth_sizes = np.bincount(truth_code, weights=weights, minlength=n_t)
    both = float(weights @ weights - total)
    denom = 0.5 * (float(seg_sizes @ seg_sizes - total) + float(truth_sizes @ truth_sizes - total))
    arand = _non_negative(1.0 - both / denom if denom > 0 else 0.0)
    return voi_split, voi_merge, arand


def _foreground_scores(counter: _OverlapCounter) -> tuple[float, float]:
    """Voxel precision and recall of the predicted foreground (any neuron) against the truth's."""
    both = predicted = true = 0
    for (sid, tid), (count, _) in counter.pairs.items():
        predicted += count if sid != 0 else 0
        true += count if tid != 0 else 0
        both += count if sid != 0 and tid != 0 else 0
    return (both / predicted if predicted else 1.0), (both / true if true else 1.0)


def _match_labels(counter: _OverlapCounter) -> pd.Series:
    """:func:`workflows.metrics.match_labels` of the whole arrays, from the overlap counts."""
    table = counter.contingency(foreground_only=False)
    preds = np.unique(table["segmentation"].to_numpy())
    preds = preds[preds != 0]
    fg = table[(table["truth"] != 0) & (table["segmentation"] != 0)]
    best = (
        fg.sort_values(["segmentation", "count", "truth"], ascending=[True, False, True])
        .drop_duplicates("segmentation")
        .set_index("segmentation")["truth"]
    )
    out = best.reindex(preds, fill_value=0).astype(counter.truth_dtype)
    out.index = pd.Index(preds.astype(counter.seg_dtype), name="pred_label")
    out.name = "truth_label"
    return out


def _match_truth_labels(counter: _OverlapCounter, min_overlap_fraction: float) -> pd.Series:
    """:func:`workflows.metrics.match_truth_labels` of the whole arrays, from the overlap counts."""
    if not (0.0 <= float(min_overlap_fraction) < 1.0):
        raise ValueError(f"min_overlap_fraction must be in [0, 1), got {min_overlap_fraction!r}")
    table = counter.contingency(foreground_only=True)
    sizes = table.groupby("truth")["count"].sum()
    fg = table[table["segmentation"] != 0]
    best = fg.sort_values(
        ["truth", "count", "segmentation"], ascending=[True, False, True]
    ).drop_duplicates("truth")
    truth_size = sizes.loc[best["truth"]].to_numpy()
    accepted = best[best["count"].to_numpy() > min_overlap_fraction * truth_size]
    out = accepted.set_index("truth")["segmentation"].reindex(sizes.index, fill_value=0)
    out = out.astype(counter.seg_dtype)
    out.index = pd.Index(sizes.index.to_numpy().astype(counter.truth_dtype), name="truth_label")
    out.name = "pred_label"
    return out


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

    The label volumes are read in slabs of whole z planes
    (:data:`EVAL_SLAB_VOXELS` voxels each) into a contingency table of label
    overlaps, so memory does not grow with the volume (only with the number of
    overlapping label pairs); the metrics equal those of the whole arrays.

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
    * ``foreground_precision`` / ``foreground_recall``: of the voxels with a
      predicted neuron, the fraction inside a truth neuron; of the truth-neuron
      voxels, the fraction with a predicted neuron (whichever). VOI and ARAND
      ignore the truth background, so a segmentation that swells every
      neuron into its blurred halo is seen here. 1.0 when the denominator is 0.
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

    seg = zarr.open_array(str(paths["predicted labels"]), mode="r")
    truth = zarr.open_array(str(paths["truth labels"]), mode="r")
    if seg.shape != truth.shape:
        raise InputError(
            f"predicted labels {paths['predicted labels']} have shape {seg.shape} but "
            f"truth labels {paths['truth labels']} have shape {truth.shape}"
        )
    logger.info("evaluating %s against %s (%d voxels)", run_dir, truth_dir, seg.size)

    # Slab by slab: memory is one slab of each volume plus the overlap table,
    # whatever the volume size; the metrics equal those of the whole arrays.
    overlaps = _count_overlaps(seg, truth)
    voi_split, voi_merge, arand = _information_metrics(overlaps)
    fg_precision, fg_recall = _foreground_scores(overlaps)
    pred_to_truth = _match_labels(overlaps)
    truth_to_pred = _match_truth_labels(overlaps, min_overlap_fraction)
    del overlaps

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
        "foreground_precision": fg_precision,
        "foreground_recall": fg_recall,
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
