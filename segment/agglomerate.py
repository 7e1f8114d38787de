"""Global agglomeration of fragments into neurons on the region adjacency graph.

Nodes are fragments (from every block); an edge joins two fragments that
touch, inside a block or across a block face, and carries the contact size
and the summed smoothed fill and barcode discontinuity along the contact.
Each node carries its voxel count, fill sum and the sum of its (normalised)
barcode vectors.

Merging is greedy, in the order of the edge score (waterz / mutex-watershed
style, with a priority queue that is updated as clusters grow)::

    score(A, B) = 0 if A and B have the same codebook identity
                  never if they have different identities (see :mod:`segment.codebook`)
                  otherwise:
                  dip(A, B)
                  + barcode_merge_weight * barcode_distance(A, B)
                  + contact_barcode_weight * mean discontinuity along the contact
    dip(A, B)   = max(0, 1 - mean fill on the contact / min(mean fill of A, of B))

The *dip* is scale free: a neurite cut crosswise (by a seed or a block face)
has as much fill on the cut as inside, so its dip is about 0 however dim the
neurite, while two cells separated by a dark gap have a dip near 1.
``barcode_distance`` is the Euclidean distance of the unit directions of the
two clusters' mean barcode vectors (0 = same code, sqrt 2 = disjoint
codes). The best edge is merged while its score is at most
``merge_threshold``; an edge whose barcode distance exceeds
``barcode_conflict`` is never merged, however weak the boundary. Because the
means are recomputed after every merge, a long neuron cut into many fragments
(by seeds or by block faces) joins piece by piece, while two touching neurons
with different codes stay apart even where the fill shows no boundary.

With a codebook every fragment has an identity and only the first two rules
apply; ``links`` (from :func:`proximity_links`) join pieces of one identity
that do not touch. Afterwards clusters smaller than ``min_fragment_size`` (too small for their
barcode to be trusted) join the neighbour they share most contact with, and
clusters smaller than ``min_neuron_size`` become background. Neuron ids
``1..N`` are given in raster order of each neuron's first voxel, so they do
not depend on the block shape or on the order blocks ran in.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["FragmentTable", "EdgeTable", "agglomerate", "barcode_directions", "proximity_links"]

log = logging.getLogger(__name__)


@dataclass
class FragmentTable:
    """Per-fragment sums, ids sorted ascending.

    Attributes
    ----------
    ids : uint64 (n,)
    counts : int64 (n,)
    first : int64 (n,)
        Global raster index of the fragment's first voxel.
    barcode_sums : float64 (n, k)
    fill_sums : float64 (n,)
        Sum of the smoothed normalised fill (clipped to [0, 1]).
    identity : int64 (n,)
        Barcode identity from the codebook (0 = none).
    bbox_lo, bbox_hi : int64 (n, 3)
        Bounding box in voxels (max exclusive).
    """

    ids: np.ndarray
    counts: np.ndarray
    first: np.ndarray
    barcode_sums: np.ndarray
    fill_sums: np.ndarray
    identity: np.ndarray
    bbox_lo: np.ndarray
    bbox_hi: np.ndarray

    @classmethod
    def concat(cls, summaries) -> "FragmentTable":
        """Join the block summaries of :func:`segment.blockwise.fragments_step`."""
        summaries = list(summaries)
        if not summaries:
            return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0)),
                       np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))
        ids = np.concatenate([s["ids"] for s in summaries]).astype(np.uint64)
        counts = np.concatenate([s["counts"] for s in summaries]).astype(np.int64)
        first = np.concatenate([s["first"] for s in summaries]).astype(np.int64)
        k = max(s["barcode_sums"].shape[1] for s in summaries)
        sums = np.concatenate([s["barcode_sums"].reshape(len(s["ids"]), k) for s in summaries]).astype(np.float64)
        fill = np.concatenate([s["fill_sums"] for s in summaries]).astype(np.float64)
        ident = np.concatenate([s["identity"] for s in summaries]).astype(np.int64)
        lo = np.concatenate([s["bbox_lo"].reshape(-1, 3) for s in summaries]).astype(np.int64)
        hi = np.concatenate([s["bbox_hi"].reshape(-1, 3) for s in summaries]).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
            raise ValueError("fragment ids are not unique across blocks")
        return cls(ids, counts[order], first[order], sums[order], fill[order], ident[order], lo[order], hi[order])

    def __len__(self):
        return len(self.ids)


@dataclass
class EdgeTable:
    """Fragment contacts.

    Attributes
    ----------
    a, b : uint64 (n,)
        Fragment ids, ``a < b``.
    contact : int64 (n,)
        Touching voxel pairs (6-neighbourhood).
    fill_sum, discontinuity_sum : float64 (n,)
        Sums over the contact of the smoothed fill and of the barcode
        discontinuity (each voxel pair contributes the mean of its two voxels).
    """

    a: np.ndarray
    b: np.ndarray
    contact: np.ndarray
    fill_sum: np.ndarray
    discontinuity_sum: np.ndarray

    @classmethod
    def concat(cls, summaries) -> "EdgeTable":
        """Join the block summaries of :func:`segment.blockwise.edges_step`, summing duplicate pairs."""
        summaries = [s for s in summaries if len(s["a"])]
        if not summaries:
            return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0),
                       np.zeros(0))
        a = np.concatenate([s["a"] for s in summaries]).astype(np.uint64)
        b = np.concatenate([s["b"] for s in summaries]).astype(np.uint64)
        c = np.concatenate([s["contact"] for s in summaries]).astype(np.int64)
        v = np.concatenate([s["sums"] for s in summaries]).astype(np.float64)
        order = np.lexsort((b, a))
        a, b, c, v = a[order], b[order], c[order], v[order]
        start = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
        v = np.add.reduceat(v, start, axis=0)
        return cls(a[start], b[start], np.add.reduceat(c, start), v[:, 0], v[:, 1])

    def __len__(self):
        return len(self.a)


def proximity_links(fragments: FragmentTable, voxel_size, radius: float, *, min_size: int = 0,
                    chunk: int = 1 << 19) -> np.ndarray:
    """Pairs of fragments with the same codebook identity whose bounding boxes are within ``radius``.

    The gap between two boxes (0 when they overlap) is measured in physical
    units with ``voxel_size``. This links the pieces of one neuron that a
    crossing neurite, a dim stretch or a block face cut apart; two neurons
    that share a code (a collision) and come this close are joined too.

    Parameters
    ----------
    fragments : FragmentTable
    voxel_size : (z, y, x)
    radius : float
        Physical distance; ``<= 0`` links only overlapping boxes, ``inf`` all
        fragments of one identity.
    min_size : int
        Fragments smaller than this are not linked (their identity is noise-prone).
    chunk : int
        Box pairs compared at once (the memory bound: a few float64 arrays of
        this many elements, whatever the number of fragments).

    Returns
    -------
    int64 (m, 2)
        Index pairs ``i < j`` into the fragment table, sorted by identity,
        then ``i``, then ``j``.

    Notes
    -----
    The members of one identity are taken in order of their box's first z;
    a run of them is compared only with the members whose z range can come
    within ``radius`` of the run's (a conservative bound, the exact distance
    decides). Memory stays at ``chunk`` pairs however many fragments one
    identity has: comparing whole rows of an identity with all its members
    (``rows x members x 3`` doubles) grew with the volume.
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    ident = fragments.identity
    eligible = (ident > 0) & (fragments.counts >= min_size)
    limit = max(float(radius), 0.0)
    # Only discards pairs whose z gap alone is clearly beyond the radius.
    reach_z = limit * (1.0 + 1e-9) / vs[0] + 1e-9 if np.isfinite(limit) else np.inf
    pairs = []
    for g in np.unique(ident[eligible]):
        members = np.flatnonzero(eligible & (ident == g))
        m = len(members)
        if m < 2:
            continue
        lo = fragments.bbox_lo[members].astype(np.float64)
        hi = fragments.bbox_hi[members].astype(np.float64)
        by_z = np.argsort(lo[:, 0], kind="stable")
        rows_per_run = max(1, int(chunk) // m)
        found = []
        for start in range(0, m, rows_per_run):
            rows = by_z[start:start + rows_per_run]
            near = np.flatnonzero((lo[:, 0] - hi[rows, 0].max() <= reach_z)
                                  & (lo[rows, 0].min() - hi[:, 0] <= reach_z))
            near = near[members[near] > members[rows].min()]      # only pairs i < j can survive
            if len(near) == 0:
                continue
            d2 = np.zeros((len(rows), len(near)))
            for axis in range(3):
                gap = np.maximum(lo[rows, axis][:, None] - hi[near, axis][None, :],
                                 lo[near, axis][None, :] - hi[rows, axis][:, None])
                np.maximum(gap, 0.0, out=gap)
                gap *= vs[axis]
                gap *= gap
                d2 += gap
            np.sqrt(d2, out=d2)
            i, j = np.nonzero(d2 <= limit)
            a, b = members[rows[i]], members[near[j]]
            keep = a < b
            found.append(np.stack([a[keep], b[keep]], axis=1))
        if found:
            got = np.concatenate(found)
            pairs.append(got[np.lexsort((got[:, 1], got[:, 0]))])
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(pairs).astype(np.int64)


def barcode_directions(sums: np.ndarray) -> np.ndarray:
    """Unit directions of barcode sum vectors (rows); all-zero rows stay zero."""
    sums = np.asarray(sums, dtype=np.float64)
    norm = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norm, out=np.zeros_like(sums), where=norm > 0)


