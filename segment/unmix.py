"""Deciding contact voxels by unmixing neuron abundances under the point-spread function.

Two touching neurites blur into each other: a voxel at their contact sees
both barcodes. Deconvolving each barcode channel on its own and comparing the
voxel's direction with the neurons' barcodes (the cosine pass of
:func:`segment.codebook.refine_contacts`) leaves the voxel to whichever
neuron's deconvolved signal happens to dominate there. This module solves the
joint problem instead: every channel ``c`` is modelled as

    observed_c  ~  PSF * ( sum_n  M[n, c] * u_n )  +  beta

with ``M[n]`` the known barcode of neuron ``n`` and ``u_n >= 0`` its unknown
abundance, allowed only within ``radius`` voxels of where the current labels
put ``n`` (so a voxel chooses among a few nearby neurons, never among all).
Richardson-Lucy iterations on the abundances (multiplicative, so they stay
non-negative and zero outside their support; Nesterov momentum as in
:func:`segment.kernels.deconvolve`) fit the model; a contact voxel then takes
the neuron of largest abundance, optionally after each neuron's abundance is
divided by a power of its brightness and lightly blurred
(:func:`smooth_abundances`), and an unlabelled voxel with enough abundance
may join its largest neuron. The eight channels constrain the two or
three abundances of a contact voxel far better than they constrain eight
separately deconvolved channels.

Each iteration blurs the model by the PSF, and the ratio of observation to
model back onto the abundances by the *back projector*. Classic
Richardson-Lucy uses the PSF for both; a narrower back projector (Guo et al.
2020, Nat. Biotechnol. 38:1337, "unmatched back projector") takes larger
steps toward the same kind of fit. The pipeline's default, a Gaussian of 2/3
of the PSF's sigma (never below one voxel) with 40 iterations, segments the
sample seeds better than the matched one with 60
(``segment.SegmentConfig.contact_unmix_back_projector``).

The abundances are stored sparsely: each voxel holds at most
``max_candidates`` (neuron, abundance) slots::

    labels (radius 1)      slots of voxel x
    . . A A A              slot 0: A   u_A(x)
    . . A A A              slot 1: B   u_B(x)
    B B x A A              slot 2: 0   (empty)
    B B B . .              slot 3: 0   (empty)

One iteration costs two Gaussian blurs per channel (as one Richardson-Lucy
iteration of the channels does) plus two passes over the slots. The passes
are array operations written once with ``xp`` (engine "xp"); by default
(engine "auto") fused kernels do the same arithmetic (tested equal, bit for
bit) several times faster: CUDA kernels (:mod:`segment.unmix_gpu`) for the
two slot passes on CuPy arrays; on the host, when numba is installed, the
whole iteration besides the blurs in one pass (the update with the next
iteration's extrapolation and mixture), the ratio taken inside the first blur.

The host fit keeps the occupied slots as a list of entries, sorted by voxel,
and drops the entries whose abundance has reached zero: the momentum step
clips at zero, and a zero abundance stays zero in every later iteration
(the update multiplies it). On the sample a quarter of the entries are zero
after 6 iterations and 85 % after 60, so the slot passes shrink as the fit
goes. Its channel buffers are (z, y, x, c): a voxel's channels are one
contiguous row for the slot passes, and one numba pass blurs all c channels
of the stack (:mod:`segment.blur`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from pipeline import array_module, to_host
from pipeline.filters import gaussian, maximum
from pipeline.jit import numba_kernels

from .blur import blur_channels_last, blur_ratio_channels_last
from .codebook import contact_voxels
from .kernels import PSF_TRUNCATE
from .unmix_gpu import MAX_GROW_SLOTS, device_grow, device_slot_passes, smooth_by_sorted_entries

__all__ = ["UnmixSettings", "candidate_slots", "core_barcodes", "smooth_abundances", "unmix_abundances",
           "unmix_contacts", "unmix_rounds"]

log = logging.getLogger(__name__)


#: Voxels per tile of the host ``mix`` and ``update`` kernels of :func:`_slot_passes`: their
#: (voxel, channel) buffers stay in L1 cache.
STEP_TILE = 256

#: The host fit drops its zero entries (:func:`_fit_on_host`) once they are this fraction of them.
COMPACT_FRACTION = 0.25


def _host_kernels_for(build, engine: str, xp, caller: str):
    """The numba kernels ``build()`` gives for ``engine`` "auto" on host arrays; None for "xp" or CuPy."""
    if engine not in ("auto", "xp"):
        raise ValueError(f"unknown {caller} engine {engine!r}: use 'auto' or 'xp'")
    return build() if (engine == "auto" and xp is np) else None


def _device_kernels_for(engine: str, xp) -> bool:
    """Whether ``engine`` runs the CUDA kernels of :mod:`segment.unmix_gpu`: "auto" on CuPy arrays."""
    return engine == "auto" and xp is not np


@numba_kernels
def _host_kernels(numba):
    """Numba kernels of the fit's dense passes on the host, or None without numba.

    ``(mix, update)``: the two slot passes of :func:`_slot_passes` on
    (slots, voxels) planes (each fuses what the ``xp`` path does in
    2 x slots x channels array operations into one pass over the voxels,
    reading the small barcode table from cache instead of gathered weight
    arrays). The host fit's ratio is taken inside its blur
    (:func:`segment.blur.blur_ratio_channels_last`).
    """

    @numba.njit(cache=True, nogil=True)
    def mix(slots, u, table, out):
        # Tile by tile through a (voxel, channel) buffer: walking all the slot and channel planes
        # at once, ~26 streams whose strides are multiples of 64 KiB for blocks like 64 x 144 x 144,
        # evicted each other's cache lines (14x slower in a run, session 13).
        n_slots, n_vox = slots.shape
        n_ch = table.shape[1]
        mixture = np.empty((STEP_TILE, n_ch), np.float32)
        for first in range(0, n_vox, STEP_TILE):
            n = min(STEP_TILE, n_vox - first)
            mixture[:n] = 0.0
            for k in range(n_slots):
                for j in range(n):
                    label = slots[k, first + j]
                    if label != 0:
                        a = u[k, first + j]
                        for ch in range(n_ch):
                            mixture[j, ch] += table[label, ch] * a
            for ch in range(n_ch):
                for j in range(n):
                    out[ch, first + j] = mixture[j, ch]

    @numba.njit(cache=True, nogil=True)
    def update(slots, start, table, ratio, out):
        # ``out`` may be ``start``: each entry is read before it is written
        n_slots, n_vox = slots.shape
        n_ch = table.shape[1]
        scale = np.float32(1.0 / n_ch)
        ratios = np.empty((STEP_TILE, n_ch), np.float32)
        for first in range(0, n_vox, STEP_TILE):
            n = min(STEP_TILE, n_vox - first)
            for ch in range(n_ch):
                for j in range(n):
                    ratios[j, ch] = ratio[ch, first + j]
            for k in range(n_slots):
                for j in range(n):
                    label = slots[k, first + j]
                    if label == 0:
                        out[k, first + j] = 0.0
                    else:
                        acc = np.float32(0.0)
                        for ch in range(n_ch):
                            acc += table[label, ch] * ratios[j, ch]
                        out[k, first + j] = acc * scale * start[k, first + j]

    return (mix, update)



@numba_kernels
def _host_entry_kernels(numba):
    """Numba kernels of the host fit on its entry list (:func:`_fit_on_host`), or None without numba.

    The entries are the occupied slots, voxel by voxel (and slot by slot
    within a voxel), stored as a compressed row list: voxel ``v``'s entries
    are ``offsets[v]:offsets[v + 1]``; each has its ``slot`` (its neuron is
    ``slots[slot, v]``, read from the slot planes) and one abundance per
    buffer of the fit. Per entry that is 9 bytes instead of 15 with a voxel
    index and a label of its own, which matters because at the start of a
    fit there are about four entries per voxel of the read region. The
    channel buffers are (voxels, c): a voxel's channels are one row.
    Returns ``(gather, mix, step, step8, update, compact, scatter)``; ``step8`` is ``step`` for
    exactly eight channels.
    """

    @numba.njit(cache=True, nogil=True)
    def gather(slots, index_dtype):
        # (slots, voxels) planes -> (offsets, slot, value), each abundance starting at 1
        n_slots, n_vox = slots.shape
        total = 0
        for k in range(n_slots):
            for v in range(n_vox):
                if slots[k, v] != 0:
                    total += 1
        offsets = np.empty(n_vox + 1, index_dtype)
        slot = np.empty(total, np.uint8)
        value = np.empty(total, np.float32)
        e = 0
        for v in range(n_vox):
            offsets[v] = e
            for k in range(n_slots):
                if slots[k, v] != 0:
                    slot[e], value[e] = k, 1.0
                    e += 1
        offsets[n_vox] = e
        return offsets, slot, value

    @numba.njit(cache=True, nogil=True)
    def mix(offsets, slot, slots, value, table, out):
        # out[v] := sum over v's entries of table[label] * value, in slot order
        n_ch = table.shape[1]
        for v in range(out.shape[0]):
            for ch in range(n_ch):
                out[v, ch] = 0.0
            for e in range(offsets[v], offsets[v + 1]):
                lab, a = slots[slot[e], v], value[e]
                for ch in range(n_ch):
                    out[v, ch] += table[lab, ch] * a

    @numba.njit(cache=True, nogil=True)
    def step(offsets, slot, slots, start, u, table, ratio_mixed, factor):
        # One iteration's update followed by the next iteration's extrapolation and mixture:
        # start := the new estimate, u := the next start (from the new estimate and u, the one
        # before), ratio_mixed (rows: voxels) := the next start's mixture, 0 in voxels without
        # entries. Returns how many entries are now zero in both start and u.
        n_vox, n_ch = ratio_mixed.shape
        scale = np.float32(1.0 / n_ch)
        mixture = np.empty(n_ch, np.float32)
        zero = 0
        for v in range(n_vox):
            mixture[:] = 0.0
            for e in range(offsets[v], offsets[v + 1]):
                lab = slots[slot[e], v]
                acc = np.float32(0.0)
                for ch in range(n_ch):
                    acc += table[lab, ch] * ratio_mixed[v, ch]
                new = acc * scale * start[e]
                following = (new - u[e]) * factor + new
                # branch-free (a select and a sum): whether an entry dies is data, not a pattern
                following = following if following > 0.0 else np.float32(0.0)
                zero += (following == 0.0) & (new == 0.0)
                start[e] = new
                u[e] = following
                for ch in range(n_ch):
                    mixture[ch] += table[lab, ch] * following
            for ch in range(n_ch):
                ratio_mixed[v, ch] = mixture[ch]
        return zero

    @numba.njit(cache=True, nogil=True)
    def step8(offsets, slot, slots, start, u, table, ratio_mixed, factor):
        # ``step`` for eight channels (the sample's barcodes, and many panels'): a voxel's ratio and
        # mixture stay in registers instead of a scratch row reloaded and stored for every entry,
        # ~20 % faster (BENCHMARKS.md "Session 21"). The same operations in the same order: the same
        # bits (0 + a == a for the first product, as all terms are >= 0).
        scale = np.float32(1.0 / 8)
        zero = 0
        for v in range(ratio_mixed.shape[0]):
            r = ratio_mixed[v]
            r0, r1, r2, r3, r4, r5, r6, r7 = r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
            m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(0.0)
            for e in range(offsets[v], offsets[v + 1]):
                t = table[slots[slot[e], v]]
                acc = t[0] * r0 + t[1] * r1 + t[2] * r2 + t[3] * r3 + t[4] * r4 + t[5] * r5 + t[6] * r6 + t[7] * r7
                new = acc * scale * start[e]
                following = (new - u[e]) * factor + new
                following = following if following > 0.0 else np.float32(0.0)
                zero += (following == 0.0) & (new == 0.0)
                start[e] = new
                u[e] = following
                m0 += t[0] * following
                m1 += t[1] * following
                m2 += t[2] * following
                m3 += t[3] * following
                m4 += t[4] * following
                m5 += t[5] * following
                m6 += t[6] * following
                m7 += t[7] * following
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] = m0, m1, m2, m3, m4, m5, m6, m7
        return zero

    @numba.njit(cache=True, nogil=True)
    def update(offsets, slot, slots, start, table, ratio):
        # the last iteration's update alone, in place
        n_ch = table.shape[1]
        scale = np.float32(1.0 / n_ch)
        for v in range(ratio.shape[0]):
            for e in range(offsets[v], offsets[v + 1]):
                lab = slots[slot[e], v]
                acc = np.float32(0.0)
                for ch in range(n_ch):
                    acc += table[lab, ch] * ratio[v, ch]
                start[e] = acc * scale * start[e]

    @numba.njit(cache=True, nogil=True)
    def compact(offsets, slot, start, u):
        # keep the entries not zero in both buffers, in order (offsets rewritten); returns how many
        kept = 0
        first = offsets[0]
        for v in range(offsets.shape[0] - 1):
            last = offsets[v + 1]
            offsets[v] = kept
            for e in range(first, last):
                if start[e] != 0.0 or u[e] != 0.0:
                    slot[kept], start[kept], u[kept] = slot[e], start[e], u[e]
                    kept += 1
            first = last
        offsets[offsets.shape[0] - 1] = kept
        return kept

    @numba.njit(cache=True, nogil=True)
    def scatter(offsets, slot, value, out):
        for v in range(offsets.shape[0] - 1):
            for e in range(offsets[v], offsets[v + 1]):
                out[slot[e], v] = value[e]

    return (gather, mix, step, step8, update, compact, scatter)


@numba_kernels
def _host_grow_kernel(numba):
    """Numba kernel of one axis of :func:`candidate_slots` on the host, or None without numba.

    ``grow(slots, out, radius, axis)`` writes into ``out`` (shape of ``slots``,
    (s, z, y, x)) each voxel's own slots followed by the new labels of its
    neighbours along ``axis`` (offsets ``-radius..radius`` in order, then
    slot by slot), as the array path does, and returns the mask of voxels
    that ran out of slots. Slots are packed (a voxel's labels come first),
    as :func:`candidate_slots` makes them.
    """

    @numba.njit(cache=True, nogil=True)
    def grow(slots, out, radius, axis):
        n_slots, nz, ny, nx = slots.shape
        size = (nz, ny, nx)[axis]
        overflow = np.zeros((nz, ny, nx), np.bool_)
        own = np.empty(n_slots, slots.dtype)
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    # a voxel's labels fill its first slots (packed): count them
                    n = 0
                    for k in range(n_slots):
                        own[k] = slots[k, z, y, x]
                        if own[k] != 0:
                            n = k + 1
                    position = (z, y, x)[axis]
                    for offset in range(-radius, radius + 1):
                        # the label that a shift by ``offset`` brings here: the source voxel's
                        source = position - offset
                        if offset == 0 or source < 0 or source >= size:
                            continue
                        sz, sy, sx = z, y, x
                        if axis == 0:
                            sz = source
                        elif axis == 1:
                            sy = source
                        else:
                            sx = source
                        for k in range(n_slots):
                            value = slots[k, sz, sy, sx]
                            if value == 0:
                                break
                            seen = False
                            for j in range(n):
                                if own[j] == value:
                                    seen = True
                                    break
                            if seen:
                                continue
                            if n < n_slots:
                                own[n] = value
                                n += 1
                            else:
                                overflow[z, y, x] = True
                    for k in range(n_slots):
                        out[k, z, y, x] = own[k]
        return overflow

    return grow




@numba_kernels
def _host_smooth_kernels(numba):
    """Numba ``(bucket, gather, scatter)``: each neuron's slot entries, and its abundances in a box.

    ``bucket(slots, n, reach, index_dtype)`` sorts the (slot, voxel) entries of ``slots``
    (s, z, y, x) by neuron ``i`` in 1..n: ``entries[starts[i]:starts[i + 1]]``
    are the flat indices ``k * voxels + voxel`` of its slots and ``offsets``
    the same entries' flat indices in its box, which is its bounding box grown
    by ``reach`` (z, y, x) and clipped to the block (``corners[i]`` to
    ``stops[i]``, exclusive). ``gather(entries, offsets, u, dense)`` writes a
    neuron's abundances into its (zeroed) flat box, ``scatter(entries,
    offsets, values, out)`` writes them back. A neuron holds at most one slot
    of a voxel, so both equal the array path's masked sum and ``where``; each
    visits only the neuron's own entries, where a scan of its box would visit
    every slot of every voxel in it (the boxes of a demo block sum to 21
    times the block). Both index arrays are ``index_dtype``: int32 unless
    ``slots`` has 2**31 elements, so 8 bytes per entry where int64 took 16
    (about four entries per voxel of a read region).
    """

    @numba.njit(cache=True, nogil=True)
    def bucket(slots, n, reach, index_dtype):
        n_slots, dz, dy, dx = slots.shape
        counts = np.zeros(n + 1, np.int64)
        lo = np.full((n + 1, 3), np.iinfo(np.int64).max, np.int64)
        hi = np.full((n + 1, 3), -1, np.int64)
        for k in range(n_slots):
            for z in range(dz):
                for y in range(dy):
                    for x in range(dx):
                        label = slots[k, z, y, x]
                        if label != 0:
                            counts[label] += 1
                            lo[label, 0], hi[label, 0] = min(lo[label, 0], z), max(hi[label, 0], z)
                            lo[label, 1], hi[label, 1] = min(lo[label, 1], y), max(hi[label, 1], y)
                            lo[label, 2], hi[label, 2] = min(lo[label, 2], x), max(hi[label, 2], x)
        starts = np.zeros(n + 2, np.int64)
        for i in range(1, n + 1):
            starts[i + 1] = starts[i] + counts[i]
        corners = np.zeros((n + 1, 3), np.int64)
        stops = np.zeros((n + 1, 3), np.int64)
        limits = (dz, dy, dx)
        for i in range(1, n + 1):
            if counts[i]:
                for a in range(3):
                    corners[i, a] = max(lo[i, a] - reach[a], 0)
                    stops[i, a] = min(hi[i, a] + 1 + reach[a], limits[a])
        entries = np.empty(starts[n + 1], index_dtype)
        offsets = np.empty(starts[n + 1], index_dtype)
        fill = starts.copy()
        voxels = dz * dy * dx
        for k in range(n_slots):
            v = 0
            for z in range(dz):
                for y in range(dy):
                    for x in range(dx):
                        label = slots[k, z, y, x]
                        if label != 0:
                            j = fill[label]
                            fill[label] += 1
                            entries[j] = k * voxels + v
                            by, bx = stops[label, 1] - corners[label, 1], stops[label, 2] - corners[label, 2]
                            offsets[j] = ((z - corners[label, 0]) * by + (y - corners[label, 1])) * bx \
                                + (x - corners[label, 2])
                        v += 1
        return starts, entries, offsets, corners, stops

    @numba.njit(cache=True, nogil=True)
    def gather(entries, offsets, u, dense):
        for j in range(entries.size):
            dense[offsets[j]] = u[entries[j]]

    @numba.njit(cache=True, nogil=True)
    def scatter(entries, offsets, values, out):
        for j in range(entries.size):
            out[entries[j]] = values[offsets[j]]

    return (bucket, gather, scatter)


def _sigma3(value, name: str) -> tuple:
    """``value`` as three sigmas (z, y, x) >= 0, or a ValueError naming ``name``."""
    sigma = tuple(float(v) for v in value)
    if len(sigma) != 3 or not all(s >= 0 for s in sigma):
        raise ValueError(f"unmix_abundances: {name} must be three sigmas >= 0 (z, y, x), got {list(value)}")
    return sigma


def _index_dtype(slots):
    """The entry lists' index type for ``slots`` (s, ...): int32 unless it has 2**31 elements."""
    return np.int32 if slots.size < np.iinfo(np.int32).max else np.int64


