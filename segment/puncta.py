"""Synaptic puncta: blockwise difference-of-Gaussians spot detection with sub-voxel peaks.

A punctum is a small bright spot in a ``pre`` or ``post`` channel. Detection
runs block by block (:func:`detect_puncta_volume`) and gives the same puncta
for every block shape:

1. **Response.** Difference of Gaussians ``G(sigma) - G(ratio * sigma)`` of the
   channel (or ``-sigma^2 * LoG`` with ``method="log"``), anisotropic ``sigma``
   in voxels (z, y, x). The halo holds the whole filter support, so inside the
   write region the response equals the whole-volume response.
2. **Threshold.** A voxel is a candidate when its response exceeds
   ``threshold * noise``, where ``noise`` is a robust (MAD) standard deviation
   of the response. ``noise`` is *global*: :func:`estimate_noise` measures it
   once on fixed sample regions of the volume (independent of the block grid),
   or the caller passes it in. A per-block noise would make the result depend
   on the block size.
3. **Peaks.** Candidates that are the maximum of their ``(2*min_distance+1)``
   box. Exact ties (plateaus) keep the candidate with the smallest (z, y, x).
   Both rules only look a bounded distance away, so they are block-invariant.
4. **Ownership.** A block keeps the peaks whose *integer* peak voxel lies in
   its write region: every punctum is reported by exactly one block.
5. **Sub-voxel position.** Per axis, a parabola through the logarithm of the
   three response values around the peak (exact for a Gaussian profile;
   a plain parabola when a value is not positive), offset clipped to
   +-0.5 voxel. The curvature gives a size estimate (``size_z/y/x``).
6. **Neuron label.** The neuron label at the peak voxel, else the nearest
   non-zero label within ``label_radius`` (distances in units of the smallest
   voxel side, anisotropic), else 0; plus a label certainty (see
   :func:`lookup_labels`).

Notes
-----
The nearest-label lookup scans a precomputed list of offsets sorted by
physical distance instead of running ``distance_transform_edt`` on the whole
read region: it costs O(puncta x offsets) instead of O(voxels), needs no halo
beyond ``label_radius`` and breaks distance ties by a fixed offset order, so a
punctum gets the same label for every block shape (an EDT's tie-breaking
depends on the array it runs on).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from pipeline.backend import array_module, resolve_device, to_device, to_host
from pipeline.blocks import Block, BlockGrid
from pipeline.config import StrictModel
from pipeline.errors import InputError
from pipeline.filters import gaussian, maximum
from pipeline.runner import Executor, run_blockwise
from pipeline.volume import Volume, open_label_image

__all__ = [
    "PunctaConfig",
    "PUNCTA_COLUMNS",
    "dog_response",
    "robust_noise",
    "estimate_noise",
    "detect_puncta",
    "lookup_labels",
    "puncta_halo",
    "detect_puncta_volume",
]

log = logging.getLogger(__name__)

#: Columns of the tables returned by :func:`detect_puncta_volume`.
PUNCTA_COLUMNS = (
    "punctum_id", "z", "y", "x", "iz", "iy", "ix", "intensity", "response", "score",
    "size_z", "size_y", "size_x", "neuron_id", "label_distance", "label_certainty",
)

_MAD_TO_SIGMA = 1.4826


class PunctaConfig(StrictModel):
    """Settings of puncta detection.

    Attributes
    ----------
    sigma : tuple of float
        Scale (z, y, x) of the inner Gaussian, in voxels. Somewhat *below* the
        punctum size separates neighbouring puncta better: the default was
        tuned on the bundled sample (voxels 0.4 x 0.1 x 0.1 um, PSF sigma
        0.6 / 0.15 um, so puncta of sigma ~1.5 voxels), where (0.5, 0.8, 0.8)
        missed half as many close puncta as (1.0, 1.5, 1.5) with no more
        false detections.
    method : {"dog", "log"}
        Difference of Gaussians (default) or scale-normalised negative Laplacian of Gaussian.
    dog_ratio : float
        Outer/inner sigma ratio of the DoG.
    truncate : float
        Gaussian support in sigmas (sets the halo).
    threshold : float
        Detection threshold in units of the robust noise of the response.
    min_distance : tuple of int
        Minimal separation of two peaks of one channel, voxels (z, y, x):
        a peak is the maximum of its ``2*min_distance+1`` box.
    label_radius : float
        How far (in units of the smallest voxel side) to look for the nearest
        neuron when the peak voxel is background.
    noise_regions : int
        How many fixed sample regions :func:`estimate_noise` uses (a lattice
        spread over the volume, independent of the block grid).
    noise_region_shape : tuple of int
        Shape (z, y, x) of each sample region (clipped to the volume).
    """

    sigma: tuple[float, float, float] = (0.5, 0.8, 0.8)
    method: Literal["dog", "log"] = "dog"
    dog_ratio: float = Field(default=1.6, gt=1.0)
    truncate: float = Field(default=3.0, ge=2.0)
    threshold: float = Field(default=6.0, gt=0.0)
    min_distance: tuple[int, int, int] = (1, 1, 1)
    label_radius: float = Field(default=2.0, ge=0.0)
    noise_regions: int = Field(default=8, ge=1)
    noise_region_shape: tuple[int, int, int] = (32, 96, 96)

    @field_validator("sigma")
    @classmethod
    def _positive_sigma(cls, value):
        if any(v <= 0 for v in value):
            raise ValueError(f"every sigma must be positive, got {list(value)}")
        return value

    @field_validator("min_distance", "noise_region_shape")
    @classmethod
    def _non_negative(cls, value):
        if any(v < 0 for v in value):
            raise ValueError(f"entries must be >= 0, got {list(value)}")
        return value


# ---------------------------------------------------------------------------
# Kernels (NumPy or CuPy arrays in, same kind out)
# ---------------------------------------------------------------------------
def _filter_radius(config: PunctaConfig) -> tuple[int, int, int]:
    """Support radius (voxels) of the widest Gaussian, as scipy/cupyx compute it."""
    outer = config.dog_ratio if config.method == "dog" else 1.0
    return tuple(int(config.truncate * s * outer + 0.5) for s in config.sigma)


def dog_response(image_zyx, config: PunctaConfig):
    """Band-pass response of a 3-D image: bright spots of scale ``sigma`` give positive peaks.

    Parameters
    ----------
    image_zyx : ndarray (NumPy or CuPy), 3-D
    config : PunctaConfig

    Returns
    -------
    ndarray of float32, same shape and array kind.
    """
    xp = array_module(image_zyx)
    if image_zyx.ndim != 3:
        raise InputError(f"puncta detection needs a 3-D (z, y, x) image, got shape {image_zyx.shape}")
    img = image_zyx.astype(xp.float32, copy=False)
    sigma = tuple(float(s) for s in config.sigma)
    # pipeline.filters.gaussian: scipy's gaussian_filter (mode "reflect") to float32 rounding, on OpenCV/cupyx
    if config.method == "dog":
        inner = gaussian(img, sigma, truncate=config.truncate)
        outer = gaussian(img, tuple(s * config.dog_ratio for s in sigma), truncate=config.truncate)
        inner -= outer
        return inner.astype(xp.float32, copy=False)
    # Scale-normalised -LoG: sum over axes of -sigma_a^2 * d2/da2 G.
    response = xp.zeros_like(img)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 2
        response -= sigma[axis] ** 2 * gaussian(img, sigma, order=order, truncate=config.truncate)
    return response


def robust_noise(values) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of ``values``.

    Falls back to the mean absolute deviation, then to 1.0, when the MAD is 0
    (e.g. a noiseless, mostly constant image), so a threshold is never 0.
    """
    xp = array_module(values)
    v = values.ravel().astype(xp.float64, copy=False)
    if v.size == 0:
        return 1.0
    med = xp.median(v)
    dev = xp.abs(v - med)
    sigma = float(_MAD_TO_SIGMA * xp.median(dev))
    if sigma > 0:
        return sigma
    sigma = float(1.2533 * xp.mean(dev))
    if sigma > 0:
        log.warning("robust noise: MAD is 0, using the mean absolute deviation (%.3g)", sigma)
        return sigma
    log.warning("robust noise: the response is constant, using noise = 1.0")
    return 1.0


