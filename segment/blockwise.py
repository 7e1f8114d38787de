"""The block steps of segmentation and the global statistics they share.

Three passes run over the block grid with :func:`pipeline.run_blockwise`:

1. :func:`fragments_step` reads the block's read region (write region + halo)
   of the fill, barcode and membrane channels, normalises them with the
   *global* percentiles from :func:`global_statistics`, computes fragments on
   the read region (the halo gives context), keeps the write region, gives
   each fragment a block-unique id ``block.id << 32 | local id`` and writes
   the ids to ``RUN/work/fragments`` and the smoothed fill and barcode
   discontinuity (uint8, two channels) to ``RUN/work/evidence``. It returns
   per-fragment voxel counts, fill and barcode sums and first-voxel positions.
2. :func:`edges_step` reads fragments and evidence over the write region
   plus one voxel on its low faces and counts, for every pair of different
   fragments that touch (6-neighbourhood), the contact voxels and the summed
   fill and discontinuity along the contact. Every neighbouring voxel pair is counted
   by exactly one block: the one that owns the pair's upper voxel, so face
   contacts between blocks are included exactly once.
3. :func:`relabel_step` maps fragment ids to neuron ids through the lookup
   table written by the agglomeration and writes ``RUN/labels.zarr/neurons``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import zarr

from pipeline import Block, Volume, to_device, to_host

from . import kernels
from .codebook import Codebook, assign_codes, despeckle, discover_codebook

__all__ = [
    "FragmentPlan",
    "edges_step",
    "fragments_step",
    "global_statistics",
    "relabel_step",
    "BLOCK_SHIFT",
    "EVIDENCE_CHANNELS",
    "EVIDENCE_SCALE",
]

log = logging.getLogger(__name__)

#: Fragment ids are ``block.id << BLOCK_SHIFT | local id``.
BLOCK_SHIFT = 32
#: Evidence maps are stored as uint8: ``round(clip(value, 0, 1) * EVIDENCE_SCALE)``.
EVIDENCE_SCALE = 255.0
#: Channels of the evidence work array.
EVIDENCE_CHANNELS = ("fill", "discontinuity")


@dataclass(frozen=True)
class FragmentPlan:
    """Everything a fragments block needs, small and picklable.

    Attributes
    ----------
    fill, barcodes, membrane : tuple of int
        Channel indices in the volume.
    lo, hi : dict
        Global normalisation (channel index -> value).
    threshold : float
        Foreground threshold on the smoothed normalised fill.
    sigma, barcode_sigma : (z, y, x)
        Smoothing in voxels.
    sampling : (z, y, x)
        Voxel size relative to the finest axis (for the distance transform).
    centroids, identity : tuple
        The codebook (unit directions and identity per code), empty without one.

    The other fields mirror :class:`segment.config.SegmentConfig`.
    """

    fill: tuple[int, ...]
    barcodes: tuple[int, ...]
    membrane: tuple[int, ...]
    lo: dict
    hi: dict
    threshold: float
    sigma: tuple[float, float, float]
    barcode_sigma: tuple[float, float, float]
    sampling: tuple[float, float, float]
    barcode_weight: float
    barcode_floor: float
    psf_sigma: tuple[float, float, float]
    deconvolution_iterations: int
    membrane_weight: float
    fill_weight: float
    seed_method: str
    seed_min_size: int
    code_alpha: float
    code_floor: float
    seed_h: float
    seed_min_distance: float
    seed_barcode_cut: float
    centroids: tuple = ()
    identity: tuple = ()
    despeckle_size: int = 0

    @property
    def uses_codebook(self) -> bool:
        return bool(self.barcodes) and len(self.identity) > 0

    @property
    def channels(self) -> list[int]:
        return list(self.fill) + list(self.barcodes) + list(self.membrane)

    def to_params(self) -> dict:
        d = dict(self.__dict__)
        d["centroids"] = [[round(float(v), 5) for v in row] for row in self.centroids]
        d["identity"] = [int(v) for v in self.identity]
        d["lo"] = {str(k): round(float(v), 6) for k, v in self.lo.items()}
        d["hi"] = {str(k): round(float(v), 6) for k, v in self.hi.items()}
        return d


# ---------------------------------------------------------------------------
# Global statistics
# ---------------------------------------------------------------------------
def _sample_regions(volume: Volume, max_voxels: int) -> list[tuple[slice, slice, slice]]:
    """Chunk-aligned regions spread evenly over the volume, about ``max_voxels`` in all."""
    shape, chunks = volume.spatial_shape, volume.chunks
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    n_chunks = int(np.prod(grid))
    per_chunk = int(np.prod(chunks))
    wanted = max(1, min(n_chunks, max_voxels // max(per_chunk, 1)))
    picks = np.unique(np.linspace(0, n_chunks - 1, wanted).round().astype(np.int64))
    regions = []
    for flat in picks:
        idx = np.unravel_index(int(flat), grid)
        regions.append(tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape)))
    return regions


def global_statistics(volume: Volume, channels: Sequence[int], fill: Sequence[int], *,
                      percentiles=(1.0, 99.5), sigma=(0.5, 1.0, 1.0), max_voxels: int = 2**23,
                      threshold_method: str = "otsu", threshold: float = 0.2,
                      threshold_scale: float = 1.0) -> dict:
    """Global normalisation percentiles per channel and the foreground threshold.

    Reads whole chunks spread evenly over the volume (all of it when it has
    at most ``max_voxels`` voxels), so every block is normalised with the same
    numbers. The Otsu threshold is computed on the smoothed, normalised fill
    of the same sample (each sampled chunk smoothed on its own).

    Returns
    -------
    dict
        ``lo`` and ``hi`` (channel index -> float), ``threshold`` (float),
        ``otsu`` (the raw Otsu value or None) and ``sample_voxels``.
    """
    from skimage.filters import threshold_otsu

    channels = sorted(set(int(c) for c in channels) | set(int(c) for c in fill))
    regions = _sample_regions(volume, max_voxels)
    values = {c: [] for c in channels}
    for region in regions:
        data = volume.read(region, channels)
        for i, c in enumerate(channels):
            values[c].append(data[i].ravel())
    lo, hi = {}, {}
    for c in channels:
        v = np.concatenate(values[c])
        p = np.percentile(v, list(percentiles))
        lo[c], hi[c] = float(p[0]), float(p[1])
        if hi[c] <= lo[c]:
            hi[c] = lo[c] + 1.0
    n_voxels = sum(len(v) for v in values[channels[0]])
    del values
    otsu = None
    if threshold_method == "otsu":
        smoothed = []
        for region in regions:
            data = volume.read(region, list(fill)).astype(np.float32)
            norm = kernels.normalize(data, [lo[c] for c in fill], [hi[c] for c in fill]).mean(axis=0)
            smoothed.append(kernels.smooth(norm, sigma).ravel())
        s = np.concatenate(smoothed)
        otsu = float(threshold_otsu(s, nbins=512)) if np.ptp(s) > 0 else 0.5
        value = otsu * threshold_scale
    else:
        value = float(threshold)
    log.info("segment statistics from %d voxels: threshold %.3f (otsu %s)", n_voxels, value, otsu)
    return {"lo": lo, "hi": hi, "threshold": float(value), "otsu": otsu, "sample_voxels": int(n_voxels)}


def sample_codebook(volume: Volume, plan: "FragmentPlan", *, max_voxels: int = 2**23,
                    pure_discontinuity: float = 0.15, min_brightness: float = 0.3, min_gap: float = 2.0,
                    min_support: int = 1000, merge_distance: float = 0.2) -> Codebook:
    """Discover the barcode codebook on pure voxels of a global sample (see :mod:`segment.codebook`).

    The sample is the same set of chunk-aligned regions as
    :func:`global_statistics`; each is processed like a block without halo
    (normalise, deconvolve, evidence). Pure voxels are foreground voxels whose
    brightest barcode channel reaches ``min_brightness`` and whose barcode
    discontinuity is below ``pure_discontinuity``.
    """
    if not plan.barcodes:
        return discover_codebook(np.zeros((0, 0)))
    vectors = []
    for region in _sample_regions(volume, max_voxels):
        raw = volume.read(region, plan.channels)
        ev, bc = block_evidence(raw, plan)
        pure = ev.foreground & (ev.discontinuity < pure_discontinuity) & (bc.max(axis=0) >= min_brightness)
        vectors.append(bc[:, pure].T.astype(np.float32))
    vectors = np.concatenate(vectors) if vectors else np.zeros((0, len(plan.barcodes)), np.float32)
    return discover_codebook(vectors, min_gap=min_gap, min_support=min_support, merge_distance=merge_distance)


# ---------------------------------------------------------------------------
# Pass 1: fragments
# ---------------------------------------------------------------------------
def _normalised_inputs(raw, plan: FragmentPlan):
    """Split the read (c, z, y, x) array into normalised fill, barcodes and membrane."""
    chans = plan.channels
    norm = kernels.normalize(raw, [plan.lo[c] for c in chans], [plan.hi[c] for c in chans])
    nf, nb = len(plan.fill), len(plan.barcodes)
    fill = norm[:nf].mean(axis=0)
    barcodes = norm[nf:nf + nb] if nb else None
    membrane = norm[nf + nb:].mean(axis=0) if plan.membrane else None
    return fill, barcodes, membrane


def block_evidence(raw, plan: FragmentPlan):
    """Evidence of a raw (c, z, y, x) read region under ``plan``.

    Returns
    -------
    evidence : kernels.Evidence
    barcodes : array (k, z, y, x) or None
        The normalised (and deconvolved) barcodes before smoothing.
    """
    fill, barcodes, membrane = _normalised_inputs(raw, plan)
    if barcodes is not None and plan.deconvolution_iterations > 0:
        barcodes = kernels.deconvolve(barcodes, plan.psf_sigma, plan.deconvolution_iterations)
    ev = kernels.compute_evidence(
        fill, barcodes, membrane, sigma=plan.sigma, barcode_sigma=plan.barcode_sigma,
        threshold=plan.threshold, barcode_weight=plan.barcode_weight, barcode_floor=plan.barcode_floor,
        membrane_weight=plan.membrane_weight, fill_weight=plan.fill_weight,
        seed_barcode_cut=plan.seed_barcode_cut,
    )
    return ev, barcodes


def fragments_step(block: Block, *, volume_path: str, plan: FragmentPlan, fragments_path: str,
                   evidence_path: str, device: str = "cpu") -> dict:
    """Pass 1: fragments of one block, written to the fragments array; returns per-fragment sums.

    Returns
    -------
    dict
        ``ids`` (uint64, sorted), ``counts`` (int64), ``first`` (int64: global
        raster index of each fragment's first voxel), ``barcode_sums``
        (float64, fragments x barcodes; normalised, deconvolved, unsmoothed),
        ``fill_sums`` (float64: smoothed normalised fill clipped to [0, 1]),
        ``identity`` (int64: codebook identity, 0 without a codebook) and
        ``bbox_lo`` / ``bbox_hi`` (int64 (n, 3): global bounding box, max exclusive).
    """
    import cc3d

    volume = Volume.open(volume_path, mode="r")
    raw = volume.read(block.read, plan.channels)
    data = to_device(raw, device)
    ev, bc_full = block_evidence(data, plan)
    inner = block.write_in_read
    if plan.uses_codebook:
        # Global barcode identities: assign, despeckle, then connected pieces.
        labels = assign_codes(bc_full, np.asarray(plan.centroids), np.asarray(plan.identity),
                              mask=ev.foreground, floor=plan.code_floor)
        labels = despeckle(labels, ev.foreground, ev.boundary, plan.despeckle_size)
        identity_map = to_host(labels[inner])
        local = cc3d.connected_components(np.ascontiguousarray(identity_map), connectivity=26,
                                          out_dtype=np.uint32)
    else:
        seed_method = plan.seed_method
        if seed_method == "barcode" and ev.barcodes is None:
            seed_method = "hmaxima"
        labels = kernels.fragment_labels(
            ev, seed_method=seed_method, seed_h=plan.seed_h,
            seed_min_distance=plan.seed_min_distance, sampling=plan.sampling, barcodes=ev.barcodes,
            code_alpha=plan.code_alpha, code_floor=plan.code_floor, seed_min_size=plan.seed_min_size,
        )
        identity_map = None
        # Cropping can cut a watershed basin in pieces: keep fragments 6-connected.
        local = cc3d.connected_components(np.ascontiguousarray(to_host(labels[inner])), connectivity=6,
                                          out_dtype=np.uint32)
    fill_s = to_host(ev.fill[inner])
    disc = to_host(ev.discontinuity[inner]) if ev.discontinuity is not None else np.zeros_like(fill_s)
    n = int(local.max())
    if n >= 2**BLOCK_SHIFT:
        raise RuntimeError(f"{block}: {n} fragments do not fit in {BLOCK_SHIFT} bits")

    flat = local.ravel()
    uniq, first_local, counts = np.unique(flat, return_index=True, return_counts=True)
    keep = uniq > 0
    uniq, first_local, counts = uniq[keep], first_local[keep], counts[keep]
    # Local raster order equals global raster order inside one block.
    coords = np.unravel_index(first_local, local.shape)
    first = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, block.write_offset)), volume.spatial_shape)

    bc_w = to_host(bc_full[(slice(None),) + inner]) if bc_full is not None else None
    fill_sums = np.bincount(flat, weights=np.clip(fill_s, 0, 1).ravel(), minlength=n + 1)[uniq]
    if bc_w is not None:
        bc_sums = np.stack([np.bincount(flat, weights=bc_w[k].ravel(), minlength=n + 1)[uniq]
                            for k in range(bc_w.shape[0])], axis=1)
    else:
        bc_sums = np.zeros((len(uniq), 0))

    ids = np.zeros(local.shape, np.uint64)
    fg = local > 0
    ids[fg] = (np.uint64(block.id) << np.uint64(BLOCK_SHIFT)) | local[fg].astype(np.uint64)
    zarr.open_array(fragments_path, mode="r+")[block.write] = ids
    evidence = np.stack([fill_s, disc])
    evidence = np.round(np.clip(evidence, 0.0, 1.0) * EVIDENCE_SCALE).astype(np.uint8)
    zarr.open_array(evidence_path, mode="r+")[(slice(None),) + block.write] = evidence
    frag_ids = (np.uint64(block.id) << np.uint64(BLOCK_SHIFT)) | uniq.astype(np.uint64)
    import scipy.ndimage

    boxes = scipy.ndimage.find_objects(local)
    offset = np.asarray(block.write_offset, np.int64)
    bbox_lo = np.asarray([[s.start for s in boxes[i - 1]] for i in uniq], np.int64).reshape(-1, 3) + offset
    bbox_hi = np.asarray([[s.stop for s in boxes[i - 1]] for i in uniq], np.int64).reshape(-1, 3) + offset
    if identity_map is not None:
        identity = identity_map.ravel()[first_local].astype(np.int64)
    else:
        identity = np.zeros(len(uniq), np.int64)
    return {
        "identity": identity,
        "bbox_lo": bbox_lo,
        "bbox_hi": bbox_hi,
        "ids": frag_ids,
        "counts": counts.astype(np.int64),
        "first": np.asarray(first, np.int64),
        "barcode_sums": bc_sums.astype(np.float64),
        "fill_sums": fill_sums.astype(np.float64),
    }


# ---------------------------------------------------------------------------
# Pass 2: region adjacency edges
# ---------------------------------------------------------------------------
def contact_edges(labels: np.ndarray, features: np.ndarray, margins: Sequence[int]) -> dict:
    """Contacts between different non-zero labels along z, y and x.

    ``labels`` (z, y, x) and ``features`` (m, z, y, x), uint8 evidence scaled
    by :data:`EVIDENCE_SCALE`, cover a block's write region grown by
    ``margins[a]`` (0 or 1) voxels on the low side of axis ``a``; only voxel
    pairs whose upper voxel lies in the write region are counted.

    Returns
    -------
    dict
        ``a``, ``b`` (uint64, ``a < b``), ``contact`` (int64: voxel pairs) and
        ``sums`` (float64, edges x m: sum over the pairs of the mean feature
        value of the two voxels, in [0, 1] units).
    """
    m = features.shape[0]
    a_parts, b_parts, v_parts = [], [], []
    for axis in range(3):
        sub = tuple(slice(None) if ax == axis else slice(margins[ax], None) for ax in range(3))
        lab, feat = labels[sub], features[(slice(None),) + sub]
        if lab.shape[axis] < 2:
            continue
        lo = tuple(slice(0, -1) if ax == axis else slice(None) for ax in range(3))
        hi = tuple(slice(1, None) if ax == axis else slice(None) for ax in range(3))
        la, lb = lab[lo], lab[hi]
        sel = (la != lb) & (la != 0) & (lb != 0)
        if not sel.any():
            continue
        x, y = la[sel], lb[sel]
        a_parts.append(np.minimum(x, y))
        b_parts.append(np.maximum(x, y))
        flo, fhi = feat[(slice(None),) + lo], feat[(slice(None),) + hi]
        v_parts.append(np.stack([(flo[i][sel].astype(np.float64) + fhi[i][sel]) / (2.0 * EVIDENCE_SCALE)
                                 for i in range(m)], axis=1))
    if not a_parts:
        return {"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
                "contact": np.zeros(0, np.int64), "sums": np.zeros((0, m))}
    a = np.concatenate(a_parts)
    b = np.concatenate(b_parts)
    v = np.concatenate(v_parts)
    order = np.lexsort((b, a))
    a, b, v = a[order], b[order], v[order]
    start = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    return {
        "a": a[start],
        "b": b[start],
        "contact": np.diff(np.r_[start, len(a)]).astype(np.int64),
        "sums": np.add.reduceat(v, start, axis=0),
    }


def edges_step(block: Block, *, fragments_path: str, evidence_path: str) -> dict:
    """Pass 2: the region adjacency edges owned by one block (see :func:`contact_edges`)."""
    region = tuple(slice(max(w.start - 1, 0), w.stop) for w in block.write)
    margins = [w.start - r.start for w, r in zip(block.write, region)]
    labels = zarr.open_array(fragments_path, mode="r")[region]
    features = zarr.open_array(evidence_path, mode="r")[(slice(None),) + region]
    return contact_edges(labels, features, margins)


# ---------------------------------------------------------------------------
# Pass 3: relabel
# ---------------------------------------------------------------------------
def relabel_step(block: Block, *, fragments_path: str, lut_path: str, labels_path: str) -> dict:
    """Pass 3: write neuron ids for one block through the fragment -> neuron lookup table.

    Returns ``{"voxels": int}`` (non-zero voxels written).
    """
    import fastremap

    frags = zarr.open_array(fragments_path, mode="r")[block.write]
    lut = np.load(lut_path)
    keys, values = lut["keys"], lut["values"]
    lo = np.searchsorted(keys, np.uint64(block.id) << np.uint64(BLOCK_SHIFT))
    hi = np.searchsorted(keys, np.uint64(block.id + 1) << np.uint64(BLOCK_SHIFT))
    mapping = dict(zip(keys[lo:hi].tolist(), values[lo:hi].tolist()))
    mapping[0] = 0
    present = fastremap.unique(frags)
    missing = [int(p) for p in present if int(p) not in mapping]
    if missing:
        raise RuntimeError(f"{block}: fragments {missing[:5]} are missing from the lookup table")
    out = fastremap.remap(frags, mapping, preserve_missing_labels=False).astype(np.uint64, copy=False)
    zarr.open_array(labels_path, mode="r+")[block.write] = out
    return {"voxels": int(np.count_nonzero(out))}