def _shifted(a, offset: int, axis: int):
    """``a`` shifted by ``offset`` along spatial ``axis`` (the last three), zero-filled."""
    xp = array_module(a)
    out = xp.zeros_like(a)
    ax = a.ndim - 3 + axis
    n = a.shape[ax]
    if abs(offset) >= n:
        return out
    dst = [slice(None)] * a.ndim
    src = [slice(None)] * a.ndim
    if offset > 0:
        dst[ax], src[ax] = slice(offset, None), slice(None, n - offset)
    else:
        dst[ax], src[ax] = slice(None, n + offset), slice(-offset, None)
    out[tuple(dst)] = a[tuple(src)]
    return out


def candidate_slots(labels, radius: int, max_candidates: int = 4, *, engine: str = "auto"):
    """The distinct non-zero labels within ``radius`` (a box, per axis) of every voxel.

    Parameters
    ----------
    labels : array (z, y, x) of unsigned int
    radius : int
        Half-width of the box, in voxels (0: the voxel's own label only).
    max_candidates : int
        Slots per voxel. A voxel with more labels around it keeps the first
        ones found (its own label first); the overflow is counted.
    engine : {"auto", "xp"}
        "auto": a fused kernel per axis (the same slots in the same order):
        numba for host arrays when numba is installed, CUDA for CuPy arrays
        (up to ``MAX_GROW_SLOTS`` slots); "xp": array operations only.

    Returns
    -------
    slots : array (max_candidates, z, y, x), labels' dtype
        0 marks an empty slot; the non-zero entries of a voxel are distinct.
    overflow : int
        Voxels that had more distinct labels nearby than slots.
    """
    xp = array_module(labels)
    if labels.ndim != 3:
        raise ValueError(f"candidate_slots expects a (z, y, x) label array, got shape {labels.shape}")
    if radius < 0 or max_candidates < 1:
        raise ValueError(f"candidate_slots needs radius >= 0 and max_candidates >= 1, "
                         f"got {radius} and {max_candidates}")
    slots = xp.zeros((max_candidates,) + labels.shape, dtype=labels.dtype)
    slots[0] = labels
    # The union over a box is separable: grow the sets along z, then y, then x.
    grow = _host_kernels_for(_host_grow_kernel, engine, xp, "candidate_slots")
    if _device_kernels_for(engine, xp) and max_candidates <= MAX_GROW_SLOTS:
        return device_grow(slots, int(radius))
    if grow is not None:
        overflow = np.zeros(labels.shape, dtype=bool)
        grown = np.empty_like(slots)
        for axis in range(3):
            overflow |= grow(slots, grown, int(radius), axis)
            slots, grown = grown, slots
        return slots, int(overflow.sum())
    overflow = xp.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        grown = slots.copy()
        for offset in range(-radius, radius + 1):
            if offset == 0:
                continue
            moved = _shifted(slots, offset, axis)
            for k in range(max_candidates):
                value = moved[k]
                new = value > 0
                if not bool(new.any()):
                    continue
                for j in range(max_candidates):
                    new &= grown[j] != value
                for j in range(max_candidates):
                    place = new & (grown[j] == 0)
                    grown[j][place] = value[place]
                    new &= ~place
                overflow |= new
        slots = grown
    return slots, int(overflow.sum())


