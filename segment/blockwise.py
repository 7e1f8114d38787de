"""The block steps of segmentation and the global statistics they share.

Four passes run over the block grid with :func:`pipeline.run_blockwise`:

1. :func:`evidence_step` reads the block's read region (write region + halo)
   of the fill, barcode and membrane channels, normalises them with the
   *global* percentiles from :func:`global_statistics`, deconvolves the
   barcodes, and stores the write region of the per-voxel evidence
   (``RUN/work/evidence``: smoothed fill, barcode discontinuity, boundary
   map as uint8) and of the deconvolved barcodes (``RUN/work/barcodes``,
   float16). It returns the block's codebook votes.
2. :func:`fragments_step` reads the stored evidence of the read region,
   labels fragments (codebook identities or watershed basins), keeps the
   write region, gives each fragment a block-unique id
   ``block.id << 32 | local id`` and writes ``RUN/work/fragments``. It
   returns per-fragment voxel counts, fill and barcode sums, identity,
   bounding box and first-voxel position.
3. :func:`edges_step` reads fragments and evidence over the write region
   plus one voxel on its low faces and counts, for every pair of different
   fragments that touch (6-neighbourhood), the contact voxels and the summed
   fill and discontinuity along the contact. Every neighbouring voxel pair is
   counted by exactly one block: the one that owns the pair's upper voxel, so
   face contacts between blocks are included exactly once.
4. :func:`relabel_step` maps fragment ids to neuron ids through the lookup
   table written by the agglomeration and writes ``RUN/labels.zarr/neurons``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import zarr

from pipeline import Block, Volume, array_module, to_device, to_host

from . import kernels
from .codebook import assign_codes, code_statistics, despeckle, refine_contacts
from .unmix import UnmixSettings, unmix_rounds

__all__ = [
    "FragmentPlan",
    "block_evidence",
    "contact_barcodes",
    "contact_edges",
    "edges_step",
    "evidence_step",
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
EVIDENCE_CHANNELS = ("fill", "discontinuity", "boundary")


@dataclass(frozen=True)
class FragmentPlan:
    """Everything a fragments block needs, small and picklable.

    Attributes
    ----------
    fill, barcodes, membrane : tuple of int
        Channel indices in the volume.
    lo, hi : dict
        Global normalisation (channel index -> value).
    background : dict
        Background level of each barcode channel (for the final contact pass).
    contact_iterations : int
        Deconvolution iterations of the final contact pass (``contact_method`` cosine).
    contact_method, unmix_iterations, unmix_radius, unmix_background, unmix_rounds
        How the final contact pass decides (see :class:`segment.config.SegmentConfig`).
    unmix_smoothing, unmix_grow, unmix_brightness
        How the unmixing pass turns abundances into labels (voxel sigmas or None, threshold or None, power).
    unmix_back_projector : (z, y, x) or None
        Sigma in voxels of the fit's back projector (None: ``psf_sigma``, classic Richardson-Lucy).
    unmix_early_iterations : int or None
        The fit's iterations in every round but the last, at most ``unmix_iterations`` (None: those).
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
    deconvolution_acceleration: str
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
    despeckle_landscape: str = "boundary"
    refine_contacts: bool = False
    deconvolution_method: str = "richardson-lucy"
    wiener_balance: float = 0.003
    background: dict = dataclasses.field(default_factory=dict)
    contact_iterations: int = 0
    contact_method: str = "cosine"
    unmix_iterations: int = 0
    unmix_radius: int = 2
    unmix_background: float = 0.05
    unmix_rounds: int = 1
    unmix_smoothing: tuple | None = None
    unmix_grow: float | None = None
    unmix_brightness: float = 0.0
    unmix_back_projector: tuple | None = None
    unmix_early_iterations: int | None = None

    @property
    def uses_codebook(self) -> bool:
        return bool(self.barcodes) and len(self.identity) > 0

    @property
    def channels(self) -> list[int]:
        return list(self.fill) + list(self.barcodes) + list(self.membrane)

    def unmix_settings(self) -> UnmixSettings:
        """The settings of the unmixing contact pass (:func:`segment.unmix.unmix_rounds`)."""
        return UnmixSettings(psf_sigma=tuple(self.psf_sigma), iterations=self.unmix_iterations,
                             radius=self.unmix_radius, background=self.unmix_background, rounds=self.unmix_rounds,
                             smoothing=self.unmix_smoothing, grow=self.unmix_grow, brightness=self.unmix_brightness,
                             back_projector=self.unmix_back_projector,
                             early_iterations=self.unmix_early_iterations)

    def to_params(self) -> dict:
        d = dict(self.__dict__)
        d["centroids"] = [[round(float(v), 5) for v in row] for row in self.centroids]
        d["identity"] = [int(v) for v in self.identity]
        d["lo"] = {str(k): round(float(v), 6) for k, v in self.lo.items()}
        d["hi"] = {str(k): round(float(v), 6) for k, v in self.hi.items()}
        d["background"] = {str(k): round(float(v), 6) for k, v in self.background.items()}
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


