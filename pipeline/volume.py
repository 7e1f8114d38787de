"""OME-Zarr 0.5 volumes: the one on-disk image format every stage reads.

A volume is a Zarr v3 group laid out as OME-NGFF 0.5::

    volume.zarr/
      zarr.json            attributes: ome.multiscales (axes c,z,y,x + scale),
                           ome.omero (channel names, colours, windows),
                           connectome.channels (name + role of each channel)
      0/ 1/ ...            multiscale levels, (c, z, y, x), level 0 full size
      labels/
        zarr.json          ome.labels = ["neurons", ...]
        neurons/           an image-label: its own multiscales, axes z,y,x
          0/ ...

Channel *roles* say what a channel is for, so that steps find their inputs by
role rather than by name: ``fill``, ``membrane``, ``barcode``, ``pre``,
``post`` and ``marker``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import MissingChannelError, VolumeError

__all__ = [
    "COMPRESSORS",
    "ROLES",
    "Channel",
    "Volume",
    "create_label_image",
    "open_label_image",
]

log = logging.getLogger(__name__)

ROLES = ("fill", "membrane", "barcode", "pre", "post", "marker")
NGFF_VERSION = "0.5"
SPATIAL_AXES = ("z", "y", "x")
UNITS = ("nanometer", "micrometer", "millimeter", "meter")
#: The compressor of every array the pipeline writes (images, labels, work arrays): Blosc's
#: zstd, level 3, after a byte shuffle (a voxel's high bytes side by side, then its low ones).
#: On the sample's 16-bit channels it keeps 2.09 bytes in 1 where Zarr's default, plain zstd 3,
#: keeps 1.74, and writes 1.9-2.2x and reads 1.7-2.9x faster per core; its label image
#: stores 1.8x smaller (119 against 67 in 1), written and read 17-29 % slower, still at
#: 380-1560 MB/s (``python -m benchmarks.codecs``, BENCHMARKS.md "Session 22"). Arrays
#: written with another codec are read as they are: the codec is in each array's metadata.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)
_IMAGE_KINDS = "uif"  # integer and float images; no bool, complex, string or structured dtypes
# What a damaged chunk raises while decoding (zstd/blosc/gzip, a short buffer, a bad read).
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError)
_DEFAULT_COLORS = (
    "FFFFFF", "FF0000", "00FF00", "0000FF", "FFFF00", "FF00FF", "00FFFF",
    "FF8000", "8000FF", "00FF80", "FF0080", "80FF00", "0080FF",
)


@dataclass(frozen=True)
class Channel:
    """One image channel: a unique name, a role, a display colour and window.

    Parameters
    ----------
    name : str
        Unique channel name, e.g. ``"bc03"`` or ``"PSD95"``.
    role : str
        One of :data:`ROLES`.
    color : str, optional
        Display colour as six hex digits; by default one from a palette by channel index.
    window : tuple of float, optional
        Display window ``(start, end)``.
    """

    name: str
    role: str
    color: str | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise VolumeError(f"channel name must be a non-empty string, got {self.name!r}")
        if self.role not in ROLES:
            raise VolumeError(
                f"channel {self.name!r} has unknown role {self.role!r}; "
                f"expected one of {', '.join(ROLES)}"
            )


def _scale_transform(scale: Sequence[float]) -> list[dict]:
    return [{"type": "scale", "scale": [float(s) for s in scale]}]


def _axes(unit: str, with_channel: bool) -> list[dict]:
    axes = [{"name": "c", "type": "channel"}] if with_channel else []
    axes += [{"name": a, "type": "space", "unit": unit} for a in SPATIAL_AXES]
    return axes


def _level_factors(shape_zyx, voxel_size, levels):
    """Downsampling factor per level: halve y and x, and z once it is no coarser."""
    factors = [(1, 1, 1)]
    size = list(voxel_size)
    for _ in range(1, levels):
        # z is usually coarser than x/y in light microscopy: halve it only once
        # it has become no coarser than the (halved) x/y sampling.
        fz = 2 if size[0] <= size[1] * 2 else 1
        prev = factors[-1]
        factors.append((prev[0] * fz, prev[1] * 2, prev[2] * 2))
        size = [size[0] * fz, size[1] * 2, size[2] * 2]
    return factors


def _validate_geometry(path, shape_zyx, voxel_size, unit):
    if len(shape_zyx) != 3 or any(int(s) <= 0 for s in shape_zyx):
        raise VolumeError(f"{path}: spatial shape must be three positive sizes (z, y, x), got {tuple(shape_zyx)}")
    if len(voxel_size) != 3 or not all(
        isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in voxel_size
    ):
        raise VolumeError(f"{path}: voxel size must be three positive finite numbers (z, y, x), got {tuple(voxel_size)}")
    if unit not in UNITS:
        raise VolumeError(f"{path}: unit {unit!r} is not one of {', '.join(UNITS)}")


class Volume:
    """A validated handle on an OME-Zarr 0.5 image with channel roles.

    Use :meth:`create` for a new volume and :meth:`open` for an existing one.

    Attributes
    ----------
    path : pathlib.Path
    channels : list of Channel
    voxel_size : tuple of float
        Physical size of a level-0 voxel, (z, y, x).
    unit : str
    """

    def __init__(self, path, group: zarr.Group, channels, voxel_size, unit, levels):
        self.path = Path(path)
        self.group = group
        self.channels = list(channels)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.unit = unit
        self.levels = levels

    # -- construction -------------------------------------------------------
    @classmethod
    def create(
        cls,
        path,
        *,
        shape_zyx: Sequence[int],
        channels: Sequence[Channel],
        dtype="uint16",
        voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
        unit: str = "micrometer",
        chunks_zyx: Sequence[int] = (64, 128, 128),
        levels: int = 1,
        overwrite: bool = False,
        extra_attributes: dict | None = None,
    ) -> "Volume":
        """Create an empty volume (all zeros) with the given geometry and channels.

        Parameters
        ----------
        path : str or PathLike
            Where to create the ``.zarr`` group.
        shape_zyx : sequence of int
            Spatial shape of level 0.
        channels : sequence of Channel
            Channel names must be unique.
        dtype : str or numpy dtype
        voxel_size : sequence of float
            Physical voxel size (z, y, x) in ``unit``.
        unit : str
        chunks_zyx : sequence of int
            Spatial chunk shape; each chunk holds one channel.
        levels : int
            Number of multiscale levels (see :meth:`write_pyramid`).
        overwrite : bool
            Replace an existing volume at ``path``.
        extra_attributes : dict, optional
            Extra entries for the ``connectome`` group attribute (e.g. provenance).
        """
        path = Path(path)
        shape_zyx = tuple(int(s) for s in shape_zyx)
        _validate_geometry(path, shape_zyx, voxel_size, unit)
        channels = list(channels)
        if not channels:
            raise VolumeError(f"{path}: a volume needs at least one channel")
        names = [c.name for c in channels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise VolumeError(f"{path}: duplicate channel names {duplicates}")
        if int(levels) < 1:
            raise VolumeError(f"{path}: levels must be >= 1, got {levels}")
        if path.exists() and not overwrite:
            raise VolumeError(f"{path} already exists (pass overwrite=True to replace it)")
        chunks_zyx = tuple(min(int(c), s) for c, s in zip(chunks_zyx, shape_zyx))
        if len(chunks_zyx) != 3 or any(c <= 0 for c in chunks_zyx):
            raise VolumeError(f"{path}: chunks must be three positive sizes, got {tuple(chunks_zyx)}")

        group = zarr.open_group(str(path), mode="w" if overwrite else "w-", zarr_format=3)
        factors = _level_factors(shape_zyx, voxel_size, levels)
        datasets = []
        for level, f in enumerate(factors):
            level_shape = tuple(math.ceil(s / k) for s, k in zip(shape_zyx, f))
            group.create_array(
                str(level),
                shape=(len(channels),) + level_shape,
                chunks=(1,) + tuple(min(c, s) for c, s in zip(chunks_zyx, level_shape)),
                dtype=dtype,
                fill_value=0,
                compressors=COMPRESSORS,
                dimension_names=("c",) + SPATIAL_AXES,
            )
            scale = [1.0] + [v * k for v, k in zip(voxel_size, f)]
            datasets.append({"path": str(level), "coordinateTransformations": _scale_transform(scale)})
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
        lo, hi = (float(info.min), float(info.max)) if info else (0.0, 1.0)
        omero_channels = []
        for i, ch in enumerate(channels):
            start, end = ch.window if ch.window is not None else (lo, hi)
            omero_channels.append({
                "label": ch.name,
                "color": ch.color or _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)],
                "active": True,
                "window": {"start": float(start), "end": float(end), "min": lo, "max": hi},
            })
        group.attrs.update({
            "ome": {
                "version": NGFF_VERSION,
                "multiscales": [{
                    "name": path.stem,
                    "axes": _axes(unit, with_channel=True),
                    "datasets": datasets,
                }],
                "omero": {"channels": omero_channels, "rdefs": {"model": "color"}},
            },
            "connectome": {
                "channels": [{"name": c.name, "role": c.role} for c in channels],
                **(extra_attributes or {}),
            },
        })
        log.info("created volume %s: %d channels, shape %s", path, len(channels), shape_zyx)
        return cls.open(path)

    @classmethod
    def open(cls, path, mode: str = "r+") -> "Volume":
        """Open and validate an existing volume.

        Raises
        ------
        VolumeError
            If ``path`` is missing or is not a valid OME-Zarr 0.5 image with
            axes ``c,z,y,x`` and one name and role per channel; the message
            says exactly what is wrong.
        """
        path = Path(path)
        if not path.exists():
            raise VolumeError(f"{path}: no such volume")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            raise VolumeError(f"{path}: not a Zarr group ({exc})") from exc
        attrs = group.attrs.asdict()
        ome = attrs.get("ome")
        if not isinstance(ome, dict) or "multiscales" not in ome:
            raise VolumeError(f"{path}: missing OME-Zarr 'ome.multiscales' attributes")
        if ome.get("version") != NGFF_VERSION:
            raise VolumeError(f"{path}: OME-Zarr version {ome.get('version')!r}, expected {NGFF_VERSION!r}")
        ms = ome["multiscales"][0]
        axes = [a.get("name") for a in ms.get("axes", [])]
        if axes != ["c", *SPATIAL_AXES]:
            raise VolumeError(f"{path}: axes are {axes}, expected ['c', 'z', 'y', 'x']")
        units = {a.get("unit") for a in ms["axes"][1:]}
        if len(units) != 1:
            raise VolumeError(f"{path}: spatial axes have different units {sorted(map(str, units))}")
        unit = units.pop()
        datasets = ms.get("datasets", [])
        if not datasets:
            raise VolumeError(f"{path}: multiscales has no datasets")
        try:
            scale = datasets[0]["coordinateTransformations"][0]["scale"]
        except (KeyError, IndexError, TypeError) as exc:
            raise VolumeError(f"{path}: dataset 0 has no scale transformation") from exc
        voxel_size = tuple(scale[1:])
        _validate_geometry(path, (1, 1, 1), voxel_size, unit)
        for d in datasets:
            if d["path"] not in group:
                raise VolumeError(f"{path}: multiscale level {d['path']!r} is listed but missing")
        level0 = group[datasets[0]["path"]]
        if level0.ndim != 4:
            raise VolumeError(f"{path}: level 0 has {level0.ndim} dimensions {level0.shape}, expected 4 (c, z, y, x)")
        if any(int(s) <= 0 for s in level0.shape):
            raise VolumeError(f"{path}: level 0 is empty (shape {level0.shape}); every axis needs at least one voxel")
        if np.dtype(level0.dtype).kind not in _IMAGE_KINDS:
            raise VolumeError(f"{path}: image dtype {level0.dtype} is not supported; expected unsigned or "
                              "signed integers or floats (e.g. uint16, float32)")
        described = attrs.get("connectome", {}).get("channels")
        if not isinstance(described, list):
            raise VolumeError(f"{path}: missing 'connectome.channels' (channel names and roles)")
        if len(described) != level0.shape[0]:
            raise VolumeError(
                f"{path}: {len(described)} channels described but the image has "
                f"{level0.shape[0]} (shape {level0.shape})"
            )
        omero = {c.get("label"): c for c in ome.get("omero", {}).get("channels", [])}
        channels = []
        for entry in described:
            name, role = entry.get("name"), entry.get("role")
            o = omero.get(name, {})
            w = o.get("window")
            channels.append(Channel(
                name=name, role=role, color=o.get("color"),
                window=(w["start"], w["end"]) if w else None,
            ))
        names = [c.name for c in channels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise VolumeError(f"{path}: duplicate channel names {duplicates}")
        return cls(path, group, channels, voxel_size, unit, len(datasets))

    # -- geometry -----------------------------------------------------------
    @property
    def image(self) -> zarr.Array:
        """Level 0, shape (c, z, y, x)."""
        return self.group["0"]

    def level(self, index: int) -> zarr.Array:
        return self.group[str(index)]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.image.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Spatial chunk shape of level 0."""
        return tuple(self.image.chunks[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    def channel_index(self, name: str) -> int:
        """Index of the channel called ``name``."""
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise MissingChannelError(
                f"{self.path}: no channel named {name!r}; channels are {self.channel_names}"
            ) from None

    def channels_with_role(self, role: str, *, required: bool = False) -> list[int]:
        """Indices of channels with ``role``, in channel order.

        Raises
        ------
        MissingChannelError
            If ``required`` and there is no such channel.
        """
        if role not in ROLES:
            raise VolumeError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        found = [i for i, c in enumerate(self.channels) if c.role == role]
        if required and not found:
            roles = {c.name: c.role for c in self.channels}
            raise MissingChannelError(
                f"{self.path}: this step needs a channel with role {role!r}, "
                f"but the volume's channels are {roles}"
            )
        return found

    # -- data ---------------------------------------------------------------
    def read(self, region, channels: Sequence[int] | None = None) -> np.ndarray:
        """Read a spatial ``region`` (three slices) of some channels as (c, z, y, x).

        A chunk missing from the store reads as the array's fill value (0): Zarr
        v3 does not store chunks that equal the fill value, so absence is how an
        all-zero region is written and cannot be told from a lost file.

        Raises
        ------
        VolumeError
            When a chunk cannot be decoded (corrupt or truncated file; the message
            names the chunk file) or a float image holds NaN or infinity (the
            message names the channels and the region).
        """
        region = tuple(region)
        channels = list(range(self.shape[0])) if channels is None else list(channels)
        if not channels:
            raise VolumeError(f"{self.path}: read needs at least one channel")
        try:
            if channels == list(range(channels[0], channels[-1] + 1)):
                data = self.image[(slice(channels[0], channels[-1] + 1),) + region]
            else:
                data = np.stack([self.image[(c,) + region] for c in channels])
        except _DECODE_ERRORS as exc:
            raise self._damaged_chunk(region, channels, exc) from exc
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = [self.channels[c].name for i, c in enumerate(channels) if not np.isfinite(data[i]).all()]
            count = int(data.size - np.count_nonzero(np.isfinite(data)))
            spans = ", ".join(f"{r.start}:{r.stop}" for r in region)
            raise VolumeError(f"{self.path}: {count} NaN or infinite value(s) in channel(s) {bad} "
                              f"within z,y,x [{spans}]; replace them (e.g. with 0) before running")
        return data

    def constant_value(self, channel: int):
        """The value of ``channel`` if every voxel has it, else None.

        Reads chunk by chunk and stops at the first chunk that differs, so real
        data costs one chunk; only a constant channel is read to the end.
        """
        first = None
        for index in np.ndindex(*(math.ceil(s / c) for s, c in zip(self.spatial_shape, self.chunks))):
            box = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.chunks, self.spatial_shape))
            data = self.read(box, [channel])
            lo, hi = data.min(), data.max()
            if first is None:
                first = lo
            if lo != first or hi != first:
                return None
        return first.item()

    def _damaged_chunk(self, region, channels, exc) -> VolumeError:
        """Find which chunk of ``region`` fails to decode and name its file."""
        image = self.image
        cz, cy, cx = image.chunks[1:]
        ranges = [range(r.start // c, (r.stop - 1) // c + 1) for r, c in zip(region, (cz, cy, cx))]
        for c in channels:
            for iz in ranges[0]:
                for iy in ranges[1]:
                    for ix in ranges[2]:
                        box = tuple(slice(i * n, (i + 1) * n) for i, n in zip((iz, iy, ix), (cz, cy, cx)))
                        try:
                            image[(c,) + box]
                        except _DECODE_ERRORS as chunk_exc:
                            key = (c, iz, iy, ix)
                            try:
                                name = image.metadata.encode_chunk_key(key)
                            except AttributeError:
                                name = "/".join(map(str, key))
                            return VolumeError(
                                f"{self.path}: damaged chunk {self.path / (image.basename or '0') / name} of channel "
                                f"{self.channels[c].name!r} (corrupt or truncated): "
                                f"{type(chunk_exc).__name__}: {chunk_exc}")
        return VolumeError(f"{self.path}: cannot read region {region}: {type(exc).__name__}: {exc}")

    def write(self, region, data: np.ndarray, channels: Sequence[int] | None = None) -> None:
        """Write (c, z, y, x) ``data`` into a spatial ``region`` of level 0."""
        region = tuple(region)
        if channels is None:
            self.image[(slice(None),) + region] = data
        else:
            for i, c in enumerate(channels):
                self.image[(c,) + region] = data[i]

    # -- labels -------------------------------------------------------------
    def label_names(self) -> list[str]:
        if "labels" not in self.group:
            return []
        return list(self.group["labels"].attrs.get("ome", {}).get("labels", []))

    def create_labels(self, name: str, dtype="uint64", chunks_zyx=None, overwrite=False) -> zarr.Array:
        """Create the label image ``labels/<name>`` (level 0 only) and return its array."""
        return create_label_image(
            self.path / "labels", name, shape_zyx=self.spatial_shape,
            voxel_size=self.voxel_size, unit=self.unit,
            chunks_zyx=chunks_zyx or self.chunks, dtype=dtype, overwrite=overwrite,
        )

    def labels(self, name: str) -> zarr.Array:
        """Level 0 of the label image ``labels/<name>``."""
        if name not in self.label_names():
            raise VolumeError(f"{self.path}: no label image {name!r}; it has {self.label_names()}")
        return open_label_image(self.path / "labels", name, mode="r" if self.group.read_only else "r+")

    def write_pyramid(self) -> None:
        """Fill levels 1.. by block means of level 0, streamed with Dask."""
        import dask.array as da

        for level in range(1, self.levels):
            prev = da.from_zarr(self.level(level - 1))
            target = self.level(level)
            factors = [max(1, round(p / t)) for p, t in zip(prev.shape, target.shape)]
            down = da.coarsen(np.mean, prev, dict(enumerate(factors)), trim_excess=False)
            down = down.astype(self.dtype)[tuple(slice(0, s) for s in target.shape)]
            down.rechunk(target.chunks).to_zarr(target, safe_chunks=False)

    def __repr__(self):
        return (
            f"Volume({str(self.path)!r}, shape={self.shape}, voxel_size={self.voxel_size} "
            f"{self.unit}, channels={[(c.name, c.role) for c in self.channels]})"
        )


def create_label_image(
    labels_dir, name, *, shape_zyx, voxel_size, unit="micrometer",
    chunks_zyx=(64, 128, 128), dtype="uint64", overwrite=False, source_image="../../",
) -> zarr.Array:
    """Create an OME-Zarr 0.5 image-label ``labels_dir/name`` and return level 0.

    ``labels_dir`` is a labels group (created if missing, with its
    ``ome.labels`` list kept up to date). It may sit inside an image
    (``volume.zarr/labels``) or stand alone (``run/labels.zarr``).
    """
    labels_dir = Path(labels_dir)
    shape_zyx = tuple(int(s) for s in shape_zyx)
    _validate_geometry(labels_dir / name, shape_zyx, voxel_size, unit)
    parent = zarr.open_group(str(labels_dir), mode="a", zarr_format=3)
    ome = dict(parent.attrs.get("ome", {}))
    names = list(ome.get("labels", []))
    if name in names and not overwrite and name in parent:
        raise VolumeError(f"{labels_dir / name} already exists (pass overwrite=True to replace it)")
    group = parent.create_group(name, overwrite=True)
    chunks = tuple(min(int(c), s) for c, s in zip(chunks_zyx, shape_zyx))
    array = group.create_array(
        "0", shape=shape_zyx, chunks=chunks, dtype=dtype, fill_value=0, compressors=COMPRESSORS,
        dimension_names=SPATIAL_AXES,
    )
    group.attrs.update({"ome": {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": _axes(unit, with_channel=False),
            "datasets": [{"path": "0", "coordinateTransformations": _scale_transform(voxel_size)}],
        }],
        "image-label": {"version": NGFF_VERSION, "source": {"image": source_image}},
    }})
    if name not in names:
        names.append(name)
    parent.attrs.update({"ome": {"version": NGFF_VERSION, **ome, "labels": names}})
    return array


def open_label_image(labels_dir, name, mode: str = "r+") -> zarr.Array:
    """Level 0 of the image-label ``labels_dir/name``; a clear error when missing."""
    path = Path(labels_dir) / name
    if not (path / "0").exists():
        raise VolumeError(f"{path}: no such label image")
    return zarr.open_array(str(path / "0"), mode=mode)