def unmix_abundances(observed, slots, barcodes, *, psf_sigma: Sequence[float], iterations: int,
                     beta: float = 0.05, floor: float = 1e-3, back_projector: Sequence[float] | None = None,
                     engine: str = "auto"):
    """Fit each voxel's slot abundances to ``observed`` by Richardson-Lucy iterations.

    Parameters
    ----------
    observed : array (c, z, y, x), float
        Barcode channels normalised from their background (0) to their high
        level (1), non-negative. The host fit reads each voxel's channels as
        one row: a host array whose memory is channels-last (a
        ``np.moveaxis`` view of a (z, y, x, c) array, as the pipeline passes)
        is used as is, any other is copied once.
    slots : array (s, z, y, x) of int
        Candidate neuron (row of ``barcodes``) per slot; 0 is an empty slot.
    barcodes : array (n + 1, c)
        Barcode of each neuron in ``observed``'s units (row 0, unused, for
        the empty slot). Only directions matter: each row is rescaled to
        sum to ``c``.
    psf_sigma : (z, y, x)
        Standard deviation of the Gaussian point-spread function, in voxels.
    iterations : int
    beta : float
        Constant added to both the observation and the model: Richardson-Lucy
        then leaves voxels with little signal alone instead of dividing noise
        by a near-zero model.
    floor : float
        Lower bound of the model (guards the division).
    back_projector : (z, y, x) or None
        Standard deviation, in voxels, of the Gaussian that blurs each
        iteration's ratio back onto the abundances. None: ``psf_sigma``, the
        classic (matched) Richardson-Lucy. A narrower one, an unmatched back
        projector (Guo et al. 2020, Nat. Biotechnol. 38:1337), takes larger
        steps: on the sample, 2/3 of the PSF's sigma reaches a better
        segmentation in 40 iterations than the matched one in 60
        (``segment.SegmentConfig.contact_unmix_back_projector``).
    engine : {"auto", "xp"}
        "auto": fused kernels, numba for host arrays when numba is
        installed, CUDA for CuPy arrays; "xp": array operations only.

    Returns
    -------
    array (s, z, y, x) of float32
        The abundances (0 in empty slots).
    """
    xp = array_module(observed)
    if observed.ndim != 4 or slots.ndim != 4 or observed.shape[1:] != slots.shape[1:]:
        raise ValueError(f"unmix_abundances: observed {observed.shape} and slots {slots.shape} "
                         "must be (c, z, y, x) and (s, z, y, x) of one spatial shape")
    c = observed.shape[0]
    m = np.asarray(barcodes, dtype=np.float64).reshape(-1, c)
    if m.shape[0] <= int(slots.max()):
        raise ValueError(f"unmix_abundances: slots name neuron {int(slots.max())} "
                         f"but only {m.shape[0] - 1} barcodes were given")
    m = np.maximum(m, 0.0)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12) * c
    m[0] = 0.0
    table = xp.asarray(m.astype(np.float32))
    sigma = _sigma3(psf_sigma, "psf_sigma")
    back = sigma if back_projector is None else _sigma3(back_projector, "back_projector")
    beta_, floor_ = np.float32(beta), np.float32(floor)
    obs = observed.astype(xp.float32, copy=False)
    n_slots = slots.shape[0]
    occupied = slots > 0
    used = [k for k in range(n_slots) if bool(occupied[k].any())]
    if len(used) < n_slots:             # slots empty everywhere cost every iteration: drop them
        slots, occupied = slots[used], occupied[used]
    slots = xp.ascontiguousarray(slots)
    host_kernels = _host_kernels_for(_host_kernels, engine, xp, "unmixing")
    if host_kernels is not None:
        # the entry list starts at 1 in every occupied slot: no dense start planes beside it
        del occupied
        u = _fit_on_host(obs, slots, table, (sigma, back), int(iterations), beta_, floor_)
    else:
        u = xp.ascontiguousarray(occupied, dtype=xp.float32)
        del occupied
        u = _fit_with_slot_passes(obs, slots, u, table, (sigma, back), int(iterations), beta_, floor_, engine)
    if len(used) == n_slots:
        return u
    out = xp.zeros((n_slots,) + observed.shape[1:], dtype=xp.float32)
    out[used] = u
    return out


