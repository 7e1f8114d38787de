"""Neuron morphology: somata and branching neurites as capsule segments.

Geometry is grown in an isotropic frame whose unit is the finest voxel size
(0.1 um by default), so that radii and turning are physical; z coordinates are
therefore ``voxel_size[0] / voxel_size[2]`` times larger than voxel indices.
The result is converted to voxel coordinates for painting.

Every neurite is a chain of straight capsules (segments with a radius). A
branch follows a persistent random walk: its heading is the branch's initial
direction plus two smooth AR(1) processes (a fast wiggle and a slow drift),
integrated with a fixed step. Paths are folded back into the volume at its
faces (a reflection), which keeps them continuous and inside. Dendrites start
at the soma surface, taper, and branch until the neuron's dendrite length
budget is spent; each neuron has one long axon with a few collaterals. The
total neurite length is derived from the requested ``fill_fraction``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from .config import SampleConfig

__all__ = ["AXON", "DENDRITE", "SOMA", "Morphology", "build_morphology"]

log = logging.getLogger(__name__)

SOMA, DENDRITE, AXON = 1, 2, 3
KIND_NAMES = {SOMA: "soma", DENDRITE: "dendrite", AXON: "axon"}

#: Smallest painted radius in voxels along any axis, so that a thin neurite
#: lying between two z planes still shows up in one or two of them.
MIN_RADIUS_VOXELS = 0.75
#: Empirical factor between the idealised tube volume and the covered volume
#: (overlaps, tapering, pieces folded at the faces); see build_morphology.
_COVERAGE_CALIBRATION = 1.3


@dataclass
class Morphology:
    """Somata and neurite segments of all neurons, in voxel coordinates (z, y, x).

    Attributes
    ----------
    soma_centre : ndarray, float64, (N, 3)
    soma_radius : ndarray, float64, (N, 3)
        Soma semi-axes in voxels.
    p0, p1 : ndarray, float64, (S, 3)
        Segment end points; a soma is a segment with ``p0 == p1``.
    radius : ndarray, float64, (S, 3)
        Segment semi-axes in voxels (at least :data:`MIN_RADIUS_VOXELS`).
    neuron : ndarray, int32, (S,)
        Neuron id (1..N) of each segment.
    kind : ndarray, uint8, (S,)
        :data:`SOMA`, :data:`DENDRITE` or :data:`AXON`.
    path_um : ndarray, float32, (S,)
        Path distance from the soma surface along the neurite (0 for somata).
    """

    soma_centre: np.ndarray
    soma_radius: np.ndarray
    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray
    neuron: np.ndarray
    kind: np.ndarray
    path_um: np.ndarray

    @property
    def n_segments(self) -> int:
        return len(self.neuron)


class _Branch:
    __slots__ = ("points", "radii", "path0", "kind")

    def __init__(self, points, radii, path0, kind):
        self.points = points      # (n+1, 3) iso coordinates
        self.radii = radii        # (n+1,) iso radius
        self.path0 = path0        # path distance (iso units) at points[0]
        self.kind = kind

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def _random_direction(rng) -> np.ndarray:
    return _unit(rng.standard_normal(3))


def _turn(rng, direction: np.ndarray, lo_deg: float, hi_deg: float) -> np.ndarray:
    """``direction`` rotated by a random angle in [lo, hi] degrees about a random axis."""
    perpendicular = rng.standard_normal(3)
    perpendicular -= perpendicular.dot(direction) * direction
    if np.linalg.norm(perpendicular) < 1e-9:
        perpendicular = np.array([direction[1], -direction[0], 0.0]) + 1e-3
    perpendicular = _unit(perpendicular)
    theta = math.radians(rng.uniform(lo_deg, hi_deg))
    return _unit(math.cos(theta) * direction + math.sin(theta) * perpendicular)


def _fold(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect coordinates into [lo, hi] per axis (a triangle wave: continuous paths)."""
    width = hi - lo
    t = np.mod(points - lo, 2.0 * width)
    return lo + np.where(t > width, 2.0 * width - t, t)


def _walk(rng, start, direction, length, step, wiggle, drift):
    """Persistent random walk of ``length`` from ``start``; returns (n+1, 3) points.

    ``wiggle`` and ``drift`` are (amplitude, correlation length) of the fast and
    slow AR(1) heading perturbations.
    """
    n = max(1, int(math.ceil(length / step)))
    step = length / n
    noise = rng.standard_normal((2, n, 3))
    heading = np.repeat(direction[None, :], n, axis=0)
    for (amplitude, correlation), xi in zip((wiggle, drift), noise):
        a = math.exp(-step / correlation)
        heading += amplitude * lfilter([math.sqrt(1.0 - a * a)], [1.0, -a], xi, axis=0)
    heading = _unit(heading)
    points = np.empty((n + 1, 3))
    points[0] = start
    points[1:] = start + np.cumsum(heading * step, axis=0)
    return points


