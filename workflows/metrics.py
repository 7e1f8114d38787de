"""Pure evaluation metrics for segmentations, point detections and connectomes.

Every function here works on in-memory arrays or tables and has no side effects;
:mod:`workflows.evaluate` wires them to run and sample directories.

Conventions
-----------
* Label arrays are integer arrays of equal shape; label ``0`` is background
  ("no neuron") in both the segmentation and the ground truth.
* Information quantities are in **bits** (base-2 logarithm), as in
  :func:`skimage.metrics.variation_of_information`.
* Segmentation metrics follow scikit-image's convention for the background: with
  ``ignore_truth_background=True`` only voxels whose *truth* label is non-zero are
  counted, while a predicted ``0`` inside a truth object is treated as one more
  predicted segment (so unsegmented foreground is penalised as a merge).
* Ratios whose denominator is zero ("nothing to get wrong") are defined as ``1.0``;
  see :func:`detection_scores`.

The contingency table is built with hash-based factorisation of the labels
(:func:`pandas.factorize`) rather than by indexing a sparse matrix with the raw label
values, so arbitrary ``uint64`` ids cost nothing and ~10 M voxels take well under a
second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "DetectionScores",
    "EdgeScores",
    "contingency_table",
    "variation_of_information",
    "adapted_rand_error",
    "match_points",
    "detection_scores",
    "match_labels",
    "match_truth_labels",
    "map_edges",
    "edge_scores",
]

logger = logging.getLogger(__name__)

#: Weight columns recognised (in this order) when an edge table is a DataFrame.
_WEIGHT_COLUMNS = ("synapse_count", "weight", "count")


class DetectionScores(NamedTuple):
    """Precision, recall and F1 of a one-to-one matching."""

    precision: float
    recall: float
    f1: float


class EdgeScores(NamedTuple):
    """Edge-set precision, recall, F1 and the Pearson correlation of edge weights."""

    precision: float
    recall: float
    f1: float
    weight_correlation: float


# ---------------------------------------------------------------------------
# Contingency table
# ---------------------------------------------------------------------------
class _Table(NamedTuple):
    """Sparse contingency table in coded form (internal)."""

    seg_ids: np.ndarray  # unique segmentation labels, indexed by code
    truth_ids: np.ndarray  # unique truth labels, indexed by code
    seg_code: np.ndarray  # per non-zero cell: segmentation code
    truth_code: np.ndarray  # per non-zero cell: truth code
    count: np.ndarray  # per non-zero cell: number of voxels (int64)


def _non_negative(value) -> float:
    """``float(value)`` with -0.0 and negative rounding residue clamped to 0.0."""
    value = float(value)
    return value if value > 0.0 else 0.0


def _check_label_pair(segmentation, truth) -> tuple[np.ndarray, np.ndarray]:
    seg = np.asarray(segmentation)
    tru = np.asarray(truth)
    if seg.shape != tru.shape:
        raise ValueError(
            f"segmentation and truth must have the same shape, got segmentation "
            f"{seg.shape} and truth {tru.shape}"
        )
    for name, arr in (("segmentation", seg), ("truth", tru)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(
                f"{name} must be an integer label array, got dtype {arr.dtype} "
                f"with shape {arr.shape}"
            )
    return seg, tru


def _table(segmentation, truth, ignore_truth_background: bool) -> _Table:
    seg, tru = _check_label_pair(segmentation, truth)
    s = seg.reshape(-1)
    t = tru.reshape(-1)
    if ignore_truth_background:
        keep = t != 0
        s = s[keep]
        t = t[keep]
    if s.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Table(
            np.zeros(0, dtype=seg.dtype), np.zeros(0, dtype=tru.dtype), empty, empty, empty
        )
    s_code, s_ids = pd.factorize(s)
    t_code, t_ids = pd.factorize(t)
    n_t = np.int64(len(t_ids))
    key = s_code.astype(np.int64) * n_t + t_code
    n_cells = len(s_ids) * len(t_ids)
    if n_cells <= max(1 << 22, 2 * key.size):
        dense = np.bincount(key, minlength=n_cells)
        cells = np.flatnonzero(dense)
        count = dense[cells].astype(np.int64)
    else:
        cell_code, cells = pd.factorize(key)
        count = np.bincount(cell_code, minlength=len(cells)).astype(np.int64)
        cells = np.asarray(cells, dtype=np.int64)
    return _Table(
        np.asarray(s_ids), np.asarray(t_ids), cells // n_t, cells % n_t, count
    )


def contingency_table(segmentation, truth, *, ignore_truth_background: bool = True) -> pd.DataFrame:
    """Voxel overlap counts between every predicted and every truth label.

    Parameters
    ----------
    segmentation : array_like of int
        Predicted labels, any dimensionality.
    truth : array_like of int
        Ground-truth labels, same shape as `segmentation`.
    ignore_truth_background : bool, optional
        If True (default), voxels with truth label 0 are not counted.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty (segmentation, truth) pair with columns
        ``segmentation``, ``truth`` (label values, input dtypes) and ``count``
        (int64 voxels), sorted by ``segmentation`` then ``truth``.

    Raises
    ------
    ValueError
        If the shapes differ or either array is not integer-typed.
    """
    tab = _table(segmentation, truth, ignore_truth_background)
    frame = pd.DataFrame(
        {
            "segmentation": tab.seg_ids[tab.seg_code],
            "truth": tab.truth_ids[tab.truth_code],
            "count": tab.count,
        }
    )
    return frame.sort_values(["segmentation", "truth"], ignore_index=True)


# ---------------------------------------------------------------------------
# Segmentation metrics
# ---------------------------------------------------------------------------
def variation_of_information(
    segmentation, truth, *, ignore_truth_background: bool = True
) -> tuple[float, float]:
    """Split and merge parts of the variation of information, in bits.

    With :math:`S` the segmentation and :math:`T` the truth (as random labels of a
    voxel drawn uniformly from the counted voxels),

    * ``split`` :math:`= H(S \\mid T)`, the over-segmentation (false splits), and
    * ``merge`` :math:`= H(T \\mid S)`, the under-segmentation (false merges);

    VI :math:`= H(S|T) + H(T|S)` = ``split + merge``.

    This equals ``skimage.metrics.variation_of_information(truth, segmentation,
    ignore_labels=(0,))`` whose result ``[H(image1|image0), H(image0|image1)]`` is
    ``[false splits, false merges]`` when ``image0`` is the truth.  Note the argument
    order here is (segmentation, truth), the reverse of scikit-image's.

    Parameters
    ----------
    segmentation : array_like of int
        Predicted labels.
    truth : array_like of int
        Ground-truth labels, same shape as `segmentation`.
    ignore_truth_background : bool, optional
        If True (default), only voxels whose truth label is non-zero count. A
        predicted 0 inside truth foreground is then one (large) predicted segment.

    Returns
    -------
    split : float
        :math:`H(\\text{segmentation} \\mid \\text{truth})` in bits; 0 when no object
        of the truth is split.
    merge : float
        :math:`H(\\text{truth} \\mid \\text{segmentation})` in bits; 0 when no
        predicted segment spans several truth objects.

    Raises
    ------
    ValueError
        If the shapes differ or either array is not integer-typed.

    Notes
    -----
    Both values are 0.0 when no voxel is counted. Splitting one truth object into two
    equal halves gives ``split == 1.0`` exactly and ``merge == 0.0``.
    """
    tab = _table(segmentation, truth, ignore_truth_background)
    n = tab.count.sum()
    if n == 0:
        return 0.0, 0.0
    p = tab.count / n
    p_seg = np.bincount(tab.seg_code, weights=p, minlength=len(tab.seg_ids))
    p_truth = np.bincount(tab.truth_code, weights=p, minlength=len(tab.truth_ids))
    split = -np.sum(p * np.log2(p / p_truth[tab.truth_code]))
    merge = -np.sum(p * np.log2(p / p_seg[tab.seg_code]))
    # -0.0 and tiny negative rounding residue read badly in reports.
    return _non_negative(split), _non_negative(merge)


def adapted_rand_error(
    segmentation, truth, *, ignore_truth_background: bool = True
) -> tuple[float, float, float]:
    """Adapted Rand error (SNEMI3D) with its precision and recall.

    Counting unordered pairs of distinct voxels,

    * ``precision`` = pairs together in both / pairs together in `segmentation`
      (1.0 means no false merges),
    * ``recall`` = pairs together in both / pairs together in `truth`
      (1.0 means no false splits),
    * ``error`` = 1 - F-score = 1 - 2 P R / (P + R).

    Parameters
    ----------
    segmentation : array_like of int
        Predicted labels.
    truth : array_like of int
        Ground-truth labels, same shape as `segmentation`.
    ignore_truth_background : bool, optional
        If True (default), only voxels whose truth label is non-zero count
        (``ignore_labels=(0,)`` in scikit-image).

    Returns
    -------
    error : float
        Adapted Rand error in [0, 1]; 0 for identical segmentations.
    precision : float
        Adapted Rand precision (penalises merges).
    recall : float
        Adapted Rand recall (penalises splits).

    Raises
    ------
    ValueError
        If the shapes differ or either array is not integer-typed.

    Notes
    -----
    ``error`` equals ``skimage.metrics.adapted_rand_error(truth, segmentation)[0]``.
    scikit-image (<= 0.26 at least) returns precision and recall *swapped* relative
    to its own documentation (scikit-image issue #6485): its "precision" is divided
    by the truth pair count. This function follows the documented definitions, so
    ``precision`` here is scikit-image's third return value and ``recall`` its
    second. When a denominator is zero (no voxel pair to judge) the ratio is 1.0.
    """
    tab = _table(segmentation, truth, ignore_truth_background)
    count = tab.count.astype(np.float64)
    n = count.sum()
    seg_sizes = np.bincount(tab.seg_code, weights=count, minlength=len(tab.seg_ids))
    truth_sizes = np.bincount(tab.truth_code, weights=count, minlength=len(tab.truth_ids))
    both = float(count @ count - n)
    in_seg = float(seg_sizes @ seg_sizes - n)
    in_truth = float(truth_sizes @ truth_sizes - n)
    precision = both / in_seg if in_seg > 0 else 1.0
    recall = both / in_truth if in_truth > 0 else 1.0
    denom = 0.5 * (in_seg + in_truth)
    error = 1.0 - both / denom if denom > 0 else 0.0
    return _non_negative(error), precision, recall


# ---------------------------------------------------------------------------
# Label matching
# ---------------------------------------------------------------------------
def match_labels(segmentation, truth) -> pd.Series:
    """Map every predicted label to the truth label it overlaps most.

    Rule: for each non-zero predicted label, the non-zero truth label sharing the
    most voxels with it (ties go to the smallest truth id). Truth background is not
    a candidate, so a predicted segment touching any truth object maps to it; a
    predicted segment lying entirely in truth background maps to 0. Several
    predicted labels may map to the same truth label (splits).

    Parameters
    ----------
    segmentation : array_like of int
        Predicted labels; 0 is background.
    truth : array_like of int
        Ground-truth labels, same shape; 0 is background.

    Returns
    -------
    pandas.Series
        Index ``pred_label`` (every non-zero label present in `segmentation`,
        sorted), values ``truth_label`` (0 = no overlap with any truth object),
        both in the input dtypes.

    Raises
    ------
    ValueError
        If the shapes differ or either array is not integer-typed.
    """
    seg, tru = _check_label_pair(segmentation, truth)
    table = contingency_table(seg, tru, ignore_truth_background=False)
    preds = np.unique(table["segmentation"].to_numpy())
    preds = preds[preds != 0]
    fg = table[(table["truth"] != 0) & (table["segmentation"] != 0)]
    best = (
        fg.sort_values(["segmentation", "count", "truth"], ascending=[True, False, True])
        .drop_duplicates("segmentation")
        .set_index("segmentation")["truth"]
    )
    out = best.reindex(preds, fill_value=0).astype(tru.dtype)
    out.index = pd.Index(preds.astype(seg.dtype), name="pred_label")
    out.name = "truth_label"
    return out


def match_truth_labels(segmentation, truth, *, min_overlap_fraction: float = 0.5) -> pd.Series:
    """Map every truth label to the predicted label that reconstructs it.

    Rule: for each non-zero truth label, the non-zero predicted label sharing the
    most voxels with it (ties go to the smallest predicted id), accepted only if the
    overlap is *strictly greater* than ``min_overlap_fraction`` times the truth
    object's size; otherwise the truth label maps to 0 (unmatched). With the default
    0.5 a truth neuron is matched only if one predicted segment holds the majority of
    its voxels, so the match is unambiguous; a neuron split into two exact halves is
    unmatched. Merges are not penalised here: one predicted label may be the match
    of several truth labels.

    Parameters
    ----------
    segmentation : array_like of int
        Predicted labels; 0 is background.
    truth : array_like of int
        Ground-truth labels, same shape; 0 is background.
    min_overlap_fraction : float, optional
        Fraction in [0, 1) of the truth object's voxels that the best predicted
        label must exceed. 0 accepts any overlap.

    Returns
    -------
    pandas.Series
        Index ``truth_label`` (every non-zero label present in `truth`, sorted),
        values ``pred_label`` (0 = unmatched), both in the input dtypes.

    Raises
    ------
    ValueError
        If the shapes differ, an array is not integer-typed or
        `min_overlap_fraction` is outside [0, 1).
    """
    if not (0.0 <= float(min_overlap_fraction) < 1.0):
        raise ValueError(f"min_overlap_fraction must be in [0, 1), got {min_overlap_fraction!r}")
    seg, tru = _check_label_pair(segmentation, truth)
    table = contingency_table(seg, tru, ignore_truth_background=True)
    sizes = table.groupby("truth")["count"].sum()
    fg = table[table["segmentation"] != 0]
    best = fg.sort_values(
        ["truth", "count", "segmentation"], ascending=[True, False, True]
    ).drop_duplicates("truth")
    truth_size = sizes.loc[best["truth"]].to_numpy()
    accepted = best[best["count"].to_numpy() > min_overlap_fraction * truth_size]
    out = accepted.set_index("truth")["segmentation"].reindex(sizes.index, fill_value=0)
    out = out.astype(seg.dtype)
    out.index = pd.Index(sizes.index.to_numpy().astype(tru.dtype), name="truth_label")
    out.name = "pred_label"
    return out


# ---------------------------------------------------------------------------
# Point matching
# ---------------------------------------------------------------------------
def _as_points(xyz, name: str) -> np.ndarray:
    arr = np.asarray(xyz, dtype=np.float64)
    if arr.size == 0:
        dim = arr.shape[1] if arr.ndim == 2 else 0
        return arr.reshape(0, dim)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n_points, n_dims), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite coordinates (shape {arr.shape})")
    return arr


def match_points(pred_xyz, true_xyz, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true points within a radius.

    The matching is globally optimal: among all one-to-one matchings that only pair
    points at Euclidean distance ``<= radius``, it has the largest number of pairs,
    and among those the smallest total distance. Candidate pairs come from a
    :class:`scipy.spatial.cKDTree` radius query; each connected component of the
    candidate graph is solved with :func:`scipy.optimize.linear_sum_assignment`.
    Unlike greedy nearest-first matching, a close but "contested" pair is given up
    when doing so allows two matches instead of one.

    Parameters
    ----------
    pred_xyz : array_like, shape (n_pred, n_dims)
        Predicted point coordinates in physical units.
    true_xyz : array_like, shape (n_true, n_dims)
        True point coordinates in the same units and axis order.
    radius : float
        Maximum matching distance (inclusive), same units, >= 0.

    Returns
    -------
    pairs : ndarray of int64, shape (n_matched, 2)
        Rows ``(pred_index, true_index)`` sorted by ``pred_index``.
    unmatched_pred : ndarray of int64
        Sorted indices into `pred_xyz` left unmatched.
    unmatched_true : ndarray of int64
        Sorted indices into `true_xyz` left unmatched.

    Raises
    ------
    ValueError
        If an input is not 2-D, coordinates are not finite, the dimensions differ,
        or `radius` is negative or not finite.
    """
    pred = _as_points(pred_xyz, "pred_xyz")
    true = _as_points(true_xyz, "true_xyz")
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    n_pred, n_true = len(pred), len(true)
    if n_pred and n_true and pred.shape[1] != true.shape[1]:
        raise ValueError(
            f"pred_xyz and true_xyz must have the same number of dimensions, got shapes "
            f"{pred.shape} and {true.shape}"
        )
    no_pairs = np.zeros((0, 2), dtype=np.int64)
    if n_pred == 0 or n_true == 0:
        return no_pairs, np.arange(n_pred, dtype=np.int64), np.arange(n_true, dtype=np.int64)

    neighbours = cKDTree(pred).query_ball_tree(cKDTree(true), r=radius)
    lengths = np.fromiter((len(x) for x in neighbours), dtype=np.int64, count=n_pred)
    ii = np.repeat(np.arange(n_pred, dtype=np.int64), lengths)
    jj = np.fromiter((j for x in neighbours for j in x), dtype=np.int64, count=int(lengths.sum()))
    dist = np.linalg.norm(pred[ii] - true[jj], axis=1)
    keep = dist <= radius
    ii, jj, dist = ii[keep], jj[keep], dist[keep]
    if ii.size == 0:
        return no_pairs, np.arange(n_pred, dtype=np.int64), np.arange(n_true, dtype=np.int64)

    # Components of the bipartite candidate graph (pred nodes 0..n_pred-1, true after).
    graph = coo_array(
        (np.ones(ii.size), (ii, jj + n_pred)), shape=(n_pred + n_true, n_pred + n_true)
    )
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ii]
    order = np.argsort(edge_comp, kind="stable")
    ii, jj, dist, edge_comp = ii[order], jj[order], dist[order], edge_comp[order]
    starts = np.flatnonzero(np.r_[True, edge_comp[1:] != edge_comp[:-1]])
    ends = np.r_[starts[1:], ii.size]

    matched_pred: list[np.ndarray] = []
    matched_true: list[np.ndarray] = []
    for a, b in zip(starts, ends):
        ci, cj, cd = ii[a:b], jj[a:b], dist[a:b]
        if b - a == 1:
            matched_pred.append(ci)
            matched_true.append(cj)
            continue
        rows, r_inv = np.unique(ci, return_inverse=True)
        cols, c_inv = np.unique(cj, return_inverse=True)
        # A non-candidate pair costs more than any set of real pairs, so the
        # assignment first maximises the number of real pairs, then minimises distance.
        big = radius * (min(rows.size, cols.size) + 1) + 1.0
        cost = np.full((rows.size, cols.size), big)
        cost[r_inv, c_inv] = cd
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < big
        matched_pred.append(rows[r[real]])
        matched_true.append(cols[c[real]])

    mp = np.concatenate(matched_pred)
    mt = np.concatenate(matched_true)
    order = np.argsort(mp, kind="stable")
    pairs = np.stack([mp[order], mt[order]], axis=1).astype(np.int64)
    unmatched_pred = np.setdiff1d(np.arange(n_pred, dtype=np.int64), mp)
    unmatched_true = np.setdiff1d(np.arange(n_true, dtype=np.int64), mt)
    return pairs, unmatched_pred, unmatched_true


