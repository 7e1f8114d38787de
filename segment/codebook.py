"""Barcode codebook: discover the neurons' codes globally, then label voxels by code.

Protein barcodes are combinatorial: each neuron expresses a few of ``K``
barcode channels ("on") and not the others ("off"), at levels that vary from
neuron to neuron and channel to channel. In a voxel that belongs to one
neuron, the sorted channel values fall into two groups with a large ratio
between them; the channels above the largest ratio gap are its *code*.

Every block votes with its *pure* voxels (bright, inside the foreground,
where the barcode direction does not change: far from other neurons) in
:func:`code_statistics`; the votes of all blocks are summed and
:func:`codebook_from_statistics` builds the codebook. It keeps the codes seen often enough,
drops codes that are the union of two or more more-frequent codes and whose
voxels disagree on a direction (blur mixtures of touching neurons), and groups codes whose mean directions are
nearly equal (a neuron whose dim "dropout" channel sometimes falls below the
gap). Each group is one barcode identity.

:func:`assign_codes` then labels every voxel of a block with the identity
whose mean direction is closest (cosine; a code shared by two neurons with
different expression levels has been split into two directions by
:func:`split_code`), and :func:`despeckle` removes
isolated specks of one identity (noise, mixtures) by letting the surrounding
labels flood them. Labels are therefore global barcode identities: the same
identity in two blocks means the same code, which makes stitching exact for
touching pieces; neurons that share a code (collisions) stay separate only
where they do not touch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline import array_module, to_host
from pipeline.filters import maximum

__all__ = [
    "Codebook",
    "assign_codes",
    "code_statistics",
    "codebook_from_statistics",
    "contact_voxels",
    "despeckle",
    "discover_codebook",
    "gap_codes",
    "merge_code_statistics",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Codebook:
    """Barcode identities found in a volume.

    Attributes
    ----------
    codes : int64 (c,)
        Binary codes (bit ``k`` = barcode channel ``k`` on), most frequent
        first. A code appears twice when two neurons share it but not their
        expression levels (:func:`split_code`): one row per direction.
    centroids : float64 (c, k)
        Unit mean direction of the pure voxels with each code.
    identity : int64 (c,)
        Identity (1..n_identities) of each code; codes with nearly equal
        directions share one.
    support : int64 (c,)
        Pure sample voxels with each code.
    """

    codes: np.ndarray
    centroids: np.ndarray
    identity: np.ndarray
    support: np.ndarray

    @property
    def n_identities(self) -> int:
        return int(self.identity.max()) if len(self.identity) else 0

    def __len__(self):
        return len(self.codes)

    def code_strings(self) -> list[str]:
        """Codes as '0'/'1' strings in channel order (bc00 first)."""
        k = self.centroids.shape[1]
        return ["".join("1" if (int(c) >> j) & 1 else "0" for j in range(k)) for c in self.codes]

    def to_dict(self) -> dict:
        return {
            "codes": self.code_strings(),
            "identity": self.identity.tolist(),
            "support": self.support.tolist(),
            "centroids": np.round(self.centroids, 4).tolist(),
        }


def gap_codes(vectors: np.ndarray, min_gap: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Code of each row of ``vectors`` (n, k): the channels above the largest ratio gap.

    Returns
    -------
    codes : int64 (n,)
    confident : bool (n,)
        The largest ratio between consecutive sorted values is at least ``min_gap``.
    """
    v = np.maximum(np.asarray(vectors, dtype=np.float64), 1e-4)
    n, k = v.shape
    if k > 62:
        raise ValueError(f"gap_codes supports at most 62 barcode channels, got {k}")
    if k < 2:
        return np.ones(n, np.int64), np.ones(n, bool)
    s = -np.sort(-v, axis=1)
    logs = np.log(s)
    gaps = logs[:, :-1] - logs[:, 1:]
    on = gaps.argmax(axis=1)
    cut = s[np.arange(n), on]
    bits = v >= cut[:, None]
    codes = (bits.astype(np.int64) << np.arange(k, dtype=np.int64)).sum(axis=1)
    confident = gaps.max(axis=1) >= np.log(min_gap)
    return codes, confident


