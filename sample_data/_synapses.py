"""Synapses at axon-dendrite contacts between different neurons.

A *contact* is every pair of voxels (p, q) with p on the axon of neuron A,
q on a dendrite of neuron B != A and a physical distance between
``synapse_distance_um`` (0.2-0.4 um by default); its size is the number of
such axon voxels. An ordered pair of neurons (A, B) that touch (contact size
at least ``min_contact_voxels``) is connected with the type-to-type
probability of the connection matrix, as real axons touch many more
dendrites than they synapse on; a connected pair gets
``1 + Poisson(size / contact_voxels_per_synapse)`` synapses (at most
``max_synapses_per_contact``), so long appositions carry several synapses
and the connectome has graded edge weights. Accepted sites keep a
minimum spacing from all others. The presynaptic punctum sits at p (in the
axon), the postsynaptic one at q (in the dendrite).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._morphology import AXON, DENDRITE
from .config import SampleConfig

__all__ = ["Synapses", "place_synapses", "orphan_puncta"]

#: Sub-voxel jitter of punctum positions, kept below 0.5 so that rounding a
#: position gives back the voxel it was placed in.
_JITTER = 0.3
#: Candidate sites tried per neuron pair before giving up on spacing.
_MAX_TRIES = 400


@dataclass
class Synapses:
    """Synapse truth: positions in voxel coordinates (z, y, x) and partner ids."""

    pre: np.ndarray          # (S, 3) float64
    post: np.ndarray         # (S, 3) float64
    pre_neuron: np.ndarray   # (S,) int64
    post_neuron: np.ndarray  # (S,) int64
    n_contact_pairs: int = 0

    def __len__(self) -> int:
        return len(self.pre_neuron)


def _shifts(config: SampleConfig) -> np.ndarray:
    """Integer voxel offsets whose physical length lies in ``synapse_distance_um``."""
    d_lo, d_hi = config.synapse_distance_um
    voxel = np.asarray(config.voxel_size)
    reach = np.floor(d_hi / voxel).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    length = np.sqrt(((offsets * voxel) ** 2).sum(axis=1))
    return offsets[(length >= d_lo - 1e-9) & (length <= d_hi + 1e-9)]


def _contacts(rng, labels, kind, shifts):
    """Axon voxels that touch a dendrite of another neuron, one contact per axon voxel.

    Where an axon voxel sees several dendrite voxels (of one or more other
    neurons) at a distance in range, one of them is taken at random (each
    axon voxel tries the offsets in its own random rotation of their order).

    Returns
    -------
    p : ndarray of int64
        Flat index of the axon voxel of each contact.
    s : ndarray of int64
        Index into ``shifts`` of the offset from p to the dendrite voxel.
    """
    empty = np.zeros(0, np.int64)
    if shifts.size == 0:
        return empty, empty
    reach = np.abs(shifts).max(axis=0)
    dendrite = kind == DENDRITE
    near = ndi.maximum_filter(dendrite.view(np.uint8), size=tuple(2 * reach + 1), mode="constant")
    p = np.flatnonzero((kind == AXON).ravel() & near.ravel().astype(bool))
    if p.size == 0:
        return empty, empty
    # pad by the reach so that shifted indices never leave the array
    pad = [(int(r), int(r)) for r in reach]
    kind_pad = np.pad(kind, pad).ravel()
    labels_pad = np.pad(labels, pad).ravel()
    padded_shape = tuple(int(v) for v in np.asarray(labels.shape) + 2 * reach)
    strides = np.array([padded_shape[1] * padded_shape[2], padded_shape[2], 1], np.int64)
    p_pad = np.ravel_multi_index(
        tuple(c + int(r) for c, r in zip(np.unravel_index(p, labels.shape), reach)), padded_shape)
    own = labels_pad[p_pad]
    n_shifts = len(shifts)
    rotation = rng.integers(0, n_shifts, p.size)
    best = np.full(p.size, n_shifts, np.int64)       # priority of the chosen offset
    chosen = np.full(p.size, -1, np.int64)
    for i, offset in enumerate(shifts):
        q_pad = p_pad + int(np.dot(offset, strides))
        hit = (kind_pad[q_pad] == DENDRITE) & (labels_pad[q_pad] != own)
        priority = (i - rotation) % n_shifts
        better = hit & (priority < best)
        best[better] = priority[better]
        chosen[better] = i
    keep = chosen >= 0
    return p[keep], chosen[keep]


def place_synapses(
    config: SampleConfig,
    rng: np.random.Generator,
    labels: np.ndarray,
    kind: np.ndarray,
    cell_type: np.ndarray,
) -> Synapses:
    """Choose synapse sites at axon-dendrite contacts.

    Parameters
    ----------
    config : SampleConfig
    rng : numpy.random.Generator
    labels : ndarray of int, (z, y, x)
        Neuron id per voxel, 0 = background.
    kind : ndarray of uint8, (z, y, x)
        Compartment per voxel (``SOMA``, ``DENDRITE``, ``AXON``; 0 = background).
    cell_type : ndarray of int, (N + 1,)
        Cell-type index (into :data:`CELL_TYPES`) of each neuron id.

    Returns
    -------
    Synapses
    """
    shape = labels.shape
    voxel = np.asarray(config.voxel_size)
    matrix = np.asarray(config.connection_matrix)
    shifts = _shifts(config)
    p, shift = _contacts(rng, labels, kind, shifts)
    flat_labels = labels.ravel()
    a = flat_labels[p].astype(np.int64)
    offsets = shifts @ np.array([shape[1] * shape[2], shape[2], 1], np.int64)
    b = flat_labels[p + offsets[shift]].astype(np.int64)
    n_ids = int(labels.max()) + 1
    # group by neuron pair; one sort on a unique packed key (pair, axon voxel)
    # so that the order is fully determined
    bits_p = max(1, int(labels.size - 1).bit_length())
    bits_pair = max(1, int(n_ids * n_ids - 1).bit_length())
    pair = a * n_ids + b
    if bits_pair + bits_p <= 63:
        order = np.argsort((pair << bits_p) | p)
    else:  # huge volumes: slower but exact
        order = np.lexsort((p, pair))
    p, shift, a, b, pair = p[order], shift[order], a[order], b[order], pair[order]
    if pair.size == 0:
        return Synapses(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    first = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    counts = np.diff(np.concatenate([first, [pair.size]]))
    axon_voxels = counts                # one contact per axon voxel: the contact size

    # a touching pair is connected with the type-to-type probability; a
    # connected pair gets 1 + Poisson(contact size / contact_voxels_per_synapse)
    # synapses, at most max_synapses_per_contact
    visit = rng.permutation(len(first))
    size = axon_voxels[visit]
    prob = matrix[cell_type[a[first[visit]]], cell_type[b[first[visit]]]]
    connected = (rng.random(len(visit)) < prob) & (size >= config.min_contact_voxels)
    count = 1 + rng.poisson(size / config.contact_voxels_per_synapse)
    wanted = np.where(connected, np.minimum(count, config.max_synapses_per_contact), 0)

    spacing = float(config.synapse_spacing_um)
    spacing2 = spacing * spacing
    cell = max(spacing, 1e-6)
    occupied: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {}
    chosen = []

    def free(point, key):
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    for other in occupied.get((key[0] + dz, key[1] + dy, key[2] + dx), ()):
                        if ((other[0] - point[0]) ** 2 + (other[1] - point[1]) ** 2
                                + (other[2] - point[2]) ** 2) < spacing2:
                            return False
        return True

    for g, k in zip(visit[wanted > 0], wanted[wanted > 0]):
        lo, n = int(first[g]), int(counts[g])
        tries = lo + rng.permutation(n)[:_MAX_TRIES]
        pv = np.stack(np.unravel_index(p[tries], shape), axis=1).astype(float)
        qv = pv + shifts[shift[tries]]
        mids = (0.5 * (pv + qv) * voxel).tolist()
        placed = 0
        for t, mid in enumerate(mids):
            key = (int(mid[0] // cell), int(mid[1] // cell), int(mid[2] // cell))
            if not free(mid, key):
                continue
            occupied.setdefault(key, []).append(mid)
            chosen.append((pv[t], qv[t], int(a[lo]), int(b[lo])))
            placed += 1
            if placed == k:
                break

    pre = np.array([c[0] for c in chosen]).reshape(-1, 3)
    post = np.array([c[1] for c in chosen]).reshape(-1, 3)
    jitter = rng.uniform(-_JITTER, _JITTER, (2, len(chosen), 3))
    return Synapses(
        pre=pre + jitter[0],
        post=post + jitter[1],
        pre_neuron=np.array([c[2] for c in chosen], np.int64),
        post_neuron=np.array([c[3] for c in chosen], np.int64),
        n_contact_pairs=len(first),
    )


def orphan_puncta(rng, kind: np.ndarray, compartment: int, count: int) -> np.ndarray:
    """``count`` punctum positions (voxel coords) on random voxels of one compartment."""
    idx = np.flatnonzero(kind.ravel() == compartment)
    if count <= 0 or idx.size == 0:
        return np.zeros((0, 3))
    chosen = np.sort(rng.choice(idx, size=min(count, idx.size), replace=False))
    coords = np.stack(np.unravel_index(chosen, kind.shape), axis=1).astype(float)
    return coords + rng.uniform(-_JITTER, _JITTER, coords.shape)