def detection_scores(n_matched: int, n_pred: int, n_true: int) -> DetectionScores:
    """Precision, recall and F1 from match counts.

    ``precision = n_matched / n_pred`` and ``recall = n_matched / n_true``, with the
    zero-denominator cases defined as "nothing to get wrong":

    * no predictions (``n_pred == 0``): precision = 1.0 (no false positives);
    * no truth (``n_true == 0``): recall = 1.0 (nothing missed);
    * F1 = 2 P R / (P + R), and 0.0 when P + R == 0.

    Hence both empty gives (1, 1, 1); predictions without truth give (0, 1, 0); truth
    without predictions gives (1, 0, 0), so F1 is 0 whenever exactly one side is
    empty.

    Parameters
    ----------
    n_matched : int
        Number of one-to-one matches, ``0 <= n_matched <= min(n_pred, n_true)``.
    n_pred : int
        Number of predictions, >= 0.
    n_true : int
        Number of true items, >= 0.

    Returns
    -------
    DetectionScores
        Named tuple ``(precision, recall, f1)`` of floats.

    Raises
    ------
    ValueError
        If a count is negative or not an integer, or `n_matched` exceeds
        ``min(n_pred, n_true)``.
    """
    counts = {"n_matched": n_matched, "n_pred": n_pred, "n_true": n_true}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_matched > min(n_pred, n_true):
        raise ValueError(
            f"n_matched ({n_matched}) cannot exceed min(n_pred={n_pred}, n_true={n_true})"
        )
    precision = n_matched / n_pred if n_pred else 1.0
    recall = n_matched / n_true if n_true else 1.0
    total = precision + recall
    f1 = 2.0 * precision * recall / total if total > 0 else 0.0
    return DetectionScores(float(precision), float(recall), float(f1))