def _tube_voxels_per_length(radius_iso: float, scale: np.ndarray) -> float:
    """Approximate voxels covered per unit (iso) length of a randomly oriented tube."""
    rz = max(radius_iso, MIN_RADIUS_VOXELS * scale[0])
    area = math.pi * radius_iso * (2.0 / 3.0 * rz + 1.0 / 3.0 * radius_iso)
    return area / float(np.prod(scale))


def _place_somata(rng, n, shape, scale, radius_range_iso):
    """Soma centres (iso) inside the volume with little overlap, and their semi-axes (iso)."""
    upper = (np.asarray(shape, float) - 1.0) * scale
    mean_radius = rng.uniform(*radius_range_iso, size=n)
    stretch = rng.uniform(0.85, 1.15, size=(n, 3))
    semi_axes = mean_radius[:, None] * stretch
    centres = np.zeros((n, 3))
    for i in range(n):
        best, best_clearance = None, -np.inf
        for _ in range(40):
            candidates = rng.uniform(0.0, 1.0, size=(32, 3)) * upper
            if i == 0:
                best = candidates[0]
                break
            dist = np.linalg.norm(candidates[:, None, :] - centres[None, :i, :], axis=2)
            clearance = (dist / (mean_radius[None, :i] + mean_radius[i])).min(axis=1)
            j = int(np.argmax(clearance))
            if clearance[j] > best_clearance:
                best, best_clearance = candidates[j], clearance[j]
            if best_clearance >= 1.0:
                break
        centres[i] = best
    return centres, semi_axes


def _surface_point(centre, semi_axes, direction, depth=0.8):
    """Point at ``depth`` of the way from ``centre`` to the ellipsoid surface along ``direction``."""
    reach = 1.0 / math.sqrt(float(((direction / semi_axes) ** 2).sum()))
    return centre + depth * reach * direction


def _step_for(radius_iso: float) -> float:
    return float(np.clip(1.2 * radius_iso, 2.0, 6.0))