def _blur_channels(images, sigma, out) -> None:
    """The PSF blur of each channel of ``images`` (c, z, y, x) into ``out`` (one Gaussian per channel).

    On the host the channels are blurred as the host fit blurs its (z, y, x, c)
    buffers (:func:`_blur_channels_last`), so that the array loop and the
    fused one agree bit for bit: the loop's buffers are channels-last memory
    too, and the numba pass sums a voxel's channels side by side.
    """
    if array_module(images) is np:
        _blur_channels_last(np.moveaxis(images, 0, -1), sigma, np.moveaxis(out, 0, -1))
        return
    for ch in range(images.shape[0]):
        gaussian(images[ch], sigma, truncate=PSF_TRUNCATE, mode="reflect", output=out[ch])


def _blur_channels_last(images, sigma, out) -> None:
    """The PSF blur of each channel of host ``images`` (z, y, x, c) into ``out`` (:mod:`segment.blur`).

    ``out`` may be ``images`` itself: the blur runs in place.
    """
    blur_channels_last(images, sigma, truncate=PSF_TRUNCATE, output=out)


def _fit_with_slot_passes(obs, slots, u, table, sigmas, iterations: int, beta_, floor_, engine: str):
    """The Richardson-Lucy loop of :func:`unmix_abundances` as array operations around the two slot passes.

    The reference loop: the "xp" engine, and CuPy arrays (whose slot passes
    are the fused CUDA kernels under "auto"). ``sigmas`` are the PSF's and
    the back projector's.
    """
    sigma, back = sigmas
    xp = array_module(obs)
    c = obs.shape[0]
    mix, update = _slot_passes(slots, table, c, engine)
    # Two abundance buffers: the estimate ``u`` and ``previous``, whose buffer takes the next
    # iteration's start (Nesterov's extrapolation) and then, updated in place, its result.
    # All C-contiguous: the fused kernels index them flat.
    previous = None
    if xp is np:                        # channels-last memory, which the host blurs take as is (_blur_channels)
        mixed, model = (np.moveaxis(np.empty(obs.shape[1:] + (c,), np.float32), -1, 0) for _ in range(2))
    else:
        mixed, model = xp.empty(obs.shape, xp.float32), xp.empty(obs.shape, xp.float32)
    ratio = mixed                       # the mixture is spent once blurred: its buffer takes the ratio
    for i in range(int(iterations)):
        if previous is None:
            start = u.copy()
        else:
            start = previous
            xp.subtract(u, previous, out=start)
            start *= np.float32((i - 1) / (i + 2))
            start += u
            xp.maximum(start, 0.0, out=start)
        mix(start, mixed)
        _blur_channels(mixed, sigma, model)
        model += beta_
        xp.maximum(model, floor_, out=model)
        # (observation + beta) / model, built in the spent mixture's buffer: no copy of the observation
        xp.add(obs, beta_, out=mixed)
        xp.divide(mixed, model, out=model)
        _blur_channels(model, back, ratio)
        update(start, ratio, start)
        previous, u = u, start
    return u