# ---------------------------------------------------------------------------
# Edges
# ---------------------------------------------------------------------------
def _edge_weights(edges, name: str) -> dict[tuple[int, int], float]:
    """Normalise an edge collection to ``{(pre, post): weight}`` (duplicates summed)."""
    if isinstance(edges, pd.DataFrame):
        missing = [c for c in ("pre", "post") if c not in edges.columns]
        if missing:
            raise ValueError(
                f"{name} lacks column(s) {missing}; has {list(edges.columns)} "
                f"(shape {edges.shape})"
            )
        wcol = next((c for c in _WEIGHT_COLUMNS if c in edges.columns), None)
        weights = edges[wcol] if wcol else pd.Series(1.0, index=edges.index)
        frame = pd.DataFrame(
            {"pre": edges["pre"].to_numpy(), "post": edges["post"].to_numpy(),
             "w": weights.to_numpy(dtype=np.float64)}
        )
        agg = frame.groupby(["pre", "post"], sort=False)["w"].sum()
        return {(int(a), int(b)): float(w) for (a, b), w in agg.items()}
    if isinstance(edges, Mapping):
        items = edges.items()
    elif isinstance(edges, Iterable):
        items = ((e, 1.0) for e in edges)
    else:
        raise ValueError(
            f"{name} must be a DataFrame, a mapping or an iterable of pairs, "
            f"got {type(edges).__name__}"
        )
    out: dict[tuple[int, int], float] = {}
    for edge, weight in items:
        if len(edge) != 2:
            raise ValueError(f"{name} contains {edge!r}, which is not a (pre, post) pair")
        key = (int(edge[0]), int(edge[1]))
        out[key] = out.get(key, 0.0) + float(weight)
    return out