def build_morphology(config: SampleConfig, rng: np.random.Generator) -> Morphology:
    """Grow all neurons of ``config``; deterministic for a given ``rng`` state.

    Parameters
    ----------
    config : SampleConfig
    rng : numpy.random.Generator

    Returns
    -------
    Morphology
    """
    shape = np.asarray(config.shape)
    voxel = np.asarray(config.voxel_size, float)
    unit = float(voxel.min())                       # um per iso unit
    scale = voxel / unit                            # iso units per voxel, per axis
    lo = -0.5 * scale
    hi = (shape - 0.5) * scale
    n = config.n_neurons

    soma_range = tuple(r / unit for r in config.soma_radius_um)
    dend_lo, dend_hi = (r / unit for r in config.dendrite_radius_um)
    axon_lo, axon_hi = (r / unit for r in config.axon_radius_um)
    centres, semi_axes = _place_somata(rng, n, shape, scale, soma_range)

    # Neurite length budget from the requested coverage: for independent tubes
    # the covered fraction is 1 - exp(-total tube volume / volume).
    n_voxels = float(np.prod(shape))
    soma_voxels = float((4.0 / 3.0 * math.pi * semi_axes.prod(axis=1)).sum() / np.prod(scale))
    wanted = -math.log(1.0 - config.fill_fraction) * n_voxels * _COVERAGE_CALIBRATION
    neurite_voxels = max(wanted - soma_voxels, 0.0)
    share_a = config.axon_share
    per_length = share_a * _tube_voxels_per_length(0.5 * (axon_lo + axon_hi), scale) + (
        1.0 - share_a
    ) * _tube_voxels_per_length(0.5 * (dend_lo + dend_hi), scale)
    mean_length = neurite_voxels / n / per_length
    min_length = 6.0 * float(np.mean(soma_range))
    log.debug("neurite length per neuron ~ %.0f um", mean_length * unit)

    seg_p0, seg_p1, seg_r, seg_neuron, seg_kind, seg_path = [], [], [], [], [], []

    for i in range(n):
        neuron_id = i + 1
        centre = centres[i]
        total = max(min_length, mean_length * rng.uniform(0.7, 1.3))
        branches: list[_Branch] = []

        # -- dendrites: primaries from the soma, then side branches ---------
        d_budget = (1.0 - share_a) * total
        n_primary = int(rng.integers(config.dendrites_per_neuron[0], config.dendrites_per_neuron[1] + 1))
        if n_primary:
            weights = rng.uniform(0.6, 1.4, n_primary)
            primary_lengths = 0.55 * d_budget * weights / weights.sum()
            for length in primary_lengths:
                direction = _random_direction(rng)
                r0 = rng.uniform(0.5 * (dend_lo + dend_hi), dend_hi)
                r1 = max(dend_lo, 0.6 * r0)
                pts = _fold(_walk(rng, _surface_point(centre, semi_axes[i], direction), direction,
                                  length, _step_for(r0), wiggle=(0.3, 15.0), drift=(0.55, 80.0)),
                            lo, hi)
                branches.append(_Branch(pts, np.linspace(r0, r1, len(pts)), 0.0, DENDRITE))
            remaining = d_budget - primary_lengths.sum()
            mean_primary = float(primary_lengths.mean())
            min_child = min(30.0, 0.5 * mean_primary)
            lengths = [b.length for b in branches]
            while remaining > min_child:
                weights = np.asarray(lengths)
                parent = branches[int(rng.choice(len(branches), p=weights / weights.sum()))]
                k = len(parent.points) - 1
                j = int(rng.integers(int(0.15 * k), max(int(0.9 * k), int(0.15 * k) + 1)))
                j = min(j, k - 1) if k > 1 else 0
                local = _unit(parent.points[j + 1] - parent.points[j])
                direction = _turn(rng, local, 25.0, 70.0)
                length = min(remaining, max(min_child, rng.uniform(0.3, 0.8) * mean_primary))
                r0 = max(dend_lo, parent.radii[j] * rng.uniform(0.6, 0.85))
                path0 = parent.path0 + float(
                    np.linalg.norm(np.diff(parent.points[: j + 1], axis=0), axis=1).sum())
                pts = _fold(_walk(rng, parent.points[j], direction, length, _step_for(r0),
                                  wiggle=(0.3, 15.0), drift=(0.55, 80.0)), lo, hi)
                branches.append(_Branch(pts, np.linspace(r0, max(dend_lo, 0.7 * r0), len(pts)),
                                        path0, DENDRITE))
                lengths.append(length)
                remaining -= length

        # -- axon: one long process with a few collaterals --------------------
        a_budget = share_a * total if n_primary else total
        r_axon = rng.uniform(axon_lo, axon_hi)
        direction = _random_direction(rng)
        main_length = 0.75 * a_budget
        pts = _fold(_walk(rng, _surface_point(centre, semi_axes[i], direction), direction,
                          main_length, _step_for(r_axon), wiggle=(0.2, 20.0), drift=(0.9, 200.0)),
                    lo, hi)
        axon = _Branch(pts, np.full(len(pts), r_axon), 0.0, AXON)
        branches.append(axon)
        n_collateral = int(rng.integers(1, 4))
        col_weights = rng.uniform(0.6, 1.4, n_collateral)
        for length in 0.25 * a_budget * col_weights / col_weights.sum():
            k = len(axon.points) - 1
            j = int(rng.integers(int(0.2 * k), max(int(0.95 * k), int(0.2 * k) + 1)))
            j = min(j, k - 1) if k > 1 else 0
            local = _unit(axon.points[j + 1] - axon.points[j])
            direction = _turn(rng, local, 30.0, 80.0)
            r = max(axon_lo, r_axon * rng.uniform(0.85, 1.0))
            path0 = float(np.linalg.norm(np.diff(axon.points[: j + 1], axis=0), axis=1).sum())
            pts = _fold(_walk(rng, axon.points[j], direction, length, _step_for(r),
                              wiggle=(0.2, 20.0), drift=(0.9, 200.0)), lo, hi)
            branches.append(_Branch(pts, np.full(len(pts), r), path0, AXON))

        # -- segments -------------------------------------------------------
        seg_p0.append(centre[None])
        seg_p1.append(centre[None])
        seg_r.append(semi_axes[i][None])
        seg_neuron.append(np.array([neuron_id]))
        seg_kind.append(np.array([SOMA]))
        seg_path.append(np.zeros(1))
        for b in branches:
            steps = np.linalg.norm(np.diff(b.points, axis=0), axis=1)
            cum = b.path0 + np.concatenate([[0.0], np.cumsum(steps)])
            seg_p0.append(b.points[:-1])
            seg_p1.append(b.points[1:])
            r = 0.5 * (b.radii[:-1] + b.radii[1:])
            seg_r.append(np.repeat(r[:, None], 3, axis=1))
            seg_neuron.append(np.full(len(r), neuron_id))
            seg_kind.append(np.full(len(r), b.kind))
            seg_path.append(0.5 * (cum[:-1] + cum[1:]))

    p0 = np.concatenate(seg_p0) / scale
    p1 = np.concatenate(seg_p1) / scale
    radius = np.maximum(np.concatenate(seg_r) / scale, MIN_RADIUS_VOXELS)
    return Morphology(
        soma_centre=centres / scale,
        soma_radius=semi_axes / scale,
        p0=p0,
        p1=p1,
        radius=radius,
        neuron=np.concatenate(seg_neuron).astype(np.int32),
        kind=np.concatenate(seg_kind).astype(np.uint8),
        path_um=(np.concatenate(seg_path) * unit).astype(np.float32),
    )
