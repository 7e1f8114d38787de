"""Ingest: stream any set of sources into one validated OME-Zarr 0.5 volume.

How it runs
-----------
1. **Plan** (cheap, metadata only): open every source, expand the channel
   spec into output channels, check names, roles, shapes, sizes, dtypes,
   voxel size and the output path. Every bad input stops here with a
   one-line error naming the file or channel, before anything is written.
2. **Create** the volume (:meth:`pipeline.volume.Volume.create`) with
   ``connectome.ingest.complete = false`` and a fingerprint of the plan.
3. **Copy** block by block with :func:`pipeline.runner.run_blockwise`: a
   block reads one channel at a time from its source, converts it, writes it
   and moves on, so memory is bounded by ``block_mib`` (one channel of one
   block) whatever the volume size. Done-markers live in
   ``OUT.zarr/.ingest_state``: rerunning the same ingest after a crash or a
   Ctrl-C skips finished blocks.
4. **Pyramid**: levels ``1..levels-1`` by block means, blockwise and resumable
   (:mod:`ingest.pyramid`).
5. **Finish**: display windows from the sampled blocks, then
   ``connectome.ingest.complete = true`` and the state folder is removed.

Dtype rule
----------
* By default the output keeps the sources' dtype. Sources of different
  dtypes are promoted to one type that holds every value of each
  (``numpy.result_type``: uint8 + uint16 -> uint16, uint16 + int16 -> int32);
  values never change.
* With an explicit ``dtype`` the values are copied unchanged when the
  conversion is lossless (``numpy.can_cast(src, dst, "safe")``) and no
  ``scaling`` is asked for. A conversion that could lose values needs an
  explicit ``scaling``, else a :class:`ConfigError`:

  ``clip``
      round to the nearest value and clip to the output type's range.
  ``range``
      linear map of the *source type's* range onto the output's (integers:
      their full range, e.g. uint16 0..65535 -> uint8 0..255; floats: 0..1),
      rounded for integer outputs.
  ``window``
      linear map of each channel's measured window (its ``window_percentiles``
      over a sample of blocks) onto the output's range, clipped: the
      contrast-stretching choice for 16 -> 8 bit.

Coordinates
-----------
``voxel_size`` is the voxel size *as imaged* (by default from the sources'
metadata: OME-TIFF, ImageJ, OME-Zarr, N5, HDF5 ``element_size_um``,
precomputed ``resolution``), converted to ``unit``. With an
``expansion_factor`` F the ``multiscales`` scale records the biological
(pre-expansion) voxel size ``voxel_size / F``, which is what every later
measurement (synapse distances, neuron sizes) means; the expanded voxel size
and F are kept in the ``connectome.expansion`` attribute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.blocks import Block, BlockGrid
from pipeline.config import ComputeConfig
from pipeline.errors import ConfigError, InputError
from pipeline.runner import Executor, run_blockwise
from pipeline.volume import COMPRESSORS, Channel, Volume

from . import sources as _sources
from .pyramid import build_pyramid, choose_block_shape
from .sources import Source, open_source
from .spec import ChannelSpec, IngestConfig, load_channel_spec, validate_model

__all__ = [
    "ingest", "ingest_config", "plan_ingest", "IngestPlan", "PlannedChannel", "Conversion", "is_complete", "STATE_DIR",
]

log = logging.getLogger(__name__)

#: Folder (inside the output) that holds the done-markers of an unfinished ingest.
STATE_DIR = ".ingest_state"
_SAMPLE_BLOCKS = 64
_SAMPLE_VALUES = 1 << 14
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# conversion


@dataclass(frozen=True)
class Conversion:
    """How one channel's values become output values: ``out = a * x + b`` (or a plain copy)."""

    mode: str  # "copy", "clip" or "linear"
    dtype: str
    a: float = 1.0
    b: float = 0.0

    def apply(self, data: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if self.mode == "copy":
            return data.astype(dtype, copy=False)
        work = np.float32 if data.dtype.itemsize <= 2 and data.dtype.kind in "ui" else np.float64
        x = data.astype(work)
        if self.mode == "linear":
            x *= work(self.a)
            x += work(self.b)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            np.rint(x, out=x)
            np.clip(x, info.min, info.max, out=x)
        elif self.mode == "linear":
            np.clip(x, 0.0, 1.0, out=x)
        return x.astype(dtype)


def _type_range(dtype) -> tuple[float, float]:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _conversion(src_dtype, out_dtype, scaling, window, label) -> Conversion:
    src_dtype, out_dtype = np.dtype(src_dtype), np.dtype(out_dtype)
    if scaling is None:
        if src_dtype == out_dtype or np.can_cast(src_dtype, out_dtype, "safe"):
            return Conversion("copy", out_dtype.name)
        raise ConfigError(
            f"channel {label!r}: converting {src_dtype} to {out_dtype} can lose values; "
            "choose a scaling: clip, range or window"
        )
    if scaling == "clip":
        return Conversion("clip", out_dtype.name)
    lo, hi = _type_range(src_dtype) if scaling == "range" else window
    t0, t1 = _type_range(out_dtype)
    if not hi > lo:
        hi = lo + 1.0
    a = (t1 - t0) / (hi - lo)
    return Conversion("linear", out_dtype.name, a=a, b=t0 - a * lo)


# ---------------------------------------------------------------------------
# the plan


@dataclass
class PlannedChannel:
    """One output channel: where it comes from and how it is shown."""

    name: str
    role: str
    source: Source
    index: int
    color: str | None = None
    window: tuple[float, float] | None = None
    entry: int = 0

    def describe(self) -> dict:
        return {"name": self.name, "role": self.role, "source": self.source.label, "channel": self.index,
                "source_channel": self.source.channel_names[self.index], "dtype": str(self.source.dtype)}


@dataclass
class IngestPlan:
    """Everything decided before a byte is written (see :func:`plan_ingest`)."""

    config: IngestConfig
    channels: list[PlannedChannel]
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: tuple[float, float, float]
    scale: tuple[float, float, float]
    unit: str
    sources: list[Source] = field(default_factory=list)

    def describe(self) -> dict:
        c = self.config
        return {
            "version": _FORMAT_VERSION,
            "sources": [s.describe() for s in self.sources],
            "channels": [ch.describe() for ch in self.channels],
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "scaling": c.scaling,
            "voxel_size": list(self.voxel_size),
            "scale": list(self.scale),
            "unit": self.unit,
            "expansion_factor": c.expansion_factor,
            "chunks": list(c.chunks),
            "shards": list(c.shards) if c.shards else None,
            "levels": c.levels,
            "compression": c.compression,
            "compression_level": c.compression_level,
            "window_percentiles": list(c.window_percentiles),
            "block_mib": c.block_mib,
        }

    @property
    def fingerprint(self) -> str:
        """Hash of the plan with sources named by absolute path: same ingest, same fingerprint."""
        plan = self.describe()
        plan["sources"] = [s.identity() for s in self.sources]
        plan["channels"] = [{**d, "source": ch.source.identity()} for d, ch in zip(plan["channels"], self.channels)]
        text = json.dumps(plan, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pick_source(entry: ChannelSpec, position: int, sources: list[str], where: str) -> str:
    what = f"{where}: channel entry {position} ({entry.name or entry.role})"
    s = entry.source
    if s is None:
        if len(sources) == 1:
            return sources[0]
        if not sources:
            raise ConfigError(f"{what}: no source given; list sources or set 'source'")
        raise ConfigError(f"{what}: {len(sources)} sources are given; set 'source' to one of {sources}")
    if isinstance(s, int):
        if not 0 <= s < len(sources):
            raise ConfigError(f"{what}: source index {s} is out of range; {len(sources)} sources are given")
        return sources[s]
    if s in sources:
        return s
    matches = [x for x in sources if Path(x).name == s or _same_path(x, s)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"{what}: source {s!r} matches several sources {matches}; give its full path")
    return s


def _same_path(a, b) -> bool:
    if "://" in str(a) or "://" in str(b):
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _expand(entry: ChannelSpec, source: Source, position: int, where: str) -> list[PlannedChannel]:
    common = dict(role=entry.role, source=source, color=entry.color, window=entry.window, entry=position)
    label = entry.name or f"entry {position}"
    try:
        if entry.channel is not None:
            return [PlannedChannel(name=entry.name or source.channel_names[source.channel_index(entry.channel)],
                                   index=source.channel_index(entry.channel), **common)]
    except InputError as exc:
        raise InputError(f"{where}: channel {label!r}: {exc}") from None
    if not entry.expands:
        if source.n_channels != 1:
            raise ConfigError(
                f"{where}: channel {entry.name!r}: {source.label} has {source.n_channels} channels "
                f"{source.channel_names}; set 'channel' to pick one, or use a name template such as "
                f"'{entry.name}{{i}}' to take them all"
            )
        return [PlannedChannel(name=entry.name, index=0, **common)]
    out = []
    for i, own in enumerate(source.channel_names):
        name = own if entry.name is None else entry.name.format(i=i, name=own)
        out.append(PlannedChannel(name=name, index=i, **common))
    return out


def _output_dtype(channels, config: IngestConfig) -> np.dtype:
    if config.dtype is not None:
        return np.dtype(config.dtype)
    dtype = np.result_type(*{ch.source.dtype for ch in channels})
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if dtype == np.float16:
        dtype = np.dtype(np.float32)
    if dtype.kind not in "uif":
        listing = sorted({f"{ch.source.label} {ch.source.dtype}" for ch in channels})
        raise InputError(f"sources have dtypes that no output type holds losslessly: {listing}; set 'dtype'")
    return dtype


def _voxel_size(channels, config: IngestConfig, voxel_size) -> tuple[float, float, float]:
    unit = config.unit
    if voxel_size is not None:
        return tuple(float(v) for v in voxel_size)
    found = {}
    for ch in channels:
        s = ch.source
        if s.voxel_size is not None and s.label not in found:
            vs = _sources._to_unit(s.voxel_size, s.unit or "micrometer", unit)
            if not all(math.isfinite(v) and v > 0 for v in vs):
                raise InputError(f"{s.label}: metadata gives voxel size {tuple(s.voxel_size)} {s.unit}; "
                                 "it must be positive: pass voxel_size")
            found[s.label] = vs
    if not found:
        log.warning("no voxel size given or found in the metadata; using 1 %s", unit)
        return (1.0, 1.0, 1.0)
    values = list(found.values())
    for vs in values:
        if not np.allclose(vs, values[0], rtol=1e-6):
            listing = "; ".join(f"{k} {tuple(round(x, 6) for x in v)}" for k, v in found.items())
            raise InputError(f"sources disagree on the voxel size ({unit}): {listing}; pass voxel_size")
    return tuple(values[0])


def plan_ingest(config: IngestConfig, sources: Sequence = (), *, where: str = "channel spec",
                voxel_size=None) -> IngestPlan:
    """Open the sources and check everything; nothing is written.

    Raises
    ------
    InputError, ConfigError
        One line naming the file or channel: missing file, unreadable or
        truncated TIFF, missing dataset or channel, duplicate names, shapes
        that differ, zero-size volume, lossy conversion without a scaling.
    """
    source_list = list(dict.fromkeys([*config.sources, *[str(s) for s in sources]]))
    opened: dict[tuple, Source] = {}
    used: set[str] = set()
    channels: list[PlannedChannel] = []
    for position, entry in enumerate(config.channels):
        path = _pick_source(entry, position, source_list, where)
        used.add(path)
        key = (path, entry.dataset, entry.axes)
        if key not in opened:
            try:
                opened[key] = open_source(path, dataset=entry.dataset, axes=entry.axes)
            except InputError as exc:
                if entry.dataset is None and entry.channel is None:
                    raise
                raise InputError(f"{where}: channel {entry.name or f'entry {position}'!r}: {exc}") from None
        channels.extend(_expand(entry, opened[key], position, where))
    unused = [s for s in source_list if s not in used]
    if unused:
        raise ConfigError(f"{where}: sources {unused} are not used by any channel")
    names = [ch.name for ch in channels]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            entries = sorted({ch.entry for ch in channels if ch.name == name})
            raise ConfigError(f"{where}: two channels are named {name!r} (entries {entries}); names must be unique")
    for s in opened.values():
        if 0 in s.shape:
            raise InputError(f"{s.label}: zero-size volume: shape (c, z, y, x) = {s.shape}")
    shapes = {ch.source.spatial_shape for ch in channels}
    if len(shapes) > 1:
        groups: dict[tuple, list[str]] = {}
        for ch in channels:
            groups.setdefault((ch.source.spatial_shape, ch.source.label), []).append(ch.name)
        listing = "; ".join(f"{label} {shape} {names}" for (shape, label), names in groups.items())
        raise InputError(f"sources have different shapes (z, y, x): {listing}")
    shape = shapes.pop()
    dtype = _output_dtype(channels, config)
    if config.scaling is None:
        for ch in channels:  # a lossy conversion is refused before anything is written
            _conversion(ch.source.dtype, dtype, None, None, ch.name)
    vs = _voxel_size(channels, config, voxel_size if voxel_size is not None else config.voxel_size)
    factor = config.expansion_factor or 1.0
    scale = tuple(v / factor for v in vs)
    return IngestPlan(config=config, channels=channels, shape=shape, dtype=dtype, voxel_size=vs,
                      scale=scale, unit=config.unit, sources=list(opened.values()))


# ---------------------------------------------------------------------------
# block steps (top-level functions: picklable for Dask)


def _subsample(data: np.ndarray, n: int) -> np.ndarray:
    step = max(1, math.ceil((data.size / n) ** (1 / 3)))
    return np.ascontiguousarray(data[::step, ::step, ::step]).ravel()


def _copy_block(block: Block, *, out: str, channels: list, conversions: list, sample_ids: frozenset,
                sample_values: int) -> dict:
    import zarr

    array = zarr.open_array(str(Path(out) / "0"), mode="r+")
    samples = {}
    for c, ch in enumerate(channels):
        data = conversions[c].apply(ch.source.read(ch.index, block.write))
        array[(c,) + block.write] = data
        if block.id in sample_ids:
            samples[c] = _subsample(data, sample_values)
    return {"samples": samples}


def _sample_block(block: Block, *, channels: list, sample_values: int) -> dict:
    return {"samples": {c: _subsample(ch.source.read(ch.index, block.write), sample_values)
                        for c, ch in enumerate(channels)}}


def _sample_ids(n_blocks: int) -> frozenset:
    return frozenset(int(i) for i in np.unique(np.linspace(0, n_blocks - 1, min(n_blocks, _SAMPLE_BLOCKS)).round()))


def _windows(summaries, n_channels, percentiles, dtype) -> list[tuple[float, float]]:
    out = []
    for c in range(n_channels):
        parts = [s["samples"][c] for s in summaries if s and c in s.get("samples", {})]
        values = np.concatenate(parts) if parts else np.zeros(1)
        lo, hi = (float(v) for v in np.percentile(values, percentiles))
        if np.dtype(dtype).kind in "ui":
            lo, hi = math.floor(lo), math.ceil(hi)
        if not hi > lo:
            hi = lo + (1 if np.dtype(dtype).kind in "ui" else 1e-6)
        out.append((lo, hi))
    return out


# ---------------------------------------------------------------------------
# output bookkeeping


def _ingest_info(out: Path) -> dict | None:
    """The ``connectome.ingest`` attribute of ``out``, or None when it is not an ingest output."""
    meta = out / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except ValueError:
        return None
    info = attrs.get("connectome", {}).get("ingest") if isinstance(attrs.get("connectome"), dict) else None
    return info if isinstance(info, dict) else None


def is_complete(path) -> bool:
    """Whether ``path`` is an ingest output whose ingest finished."""
    info = _ingest_info(Path(path))
    return bool(info and info.get("complete"))


def _check_output_path(out: Path, plan: IngestPlan) -> None:
    out_resolved = out.resolve()
    for s in plan.sources:
        for path in _local_paths(s):
            p = Path(path).resolve()
            if p == out_resolved or out_resolved in p.parents or p in out_resolved.parents:
                raise ConfigError(f"{out}: the output must not contain or lie inside a source ({path})")


def _local_paths(source: Source) -> list[str]:
    parts = getattr(source, "parts", None)
    if parts:
        return [p for part in parts for p in _local_paths(part)]
    path = getattr(source, "path", None)
    if path is None or "://" in path or any(ch in path for ch in "*?["):
        files = getattr(source, "extra", {}).get("files") or []
        return [str(Path(f).parent) for f in files[:1]]
    return [path]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _prepare_output(out: Path, fingerprint: str, overwrite: bool) -> str:
    """Decide between a new output, a resume and an already finished one."""
    if not out.exists() and not out.is_symlink():
        return "new"
    if overwrite:
        log.info("%s exists; replacing it (overwrite)", out)
        _remove(out)
        return "new"
    info = _ingest_info(out)
    if info is None:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
            return "new"
        raise InputError(f"{out} exists and is not an ingest output; refusing to write there "
                         "(pass overwrite=True or --overwrite to replace it)")
    if info.get("fingerprint") != fingerprint:
        state = "finished" if info.get("complete") else "unfinished"
        raise InputError(f"{out} holds a {state} ingest of other sources or options; "
                         "pass overwrite=True or --overwrite to replace it")
    return "complete" if info.get("complete") else "resume"


def _apply_codecs(volume: Volume, compression: str, level: int | None, shards) -> None:
    """Recreate the (still empty) level arrays with another compressor and/or shards."""
    if compression == "blosc" and level is None and shards is None:
        return  # Volume.create's arrays already use pipeline.volume.COMPRESSORS
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "zstd":
        compressors = ZstdCodec(level=level) if level is not None else ZstdCodec()
    elif compression == "blosc":                 # the pipeline's codec, at another level
        base = COMPRESSORS[0]
        compressors = BloscCodec(cname=base.cname, clevel=base.clevel if level is None else min(max(level, 0), 9),
                                 shuffle=base.shuffle)
    else:
        compressors = None
    for level in range(volume.levels):
        arr = volume.level(level)
        level_shards = None
        if shards is not None:
            level_shards = (1,) + tuple(
                min(int(s), math.ceil(n / c) * c) for s, n, c in zip(shards, arr.shape[1:], arr.chunks[1:])
            )
            level_shards = (1,) + tuple(math.ceil(s / c) * c for s, c in zip(level_shards[1:], arr.chunks[1:]))
        volume.group.create_array(
            str(level), shape=arr.shape, chunks=arr.chunks, shards=level_shards, dtype=arr.dtype,
            fill_value=0, dimension_names=arr.metadata.dimension_names, compressors=compressors,
            overwrite=True,
        )


def write_unit(array) -> tuple[int, int, int]:
    """Spatial shape of the smallest independently writable piece (a shard, else a chunk)."""
    shards = getattr(array, "shards", None)
    return tuple((shards or array.chunks)[1:])


def _finish(volume: Volume, plan: IngestPlan, windows) -> None:
    group = volume.group
    attrs = group.attrs.asdict()
    ome, conn = attrs["ome"], attrs["connectome"]
    for i, (lo, hi) in enumerate(windows):
        entry = ome["omero"]["channels"][i]
        entry["window"] = {**entry.get("window", {}), "start": float(lo), "end": float(hi)}
        if plan.dtype.kind == "f":
            entry["window"]["min"] = min(float(lo), entry["window"].get("min", lo))
            entry["window"]["max"] = max(float(hi), entry["window"].get("max", hi))
    conn["ingest"] = {**conn["ingest"], "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    group.attrs.update({"ome": ome, "connectome": conn})


# ---------------------------------------------------------------------------
# entry points


def _coerce_config(channels_spec, overrides: dict) -> tuple[IngestConfig, str]:
    if channels_spec is None:
        raise ConfigError("a channel spec is needed (CHANNELS.yaml, a dict or an IngestConfig)")
    if isinstance(channels_spec, IngestConfig):
        config, where = channels_spec.model_copy(deep=True), "channel spec"
    elif isinstance(channels_spec, (str, Path)):
        config, where = load_channel_spec(channels_spec), str(channels_spec)
    elif isinstance(channels_spec, dict):
        config, where = validate_model(IngestConfig, channels_spec, "channel spec"), "channel spec"
    elif isinstance(channels_spec, (list, tuple)):
        items = [c.model_dump(exclude_unset=True) if isinstance(c, ChannelSpec) else c for c in channels_spec]
        config, where = validate_model(IngestConfig, {"channels": items}, "channel spec"), "channel spec"
    else:
        raise ConfigError("channel spec must be a path, dict, list or IngestConfig, "
                          f"got {type(channels_spec).__name__}")
    updates = {k: v for k, v in overrides.items() if v is not None}
    if updates:
        config = validate_model(IngestConfig, {**config.model_dump(exclude_unset=True), **updates}, where)
    return config, where


def ingest(
    sources,
    out,
    channels_spec,
    *,
    voxel_size=None,
    unit: str | None = None,
    expansion_factor: float | None = None,
    chunks=None,
    levels: int | None = None,
    dtype: str | None = None,
    scaling: str | None = None,
    compression: str | None = None,
    compression_level: int | None = None,
    shards=None,
    overwrite: bool = False,
    executor: Executor | None = None,
    progress: bool = True,
) -> Volume:
    """Ingest ``sources`` into the OME-Zarr 0.5 volume ``out``; resumes an interrupted run.

    Parameters
    ----------
    sources : sequence of path or str
        Files, folders, glob patterns or URLs (see :func:`ingest.sources.open_source`);
        may be empty when the spec lists its sources.
    out : path
        Output ``.zarr`` folder.
    channels_spec : path, dict, list of ChannelSpec or IngestConfig
        ``CHANNELS.yaml`` (see :mod:`ingest.spec`).
    voxel_size : (float, float, float), optional
        Voxel size (z, y, x) as imaged, in ``unit``; default: from the metadata.
    unit : str, optional
        Length unit (default ``micrometer``); ``um``, ``nm`` ... are accepted.
    expansion_factor : float, optional
        Tissue expansion; the output scale is then biological (see the module doc).
    chunks : (int, int, int), optional
        Output chunk shape (default ``(64, 128, 128)``).
    levels : int, optional
        Multiscale levels (default 1).
    dtype, scaling : str, optional
        Output dtype and value mapping (see the dtype rule in the module doc).
    compression : str, optional
        ``blosc`` (default: zstd after a byte shuffle, :data:`pipeline.volume.COMPRESSORS`),
        ``zstd`` (Zarr's default codec) or ``none``.
    compression_level : int, optional
        Compressor level (default 3; Blosc takes 0-9).
    shards : (int, int, int), optional
        Shard shape, a multiple of ``chunks``.
    overwrite : bool
        Replace whatever is at ``out``. Without it an existing path is only
        used when it is this same ingest (resume, or nothing to do).
    executor : pipeline.runner.Executor, optional
        Where blocks run; default: this process, one block at a time (Zarr
        compresses chunks on a thread pool).
    progress : bool
        Progress bars.

    Returns
    -------
    Volume
        The finished volume, opened.

    Raises
    ------
    InputError, ConfigError
        Bad input, with a one-line message naming the file or channel;
        nothing is marked complete.
    """
    if voxel_size is not None:
        values = tuple(voxel_size)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"voxel size must be three positive numbers (z, y, x), got {values}")
    overrides = {
        "voxel_size": voxel_size, "unit": unit, "expansion_factor": expansion_factor, "chunks": chunks,
        "levels": levels, "dtype": dtype, "scaling": scaling, "compression": compression,
        "compression_level": compression_level, "shards": shards,
    }
    config, where = _coerce_config(channels_spec, overrides)
    return ingest_config(config, out, sources=sources, overwrite=overwrite, executor=executor,
                         progress=progress, where=where)


def ingest_config(config: IngestConfig, out, *, sources: Sequence = (), overwrite: bool = False,
                  executor: Executor | None = None, progress: bool = True, where: str = "channel spec") -> Volume:
    """Run an ingest described by an :class:`IngestConfig` (a workflow step calls this)."""
    started = time.perf_counter()
    out = Path(out)
    plan = plan_ingest(config, sources, where=where)
    _check_output_path(out, plan)
    fingerprint = plan.fingerprint
    state = _prepare_output(out, fingerprint, overwrite)
    if state == "complete":
        log.info("%s: already ingested (same sources and options); nothing to do", out)
        if (out / STATE_DIR).exists():
            shutil.rmtree(out / STATE_DIR)
        return Volume.open(out)

    c = plan.config
    channel_objs = [Channel(name=ch.name, role=ch.role, color=ch.color, window=ch.window) for ch in plan.channels]
    if state == "new":
        expansion = None
        if c.expansion_factor:
            expansion = {"factor": c.expansion_factor, "expanded_voxel_size": list(plan.voxel_size),
                         "biological_voxel_size": list(plan.scale), "unit": plan.unit,
                         "multiscales_scale": "biological"}
        info = {"complete": False, "fingerprint": fingerprint, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "plan": plan.describe()}
        volume = Volume.create(
            out, shape_zyx=plan.shape, channels=channel_objs, dtype=plan.dtype, voxel_size=plan.scale,
            unit=plan.unit, chunks_zyx=c.chunks, levels=c.levels,
            extra_attributes={"ingest": info, **({"expansion": expansion} if expansion else {})},
        )
        _apply_codecs(volume, c.compression, c.compression_level, c.shards)
    else:
        log.info("%s: resuming an unfinished ingest", out)
        volume = Volume.open(out)

    executor = executor or Executor(ComputeConfig(scheduler="synchronous"))
    state_dir = out / STATE_DIR
    unit_zyx = write_unit(volume.image)
    block_shape = choose_block_shape(plan.shape, unit_zyx, plan.dtype.itemsize, c.block_mib)
    grid = BlockGrid(plan.shape, block_shape, chunks=unit_zyx)
    blocks = list(grid)
    sample_ids = _sample_ids(len(blocks))
    channels = plan.channels
    log.info("ingest %s: %d channels, shape %s, %s, %d blocks of %s", out, len(channels), plan.shape,
             plan.dtype, len(blocks), block_shape)

    source_windows = [None] * len(channels)
    if c.scaling == "window":
        sampled = run_blockwise(
            partial(_sample_block, channels=channels, sample_values=_SAMPLE_VALUES),
            [b for b in blocks if b.id in sample_ids], name="sample", state_dir=state_dir, executor=executor,
            params={"fingerprint": fingerprint, "block_shape": block_shape}, progress=progress,
        )
        source_windows = _windows(sampled, len(channels), c.window_percentiles, np.float64)
    conversions = [_conversion(ch.source.dtype, plan.dtype, c.scaling, w, ch.name)
                   for ch, w in zip(channels, source_windows)]

    step = partial(_copy_block, out=str(out), channels=channels, conversions=conversions,
                   sample_ids=sample_ids, sample_values=_SAMPLE_VALUES)
    try:
        summaries = run_blockwise(
            step, blocks, name="ingest", state_dir=state_dir, executor=executor,
            params={"fingerprint": fingerprint, "block_shape": block_shape,
                    "conversions": [vars(cv) for cv in conversions]},
            progress=progress,
        )
        build_pyramid(volume, state_dir=state_dir, executor=executor, progress=progress,
                      block_mib=c.block_mib, params={"fingerprint": fingerprint})
    finally:
        _sources.clear_cache()
    windows = _windows(summaries, len(channels), c.window_percentiles, plan.dtype)
    windows = [ch.window or w for ch, w in zip(channels, windows)]
    _finish(volume, plan, windows)
    shutil.rmtree(state_dir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    n_vox = len(channels) * int(np.prod(plan.shape))
    log.info("ingested %s in %.1f s (%.1f Mvox/s)", out, elapsed, n_vox / elapsed / 1e6)
    return Volume.open(out)