def _percentiles(parts, percentiles) -> np.ndarray:
    """``np.percentile`` (linear) of the values of all arrays in ``parts``, without concatenating them.

    Unsigned integers of at most 16 bits go through a histogram: the two
    order statistics around each percentile are read from the cumulative
    counts; where they are equal that is ``np.percentile``'s value exactly,
    otherwise the (sorted) values are rebuilt from the histogram and
    ``np.percentile`` interpolates. Other dtypes: ``np.percentile`` of the
    concatenated values.
    """
    q = np.asarray(list(percentiles), dtype=np.float64)
    dtype = parts[0].dtype if parts else np.dtype(np.float64)
    if not parts or dtype.kind != "u" or dtype.itemsize > 2 or any(p.dtype != dtype for p in parts):
        return np.percentile(np.concatenate([p.ravel() for p in parts]), q)
    counts = None
    for part in parts:
        h = np.bincount(part.ravel(), minlength=1 << (8 * dtype.itemsize))
        counts = h if counts is None else counts + h
    n = int(counts.sum())
    if n == 0:
        return np.percentile(np.zeros(0, dtype), q)
    cum = np.cumsum(counts)
    virtual = (n - 1) * np.true_divide(q, 100)
    below = np.clip(np.floor(virtual).astype(np.intp), 0, n - 1)
    above = np.clip(below + 1, 0, n - 1)
    # value of the k-th smallest (0-based): first bin whose cumulative count exceeds k
    v_lo = np.searchsorted(cum, below, side="right")
    v_hi = np.searchsorted(cum, above, side="right")
    if np.array_equal(v_lo, v_hi):
        return v_lo.astype(np.float64)
    return np.percentile(np.repeat(np.arange(len(counts), dtype=dtype), counts), q)