def map_edges(edges: pd.DataFrame, mapping: pd.Series | Mapping) -> pd.DataFrame:
    """Relabel a predicted edge table to truth ids and aggregate.

    Each ``pre``/``post`` id is replaced by ``mapping[id]`` (ids absent from the
    mapping become 0). Edges with an end mapped to 0, or with both ends mapped to the
    same truth id, are dropped; edges that collapse onto the same truth pair have
    their weights summed.

    Parameters
    ----------
    edges : pandas.DataFrame
        Columns ``pre``, ``post`` and optionally ``synapse_count`` (default 1 per
        row).
    mapping : pandas.Series or Mapping
        Predicted id -> truth id, e.g. the output of :func:`match_labels`.

    Returns
    -------
    pandas.DataFrame
        Columns ``pre``, ``post`` (uint64) and ``synapse_count`` (int64), sorted.

    Raises
    ------
    ValueError
        If `edges` lacks the ``pre`` or ``post`` column.
    """
    missing = [c for c in ("pre", "post") if c not in edges.columns]
    if missing:
        raise ValueError(
            f"edges lacks column(s) {missing}; has {list(edges.columns)} (shape {edges.shape})"
        )
    series = mapping if isinstance(mapping, pd.Series) else pd.Series(dict(mapping), dtype=np.uint64)
    lookup = pd.Series(series.to_numpy(dtype=np.uint64), index=series.index.to_numpy(dtype=np.uint64))
    pre = lookup.reindex(edges["pre"].to_numpy(dtype=np.uint64), fill_value=0).to_numpy(np.uint64)
    post = lookup.reindex(edges["post"].to_numpy(dtype=np.uint64), fill_value=0).to_numpy(np.uint64)
    if "synapse_count" in edges.columns:
        count = edges["synapse_count"].to_numpy(dtype=np.int64)
    else:
        count = np.ones(len(edges), dtype=np.int64)
    keep = (pre != 0) & (post != 0) & (pre != post)
    frame = pd.DataFrame({"pre": pre[keep], "post": post[keep], "synapse_count": count[keep]})
    out = frame.groupby(["pre", "post"], as_index=False, sort=True)["synapse_count"].sum()
    return out.astype({"pre": np.uint64, "post": np.uint64, "synapse_count": np.int64})