def _tie_break(cand, half):
    """Among candidates sharing a peak box (exact ties), keep the smallest (z, y, x).

    ``cand`` is an (n, 3) integer array (host) of candidate voxels and ``half``
    the box half-size per axis; returns a boolean keep mask. Two candidates
    within one box have equal response (each is the maximum of a box holding
    the other), so this only acts on plateaus, and it only looks one box away.
    """
    from scipy.spatial import cKDTree

    n = len(cand)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    scale = 1.0 / np.maximum(np.asarray(half, dtype=np.float64), 0.5)
    pairs = cKDTree(cand * scale).query_pairs(r=1.0 + 1e-9, p=np.inf, output_type="ndarray")
    for i, j in pairs:
        # drop the lexicographically larger one of each tied pair
        if tuple(cand[i]) < tuple(cand[j]):
            keep[j] = False
        else:
            keep[i] = False
    return keep


def _refine(response, peaks, xp):
    """Sub-voxel offsets and curvature sizes of ``peaks`` (host int array (n, 3))."""
    n = len(peaks)
    offsets = np.zeros((n, 3))
    sizes = np.full((n, 3), np.nan)
    if n == 0:
        return offsets, sizes
    shape = response.shape
    pk = xp.asarray(peaks)
    center = response[tuple(pk.T)].astype(xp.float64)
    for axis in range(3):
        lo, hi = pk.copy(), pk.copy()
        lo[:, axis] = xp.clip(lo[:, axis] - 1, 0, shape[axis] - 1)
        hi[:, axis] = xp.clip(hi[:, axis] + 1, 0, shape[axis] - 1)
        a = response[tuple(lo.T)].astype(xp.float64)
        b = response[tuple(hi.T)].astype(xp.float64)
        a, b, c = to_host(a), to_host(b), to_host(center)
        at_edge = (peaks[:, axis] == 0) | (peaks[:, axis] == shape[axis] - 1)
        positive = (a > 0) & (b > 0) & (c > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            la, lb, lc = (np.log(np.where(positive, v, 1.0)) for v in (a, b, c))
            curv_log = la - 2 * lc + lb
            off_log = 0.5 * (la - lb) / curv_log
            curv_lin = a - 2 * c + b
            off_lin = 0.5 * (a - b) / curv_lin
            use_log = positive & (curv_log < 0)
            off = np.where(use_log, off_log, np.where(curv_lin < 0, off_lin, 0.0))
            # width of a Gaussian through the symmetric part: (a + b) / 2c = exp(-1 / (2 s^2))
            q = (a + b) / (2.0 * c)
            size = np.where((q > 0) & (q < 1) & (c > 0), np.sqrt(-1.0 / (2.0 * np.log(np.where(q > 0, q, 0.5)))),
                            np.nan)
        off = np.where(at_edge | ~np.isfinite(off), 0.0, np.clip(off, -0.5, 0.5))
        offsets[:, axis] = off
        sizes[:, axis] = np.where(at_edge, np.nan, size)
    return offsets, sizes


def detect_puncta(image_zyx, config: PunctaConfig, noise: float) -> pd.DataFrame:
    """Find puncta in a 3-D image (one block or a whole volume).

    Parameters
    ----------
    image_zyx : ndarray (NumPy or CuPy), 3-D
        One channel.
    config : PunctaConfig
    noise : float
        Global robust noise of the response (:func:`estimate_noise`); the
        threshold is ``config.threshold * noise``.

    Returns
    -------
    pandas.DataFrame
        One row per punctum, in array coordinates: ``z, y, x`` (sub-voxel),
        ``iz, iy, ix`` (integer peak voxel), ``intensity`` (image value at the
        peak), ``response`` (band-pass value at the peak), ``score``
        (response / noise: contrast in noise units), ``size_z, size_y,
        size_x`` (width in voxels of the response peak: the sigma of a
        Gaussian through the peak and the mean of its two neighbours; a size
        estimate that grows with the punctum; NaN when the peak is narrower
        than the sampling or at the edge). Rows are sorted by (iz, iy, ix).
    """
    if not (isinstance(noise, (int, float, np.floating)) and math.isfinite(noise) and noise > 0):
        raise InputError(f"noise must be a positive finite number, got {noise!r}")
    xp = array_module(image_zyx)
    response = dog_response(image_zyx, config)
    size = tuple(2 * d + 1 for d in config.min_distance)
    local_max = maximum(response, size, mode="nearest")
    is_peak = (response >= local_max) & (response > config.threshold * float(noise))
    peaks = np.stack([to_host(a) for a in xp.nonzero(is_peak)], axis=1).astype(np.int64).reshape(-1, 3)
    if len(peaks):
        peaks = peaks[_tie_break(peaks, config.min_distance)]
    offsets, sizes = _refine(response, peaks, xp)
    if len(peaks):
        pk = tuple(xp.asarray(peaks).T)
        intensity = to_host(image_zyx[pk]).astype(np.float64)
        resp = to_host(response[pk]).astype(np.float64)
    else:
        intensity = resp = np.zeros(0)
    position = peaks + offsets
    frame = pd.DataFrame({
        "z": position[:, 0], "y": position[:, 1], "x": position[:, 2],
        "iz": peaks[:, 0], "iy": peaks[:, 1], "ix": peaks[:, 2],
        "intensity": intensity,
        "response": resp,
        "score": resp / float(noise),
        "size_z": sizes[:, 0], "size_y": sizes[:, 1], "size_x": sizes[:, 2],
    })
    return frame.sort_values(["iz", "iy", "ix"], kind="stable").reset_index(drop=True)


@functools.lru_cache(maxsize=32)
def _offsets(radius: float, sampling: tuple[float, float, float]):
    """Integer offsets within ``radius`` (physical units of ``sampling``), nearest first."""
    reach = [int(math.floor(radius / s)) for s in sampling]
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.sqrt(((grid * np.asarray(sampling)) ** 2).sum(axis=1))
    keep = dist <= radius + 1e-9
    grid, dist = grid[keep], dist[keep]
    # nearest first; fixed tie order (z, then y, then x offset) for determinism
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], dist))
    return grid[order], dist[order]