def _fit_on_host(obs, slots, table, sigmas, iterations: int, beta_, floor_):
    """The loop of :func:`_fit_with_slot_passes` with its arithmetic fused into numba kernels.

    Same float32 operations in the same order, so the same bits. Per
    iteration the array loop makes nine passes over the voxels besides the
    blurs (extrapolation 4, model and ratio 4, update 1) and the mixture's
    one; here the first blur takes the ratio of each row as it finishes it
    (:func:`segment.blur.blur_ratio_channels_last`), and ``step`` does the
    update, the next extrapolation and the next mixture in one pass.

    ``step`` walks the entry list of :func:`_host_entry_kernels` (the occupied
    slots, by voxel), not the slot planes, and the list sheds its zeros. An
    entry zero in both buffers stays zero: its next estimate is the update
    times its start, 0, and its next start, the estimate extrapolated and
    clipped, is ``max(0 + f * (0 - 0), 0)``; its term in a mixture, +0.0,
    changes no sum of non-negative terms. ``compact`` drops such entries once
    they are :data:`COMPACT_FRACTION` of the list.

    ``sigmas`` are the PSF's and the back projector's.
    """
    sigma, back = sigmas
    gather, mix, step, step8, update, compact, scatter = _host_entry_kernels()
    c = obs.shape[0]
    if c == 8:
        step = step8
    flat_slots = slots.reshape(slots.shape[0], -1)
    index = _index_dtype(flat_slots)
    # ``start`` holds each iteration's start, then (updated in place) its result; ``previous`` the
    # estimate before it, then the next iteration's start (one value per entry). One channel
    # buffer, ``work``, holds the mixture, the model (the mixture blurred in place), the ratio
    # and the blurred ratio in turn: the blurs give the same bits in place (pipeline.filters
    # filters through scratch tiles), and each buffer is 4 x channels bytes per voxel of the
    # read region, the fit's largest allocation after its entries.
    offsets, slot, start = gather(flat_slots, index)
    previous = start.copy()
    obs_last = np.ascontiguousarray(np.moveaxis(obs, 0, -1), dtype=np.float32)
    work = np.empty(obs_last.shape, np.float32)
    host_table = np.ascontiguousarray(table, dtype=np.float32)

    def rows(a):                         # (z, y, x, c) C-contiguous -> (voxels, c), a view
        return a.reshape(-1, c)

    n = slot.shape[0]
    if iterations > 0:
        mix(offsets, slot, flat_slots, start, host_table, rows(work))
    for i in range(iterations):
        blur_ratio_channels_last(work, sigma, truncate=PSF_TRUNCATE, observed=obs_last, beta=beta_, floor=floor_)
        _blur_channels_last(work, back, work)
        if i + 1 == iterations:
            update(offsets, slot, flat_slots, start, host_table, rows(work))
            break
        # iteration i + 1's Nesterov factor, (j - 1) / (j + 2) with j = i + 1
        zeros = step(offsets, slot, flat_slots, start, previous, host_table, rows(work), np.float32(i / (i + 3)))
        start, previous = previous, start
        if zeros > COMPACT_FRACTION * n:
            n = compact(offsets, slot, start, previous)
            if 2 * n <= slot.shape[0]:       # give the memory back, one array at a time (a lower peak)
                slot = slot[:n].copy()
                start = start[:n].copy()
                previous = previous[:n].copy()
    del work, previous
    out = np.zeros(flat_slots.shape, np.float32)
    scatter(offsets, slot, start, out)
    return out.reshape(slots.shape)


