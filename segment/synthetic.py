"""Small synthetic barcoded volumes with known truth, for tests and demos.

Objects are tubes (capsules between two points) and balls, given in voxel
coordinates (z, y, x). Each object has a binary barcode; the image has a fill
channel (every object bright) and one channel per barcode bit (an object is
bright in the channels of its code, with a per-object level). Everything is
blurred by an anisotropic Gaussian point-spread function and gets Gaussian
noise over a background offset, then stored as uint16.

This is deliberately simpler than :mod:`sample_data`; it lets the segmentation
tests build exactly the configurations they need (touching tubes with
different codes, one tube crossing a block face, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.ndimage as ndi

from pipeline import Channel, Volume

__all__ = ["Ball", "SyntheticVolume", "Tube", "random_objects", "render", "write_volume"]


@dataclass(frozen=True)
class Tube:
    """A capsule of ``radius`` voxels from ``start`` to ``end`` (z, y, x)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float
    code: tuple[int, ...]
    level: float = 1.0


@dataclass(frozen=True)
class Ball:
    """A ball of ``radius`` voxels around ``center`` (z, y, x)."""

    center: tuple[float, float, float]
    radius: float
    code: tuple[int, ...]
    level: float = 1.0


@dataclass
class SyntheticVolume:
    """Rendered image (c, z, y, x) uint16, channel list and truth labels (z, y, x) uint64."""

    image: np.ndarray
    channels: list[Channel]
    truth: np.ndarray
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: dict = field(default_factory=dict)


def _distance(obj, grid, anisotropy):
    z, y, x = grid
    az, ay, ax = anisotropy
    if isinstance(obj, Ball):
        cz, cy, cx = obj.center
        return np.sqrt(((z - cz) * az) ** 2 + ((y - cy) * ay) ** 2 + ((x - cx) * ax) ** 2)
    p0 = np.asarray(obj.start, float)
    p1 = np.asarray(obj.end, float)
    d = (p1 - p0) * anisotropy
    length2 = float(d @ d) or 1e-12
    rel = [(z - p0[0]) * az, (y - p0[1]) * ay, (x - p0[2]) * ax]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / length2, 0.0, 1.0)
    return np.sqrt((rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2)


def render(shape: Sequence[int], objects: Sequence[Tube | Ball], *, n_barcodes: int | None = None,
           psf_sigma=(0.7, 1.0, 1.0), anisotropy=(1.0, 1.0, 1.0), brightness: float = 1000.0,
           background: float = 100.0, noise: float = 25.0, seed: int = 0,
           voxel_size=(1.0, 1.0, 1.0)) -> SyntheticVolume:
    """Render objects into a fill + barcode image with truth labels.

    Parameters
    ----------
    shape : (z, y, x)
    objects : sequence of Tube or Ball
        Truth label ``i + 1`` is object ``i``; where objects overlap, the one
        whose surface is furthest (relative to its radius) wins.
    n_barcodes : int, optional
        Number of barcode channels (default: length of the first code).
    psf_sigma : (z, y, x)
        Gaussian point-spread function in voxels.
    anisotropy : (z, y, x)
        Scale applied to coordinate differences when measuring radii (so a
        "round" tube with z twice as coarse uses ``(2, 1, 1)``).
    brightness, background, noise : float
        Peak signal, offset and Gaussian noise sigma of the uint16 image.
    seed : int
    voxel_size : (z, y, x)
        Recorded with the volume.
    """
    shape = tuple(int(s) for s in shape)
    if not objects:
        raise ValueError("render needs at least one object")
    k = len(objects[0].code) if n_barcodes is None else int(n_barcodes)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    anisotropy = np.asarray(anisotropy, float)
    truth = np.zeros(shape, np.uint64)
    best = np.full(shape, np.inf, np.float32)
    fill = np.zeros(shape, np.float32)
    codes = np.zeros((k,) + shape, np.float32)
    for i, obj in enumerate(objects):
        if len(obj.code) != k:
            raise ValueError(f"object {i} has a code of length {len(obj.code)}, expected {k}")
        rel = (_distance(obj, grid, anisotropy) / obj.radius).astype(np.float32)
        inside = rel <= 1.0
        win = inside & (rel < best)
        truth[win] = i + 1
        best[win] = rel[win]
        fill[inside] = 1.0
    for i, obj in enumerate(objects):
        own = truth == i + 1
        for c in range(k):
            if obj.code[c]:
                codes[c][own] = obj.level
    rng = np.random.default_rng(seed)
    channels = [Channel("fill", "fill")] + [Channel(f"bc{c:02d}", "barcode") for c in range(k)]
    stack = np.concatenate([fill[None], codes])
    out = np.empty(stack.shape, np.uint16)
    for c in range(stack.shape[0]):
        blurred = ndi.gaussian_filter(stack[c], psf_sigma)
        img = background + brightness * blurred + rng.normal(0.0, noise, size=shape)
        out[c] = np.clip(np.round(img), 0, 65535).astype(np.uint16)
    return SyntheticVolume(image=out, channels=channels, truth=truth, voxel_size=tuple(voxel_size))


def random_objects(shape, n_objects: int = 8, *, n_barcodes: int = 6, seed: int = 0,
                   radius=(1.5, 3.5), ball_fraction: float = 0.3) -> list[Tube | Ball]:
    """Random tubes and balls across the volume, each with a distinct non-empty random code."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape, float)
    seen, objects = set(), []
    while len(objects) < n_objects:
        code = tuple(int(b) for b in rng.random(n_barcodes) < 0.5)
        if sum(code) == 0 or code in seen:
            continue
        seen.add(code)
        level = float(rng.uniform(0.7, 1.3))
        if rng.random() < ball_fraction:
            r = float(rng.uniform(radius[1], radius[1] * 1.8))
            center = tuple(rng.uniform(r / 2, shape - r / 2))
            objects.append(Ball(center=center, radius=r, code=code, level=level))
        else:
            r = float(rng.uniform(*radius))
            a = rng.uniform(0, shape)
            b = rng.uniform(0, shape)
            objects.append(Tube(start=tuple(a), end=tuple(b), radius=r, code=code, level=level))
    return objects


def write_volume(path, synthetic: SyntheticVolume, *, chunks_zyx=(16, 32, 32), channels=None) -> Volume:
    """Write a :class:`SyntheticVolume` (optionally only some of its channels) as an OME-Zarr volume."""
    chans = synthetic.channels
    image = synthetic.image
    if channels is not None:
        idx = [i for i, c in enumerate(chans) if c.name in channels]
        chans = [chans[i] for i in idx]
        image = image[idx]
    vol = Volume.create(Path(path), shape_zyx=image.shape[1:], channels=chans,
                        voxel_size=synthetic.voxel_size, chunks_zyx=chunks_zyx, overwrite=True)
    vol.write((slice(None),) * 3, image)
    return vol