def _unit(rows: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows, dtype=np.float64), where=norm > 0)


#: Unit vectors kept per code and block for the within-code split (evenly spaced, so deterministic).
SAMPLES_PER_BLOCK = 256
#: Unit vectors kept per code after merging all blocks.
SAMPLES_PER_CODE = 4096


def _empty_statistics(k: int) -> dict:
    return {"codes": np.zeros(0, np.int64), "counts": np.zeros(0, np.int64), "unit_sums": np.zeros((0, k)),
            "sample_codes": np.zeros(0, np.int64), "samples": np.zeros((0, k), np.float32)}


def _evenly(n: int, at_most: int) -> np.ndarray:
    """``at_most`` indices spread evenly over ``range(n)`` (all of them when ``n <= at_most``)."""
    if n <= at_most:
        return np.arange(n)
    return np.linspace(0, n - 1, at_most).round().astype(np.int64)


def _samples_per_code(codes: np.ndarray, units: np.ndarray, at_most: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.concatenate([np.flatnonzero(codes == c)[_evenly(int((codes == c).sum()), at_most)]
                           for c in np.unique(codes)]) if len(codes) else np.zeros(0, np.int64)
    keep.sort()
    return codes[keep].astype(np.int64), units[keep].astype(np.float32)


def code_statistics(vectors: np.ndarray, *, min_gap: float = 2.0) -> dict:
    """Votes of pure voxel barcode ``vectors`` (n, k): per code, the voxel count and unit-vector sum.

    The result of several blocks adds up with :func:`merge_code_statistics`.

    Returns
    -------
    dict
        ``codes`` (int64, sorted), ``counts`` (int64) and ``unit_sums`` (float64, codes x k);
        ``sample_codes`` / ``samples``: up to ``SAMPLES_PER_BLOCK`` unit vectors of each code
        (evenly spaced in voxel order), for :func:`codebook_from_statistics`'s within-code split.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    k = vectors.shape[1] if vectors.ndim == 2 else 0
    if vectors.ndim != 2 or len(vectors) == 0 or k == 0:
        return _empty_statistics(k)
    codes, confident = gap_codes(vectors, min_gap)
    codes, units = codes[confident], _unit(vectors[confident])
    values, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    sums = np.zeros((len(values), k))
    np.add.at(sums, inverse, units)
    sample_codes, samples = _samples_per_code(codes, units, SAMPLES_PER_BLOCK)
    return {"codes": values.astype(np.int64), "counts": counts.astype(np.int64), "unit_sums": sums,
            "sample_codes": sample_codes, "samples": samples}


def merge_code_statistics(parts: Sequence[dict]) -> dict:
    """Sum the :func:`code_statistics` of several blocks (their samples: at most ``SAMPLES_PER_CODE`` per code).

    A streaming reduction in two walks over ``parts``: the first adds up the
    counts and unit sums and counts each code's samples, the second keeps the
    samples at ``SAMPLES_PER_CODE`` evenly spaced ranks of each code (all of
    them when a code has fewer), in block order. So it holds one block's
    votes and the merged result at a time, never the votes of every block
    (which grow with the block count), and ``parts`` may be a
    :class:`~pipeline.runner.StoredSummaries` that reads each from disk.
    The result equals summing the concatenated votes with ``np.add.at``,
    bit for bit: each code's rows are added in block order.

    Parameters
    ----------
    parts : sequence of dict
        Block statistics in block order; walked twice.
    """
    counts: dict[int, int] = {}
    sums: dict[int, np.ndarray] = {}
    n_samples: dict[int, int] = {}
    k = None
    for part in parts:
        if not len(part["codes"]):
            continue
        if k is None:
            k = part["unit_sums"].shape[1]
        for code, count, row in zip(part["codes"].tolist(), part["counts"].tolist(), part["unit_sums"]):
            counts[code] = counts.get(code, 0) + count
            sums[code] = sums[code] + row if code in sums else 0.0 + row
        # block results written before samples existed (a resumed run) simply carry none
        codes, m = np.unique(part.get("sample_codes", np.zeros(0, np.int64)), return_counts=True)
        for code, count in zip(codes.tolist(), m.tolist()):
            n_samples[code] = n_samples.get(code, 0) + count
    if k is None:
        return _empty_statistics(0)
    values = np.array(sorted(counts), np.int64)
    # ranks of the kept samples within each code, and how many of the code's samples came before
    chosen = {code: _evenly(n, SAMPLES_PER_CODE) for code, n in n_samples.items()}
    seen = dict.fromkeys(n_samples, 0)
    kept_codes, kept_samples = [], []
    if n_samples:
        for part in parts:
            sample_codes = part.get("sample_codes", np.zeros(0, np.int64))
            if not len(part["codes"]) or not len(sample_codes):
                continue
            keep = np.zeros(len(sample_codes), bool)
            for code in np.unique(sample_codes).tolist():
                where = np.flatnonzero(sample_codes == code)
                ranks = seen[code] + np.arange(len(where))
                pick = chosen[code]
                at = np.minimum(np.searchsorted(pick, ranks), len(pick) - 1)
                keep[where[pick[at] == ranks]] = True
                seen[code] += len(where)
            kept_codes.append(np.asarray(sample_codes[keep], np.int64))
            kept_samples.append(np.asarray(part["samples"][keep], np.float32))
    return {"codes": values, "counts": np.array([counts[c] for c in values.tolist()], np.int64),
            "unit_sums": np.stack([sums[c] for c in values.tolist()]).astype(np.float64),
            "sample_codes": np.concatenate(kept_codes) if kept_codes else np.zeros(0, np.int64),
            "samples": np.concatenate(kept_samples) if kept_samples else np.zeros((0, k), np.float32)}


def split_code(samples: np.ndarray, *, min_distance: float, min_fraction: float = 0.15,
               min_separation: float = 3.4, max_valley: float = 0.9, iterations: int = 25) -> tuple[np.ndarray, np.ndarray] | None:
    """Two unit centroids when one code's unit vectors form two clearly separate groups, else None.

    Two neurons can share a binary code (a *collision*) yet differ in their
    expression levels, so their barcode *directions* differ (Brainbow's hue
    idea): 2-means on the code's sampled unit vectors (deterministic start:
    the sample farthest from the mean, then the one farthest from it). The
    code splits when the two centroids are at least ``min_distance`` apart,
    the smaller group holds at least ``min_fraction`` of the samples, and the
    groups are two modes rather than one spread cut in half: along the axis
    through the two centroids, Ashman's D ``|m0 - m1| / sqrt((v0 + v1) / 2)``
    is at least ``min_separation`` (2-means cuts one Gaussian into halves
    with D ≈ 2.7; measured on the bundled samples: single-neuron codes
    2.1–3.05, codes shared by two neurons 3.7–7.5), and the samples within a
    quarter of the mean distance of the midpoint number at most ``max_valley``
    times those as near either mean (a valley: two Gaussians with D = 3.7
    give ≈ 0.55, a uniform smear 1, one Gaussian cut in half > 1; measured:
    single-neuron codes 1.18–2.06, shared codes 0.17–0.82).
    Returns ``(centroids (2, k), fractions (2,))``, larger group first.
    """
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 40:
        return None
    first = x[np.argmax(((x - x.mean(axis=0)) ** 2).sum(axis=1))]
    second = x[np.argmax(((x - first) ** 2).sum(axis=1))]
    centers = np.stack([first, second])
    group = np.zeros(len(x), np.int64)
    for step in range(iterations):
        new = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
        if not (new == 0).any() or not (new == 1).any():
            return None
        if step and np.array_equal(new, group):
            break
        group = new
        centers = np.stack([x[group == j].mean(axis=0) for j in (0, 1)])
    axis = centers[0] - centers[1]
    along = x @ (axis / max(float(np.linalg.norm(axis)), 1e-12))
    spread = np.sqrt(0.5 * (along[group == 0].var() + along[group == 1].var()))
    separation = abs(along[group == 0].mean() - along[group == 1].mean()) / max(float(spread), 1e-12)
    # A valley between the modes: samples near the midpoint vs. near each group's mean
    # (a uniform smear cut in half has D ≈ 3.5 but no valley).
    m0, m1 = along[group == 0].mean(), along[group == 1].mean()
    half = 0.25 * abs(m0 - m1)
    near = [int((np.abs(along - m) <= half).sum()) for m in (0.5 * (m0 + m1), m0, m1)]
    valley = near[0] / max(min(near[1], near[2]), 1)
    centers = _unit(centers)
    fractions = np.array([(group == 0).mean(), (group == 1).mean()])
    log.debug("split_code: distance %.3f, fractions %s, Ashman's D %.2f, valley %.2f",
              float(np.linalg.norm(centers[0] - centers[1])), np.round(fractions, 2), separation, valley)
    if (np.linalg.norm(centers[0] - centers[1]) < min_distance or fractions.min() < min_fraction
            or separation < min_separation or valley > max_valley):
        return None
    order = np.argsort(-fractions, kind="stable")
    return centers[order], fractions[order]


def codebook_from_statistics(stats: dict, *, min_support: int = 1000, merge_distance: float = 0.2,
                             split_distance: float = 0.2, split_separation: float = 3.4,
                             mixture_coherence: float = 0.97) -> Codebook:
    """Build the :class:`Codebook` from (merged) :func:`code_statistics`.

    Parameters
    ----------
    stats : dict
    min_support : int
        A code needs this many voting voxels.
    merge_distance : float
        Codes whose unit mean directions are closer than this share an identity.
    split_distance : float
        A code whose sampled unit vectors form two groups at least this far
        apart (:func:`split_code`), each with ``min_support / 2`` voting voxels,
        becomes two codebook rows with their own identities: two neurons
        sharing a binary code but not their expression levels. 0 disables.
    split_separation : float
        The two groups' Ashman's D along their axis must reach this (see :func:`split_code`).
    mixture_coherence : float
        A code that is the union of two or more more-frequent codes is a blur
        mixture only when its voting voxels disagree on a direction: the
        length of the mean of their unit vectors (1 when all are parallel) is
        below this. A neuron whose code happens to be such a union keeps it:
        its voxels share one direction. Measured on seeds 0-5 of the sample:
        the 7 union codes that are neurons' codes 0.989-0.993, the 56 blur
        mixtures 0.75-0.91. 1 drops every union, as before this rule.
    """
    k = stats["unit_sums"].shape[1] if stats["unit_sums"].ndim == 2 else 0
    empty = Codebook(np.zeros(0, np.int64), np.zeros((0, k)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    values = np.asarray(stats["codes"], np.int64)
    counts = np.asarray(stats["counts"], np.int64)
    sums = np.asarray(stats["unit_sums"], np.float64)
    if len(values) == 0:
        return empty
    order = np.lexsort((values, -counts))
    values, counts, sums = values[order], counts[order], sums[order]
    keep = counts >= min_support
    values, counts, sums = values[keep], counts[keep], sums[keep]
    support = dict(zip(values.tolist(), counts.tolist()))
    # Drop blur mixtures: a code that is exactly the union of more frequent sub-codes
    # and whose voxels do not agree on one direction (the mixing ratio varies across a contact).
    coherence = np.linalg.norm(sums, axis=1) / np.maximum(counts, 1)
    kept = []
    for i, c in enumerate(values.tolist()):
        subs = [a for a in values.tolist() if a != c and (a & ~c) == 0 and support[a] > support[c]]
        union = 0
        for a in subs:
            union |= a
        if len(subs) >= 2 and union == c and coherence[i] < mixture_coherence:
            continue
        kept.append(i)
    if not kept:
        return empty
    centroids = _unit(sums[kept])
    values, counts = values[kept], counts[kept]
    if split_distance > 0 and len(stats.get("sample_codes", ())):
        values, counts, centroids = _split_collisions(values, counts, centroids, stats, split_distance,
                                                      split_separation, min_support)
    identity = np.zeros(len(values), np.int64)
    next_id = 0
    for i in range(len(values)):  # most frequent first: each code joins the first close identity
        for j in range(i):
            if np.linalg.norm(centroids[i] - centroids[j]) < merge_distance:
                identity[i] = identity[j]
                break
        else:
            next_id += 1
            identity[i] = next_id
    book = Codebook(values, centroids, identity, counts)
    log.info("codebook: %d codes, %d identities from %d voting voxels", len(book), book.n_identities,
             int(counts.sum()))
    return book


def _split_collisions(values, counts, centroids, stats, split_distance: float, split_separation: float,
                      min_support: int):
    """Replace every code that :func:`split_code` splits by its two groups (rows stay most frequent first)."""
    sample_codes = np.asarray(stats["sample_codes"], np.int64)
    samples = np.asarray(stats["samples"], np.float64)
    rows = []
    for value, count, centroid in zip(values.tolist(), counts.tolist(), centroids):
        split = split_code(samples[sample_codes == value], min_distance=split_distance,
                           min_separation=split_separation)
        if split is not None and min(split[1]) * count >= min_support / 2:
            log.info("codebook: code %d splits into two directions %.2f apart (%.0f%% / %.0f%%): "
                     "two neurons share it", value, float(np.linalg.norm(split[0][0] - split[0][1])),
                     100 * split[1][0], 100 * split[1][1])
            rows += [(value, int(round(count * f)), c) for c, f in zip(*split)]
        else:
            rows.append((value, count, centroid))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
            np.stack([r[2] for r in rows]))


def discover_codebook(vectors: np.ndarray, *, min_gap: float = 2.0, min_support: int = 1000,
                      merge_distance: float = 0.2) -> Codebook:
    """Find the barcode identities among pure voxel barcode ``vectors`` (n, k) in one go.

    Equivalent to :func:`codebook_from_statistics` of :func:`code_statistics`.
    """
    return codebook_from_statistics(code_statistics(vectors, min_gap=min_gap), min_support=min_support,
                                    merge_distance=merge_distance)


def assign_codes(barcodes, centroids, identity, *, mask=None, floor: float = 0.0):
    """Identity (1..n) of each voxel: the codebook centroid closest in direction (cosine).

    Parameters
    ----------
    barcodes : array (k, z, y, x)
    centroids : array (c, k)
        Unit directions (NumPy; moved to the array's device).
    identity : array (c,)
    mask : bool array (z, y, x), optional
        Voxels outside get 0.
    floor : float
        Voxels whose brightest barcode channel is below ``floor`` get 0.

    Returns
    -------
    array (z, y, x) of uint32, on the device of ``barcodes``
    """
    xp = array_module(barcodes)
    k = barcodes.shape[0]
    cent = xp.asarray(np.asarray(centroids, dtype=np.float32).reshape(-1, k))
    ident = xp.asarray(np.concatenate([[0], np.asarray(identity, dtype=np.uint32)]).astype(np.uint32))
    if cent.shape[0] == 0:
        return xp.zeros(barcodes.shape[1:], dtype=xp.uint32)
    bright = barcodes.max(axis=0) >= floor
    keep = bright if mask is None else (bright & mask)
    # Only the kept voxels (the foreground: a fraction of the block) are scored.
    picked = barcodes[:, keep].astype(xp.float32, copy=False)
    labels = xp.zeros(barcodes.shape[1:], dtype=xp.uint32)
    chosen = xp.empty(picked.shape[1], dtype=xp.uint32)
    # cosine up to the voxel's norm, which does not change the argmax; the scores (codes x voxels)
    # go by column chunks, since the codes grow with the volume (25 at 256^3, 47 at 512^3)
    for part in _column_chunks(picked.shape[1], cent.shape[0]):
        scores = cent @ picked[:, part]
        chosen[part] = ident[(xp.argmax(scores, axis=0) if xp is not np else _argmax_rows(scores)) + 1]
    labels[keep] = chosen
    return labels


#: Bytes of one chunk of a (codes x voxels) float32 score table.
SCORE_CHUNK_BYTES = 16 << 20


def _column_chunks(n: int, rows: int) -> list[slice]:
    """Slices of ``range(n)`` whose (rows x columns) float32 tables stay under :data:`SCORE_CHUNK_BYTES`."""
    step = max(1, SCORE_CHUNK_BYTES // (4 * max(rows, 1)))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _argmax_rows(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=0)`` of a C-contiguous (c, n) float array, by a running maximum.

    NumPy's argmax over the non-contiguous axis 0 is slow; a pass per row over
    contiguous memory gives the same indices (the first maximum wins: only a
    strictly greater value moves it). Scores with NaN go to ``np.argmax``.
    """
    c, n = scores.shape
    if c < 2 or n == 0:
        return np.argmax(scores, axis=0) if n else np.zeros(0, np.intp)
    best = scores[0].copy()
    index = np.zeros(n, np.intp)
    greater = np.empty(n, bool)
    for i in range(1, c):
        np.greater(scores[i], best, out=greater)
        index[greater] = i
        np.maximum(best, scores[i], out=best)
    if np.isnan(best).any():            # np.maximum carries any NaN of a column to its end
        return np.argmax(scores, axis=0)
    return index


def refine_contacts(labels, barcodes, centroids, identity):
    """Give each labelled voxel at a contact the identity, among its own and its neighbours', closest in direction.

    :func:`despeckle` floods specks and code-less (dim) voxels wholesale from
    the surrounding regions, which at a contact of two neurons often hands
    the voxel to the wrong side. Here every labelled voxel with a differently
    labelled 26-neighbour is re-decided by its own barcode: it takes the
    identity, among its current one and those of its labelled neighbours,
    whose codebook centroid has the highest cosine score (an identity with
    several codes takes its best one; ties keep the current label). One
    parallel pass: the candidates are the labels before the pass. On four
    sample seeds this raised the voxel identity accuracy after flooding from
    96.5-96.9 % to 96.9-97.2 % and lowered VOI by 0.05-0.06.

    Parameters
    ----------
    labels : array (z, y, x) of uint32
        Identities after :func:`despeckle` (0: none).
    barcodes : array (k, z, y, x)
    centroids : array (c, k)
        Unit code directions.
    identity : array (c,)
        Identity (1..n) of each code.

    Returns
    -------
    array (z, y, x) of uint32, on the device of ``labels``
    """
    xp = array_module(labels)
    lab = labels.astype(xp.uint32, copy=False)
    k = barcodes.shape[0]
    cent = np.asarray(centroids, dtype=np.float32).reshape(-1, k)
    ident = np.asarray(identity, dtype=np.int64).reshape(-1)
    if cent.shape[0] == 0 or lab.ndim != 3 or not bool(lab.any()):
        return lab
    neighbours = _neighbour_views(lab)
    where = xp.nonzero(contact_voxels(lab))
    m = int(where[0].size)
    if m == 0:
        return lab
    n_ident = int(ident.max()) + 1
    out = lab.copy()
    # (codes x voxels) and (identities x voxels) score tables by column chunks: the codes grow
    # with the volume
    for part in _column_chunks(m, cent.shape[0] + n_ident):
        at = tuple(w[part] for w in where)
        b = barcodes[(slice(None),) + at].astype(xp.float32, copy=False)          # (k, chunk)
        code_scores = xp.asarray(cent) @ b                                        # (c, chunk)
        scores = xp.full((n_ident, b.shape[1]), -np.inf, dtype=xp.float32)
        for row, d in enumerate(ident):
            scores[d] = xp.maximum(scores[d], code_scores[row])
        scores[0] = -np.inf                                                       # unlabelled neighbours never win
        cols = xp.arange(b.shape[1])
        best = lab[at].astype(xp.int64)
        best_score = scores[best, cols]
        for nb in neighbours:
            cand = nb[at].astype(xp.int64)
            sc = scores[cand, cols]
            better = sc > best_score
            best = xp.where(better, cand, best)
            best_score = xp.where(better, sc, best_score)
        out[at] = best.astype(xp.uint32)
    return out


def _neighbour_views(lab) -> list:
    """The 26 neighbours of every voxel of ``lab``: views of a zero-padded copy, one per offset."""
    xp = array_module(lab)
    pad = xp.pad(lab, 1)
    shape = lab.shape
    return [pad[1 + dz:1 + dz + shape[0], 1 + dy:1 + dy + shape[1], 1 + dx:1 + dx + shape[2]]
            for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)]