def _slot_passes(slots, table, c: int, engine: str):
    """The two per-iteration slot passes, ``mix(start, mixed)`` and ``update(start, ratio, step)``.

    ``mix`` writes each channel's noise-free image before the blur,
    ``sum_k table[slots[k], ch] * start[k]``; ``update`` writes the
    Richardson-Lucy step ``start[k] * mean_ch(table[slots[k], ch] * ratio[ch])``
    (0 in empty slots), and ``step`` may be ``start`` itself (each entry is
    read before it is written). ``engine`` "auto" uses the numba kernels on host
    arrays when numba is installed and the CUDA kernels on CuPy arrays, "xp"
    the array operations (any backend).
    """
    xp = array_module(slots)
    kernels = _host_kernels_for(_host_kernels, engine, xp, "unmixing")
    if _device_kernels_for(engine, xp):
        return device_slot_passes(slots, table, c)
    if kernels is not None:
        mix_kernel, update_kernel = kernels
        flat_slots = np.ascontiguousarray(slots).reshape(slots.shape[0], -1)
        host_table = np.ascontiguousarray(table, dtype=np.float32)

        def mix(start, mixed):
            mix_kernel(flat_slots, start.reshape(start.shape[0], -1), host_table, mixed.reshape(c, -1))

        def update(start, ratio, step):
            update_kernel(flat_slots, start.reshape(start.shape[0], -1), host_table, ratio.reshape(c, -1),
                          step.reshape(step.shape[0], -1))

        return mix, update

    # The array path gathers each slot's barcode weight from the table in
    # every iteration, into one reused plane: stored, the weights would hold 4 * c bytes per
    # voxel and slot, more than the fit's own buffers.
    columns = [xp.ascontiguousarray(table[:, ch]) for ch in range(c)]
    occupied = slots > 0
    weight = xp.empty(slots.shape[1:], dtype=xp.float32)
    scratch = xp.empty_like(weight)
    total = xp.empty_like(weight)

    def mix(start, mixed):
        mixed[...] = 0.0
        for k in range(slots.shape[0]):
            for ch in range(c):
                xp.take(columns[ch], slots[k], out=weight)
                xp.multiply(weight, start[k], out=scratch)
                mixed[ch] += scratch

    def update(start, ratio, step):
        for k in range(slots.shape[0]):
            # rows of the barcode table sum to c: the update is the weighted mean of the ratios
            total[...] = 0.0
            for ch in range(c):
                xp.take(columns[ch], slots[k], out=weight)
                xp.multiply(weight, ratio[ch], out=scratch)
                xp.add(total, scratch, out=total)
            xp.multiply(total, np.float32(1.0 / c), out=total)
            xp.multiply(total, start[k], out=step[k])
            step[k] *= occupied[k]

    return mix, update


def smooth_abundances(u, slots, sigma: Sequence[float], *, truncate: float = 4.0, out=None, engine: str = "auto"):
    """Each neuron's abundance blurred by a Gaussian of ``sigma`` voxels, read back into its slots.

    A voxel's abundances carry the per-voxel expression noise of the
    fluorophores; its neighbours' abundances of the same neuron are nearly
    independent evidence about the same boundary. Blurring each neuron's
    abundance map a little (well below the PSF) before the argmax averages
    that noise out, as a majority vote would, but weighted by the fit and
    without eroding one-voxel-thin neurites.

    Parameters
    ----------
    u : array (s, z, y, x) of float32
        Abundances per slot (:func:`unmix_abundances`).
    slots : array (s, z, y, x) of int
        Neuron of each slot (0: empty); a neuron occupies at most one slot of a voxel.
    sigma : (z, y, x)
        Standard deviation in voxels; 0 on an axis leaves that axis alone.
    truncate : float
        Kernel half-width in standard deviations.
    out : array like ``u``, optional
        Where to write; may be ``u`` itself (each (slot, voxel) entry belongs
        to one neuron, read before it is written), which saves a copy.
    engine : {"auto", "xp"}
        "auto": blur each neuron's abundances in its own box (the same
        values), gathered and scattered by numba kernels on the host when
        numba is installed, by one sort of the slot entries on a GPU
        (:func:`segment.unmix_gpu.smooth_by_sorted_entries`); "xp": array operations
        only, each neuron in its box on the host, in the whole block on a GPU.

    Returns
    -------
    array (s, z, y, x) of float32
        0 in empty slots.
    """
    xp = array_module(u)
    if u.shape != slots.shape or u.ndim != 4:
        raise ValueError(f"smooth_abundances: u {u.shape} and slots {slots.shape} must be one (s, z, y, x) shape")
    sigma = tuple(float(v) for v in sigma)
    if len(sigma) != 3 or any(v < 0 for v in sigma):
        raise ValueError(f"smooth_abundances needs three sigmas >= 0 (z, y, x), got {sigma}")
    kernels = _host_kernels_for(_host_smooth_kernels, engine, xp, "smooth_abundances")
    if out is None:
        out = u.copy()
    elif out is not u:
        out[...] = u
    out *= slots > 0
    if not any(sigma):
        return out
    reach = [int(truncate * v + 0.5) for v in sigma]
    if kernels is not None:
        return _smooth_on_host(out, slots, sigma, reach, truncate, kernels)
    if _device_kernels_for(engine, xp):
        return smooth_by_sorted_entries(out, slots, sigma, reach, truncate)
    for neuron, box in _neuron_boxes(slots, reach):
        region = (slice(None),) + box
        mine = slots[region] == neuron
        dense = (out[region] * mine).sum(axis=0)
        blurred = gaussian(dense, sigma, truncate=truncate, mode="reflect")
        view = out[region]
        view[...] = xp.where(mine, blurred[None], view)
    return out


