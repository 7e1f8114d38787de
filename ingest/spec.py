"""The channel spec (``CHANNELS.yaml``): which source array becomes which output channel.

Example::

    # CHANNELS.yaml -- paths are relative to this file's folder
    sources: [stack.ome.tif, prism.zarr]     # optional: sources may come from the command line
    voxel_size: [0.4, 0.1, 0.1]              # optional: (z, y, x) as imaged; else from the metadata
    unit: micrometer
    expansion_factor: 4.0                    # optional: record biological (pre-expansion) coordinates
    channels:
      - {name: fill, role: fill, source: stack.ome.tif, channel: 0, color: FFFFFF}
      - {name: psd95, role: post, source: stack.ome.tif, channel: PSD95}
      - {role: barcode, source: prism.zarr, dataset: raw}          # every channel of a group
      - {name: "mk{i}", role: marker, source: prism.zarr, dataset: markers}

An entry with a ``name`` and no ``channel`` takes a single-channel source;
with ``channel`` (an index or a channel name) it picks one channel of a
multi-channel source. An entry without ``name`` (or whose name is a template
with ``{i}``, the channel's position in the source, or ``{name}``, the
source's own channel name) takes *every* channel of its source.

``source`` is an index into the source list, one of the given sources (its
path as given, or its file name), or a path relative to the spec file; it
may be left out when there is exactly one source. ``dataset`` is the path of
an array or group inside an HDF5 file, Zarr or N5 container (or the series
index of a TIFF file).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import StrictModel, load_yaml
from pipeline.errors import ConfigError
from pipeline.volume import ROLES

__all__ = [
    "ChannelSpec",
    "IngestConfig",
    "SCALINGS",
    "COMPRESSIONS",
    "load_channel_spec",
    "normalize_unit",
    "validate_model",
]

#: How values are mapped when the output dtype differs from the source's (see ``ingest.core``).
SCALINGS = ("clip", "range", "window")
COMPRESSIONS = ("zstd", "blosc", "none")

_UNIT_ALIASES = {
    "nanometer": "nanometer", "nanometre": "nanometer", "nm": "nanometer",
    "micrometer": "micrometer", "micrometre": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "\\u00b5m": "micrometer",
    "millimeter": "millimeter", "millimetre": "millimeter", "mm": "millimeter",
    "meter": "meter", "metre": "meter", "m": "meter",
}
#: Size of each unit in metres, for converting voxel sizes read from metadata.
UNIT_METERS = {"nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "meter": 1.0}


def normalize_unit(unit: str) -> str:
    """The OME-NGFF name of a length unit (``um``, ``µm``, ``micron`` -> ``micrometer``).

    Raises
    ------
    ConfigError
        If the unit is not a length unit we know; validators accept any
        string, so this is where nonsense units are caught.
    """
    key = str(unit).strip().lower() if unit is not None else ""
    if key not in _UNIT_ALIASES:
        raise ConfigError(
            f"unknown length unit {unit!r}; use one of nanometer, micrometer, millimeter, meter "
            "(or nm, um, mm, m)"
        )
    return _UNIT_ALIASES[key]


def _positive_triple(name, value):
    if value is None:
        return value
    if len(value) != 3 or not all(math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"{name} must be three positive numbers (z, y, x), got {list(value)}")
    return value


class ChannelSpec(StrictModel):
    """One entry of ``channels:``; it may expand to several channels (see the module doc).

    Attributes
    ----------
    name : str, optional
        Output channel name, or a template with ``{i}`` / ``{name}``; left out,
        the source's channel names are used.
    role : str
        One of ``fill membrane barcode pre post marker``.
    source : int or str, optional
        Which source (index, given path or file name, or a path relative to the spec).
    dataset : str, optional
        Array or group inside an HDF5 / Zarr / N5 container, or a TIFF series index.
    channel : int or str, optional
        Index or name of one channel in a multi-channel source.
    axes : str, optional
        Axis names of the source array, e.g. ``"zcyx"`` (letters ``t c z y x``; other
        letters must have size 1). By default taken from the metadata, else
        ``yx``, ``zyx``, ``czyx``, ``tczyx`` by dimensionality.
    color : str, optional
        Six hex digits (``FF00FF``).
    window : (float, float), optional
        Display window in output values; by default percentiles of a sample.
    """

    name: str | None = None
    role: str
    source: int | str | None = None
    dataset: str | None = None
    channel: int | str | None = None
    axes: str | None = None
    color: str | None = None
    window: tuple[float, float] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        if value is not None and not value.strip():
            raise ValueError("a channel name must not be empty")
        return value

    @field_validator("role")
    @classmethod
    def _role(cls, value):
        if value not in ROLES:
            raise ValueError(f"unknown role {value!r}; expected one of {', '.join(ROLES)}")
        return value

    @field_validator("axes")
    @classmethod
    def _axes(cls, value):
        if value is None:
            return value
        value = value.lower()
        if len(set(value)) != len(value) or "y" not in value or "x" not in value:
            raise ValueError(f"axes must name each axis once and include y and x, got {value!r}")
        return value

    @field_validator("color")
    @classmethod
    def _color(cls, value):
        if value is None:
            return value
        value = value.lstrip("#").upper()
        if not re.fullmatch(r"[0-9A-F]{6}", value):
            raise ValueError(f"color must be six hex digits like FF00FF, got {value!r}")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"window must be (start, end) with start < end, got {list(value)}")
        return value

    @property
    def expands(self) -> bool:
        """Whether this entry takes every channel of its source."""
        return self.channel is None and (self.name is None or "{" in self.name)


class IngestConfig(StrictModel):
    """A whole ingest: sources, channels, geometry and output layout.

    Attributes
    ----------
    sources : list of str
        Source paths (relative to the spec file); more may be given on the command line.
    channels : list of ChannelSpec
    voxel_size : (float, float, float), optional
        Voxel size (z, y, x) *as imaged* in ``unit``; by default read from the
        sources' metadata, else 1.
    unit : str
        Length unit of ``voxel_size`` and of the output (``micrometer``).
    expansion_factor : float, optional
        Linear expansion of the tissue. The output's ``multiscales`` scale is
        then the biological (pre-expansion) voxel size ``voxel_size / F``; the
        expanded one is kept in the ``connectome.expansion`` attribute.
    chunks : (int, int, int)
        Output chunk shape (z, y, x).
    shards : (int, int, int), optional
        Output shard shape (z, y, x), a multiple of ``chunks``; none by default.
    levels : int
        Multiscale levels (1 = full resolution only).
    dtype : str, optional
        Output dtype; by default the sources' (promoted losslessly when they differ).
    scaling : str, optional
        ``clip``, ``range`` or ``window``: how values are mapped to ``dtype``;
        required when the conversion could lose values.
    compression : str
        ``blosc`` (default): zstd after a byte shuffle, the codec of every array
        the pipeline writes (:data:`pipeline.volume.COMPRESSORS`); on the sample's
        16-bit channels 17 % smaller chunks than ``zstd`` alone, written about 2x
        and read 1.7-2.9x faster. ``zstd`` (Zarr's default codec) or ``none``.
    compression_level : int, optional
        Compressor level; by default 3. Blosc takes 0-9; for ``zstd`` level 1
        writes about 2.5x faster for about 10 % larger uint16 chunks.
    window_percentiles : (float, float)
        Percentiles of the sampled values that give each channel's display window.
    block_mib : float
        Memory budget of one channel of one block, in MiB; bounds peak memory.
    """

    sources: list[str] = Field(default_factory=list)
    channels: list[ChannelSpec] = Field(min_length=1)
    voxel_size: tuple[float, float, float] | None = None
    unit: str = "micrometer"
    expansion_factor: float | None = None
    chunks: tuple[int, int, int] = (64, 128, 128)
    shards: tuple[int, int, int] | None = None
    levels: int = Field(default=1, ge=1)
    dtype: str | None = None
    scaling: Literal["clip", "range", "window"] | None = None
    compression: Literal["zstd", "blosc", "none"] = "blosc"
    compression_level: int | None = Field(default=None, ge=-7, le=22)
    window_percentiles: tuple[float, float] = (1.0, 99.9)
    block_mib: float = Field(default=32.0, gt=0)

    @field_validator("voxel_size")
    @classmethod
    def _voxel_size(cls, value):
        return _positive_triple("voxel size", value)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value):
        try:
            return normalize_unit(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("expansion_factor")
    @classmethod
    def _expansion(cls, value):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"expansion factor must be a positive number, got {value}")
        return value

    @field_validator("chunks", "shards")
    @classmethod
    def _chunks(cls, value):
        if value is not None and any(v <= 0 for v in value):
            raise ValueError(f"sizes must be positive (z, y, x), got {list(value)}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value):
        if value is None or value == "keep":
            return None
        try:
            dtype = np.dtype(value)
        except TypeError:
            raise ValueError(f"not a numpy dtype: {value!r}") from None
        if dtype.kind not in "uif" or dtype.itemsize > 8:
            raise ValueError(f"output dtype must be an integer or float type, got {value!r}")
        return dtype.name

    @field_validator("window_percentiles")
    @classmethod
    def _percentiles(cls, value):
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError(f"window percentiles must satisfy 0 <= low < high <= 100, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _shards_multiple(self):
        if self.shards is not None and any(s % c for s, c in zip(self.shards, self.chunks)):
            raise ValueError(f"shards {list(self.shards)} must be multiples of chunks {list(self.chunks)}")
        return self


def validate_model(model, data, source: str):
    """Validate ``data`` into ``model``; a :class:`ConfigError` with one line naming every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for problem in exc.errors():
            path = ".".join(str(p) for p in problem["loc"]) or "<top level>"
            if problem["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key")
            elif problem["type"] == "missing":
                problems.append(f"{path}: required key is missing")
            else:
                msg = problem["msg"].removeprefix("Value error, ")
                problems.append(f"{path}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_channel_spec(path) -> IngestConfig:
    """Read ``CHANNELS.yaml`` into an :class:`IngestConfig`.

    A file whose top level is a list is taken as the ``channels`` list alone.
    Relative ``sources`` are resolved against the file's folder.

    Raises
    ------
    ConfigError
        Missing or malformed file, unknown keys, unknown roles, bad values;
        one line naming the file and key path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such channel spec file")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: a channel spec must be a .yaml file")
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        if "top level must be a mapping" not in str(exc):
            raise
        import yaml

        data = {"channels": yaml.safe_load(path.read_text())}
    config = validate_model(IngestConfig, data, str(path))
    config.sources = [_relative_to(s, path.parent) for s in config.sources]
    resolved = []
    for entry in config.channels:
        if isinstance(entry.source, str) and entry.source not in config.sources:
            candidate = _relative_to(entry.source, path.parent)
            if Path(candidate).exists():
                entry = entry.model_copy(update={"source": candidate})
        resolved.append(entry)
    config.channels = resolved
    return config


def _relative_to(source: str, folder: Path) -> str:
    if "://" in source or Path(source).is_absolute():
        return source
    return str(folder / source)