def lookup_labels(labels_zyx, points, *, radius: float, sampling=(1.0, 1.0, 1.0)):
    """Neuron label at (or nearest to) integer voxel ``points`` and its certainty.

    Parameters
    ----------
    labels_zyx : ndarray (NumPy or CuPy), 3-D integer
    points : ndarray of int, shape (n, 3)
        Voxels in array coordinates.
    radius : float
        Search radius for the nearest non-zero label, in the units of ``sampling``.
    sampling : sequence of float
        Voxel size (z, y, x) in the radius units (e.g. voxel size / smallest side).

    Returns
    -------
    label : ndarray of uint64
        Label at the point, else the nearest non-zero label within ``radius``
        (ties broken by a fixed offset order), else 0.
    distance : ndarray of float
        Distance to that label's voxel (0 when on it; NaN when none found).
    certainty : ndarray of float in [0, 1]
        ``purity / (1 + distance)``: ``purity`` is the fraction of the
        non-zero voxels of the 3x3x3 neighbourhood of the labelled voxel that
        carry the label (1 inside a neuron, ~0.5 on a contact between two);
        0 when no label is found.
    """
    xp = array_module(labels_zyx)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    n = len(points)
    shape = np.asarray(labels_zyx.shape)
    label = np.zeros(n, dtype=np.uint64)
    distance = np.full(n, np.nan)
    certainty = np.zeros(n)
    if n == 0:
        return label, distance, certainty
    sampling = tuple(float(s) for s in sampling)
    offs, dists = _offsets(float(radius), sampling)
    cand = points[:, None, :] + offs[None, :, :]  # (n, m, 3)
    inside = np.all((cand >= 0) & (cand < shape), axis=2)
    clipped = np.clip(cand, 0, shape - 1)
    values = to_host(labels_zyx[tuple(xp.asarray(clipped.reshape(-1, 3)).T)]).reshape(n, -1)
    values = np.where(inside, values, 0).astype(np.uint64)
    hit = values != 0
    found = hit.any(axis=1)
    first = np.argmax(hit, axis=1)
    rows = np.flatnonzero(found)
    label[rows] = values[rows, first[rows]]
    distance[rows] = dists[first[rows]]
    # purity in the 3x3x3 neighbourhood of the labelled voxel
    if len(rows):
        where = cand[rows, first[rows]]
        cube = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
        nb = where[:, None, :] + cube[None]
        nb_inside = np.all((nb >= 0) & (nb < shape), axis=2)
        nb_vals = to_host(labels_zyx[tuple(xp.asarray(np.clip(nb, 0, shape - 1).reshape(-1, 3)).T)])
        nb_vals = np.where(nb_inside, nb_vals.reshape(len(rows), -1), 0).astype(np.uint64)
        same = (nb_vals == label[rows, None]).sum(axis=1)
        nonzero = (nb_vals != 0).sum(axis=1)
        certainty[rows] = same / np.maximum(nonzero, 1) / (1.0 + distance[rows])
    return label, distance, certainty