def _smooth_on_host(out, slots, sigma, reach, truncate: float, kernels):
    """:func:`smooth_abundances` in place on host arrays, by each neuron's slot entries (the numba kernels)."""
    bucket, gather, scatter = kernels
    work = np.ascontiguousarray(out)        # the entries index the flat (slot, voxel) raster
    flat_out = work.reshape(-1)
    index = _index_dtype(slots)
    starts, entries, offsets, corners, stops = bucket(np.ascontiguousarray(slots), int(slots.max()),
                                                      np.asarray(reach, np.int64), index)
    neurons = [i for i in range(1, len(starts) - 1) if starts[i + 1] > starts[i]]
    # every neuron's box, blurred in place (the same bits), in one buffer of the largest box (a view
    # of its start): a fresh one per neuron would be fresh memory to fault in, per neuron
    largest = max((int(np.prod(stops[i] - corners[i])) for i in neurons), default=0)
    dense_buffer = np.empty(largest, out.dtype)
    for i in neurons:
        box_shape = tuple(int(v) for v in stops[i] - corners[i])
        dense = dense_buffer[:int(np.prod(box_shape))]
        dense[...] = 0.0
        mine = slice(starts[i], starts[i + 1])
        gather(entries[mine], offsets[mine], flat_out, dense)
        gaussian(dense.reshape(box_shape), sigma, truncate=truncate, mode="reflect", output=dense.reshape(box_shape))
        scatter(entries[mine], offsets[mine], dense, flat_out)
    if work is not out:
        out[...] = work
    return out


def _neuron_boxes(slots, reach):
    """``(neuron, box)`` for every neuron in ``slots``: its bounding box grown by ``reach`` (z, y, x).

    On the host the boxes come from ``scipy.ndimage.find_objects``; on a GPU
    every box is the whole block (cheaper than copying ``slots`` to the host).
    """
    xp = array_module(slots)
    n = int(slots.max())
    shape = slots.shape[1:]
    if xp is not np:
        whole = tuple(slice(0, s) for s in shape)
        return [(k, whole) for k in range(1, n + 1)]
    from scipy import ndimage as ndi

    boxes: dict[int, list] = {}
    for k in range(slots.shape[0]):
        for index, found in enumerate(ndi.find_objects(slots[k], max_label=n)):
            if found is None:
                continue
            lo = [sl.start for sl in found]
            hi = [sl.stop for sl in found]
            box = boxes.setdefault(index + 1, [lo, hi])
            box[0] = [min(a, b) for a, b in zip(box[0], lo)]
            box[1] = [max(a, b) for a, b in zip(box[1], hi)]
    return [(neuron, tuple(slice(max(a - r, 0), min(b + r, s)) for a, b, r, s in zip(lo, hi, reach, shape)))
            for neuron, (lo, hi) in sorted(boxes.items())]


def unmix_contacts(labels, observed, barcodes, *, psf_sigma: Sequence[float], iterations: int,
                   radius: int = 2, beta: float = 0.05, max_candidates: int = 6,
                   smoothing: Sequence[float] | None = None, grow_threshold: float | None = None,
                   brightness_power: float = 0.0, back_projector: Sequence[float] | None = None,
                   engine: str = "auto"):
    """Give every labelled voxel that touches another label the neuron of largest fitted abundance.

    Parameters
    ----------
    labels : array (z, y, x) of uint32
        Consecutive neuron ids 1..n (0: none).
    observed : array (c, z, y, x)
        Barcode channels normalised from their background level.
    barcodes : array (n, c)
        Barcode of neuron ``i + 1`` in row ``i``, in ``observed``'s units.
    psf_sigma, iterations, beta, back_projector
        See :func:`unmix_abundances`.
    radius : int
        How far (voxels, per axis) a neuron's abundance may reach beyond its
        current label: the candidates of a voxel are the labels within it.
    max_candidates : int
        Neurons a voxel may choose among.
    smoothing : (z, y, x) or None
        Blur each neuron's abundance by this sigma (voxels) before deciding
        (:func:`smooth_abundances`); None decides on the raw fit.
    grow_threshold : float or None
        An unlabelled voxel within ``radius`` of a neuron whose (smoothed)
        abundances sum to more than this joins the neuron of largest
        abundance: the fit finds dim neurite voxels the foreground threshold
        missed. None: unlabelled voxels stay unlabelled.
    brightness_power : float
        The fit's abundance of a neuron is its occupancy of the voxel times
        its brightness (the mean of its row of ``barcodes``; the fit keeps
        only the rows' directions). The decision divides each abundance by
        the brightness to this power: 0 compares abundances, 1 occupancies.
        Rows averaged over a neuron's labelled voxels underestimate the
        brightness of thin neurites most, which is why a power between
        0 and 1 does best on the sample.
    engine : {"auto", "xp"}
        Fused kernels or array operations (:func:`candidate_slots`,
        :func:`unmix_abundances`, :func:`smooth_abundances`).

    Returns
    -------
    array (z, y, x) of uint32, on the device of ``labels``
        Only voxels with a differently labelled 26-neighbour (and, with
        ``grow_threshold``, unlabelled voxels) may change, and only to a
        candidate neuron; no labelled voxel becomes unlabelled.
    """
    xp = array_module(labels)
    lab = labels.astype(xp.uint32, copy=False)
    if lab.ndim != 3 or observed.ndim != 4 or observed.shape[1:] != lab.shape:
        raise ValueError(f"unmix_contacts: labels {labels.shape} and observed {observed.shape} "
                         "must be (z, y, x) and (c, z, y, x) of one spatial shape")
    if grow_threshold is not None and not grow_threshold > 0:
        raise ValueError(f"unmix_contacts: grow_threshold must be positive or None, got {grow_threshold}")
    if not brightness_power >= 0:
        raise ValueError(f"unmix_contacts: brightness_power must be >= 0, got {brightness_power}")
    bars = np.asarray(barcodes, dtype=np.float64).reshape(-1, observed.shape[0])
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return lab
    if bars.shape[0] < n:
        raise ValueError(f"unmix_contacts: labels go up to {n} but {bars.shape[0]} barcodes were given")
    decide = contact_voxels(lab)
    if not bool(decide.any()) and grow_threshold is None:
        return lab
    # local ids are few: 16-bit slots halve the largest work array
    compact = lab.astype(xp.uint16) if n < np.iinfo(np.uint16).max else lab
    slots, overflow = candidate_slots(compact, radius, max_candidates, engine=engine)
    if overflow:
        log.debug("unmix_contacts: %d voxels have more than %d neurons within %d voxels",
                  overflow, max_candidates, radius)
    table = np.concatenate([np.zeros((1, bars.shape[1])), bars[:n]])
    u = unmix_abundances(observed, slots, table, psf_sigma=psf_sigma, iterations=iterations, beta=beta,
                         back_projector=back_projector, engine=engine)
    if brightness_power:
        brightness = np.maximum(table, 0.0).mean(axis=1)
        brightness[0] = 1.0
        scale = xp.asarray((np.maximum(brightness, 1e-6) ** -float(brightness_power)).astype(np.float32))
        for k in range(slots.shape[0]):
            u[k] *= xp.take(scale, slots[k])
    if smoothing is not None:
        u = smooth_abundances(u, slots, smoothing, out=u, engine=engine)
    if grow_threshold is not None:
        decide |= (lab == 0) & (u.sum(axis=0) > np.float32(grow_threshold))
    where = xp.nonzero(decide)
    best = xp.argmax(u[(slice(None),) + where], axis=0)
    chosen = slots[(best,) + where].astype(xp.uint32)
    out = lab.copy()
    # a voxel whose abundances all vanished keeps its label
    keep = u[(slice(None),) + where].max(axis=0) > 0
    out[where] = xp.where(keep, chosen, lab[where]).astype(xp.uint32)
    return out