def agglomerate(fragments: FragmentTable, edges: EdgeTable, *, merge_threshold: float,
                barcode_merge_weight: float = 1.0, contact_barcode_weight: float = 0.0,
                barcode_conflict: float = 0.4, use_barcodes: bool = True, min_fragment_size: int = 0,
                min_neuron_size: int = 0, min_mean_fill: float = 0.0,
                links: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Agglomerate fragments; return the neuron id of every fragment (0 = dropped) and a summary.

    Parameters
    ----------
    fragments : FragmentTable
    edges : EdgeTable
    merge_threshold, barcode_merge_weight, contact_barcode_weight, barcode_conflict : float
        See the module docstring.
    use_barcodes : bool
        ``False`` ignores barcodes entirely (score = fill dip).
    min_fragment_size, min_neuron_size : int
        See the module docstring.
    min_mean_fill : float
        Clusters whose mean smoothed fill is below this (normalised units) are
        the dim halo around neurites, whose barcodes are amplified noise, not
        neurons: after all other merges each joins the neighbour it touches
        most, or is dropped when it touches none.
    links : int array (m, 2), optional
        Index pairs (into ``fragments``) merged before the greedy pass when
        their identities agree (from :func:`proximity_links`).

    Returns
    -------
    neuron_of : uint64 array (n_fragments,)
        Neuron id ``1..N`` per fragment (aligned with ``fragments.ids``), 0 for dropped.
    info : dict
        ``n_merges``, ``n_refused`` (edges between fragments whose barcodes
        conflict from the start), ``n_small_merges``, ``n_dropped``, ``n_neurons``.
    """
    n = len(fragments)
    ids = fragments.ids
    ia = np.searchsorted(ids, edges.a)
    ib = np.searchsorted(ids, edges.b)
    if len(edges) and (np.any(ia >= n) or np.any(ib >= n) or np.any(ids[np.minimum(ia, n - 1)] != edges.a)
                       or np.any(ids[np.minimum(ib, n - 1)] != edges.b)):
        raise ValueError("the edge table names fragments that are not in the fragment table")

    size = fragments.counts.astype(np.float64).tolist()
    ident = fragments.identity.astype(np.int64).tolist() if use_barcodes else [0] * n
    fill = fragments.fill_sums.astype(np.float64).tolist()
    use_bc = use_barcodes and fragments.barcode_sums.shape[1] > 0
    bc = [row for row in fragments.barcode_sums] if use_bc else None
    unit = [row for row in barcode_directions(fragments.barcode_sums)] if use_bc else None
    parent = list(range(n))
    version = [0] * n
    adj: list[dict | None] = [dict() for _ in range(n)]
    disc_sum = edges.discontinuity_sum if use_bc else np.zeros(len(edges))
    for x, y, c, f, d in zip(ia.tolist(), ib.tolist(), edges.contact.tolist(), edges.fill_sum.tolist(),
                             disc_sum.tolist()):
        stats = [c, f, d]
        adj[x][y] = stats
        adj[y][x] = stats

    def bdist(x, y):
        if not use_bc:
            return 0.0
        d = unit[x] - unit[y]
        return float(np.sqrt(d @ d))

    def score(x, y, stats):
        """Edge score, or None when the barcodes conflict."""
        if ident[x] and ident[y]:
            return 0.0 if ident[x] == ident[y] else None
        dist = bdist(x, y)
        if dist > barcode_conflict:
            return None
        inner = min(fill[x] / size[x], fill[y] / size[y])
        contact_fill = stats[1] / stats[0]
        dip = max(0.0, 1.0 - contact_fill / inner) if inner > 0 else 1.0
        return dip + barcode_merge_weight * dist + contact_barcode_weight * stats[2] / stats[0]

    heap = []
    refused = 0
    for x in range(n):
        for y, stats in adj[x].items():
            if x < y:
                s = score(x, y, stats)
                if s is None:
                    refused += 1
                elif s <= merge_threshold:
                    heap.append((s, x, y, 0, 0))
    heapq.heapify(heap)

    def merge(x, y):
        """Merge clusters x and y (both roots); return the surviving root."""
        if len(adj[x]) < len(adj[y]):
            x, y = y, x
        parent[y] = x
        size[x] += size[y]
        fill[x] += fill[y]
        ident[x] = ident[x] or ident[y]
        if use_bc:
            bc[x] = bc[x] + bc[y]
            norm = float(np.linalg.norm(bc[x]))
            unit[x] = bc[x] / norm if norm > 0 else bc[x] * 0.0
        ax = adj[x]
        ax.pop(y, None)
        for nb, stats in adj[y].items():
            if nb == x:
                continue
            anb = adj[nb]
            del anb[y]
            own = ax.get(nb)
            if own is None:
                ax[nb] = stats
                anb[x] = stats
            else:
                own[0] += stats[0]
                own[1] += stats[1]
                own[2] += stats[2]
        adj[y] = None
        version[x] += 1
        version[y] += 1
        return x

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    linked = 0
    if links is not None:
        for x, y in np.asarray(links, dtype=np.int64).reshape(-1, 2).tolist():
            rx, ry = find(x), find(y)
            if rx != ry and (not ident[rx] or not ident[ry] or ident[rx] == ident[ry]):
                merge(rx, ry)
                linked += 1
        if linked:
            # Stale heap entries are skipped by the version check; add the merged clusters' edges.
            for r in range(n):
                if parent[r] == r and version[r]:
                    for nb, stats in adj[r].items():
                        s2 = score(r, nb, stats)
                        if s2 is not None and s2 <= merge_threshold:
                            a, b = (r, nb) if r < nb else (nb, r)
                            heapq.heappush(heap, (s2, a, b, version[a], version[b]))

    merges = 0
    while heap:
        s, x, y, vx, vy = heapq.heappop(heap)
        if parent[x] != x or parent[y] != y or version[x] != vx or version[y] != vy:
            continue
        r = merge(x, y)
        merges += 1
        for nb, stats in adj[r].items():
            s2 = score(r, nb, stats)
            if s2 is not None and s2 <= merge_threshold:
                a, b = (r, nb) if r < nb else (nb, r)
                heapq.heappush(heap, (s2, a, b, version[a], version[b]))

    # Small clusters: their barcode mean is noise; join the neighbour with most contact.
    small_merges = 0
    if min_fragment_size > 0:
        changed = True
        while changed:
            changed = False
            small = sorted((size[x], x) for x in range(n) if parent[x] == x and size[x] < min_fragment_size)
            for _, x in small:
                if parent[x] != x or size[x] >= min_fragment_size or not adj[x]:
                    continue
                best = max(adj[x].items(), key=lambda item: (item[1][0], item[1][1] / item[1][0], -item[0]))[0]
                merge(x, best)
                small_merges += 1
                changed = True

    # Dim clusters: halo, not neurons (see min_mean_fill).
    dim_merges = 0
    dim_dropped = set()
    if min_mean_fill > 0:
        for x in sorted(range(n), key=lambda r: (fill[r] / size[r] if size[r] else 0.0, r)):
            if parent[x] != x or size[x] <= 0 or fill[x] / size[x] >= min_mean_fill:
                continue
            if adj[x]:
                best = max(adj[x].items(), key=lambda item: (item[1][0], item[1][1] / item[1][0], -item[0]))[0]
                merge(x, best)
                dim_merges += 1
            else:
                dim_dropped.add(x)

    # Resolve roots.
    roots = np.array(parent, dtype=np.int64)
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    cluster_size = np.bincount(roots, weights=fragments.counts, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, roots, fragments.first)
    is_root = roots == np.arange(n)
    keep = is_root & (cluster_size >= max(min_neuron_size, 1))
    if dim_dropped:
        keep[np.fromiter(dim_dropped, np.int64)] = False
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(first[kept], kind="stable")]
    neuron_of_root = np.zeros(n, dtype=np.uint64)
    neuron_of_root[order] = np.arange(1, len(order) + 1, dtype=np.uint64)
    neuron_of = neuron_of_root[roots]
    info = {
        "n_merges": merges,
        "n_links": linked,
        "n_refused": refused,
        "n_small_merges": small_merges,
        "n_dim_merges": dim_merges,
        "n_dropped": int(np.count_nonzero(is_root & ~keep)),
        "n_neurons": int(len(order)),
    }
    log.info("agglomeration: %d fragments, %d edges -> %d neurons (%s)", n, len(edges), len(order), info)
    return neuron_of, info