def _background_level(parts, lo: float, hi: float) -> float:
    """The most frequent value (smoothed histogram mode) of all arrays in ``parts``: a channel's background.

    Most voxels of a sparse fluorescence channel are background, so its
    histogram peaks at the background level; blur tails and signal only add
    a long upper tail. The histogram is smoothed over 1 % of ``hi - lo`` (the
    robust range) so shot noise and integer quantisation do not move the peak.
    """
    from scipy.ndimage import gaussian_filter1d

    span = max(float(hi) - float(lo), 1e-12)
    bins = 2048
    edges = np.linspace(float(lo) - 0.1 * span, float(hi), bins + 1)
    counts = np.zeros(bins)
    for part in parts:
        counts += np.histogram(part.ravel(), bins=edges)[0]
    if counts.sum() == 0:
        return float(lo)
    smooth = gaussian_filter1d(counts, sigma=0.01 * bins / 1.1, mode="constant")
    peak = int(np.argmax(smooth))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def global_statistics(volume: Volume, channels: Sequence[int], fill: Sequence[int], *,
                      percentiles=(1.0, 99.5), sigma=(0.5, 1.0, 1.0), max_voxels: int = 2**23,
                      threshold_method: str = "otsu", threshold: float = 0.2,
                      threshold_scale: float = 1.0, background_channels: Sequence[int] = ()) -> dict:
    """Global normalisation percentiles per channel and the foreground threshold.

    ``background`` holds the background level (:func:`_background_level`)
    of each of the ``background_channels`` (the barcodes): the final contact
    pass normalises with it instead of ``lo`` (see :func:`relabel_step`).

    Reads whole chunks spread evenly over the volume (all of it when it has
    at most ``max_voxels`` voxels), so every block is normalised with the same
    numbers. The Otsu threshold is computed on the smoothed, normalised fill
    of the same sample (each sampled chunk smoothed on its own).

    Returns
    -------
    dict
        ``lo``, ``hi`` and ``background`` (channel index -> float), ``threshold`` (float),
        ``otsu`` (the raw Otsu value or None) and ``sample_voxels``.
    """
    from skimage.filters import threshold_otsu

    channels = sorted(set(int(c) for c in channels) | set(int(c) for c in fill))
    background_channels = set(int(c) for c in background_channels)
    background = {}
    regions = _sample_regions(volume, max_voxels)
    # One read per region: the percentiles and the Otsu sample use the same data.
    # Integer images of at most 16 bits are counted in histograms (exact order
    # statistics, no copy of the sample); others keep every value.
    reads = [volume.read(region, channels) for region in regions]
    lo, hi = {}, {}
    for i, c in enumerate(channels):
        p = _percentiles([data[i] for data in reads], percentiles)
        lo[c], hi[c] = float(p[0]), float(p[1])
        if hi[c] <= lo[c]:
            hi[c] = lo[c] + 1.0
        if c in background_channels:
            background[c] = min(_background_level([data[i] for data in reads], lo[c], hi[c]), hi[c] - 1e-6)
    n_voxels = sum(int(data[0].size) for data in reads)
    otsu = None
    if threshold_method == "otsu":
        fill_index = [channels.index(int(c)) for c in fill]
        smoothed = []
        for data in reads:
            data = data[fill_index].astype(np.float32)
            norm = kernels.normalize(data, [lo[c] for c in fill], [hi[c] for c in fill]).mean(axis=0)
            smoothed.append(kernels.smooth(norm, sigma).ravel())
        del reads
        s = np.concatenate(smoothed)
        otsu = float(threshold_otsu(s, nbins=512)) if np.ptp(s) > 0 else 0.5
        value = otsu * threshold_scale
    else:
        value = float(threshold)
    log.info("segment statistics from %d voxels: threshold %.3f (otsu %s)", n_voxels, value, otsu)
    return {"lo": lo, "hi": hi, "background": background, "threshold": float(value), "otsu": otsu,
            "sample_voxels": int(n_voxels)}


# ---------------------------------------------------------------------------
# Pass 1: evidence (and codebook votes)
# ---------------------------------------------------------------------------
def _normalised_inputs(raw, plan: FragmentPlan):
    """Split the read (c, z, y, x) array into normalised fill, barcodes and membrane.

    Each group is normalised on its own (the same values as all channels at
    once), so the barcodes are an array of their own: no view keeps the
    fill and membrane channels alive beside them.
    """
    chans = plan.channels
    nf, nb = len(plan.fill), len(plan.barcodes)

    def normalised(first, stop):
        group = chans[first:stop]
        return kernels.normalize(raw[first:stop], [plan.lo[c] for c in group], [plan.hi[c] for c in group])

    fill = normalised(0, nf).mean(axis=0)
    barcodes = normalised(nf, nf + nb) if nb else None
    membrane = normalised(nf + nb, len(chans)).mean(axis=0) if plan.membrane else None
    return fill, barcodes, membrane


def block_evidence(raw, plan: FragmentPlan):
    """Evidence of a raw (c, z, y, x) read region under ``plan``.

    The raw channels are not needed once normalised: a caller that passes
    its only reference (as :func:`evidence_step` does) lets them go before
    the deconvolution.

    Returns
    -------
    evidence : kernels.Evidence
    barcodes : array (k, z, y, x) or None
        The normalised (and deconvolved) barcodes before smoothing.
    """
    fill, barcodes, membrane = _normalised_inputs(raw, plan)
    del raw
    if barcodes is not None:  # deconvolve returns them unchanged when there is nothing to do
        barcodes = kernels.deconvolve(barcodes, plan.psf_sigma, plan.deconvolution_iterations,
                                      acceleration=plan.deconvolution_acceleration,
                                      method=plan.deconvolution_method, balance=plan.wiener_balance,
                                      overwrite_x=True)
    ev = kernels.compute_evidence(
        fill, barcodes, membrane, sigma=plan.sigma, barcode_sigma=plan.barcode_sigma,
        threshold=plan.threshold, barcode_weight=plan.barcode_weight, barcode_floor=plan.barcode_floor,
        membrane_weight=plan.membrane_weight, fill_weight=plan.fill_weight,
        seed_barcode_cut=plan.seed_barcode_cut,
    )
    return ev, barcodes