@dataclasses.dataclass(frozen=True)
class UnmixSettings:
    """How :func:`unmix_rounds` runs, in voxels (the ``contact_unmix_*`` fields of ``segment.SegmentConfig``).

    Attributes
    ----------
    psf_sigma : (z, y, x)
    iterations, radius, background
        ``iterations``, ``radius`` and ``beta`` of :func:`unmix_contacts`.
    rounds : int
    smoothing : (z, y, x) or None
    grow : float or None
        ``grow_threshold`` of the first round (later rounds never grow).
    brightness : float
        ``brightness_power``.
    back_projector : (z, y, x) or None
        ``back_projector`` of :func:`unmix_abundances`.
    engine : {"auto", "xp"}
        Fused kernels (default) or array operations; the same labels.
    early_iterations : int or None
        ``iterations`` of every round but the last, never more than
        ``iterations`` (None: ``iterations``).
    """

    psf_sigma: tuple
    iterations: int
    radius: int
    background: float
    rounds: int
    smoothing: tuple | None
    grow: float | None
    brightness: float
    back_projector: tuple | None = None
    engine: str = "auto"
    early_iterations: int | None = None

    def iterations_of(self, round_index: int) -> int:
        """The fit's iterations in round ``round_index`` (0 first) of ``rounds``."""
        if round_index + 1 < self.rounds and self.early_iterations is not None:
            return min(self.early_iterations, self.iterations)
        return self.iterations

    @classmethod
    def from_config(cls, config, voxel_size) -> "UnmixSettings":
        """The settings of a ``segment.SegmentConfig`` for a volume of ``voxel_size`` (z, y, x)."""
        return cls(psf_sigma=tuple(config.sigma_voxels(voxel_size, "psf_sigma")),
                   iterations=config.contact_unmix_iterations, radius=config.contact_unmix_radius,
                   background=config.contact_unmix_background, rounds=config.contact_unmix_rounds,
                   smoothing=config.contact_smoothing_voxels(voxel_size), grow=config.contact_unmix_grow,
                   brightness=config.contact_unmix_brightness,
                   back_projector=tuple(config.contact_back_projector_voxels(voxel_size)),
                   early_iterations=config.contact_unmix_early_iterations)


def unmix_rounds(labels, observed, fallback, settings: UnmixSettings):
    """The unmixing contact pass: ``settings.rounds`` rounds of :func:`unmix_contacts`.

    Each round decides on the labels the previous one left, with the neurons'
    barcodes taken again over their cores (:func:`core_barcodes`, falling
    back to ``fallback``): each round's labels move the cores. Only the first
    round grows into unlabelled voxels; grown labels would otherwise seed more
    growth each round, reaching ever further from the labels (and from the
    block's context). Every round but the last fits ``settings.early_iterations``
    (:meth:`UnmixSettings.iterations_of`): the next round decides again.

    Parameters
    ----------
    labels : array (z, y, x) of uint32
        Consecutive neuron ids 1..n (0: none).
    observed : array (c, z, y, x)
        Barcode channels normalised from their background level.
    fallback : array (n, c)
        Barcode of neuron ``i + 1`` in row ``i`` where its core is too small.
    settings : UnmixSettings

    Returns
    -------
    array (z, y, x) of uint32, on the device of ``labels``
    """
    refined = labels
    for round_index in range(settings.rounds):
        barcodes = core_barcodes(refined, observed, fallback)
        refined = unmix_contacts(refined, observed, barcodes, psf_sigma=settings.psf_sigma,
                                 iterations=settings.iterations_of(round_index), radius=settings.radius,
                                 beta=settings.background, smoothing=settings.smoothing,
                                 grow_threshold=settings.grow if round_index == 0 else None,
                                 brightness_power=settings.brightness, back_projector=settings.back_projector,
                                 engine=settings.engine)
    return refined


def core_barcodes(labels, observed, fallback, *, margin: int = 2, min_voxels: int = 200):
    """Mean of ``observed`` over each label's core: its voxels more than ``margin`` from any contact.

    A contact voxel's signal mixes two neurons; far from every contact a
    neuron's voxels show its own barcode (blurred only with itself). Labels
    with fewer than ``min_voxels`` core voxels take their row of ``fallback``.

    Parameters
    ----------
    labels : array (z, y, x) of uint32
        Consecutive ids 1..n (0: none).
    observed : array (c, z, y, x)
    fallback : array (n, c)
        Barcodes (row ``i`` for label ``i + 1``) in ``observed``'s units.
    margin : int
        Box half-width (voxels) kept clear of contacts.
    min_voxels : int

    Returns
    -------
    numpy array (n, c) of float64
    """
    xp = array_module(labels)
    fallback = np.asarray(fallback, dtype=np.float64)
    n, c = fallback.shape
    lab = labels.astype(xp.uint32, copy=False)
    near = maximum(contact_voxels(lab).view(xp.uint8), 2 * margin + 1) > 0
    core = (lab > 0) & ~near
    ids = lab[core].astype(xp.int64)
    counts = to_host(xp.bincount(ids, minlength=n + 1))[1:n + 1]
    sums = np.stack([to_host(xp.bincount(ids, weights=observed[ch][core].astype(xp.float64), minlength=n + 1))[1:n + 1]
                     for ch in range(c)], axis=1)
    out = fallback.copy()
    enough = counts >= min_voxels
    out[enough] = sums[enough] / counts[enough, None]
    return out