# ---------------------------------------------------------------------------
# Blockwise
# ---------------------------------------------------------------------------
def _label_sampling(voxel_size) -> tuple[float, float, float]:
    smallest = min(voxel_size)
    return tuple(float(v) / smallest for v in voxel_size)


def puncta_halo(config: PunctaConfig, voxel_size=(1.0, 1.0, 1.0)) -> tuple[int, int, int]:
    """Halo (z, y, x) that makes blockwise detection equal to whole-volume detection.

    Filter support + twice the peak box (the tie rule looks at neighbouring
    candidates, whose own box must be exact) + 1 for the sub-voxel fit, and at
    least the label search reach + 1.
    """
    radius = _filter_radius(config)
    sampling = _label_sampling(voxel_size)
    halo = []
    for axis in range(3):
        filt = radius[axis] + 2 * config.min_distance[axis] + 1
        lab = int(math.floor(config.label_radius / sampling[axis])) + 1
        halo.append(max(filt, lab))
    return tuple(halo)


def _sample_regions(shape, region_shape, count):
    """Fixed, grid-independent sample regions: a lattice spread over the volume."""
    region_shape = tuple(min(max(int(r), 1), s) for r, s in zip(region_shape, shape))
    per_axis = [1, 1, 1]
    # grow the lattice along the axes with the most room until it has `count` points
    while int(np.prod(per_axis)) < count:
        room = [s / (r * p) for s, r, p in zip(shape, region_shape, per_axis)]
        axis = int(np.argmax(room))
        if room[axis] <= 1.0:
            break
        per_axis[axis] += 1
    starts = [np.unique(np.linspace(0, s - r, p).round().astype(int))
              for s, r, p in zip(shape, region_shape, per_axis)]
    regions = []
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                regions.append(tuple(slice(int(a), int(a) + r) for a, r in zip((z, y, x), region_shape)))
    return regions