def _quantise(x):
    return np.round(np.clip(x, 0.0, 1.0) * EVIDENCE_SCALE).astype(np.uint8)


def evidence_step(block: Block, *, volume_path: str, plan: FragmentPlan, evidence_path: str,
                  barcodes_path: str | None, device: str = "cpu", pure_discontinuity: float = 0.15,
                  min_brightness: float = 0.3, min_gap: float = 2.0) -> dict:
    """Pass 1: per-voxel evidence of one block, stored for the later passes; codebook votes.

    Writes the write region of ``RUN/work/evidence`` (uint8 channels
    :data:`EVIDENCE_CHANNELS`: smoothed fill, barcode discontinuity and
    boundary map, each scaled by :data:`EVIDENCE_SCALE`) and, when the
    volume has barcodes, of ``RUN/work/barcodes`` (float16: normalised,
    deconvolved barcodes).

    Returns
    -------
    dict
        :func:`segment.codebook.code_statistics` of the block's pure voxels
        (foreground, brightest barcode channel ``>= min_brightness``,
        discontinuity ``< pure_discontinuity``), empty without barcodes.
    """
    volume = Volume.open(volume_path, mode="r")
    # the raw channels go straight in: block_evidence frees them once normalised
    ev, bc = block_evidence(to_device(volume.read(block.read, plan.channels), device), plan)
    inner = block.write_in_read
    fill_s = to_host(ev.fill[inner])
    disc = to_host(ev.discontinuity[inner]) if ev.discontinuity is not None else np.zeros_like(fill_s)
    boundary = to_host(ev.boundary[inner])
    zarr.open_array(evidence_path, mode="r+")[(slice(None),) + block.write] = _quantise(
        np.stack([fill_s, disc, boundary]))
    if bc is None:
        return code_statistics(np.zeros((0, 0)))
    bc_w = to_host(bc[(slice(None),) + inner])
    zarr.open_array(barcodes_path, mode="r+")[(slice(None),) + block.write] = bc_w.astype(np.float16)
    pure = (fill_s > plan.threshold) & (disc < pure_discontinuity) & (bc_w.max(axis=0) >= min_brightness)
    return code_statistics(bc_w[:, pure].T, min_gap=min_gap)


# ---------------------------------------------------------------------------
# Pass 2: fragments
# ---------------------------------------------------------------------------
def _stored_evidence(block: Block, plan: FragmentPlan, evidence_path: str, barcodes_path: str | None, device):
    """Read the stored evidence of a block's read region back into a :class:`kernels.Evidence`."""
    stored = zarr.open_array(evidence_path, mode="r")[(slice(None),) + block.read]
    stored = to_device(stored, device)
    xp = array_module(stored)
    scale = np.float32(1.0 / EVIDENCE_SCALE)
    fill_s = stored[0].astype(xp.float32) * scale
    disc = stored[1].astype(xp.float32) * scale
    boundary = stored[2].astype(xp.float32) * scale
    fg = kernels.foreground_mask(fill_s, plan.threshold)
    bc = None
    if plan.barcodes:
        bc = to_device(zarr.open_array(barcodes_path, mode="r")[(slice(None),) + block.read], device)
        bc = bc.astype(xp.float32)
    interior = fg
    if bc is not None and plan.barcode_weight > 0:
        interior = fg & (disc * np.float32(plan.barcode_weight) < plan.seed_barcode_cut)
    ev = kernels.Evidence(fill=fill_s, boundary=boundary, foreground=fg, interior=interior,
                          discontinuity=disc if bc is not None else None)
    return ev, bc