def edge_scores(pred_edges, true_edges) -> EdgeScores:
    """Compare two directed edge sets that use the same (truth) neuron ids.

    Precision, recall and F1 are those of the edge sets (an edge is a
    ``(pre, post)`` pair; weights do not matter), with :func:`detection_scores`'
    zero-denominator rules. The weight correlation is the Pearson correlation of the
    edge weights over the *union* of both edge sets, an edge missing from one side
    having weight 0 there. It is defined as 1.0 when both weight vectors are
    identical (including an empty union) and 0.0 when they differ but one of them
    is constant (Pearson undefined).

    Parameters
    ----------
    pred_edges, true_edges : pandas.DataFrame, Mapping or iterable of pairs
        A DataFrame with columns ``pre``, ``post`` and optionally a weight column
        (``synapse_count``, ``weight`` or ``count``; default weight 1 per row); a
        mapping ``{(pre, post): weight}``; or an iterable of ``(pre, post)`` pairs
        (weight 1 each). Repeated edges have their weights summed. Predicted ids
        must already be mapped to truth ids (see :func:`map_edges`).

    Returns
    -------
    EdgeScores
        Named tuple ``(precision, recall, f1, weight_correlation)`` of floats.

    Raises
    ------
    ValueError
        If an input is malformed (missing columns, elements that are not pairs).
    """
    pred = _edge_weights(pred_edges, "pred_edges")
    true = _edge_weights(true_edges, "true_edges")
    common = pred.keys() & true.keys()
    det = detection_scores(len(common), len(pred), len(true))
    union = sorted(pred.keys() | true.keys())
    x = np.array([pred.get(e, 0.0) for e in union], dtype=np.float64)
    y = np.array([true.get(e, 0.0) for e in union], dtype=np.float64)
    if np.array_equal(x, y):
        corr = 1.0
    elif x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        corr = 0.0
    else:
        corr = float(np.corrcoef(x, y)[0, 1])
    return EdgeScores(det.precision, det.recall, det.f1, corr)