def estimate_noise(volume: Volume, channel: int, config: PunctaConfig, *, device: str = "cpu") -> float:
    """Global robust noise of the band-pass response of one channel.

    Reads ``config.noise_regions`` fixed regions spread over the volume (their
    placement depends only on the volume shape, never on the block grid),
    computes the response, drops a filter-radius rim where the region is not
    at the volume edge, and returns the MAD-based standard deviation of all
    values. Sparse puncta barely move a median, so this measures the background.
    """
    device = resolve_device(device)
    shape = volume.spatial_shape
    radius = _filter_radius(config)
    values = []
    for region in _sample_regions(shape, config.noise_region_shape, config.noise_regions):
        image = to_device(volume.read(region, [channel])[0], device)
        response = dog_response(image, config)
        inner = []
        for axis, (sl, r) in enumerate(zip(region, radius)):
            lo = 0 if sl.start == 0 else min(r, (sl.stop - sl.start) // 3)
            hi = 0 if sl.stop == shape[axis] else min(r, (sl.stop - sl.start) // 3)
            inner.append(slice(lo, sl.stop - sl.start - hi))
        values.append(to_host(response[tuple(inner)]).ravel())
    noise = robust_noise(np.concatenate(values))
    log.info("puncta noise of channel %s: %.4g", volume.channel_names[channel], noise)
    return noise


def _puncta_block(block: Block, *, volume_path: str, channel: int, labels_dir: str | None,
                  labels_name: str, config: PunctaConfig, noise: float, device: str,
                  voxel_size: tuple[float, float, float]) -> pd.DataFrame:
    """Block task: detect puncta in the read region, keep owned ones, look up labels."""
    volume = Volume.open(volume_path, mode="r")
    image = to_device(volume.read(block.read, [channel])[0], device)
    found = detect_puncta(image, config, noise)
    offset = np.asarray(block.read_offset)
    local = found[["iz", "iy", "ix"]].to_numpy(dtype=np.int64)
    owned = block.contains(local + offset) if len(found) else np.zeros(0, dtype=bool)
    found = found.loc[owned].reset_index(drop=True)
    local = local[owned]
    if labels_dir is not None and len(found):
        labels = to_device(np.asarray(open_label_image(labels_dir, labels_name)[block.read]), device)
        label, distance, certainty = lookup_labels(
            labels, local, radius=config.label_radius, sampling=_label_sampling(voxel_size))
    else:
        label = np.zeros(len(found), dtype=np.uint64)
        distance = np.full(len(found), np.nan)
        certainty = np.zeros(len(found))
    for axis, name in enumerate("zyx"):
        found[name] = found[name] + offset[axis]
        found["i" + name] = found["i" + name] + offset[axis]
    found["neuron_id"] = label
    found["label_distance"] = distance
    found["label_certainty"] = certainty
    return found


def detect_puncta_volume(
    volume: Volume,
    run_dir,
    config: PunctaConfig | None = None,
    *,
    grid: BlockGrid,
    executor: Executor | None = None,
    device: str = "cpu",
    noise: dict[str, float] | None = None,
    labels_name: str = "neurons",
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect pre- and post-synaptic puncta blockwise and label them with neurons.

    Parameters
    ----------
    volume : Volume
        Needs one channel of role ``pre`` and one of role ``post`` (the first
        of each is used).
    run_dir : path
        Run directory: labels are read from ``run_dir/labels.zarr/<labels_name>``
        (puncta get neuron 0 when it does not exist), block markers go to
        ``run_dir/work/puncta_pre`` and ``.../puncta_post``.
    config : PunctaConfig, optional
    grid : BlockGrid
        Block layout; its halo is enlarged to :func:`puncta_halo` when smaller.
    executor : Executor, optional
        Defaults to synchronous.
    device : {"cpu", "gpu", "auto"}
    noise : dict, optional
        Channel name -> noise level; channels not given are estimated with
        :func:`estimate_noise`.
    labels_name : str
    progress : bool

    Returns
    -------
    pre, post : pandas.DataFrame
        Columns :data:`PUNCTA_COLUMNS` in volume voxel coordinates, sorted by
        peak voxel, ``punctum_id`` consecutive from 0.

    Raises
    ------
    MissingChannelError
        If the volume has no ``pre`` or no ``post`` channel.
    """
    config = config or PunctaConfig()
    device = resolve_device(device)
    channels = {role: volume.channels_with_role(role, required=True) for role in ("pre", "post")}
    run_dir = Path(run_dir)
    labels_dir = run_dir / "labels.zarr"
    if (labels_dir / labels_name / "0").exists():
        labels_arg = str(labels_dir)
    else:
        log.warning("%s/%s not found: puncta get neuron id 0", labels_dir, labels_name)
        labels_arg = None
    halo = tuple(max(h, g) for h, g in zip(puncta_halo(config, volume.voxel_size), grid.halo))
    if tuple(grid.shape) != tuple(volume.spatial_shape):
        raise InputError(f"grid shape {grid.shape} does not match the volume's {volume.spatial_shape}")
    if halo != tuple(grid.halo):
        grid = BlockGrid(grid.shape, grid.block_shape, halo=halo, chunks=grid.chunks)
    noise = dict(noise or {})
    results = []
    for role, found in channels.items():
        if len(found) > 1:
            log.warning("%d channels have role %r; using the first, %s", len(found), role,
                        volume.channel_names[found[0]])
        channel = found[0]
        name = volume.channel_names[channel]
        level = noise.get(name)
        if level is None:
            level = estimate_noise(volume, channel, config, device=device)
        step = functools.partial(
            _puncta_block, volume_path=str(volume.path), channel=channel, labels_dir=labels_arg,
            labels_name=labels_name, config=config, noise=float(level), device=device,
            voxel_size=tuple(volume.voxel_size))
        params = {"volume": str(volume.path), "channel": name, "config": config.model_dump(),
                  "noise": float(level), "labels": labels_arg, "labels_name": labels_name,
                  "block_shape": grid.block_shape, "halo": grid.halo, "shape": grid.shape}
        summaries = run_blockwise(step, list(grid), name=f"puncta_{role}", state_dir=run_dir / "work",
                                  executor=executor, params=params, progress=progress)
        frames = [s for s in summaries if len(s)]
        table = pd.concat(frames, ignore_index=True) if frames else _empty_puncta()
        table = table.sort_values(["iz", "iy", "ix"], kind="stable").reset_index(drop=True)
        table.insert(0, "punctum_id", np.arange(len(table), dtype=np.int64))
        table = table[list(PUNCTA_COLUMNS)]
        table.attrs["noise"] = float(level)
        table.attrs["channel"] = name
        log.info("%s puncta (%s): %d", role, name, len(table))
        results.append(table)
    return results[0], results[1]


def _empty_puncta() -> pd.DataFrame:
    columns = {c: pd.Series(dtype=np.float64) for c in PUNCTA_COLUMNS if c != "punctum_id"}
    for c in ("iz", "iy", "ix"):
        columns[c] = pd.Series(dtype=np.int64)
    columns["neuron_id"] = pd.Series(dtype=np.uint64)
    return pd.DataFrame(columns)