def fragments_step(block: Block, *, plan: FragmentPlan, evidence_path: str, barcodes_path: str | None,
                   fragments_path: str, shape, device: str = "cpu") -> dict:
    """Pass 2: fragments of one block from the stored evidence; returns per-fragment sums.

    With a codebook, every foreground voxel gets the closest barcode
    identity, specks are flooded by their neighbours and fragments are the
    26-connected pieces of one identity. Without, fragments are seeded
    watershed basins (seeds from quantised barcodes or from the distance
    transform). Either way the labels are computed on the read region and
    the write region is kept, with ids ``block.id << 32 | local id``.

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
    import fastremap

    ev, bc = _stored_evidence(block, plan, evidence_path, barcodes_path, device)
    inner = block.write_in_read
    if plan.uses_codebook:
        labels = assign_codes(bc, np.asarray(plan.centroids), np.asarray(plan.identity),
                              mask=ev.foreground, floor=plan.code_floor)
        landscape = ev.boundary
        if plan.despeckle_landscape == "discontinuity" and ev.discontinuity is not None:
            landscape = ev.discontinuity
        labels = despeckle(labels, ev.foreground, landscape, plan.despeckle_size)
        if plan.refine_contacts:
            labels = refine_contacts(labels, bc, np.asarray(plan.centroids), np.asarray(plan.identity))
        identity_map = np.ascontiguousarray(to_host(labels[inner]))
        # Foreground that no identity reached (no usable barcode nearby) becomes
        # fragments of its own with identity 0.
        unknown = np.uint32(max(plan.identity) + 1)
        pieces = np.where(to_host(ev.foreground[inner]) & (identity_map == 0), unknown, identity_map)
        local = cc3d.connected_components(np.ascontiguousarray(pieces), connectivity=26, out_dtype=np.uint32)
    else:
        seed_method = plan.seed_method
        if seed_method == "barcode" and bc is None:
            seed_method = "hmaxima"
        seed_bc = kernels.smooth(bc, plan.barcode_sigma) if (bc is not None and seed_method == "barcode") else None
        labels = kernels.fragment_labels(
            ev, seed_method=seed_method, seed_h=plan.seed_h,
            seed_min_distance=plan.seed_min_distance, sampling=plan.sampling, barcodes=seed_bc,
            code_alpha=plan.code_alpha, code_floor=plan.code_floor, seed_min_size=plan.seed_min_size,
        )
        identity_map = None
        # Cropping can cut a watershed basin in pieces: keep fragments 6-connected.
        local = cc3d.connected_components(np.ascontiguousarray(to_host(labels[inner])), connectivity=6,
                                          out_dtype=np.uint32)
    n = int(local.max())
    if n >= 2**BLOCK_SHIFT:
        raise RuntimeError(f"{block}: {n} fragments do not fit in {BLOCK_SHIFT} bits")

    local = np.ascontiguousarray(local)
    flat = local.ravel()
    # fastremap.unique on the 1-D raster: sorted labels, first raster index, counts (no sort)
    uniq, first_local, counts = fastremap.unique(flat, return_index=True, return_counts=True)
    keep = uniq > 0
    uniq, first_local, counts = uniq[keep], first_local[keep].astype(np.int64), counts[keep]
    # Local raster order equals global raster order inside one block.
    coords = np.unravel_index(first_local, local.shape)
    first = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, block.write_offset)), tuple(shape))

    fill_w = np.clip(to_host(ev.fill[inner]), 0.0, 1.0)
    keys = flat.astype(np.intp)          # bincount would convert the uint32 labels once per call
    fill_sums = np.bincount(keys, weights=fill_w.ravel(), minlength=n + 1)[uniq]
    if bc is not None:
        bc_w = to_host(bc[(slice(None),) + inner])
        bc_sums = np.stack([np.bincount(keys, weights=bc_w[k].ravel(), minlength=n + 1)[uniq]
                            for k in range(bc_w.shape[0])], axis=1)
    else:
        bc_sums = np.zeros((len(uniq), 0))
    del keys
    offset = np.asarray(block.write_offset, np.int64)
    if n < flat.size:
        # bounding boxes in one C++ pass: (min, max inclusive) per axis, indexed by label
        # (cc3d.statistics needs labels below the voxel count)
        boxes = np.asarray(cc3d.statistics(local, no_slice_conversion=True)["bounding_boxes"], np.int64)
        boxes = boxes.reshape(-1, 6)[uniq.astype(np.intp)]
        bbox_lo = boxes[:, 0::2].reshape(-1, 3) + offset
        bbox_hi = boxes[:, 1::2].reshape(-1, 3) + 1 + offset
    else:                                # tiny block, every voxel its own fragment
        import scipy.ndimage

        found = scipy.ndimage.find_objects(local)
        bbox_lo = np.asarray([[s.start for s in found[i - 1]] for i in uniq], np.int64).reshape(-1, 3) + offset
        bbox_hi = np.asarray([[s.stop for s in found[i - 1]] for i in uniq], np.int64).reshape(-1, 3) + offset
    if identity_map is not None:
        identity = identity_map.ravel()[first_local].astype(np.int64)
    else:
        identity = np.zeros(len(uniq), np.int64)

    ids = local.astype(np.uint64)
    np.bitwise_or(ids, np.uint64(block.id) << np.uint64(BLOCK_SHIFT), out=ids, where=local > 0)
    zarr.open_array(fragments_path, mode="r+")[block.write] = ids
    return {
        "ids": (np.uint64(block.id) << np.uint64(BLOCK_SHIFT)) | uniq.astype(np.uint64),
        "counts": counts.astype(np.int64),
        "first": np.asarray(first, np.int64),
        "barcode_sums": bc_sums.astype(np.float64),
        "fill_sums": fill_sums.astype(np.float64),
        "identity": identity,
        "bbox_lo": bbox_lo,
        "bbox_hi": bbox_hi,
    }


# ---------------------------------------------------------------------------
# Pass 3: region adjacency edges
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
    empty = {"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
             "contact": np.zeros(0, np.int64), "sums": np.zeros((0, m))}
    labels = np.ascontiguousarray(labels)
    shape = labels.shape
    if labels.size == 0:
        return empty
    flat = labels.reshape(-1)
    fflat = np.ascontiguousarray(features).reshape(m, -1)
    strides = (shape[1] * shape[2], shape[2], 1)
    a_parts, b_parts, v_parts = [], [], []
    for axis in range(3):
        step = strides[axis]
        if shape[axis] < 2 or any(shape[ax] <= margins[ax] for ax in range(3) if ax != axis):
            continue
        # Voxel pairs (i, i + step) as two contiguous 1-D views of the raster: candidates
        # first (different, both non-zero: few), then only the candidates are checked for
        # being a real neighbour pair (not wrapped around a row or plane) whose upper voxel
        # is in the write region (not in the low margin of another axis).
        lo, hi = flat[:-step], flat[step:]
        cand = lo != hi
        cand &= np.minimum(lo, hi) != 0
        idx = np.flatnonzero(cand)
        if not len(idx):
            continue
        coords = np.unravel_index(idx, shape)
        ok = coords[axis] < shape[axis] - 1
        for ax in range(3):
            if ax != axis and margins[ax]:
                ok &= coords[ax] >= margins[ax]
        idx = idx[ok]
        if not len(idx):
            continue
        x, y = lo[idx], hi[idx]
        a_parts.append(np.minimum(x, y))
        b_parts.append(np.maximum(x, y))
        v_parts.append(np.stack([(fflat[i][idx].astype(np.float64) + fflat[i][idx + step]) / (2.0 * EVIDENCE_SCALE)
                                 for i in range(m)], axis=1))
    if not a_parts:
        return empty
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
    """Pass 3: the region adjacency edges owned by one block (see :func:`contact_edges`).

    The features are the stored smoothed fill and barcode discontinuity.
    """
    region = tuple(slice(max(w.start - 1, 0), w.stop) for w in block.write)
    margins = [w.start - r.start for w, r in zip(block.write, region)]
    labels = zarr.open_array(fragments_path, mode="r")[region]
    features = zarr.open_array(evidence_path, mode="r")[(slice(0, 2),) + region]
    return contact_edges(labels, features, margins)


# ---------------------------------------------------------------------------
# Pass 4: relabel
# ---------------------------------------------------------------------------
def _neurons_of(frags: np.ndarray, keys: np.ndarray, values: np.ndarray, block: Block) -> np.ndarray:
    """Neuron id of every fragment id in ``frags`` (0 stays 0) through the sorted lookup table."""
    flat = frags.ravel()
    idx = np.minimum(np.searchsorted(keys, flat), max(len(keys) - 1, 0))
    known = (flat == 0) | ((keys[idx] == flat) if len(keys) else np.zeros(flat.shape, bool))
    if not known.all():
        missing = np.unique(flat[~known])[:5].tolist()
        raise RuntimeError(f"{block}: fragments {missing} are missing from the lookup table")
    out = np.where(flat == 0, 0, values[idx] if len(keys) else 0).astype(np.uint64)
    return out.reshape(frags.shape)


def relabel_step(block: Block, *, fragments_path: str, lut_path: str, labels_path: str,
                 volume_path: str | None = None, plan: FragmentPlan | None = None,
                 neuron_barcodes_path: str | None = None, device: str = "cpu") -> dict:
    """Pass 4: write neuron ids for one block through the fragment -> neuron lookup table.

    With ``volume_path``, ``plan`` and ``neuron_barcodes_path`` (the
    neurons' mean barcodes), a final contact pass runs first on the neuron
    labels of the block's *read* region: every labelled voxel that touches
    another neuron (26-neighbourhood) is decided again, and with
    ``plan.unmix_grow`` an unlabelled voxel near a neuron may join it. With
    ``plan.contact_method`` "unmix" (default) it takes the neuron of largest
    abundance in a fit of the neurons' barcodes to the raw channels under the
    PSF (:func:`segment.unmix.unmix_contacts`; candidates: the neurons
    labelled within ``plan.unmix_radius``). With "cosine" it takes the
    neuron, among its own and its neighbours', whose mean barcode direction
    scores best against the voxel's deconvolved barcode
    (:func:`segment.codebook.refine_contacts` with one "code" per neuron
    present). Both normalise the raw channels from their *background level*
    (``plan.background``) rather than their low percentile, which would leave
    a pedestal common to all channels that pulls a dim contact voxel's
    direction away from both neurons. Only the write region is written; the
    halo gives its border voxels their true neighbours::

        read region  +-----------------+
                     |  write region   |   a write voxel's 26 neighbours
                     |   +---------+   |   are always inside the read
                     |   |  x x x  |   |   region: decided as with one
                     |   |  x o x  |   |   whole-volume array (up to the
                     |   +---------+   |   deconvolution's edge effects)
                     +-----------------+

    Returns ``{"voxels": int}`` (non-zero voxels written) and, with the
    contact pass, ``"contact_changes"`` (write-region voxels whose neuron it changed).
    """
    lut = np.load(lut_path)
    keys, values = lut["keys"], lut["values"]
    refine = volume_path is not None and plan is not None and neuron_barcodes_path is not None
    region = block.read if refine else block.write
    neurons = _neurons_of(zarr.open_array(fragments_path, mode="r")[region], keys, values, block)
    stats = {}
    if refine:
        local, original = _local_neuron_ids(neurons)
        del neurons                     # the pass works on 32-bit local ids: free the 64-bit read region
        refined = _refine_neuron_contacts(local, original, volume_path, plan, neuron_barcodes_path, block, device)
        inner = block.write_in_read
        stats["contact_changes"] = int(np.count_nonzero(refined[inner] != local[inner]))
        neurons = original[refined[inner]]
    out = np.ascontiguousarray(neurons, dtype=np.uint64)
    zarr.open_array(labels_path, mode="r+")[block.write] = out
    return {"voxels": int(np.count_nonzero(out)), **stats}


def _background_levels(plan: FragmentPlan) -> np.ndarray:
    """Each barcode channel's background level (its low percentile where none was measured)."""
    return np.array([plan.background.get(c, plan.lo[c]) for c in plan.barcodes], np.float64)


def contact_barcodes(raw, plan: FragmentPlan):
    """The barcodes of a raw (k, z, y, x) read region for the final contact pass.

    Normalised from each channel's background level to its high percentile,
    then deconvolved as in :func:`block_evidence` with ``plan.contact_iterations``.
    """
    norm = kernels.normalize(raw, _background_levels(plan), [plan.hi[c] for c in plan.barcodes])
    return kernels.deconvolve(norm, plan.psf_sigma, plan.contact_iterations,
                              acceleration=plan.deconvolution_acceleration,
                              method=plan.deconvolution_method, balance=plan.wiener_balance, overwrite_x=True)


def unmixing_inputs(raw, means: np.ndarray, plan: FragmentPlan):
    """The observation and neuron barcodes of the unmixing contact pass.

    ``raw`` (k, z, y, x) is normalised from each channel's background level
    to its high percentile (not deconvolved: the unmixing models the PSF
    itself). ``means`` are the neurons' mean barcodes as stored in
    ``work/neuron_barcodes.npz``, normalised from the low percentile
    (``plan.lo``); they are mapped to the background normalisation channel by
    channel, ``(m (hi - lo) + lo - background) / (hi - background)``. The
    pass prefers each neuron's mean over its core in the block
    (:func:`segment.unmix.core_barcodes`) and falls back to these: means over
    whole fragments include their contacts, and on the demo sample the fit
    with them left VOI 0.04 higher.
    """
    bg = _background_levels(plan)
    lo = np.array([plan.lo[c] for c in plan.barcodes], np.float64)
    hi = np.array([plan.hi[c] for c in plan.barcodes], np.float64)
    if array_module(raw) is np:
        # channels-last memory, as the host fit reads it (segment.unmix.unmix_abundances): written
        # so once here, instead of copied in every round
        last = np.empty(raw.shape[1:] + raw.shape[:1], np.float32)
        observed = kernels.normalize(raw, bg, hi, out=np.moveaxis(last, -1, 0))
    else:
        observed = kernels.normalize(raw, bg, hi)
    span = np.maximum(hi - bg, 1e-6)
    barcodes = np.maximum((np.asarray(means, np.float64) * (hi - lo) + (lo - bg)) / span, 0.0)
    return observed, barcodes


def _local_neuron_ids(neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(local, original)``: consecutive uint32 ids 1..n of a block's neurons, and ``original[local]`` = neuron id."""
    import fastremap

    local, mapping = fastremap.renumber(neurons, preserve_zero=True, in_place=False)
    local = local.astype(np.uint32, copy=False)
    original = np.zeros(int(local.max(initial=0)) + 1, np.uint64)     # local id -> neuron id (0 -> 0)
    for neuron, index in mapping.items():
        original[index] = neuron
    return local, original


def _refine_neuron_contacts(local: np.ndarray, original: np.ndarray, volume_path: str, plan: FragmentPlan,
                            neuron_barcodes_path: str, block: Block, device: str) -> np.ndarray:
    """The final contact pass on the local neuron ids of a read region (host uint32 in and out).

    ``local`` holds ids 1..n (0: none) of neurons ``original[1:]`` (see :func:`_local_neuron_ids`).
    """
    if len(original) < 2:
        return local
    means = np.load(neuron_barcodes_path)
    ids, vectors = means["ids"].astype(np.uint64), means["means"].astype(np.float64)
    order = np.argsort(ids)
    ids, vectors = ids[order], vectors[order]
    present = original[1:]
    pos = np.minimum(np.searchsorted(ids, present), max(len(ids) - 1, 0))
    if len(ids) == 0 or not np.array_equal(ids[pos], present):
        lost = present[(ids[pos] != present) if len(ids) else slice(None)][:5].tolist()
        raise RuntimeError(f"{block}: neurons {lost} have no mean barcode in {neuron_barcodes_path}")
    directions = vectors[pos]
    raw = Volume.open(volume_path, mode="r").read(block.read, list(plan.barcodes))
    if plan.contact_method == "unmix":
        observed, fallback = unmixing_inputs(to_device(raw, device), directions, plan)
        del raw                                 # the rounds need only the normalised observation
        return to_host(unmix_rounds(to_device(local, device), observed, fallback, plan.unmix_settings()))
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    bc = contact_barcodes(to_device(raw, device), plan)
    del raw
    return to_host(refine_contacts(to_device(local, device), bc, directions.astype(np.float32),
                                   np.arange(1, len(present) + 1)))