def contact_voxels(labels):
    """Labelled voxels with a 26-neighbour of another non-zero label (bool, on the device of ``labels``).

    A voxel labelled ``L`` touches another label when the largest label of its
    3 x 3 x 3 box is above ``L`` or the smallest non-zero one below it: two
    maximum filters (:func:`pipeline.filters.maximum`, OpenCV's ``dilate`` on
    the host for 16-bit labels) instead of 26 comparisons with each neighbour.
    """
    xp = array_module(labels)
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return xp.zeros(labels.shape, dtype=bool)
    lab = labels.astype(xp.uint16 if top < np.iinfo(np.uint16).max else xp.int64, copy=False)
    ceiling = lab.dtype.type(top + 1)
    # ceiling - label: the box's largest of these is ceiling minus its smallest non-zero label
    flipped = xp.where(lab > 0, ceiling - lab, 0).astype(lab.dtype)
    above = maximum(lab, 3) > lab
    below = (ceiling - maximum(flipped, 3)) < lab
    return (lab > 0) & (above | below)


def despeckle(labels, mask, landscape, min_size: int):
    """Remove 26-connected specks smaller than ``min_size`` and flood every masked voxel.

    Specks and unlabelled voxels inside ``mask`` take the label of the
    surrounding regions by a seeded watershed on ``landscape`` (on the host
    the bucket queue of :mod:`segment.watershed`; on the GPU the device flood
    of :mod:`segment.flood`, no copy to the host). Returns labels of the same
    kind as ``labels``.
    """
    if type(labels).__module__.startswith("cupy"):
        return _despeckle_device(labels, mask, landscape, min_size)
    import cc3d
    import fastremap

    from .watershed import watershed

    lab = np.ascontiguousarray(to_host(labels)).astype(np.uint32, copy=False)
    m = to_host(mask).astype(bool, copy=False)
    if min_size > 1 and lab.any():
        comps = cc3d.connected_components(lab, connectivity=26, out_dtype=np.uint32)
        ids, counts = fastremap.unique(comps, return_counts=True)
        small = ids[(counts < min_size) & (ids > 0)]
        if len(small):
            lab = lab.copy()
            lab[fastremap.mask(comps, small) != comps] = 0
    if (m & (lab == 0)).any() and lab.any():
        lab = watershed(to_host(landscape), lab, m)
    lab[~m] = 0
    return lab


def _despeckle_device(labels, mask, landscape, min_size: int):
    """:func:`despeckle` with every step on the labels' device (CuPy)."""
    from .flood import flood
    from .kernels import label_components

    xp = array_module(labels)
    m = mask.astype(bool, copy=False)
    lab = labels.astype(xp.uint32, copy=True)
    if min_size > 1 and bool(lab.any()):
        # 26-connected pieces of each label, numbered across labels.
        pieces = xp.zeros(lab.shape, dtype=xp.int64)
        offset = 0
        for value in (int(v) for v in xp.unique(lab).get() if int(v) > 0):
            comp = label_components(lab == value)
            pieces = xp.where(comp > 0, comp.astype(xp.int64) + offset, pieces)
            offset += int(comp.max())
        counts = xp.bincount(pieces.ravel())
        small = (counts < min_size)[pieces] & (pieces > 0)
        lab[small] = 0
    if bool((m & (lab == 0)).any()) and bool(lab.any()):
        lab = flood(landscape, lab, m)
    lab[~m] = 0
    return lab
