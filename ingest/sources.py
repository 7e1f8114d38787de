"""Readers: every source format as channels that can be read one region at a time.

A :class:`Source` offers ``n_channels`` channels of one spatial shape
``(z, y, x)`` and reads a region of one channel with
``read(channel, region) -> ndarray (z, y, x)``. Nothing reads a whole volume:

========================  ====================================================
format                    how a region is read
========================  ====================================================
TIFF / OME-TIFF file      uncompressed contiguous data: memory-mapped and
                          sliced; otherwise page by page (one plane decoded,
                          then cropped)
folder of TIFF planes     one file per z plane, sorted naturally; uncompressed
                          planes: only the needed rows are read (``pread``);
                          compressed: the plane is decoded and cropped. A
                          folder of such folders is one channel per folder.
HDF5 dataset              h5py slicing (chunked or contiguous)
Zarr v2 / v3 array        zarr slicing; groups: OME-Zarr multiscales (level 0),
                          ``s0``/``0`` scale arrays, or one channel per child
N5 dataset                through ``zarr-n5`` (default-mode blocks)
Neuroglancer precomputed  cloud-volume cutouts (``file://``, ``gs://``, ``s3://``)
``.npy``                  ``np.load(mmap_mode="r")``
========================  ====================================================

Sources are picklable: they carry paths, not open handles; handles are opened
lazily wherever a block runs and kept in a small per-process cache.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import ConfigError, InputError

from .spec import UNIT_METERS, normalize_unit

__all__ = [
    "Source",
    "ArraySource",
    "StackSource",
    "open_source",
    "natural_key",
    "TIFF_SUFFIXES",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".ims")
_REMOTE = ("file://", "gs://", "s3://", "http://", "https://", "precomputed://", "matrix://")
_CACHE_SIZE = 128
_HANDLES: "OrderedDict[tuple, object]" = OrderedDict()


def natural_key(text: str):
    """Sort key that orders ``z2`` before ``z10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def _cached(key, opener):
    """Open handles once per process (a block task reuses the previous task's)."""
    if key in _HANDLES:
        _HANDLES.move_to_end(key)
        return _HANDLES[key]
    handle = opener()
    _HANDLES[key] = handle
    while len(_HANDLES) > _CACHE_SIZE:
        _, old = _HANDLES.popitem(last=False)
        close = getattr(old, "close", None)
        if callable(close):
            close()
    return handle


def _stamp(path):
    """Modification time and size of a local path, so a replaced file is reopened."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def clear_cache() -> None:
    """Close every cached handle (tests; before deleting files on some systems)."""
    while _HANDLES:
        _, old = _HANDLES.popitem()
        close = getattr(old, "close", None)
        if callable(close):
            close()


def _to_unit(size_zyx, unit_from, unit_to):
    factor = UNIT_METERS[unit_from] / UNIT_METERS[unit_to]
    return tuple(float(v) * factor for v in size_zyx)


# ---------------------------------------------------------------------------
# axis handling


def default_axes(ndim: int) -> str:
    """Axis names assumed for an array without metadata."""
    table = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
    if ndim not in table:
        raise InputError(f"cannot guess the axes of a {ndim}-dimensional array; give 'axes' (e.g. 'zcyx')")
    return table[ndim]


def _check_axes(label, axes, shape):
    if len(axes) != len(shape):
        raise InputError(f"{label}: axes {axes!r} do not match its {len(shape)}-dimensional shape {tuple(shape)}")
    for name, size in zip(axes, shape):
        if name not in "czyx" and size != 1:
            raise InputError(
                f"{label}: axis {name!r} has size {size} (shape {tuple(shape)}, axes {axes!r}); "
                "only c, z, y, x may be longer than 1 (pick one position with a smaller source)"
            )


class Source:
    """Channels of one spatial shape, read one region of one channel at a time.

    Attributes
    ----------
    label : str
        How messages name this source (file, and dataset inside it).
    shape : tuple of int
        ``(c, z, y, x)``.
    dtype : numpy.dtype
    channel_names : list of str
    voxel_size : tuple of float or None
        From the metadata, in ``unit``; None when the metadata has none.
    unit : str or None
    """

    label: str
    shape: tuple
    dtype: np.dtype
    channel_names: list
    voxel_size: tuple | None = None
    unit: str | None = None

    @property
    def n_channels(self) -> int:
        return self.shape[0]

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.shape[1:])

    def channel_index(self, channel) -> int:
        """Index of ``channel`` (an int or a name) in this source; a clear error when absent."""
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not 0 <= channel < self.n_channels:
                raise InputError(
                    f"{self.label}: no channel {channel}; it has {self.n_channels} "
                    f"(0..{self.n_channels - 1}: {self.channel_names})"
                )
            return int(channel)
        if channel in self.channel_names:
            return self.channel_names.index(channel)
        raise InputError(f"{self.label}: no channel named {channel!r}; it has {self.channel_names}")

    def read(self, channel: int, region) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        """Small JSON-able description, for provenance."""
        return {"label": self.label, "shape": list(self.shape), "dtype": str(self.dtype)}

    def identity(self) -> list:
        """What makes two sources the same wherever the command runs (absolute paths)."""
        raise NotImplementedError


class ArraySource(Source):
    """One N-dimensional array (of any format) seen as ``(c, z, y, x)``.

    Parameters
    ----------
    kind : str
        ``npy``, ``zarr``, ``n5``, ``hdf5``, ``tiff``, ``tiffplanes``, ``precomputed``.
    path : str
        File, folder or URL.
    key : str, optional
        Array path inside the container (or TIFF series index).
    axes : str
        Axis names of the array in storage order.
    shape, dtype
        Of the stored array (all axes).
    """

    def __init__(self, kind, path, key, axes, shape, dtype, *, label=None, channel_names=None,
                 voxel_size=None, unit=None, extra=None):
        self.kind, self.path, self.key = kind, str(path), key
        self.axes = axes
        self.array_shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.label = label or (f"{path}:{key}" if key else str(path))
        self.extra = extra or {}
        _check_axes(self.label, axes, self.array_shape)
        size = dict(zip(axes, self.array_shape))
        self.shape = (size.get("c", 1), size.get("z", 1), size["y"], size["x"])
        names = list(channel_names) if channel_names else []
        if len(names) != self.shape[0]:
            stem = Path(str(key or path).rstrip("/")).name.split(".")[0] or "c"
            names = [stem] if self.shape[0] == 1 else [f"{stem}_{i}" for i in range(self.shape[0])]
        self.channel_names = [str(n) for n in names]
        self.voxel_size, self.unit = voxel_size, unit

    # -- access ---------------------------------------------------------------
    def array(self):
        """The stored array (array-like with numpy slicing), opened lazily, cached per process."""
        key = (self.kind, self.path, self.key, self.axes, _stamp(self.path))
        return _cached(key, lambda: _OPENERS[self.kind](self))

    def read(self, channel: int, region) -> np.ndarray:
        region = tuple(region)
        index = []
        for name in self.axes:
            if name == "c":
                index.append(int(channel))
            elif name in "zyx":
                index.append(region["zyx".index(name)])
            else:
                index.append(0)
        kept = [a for a in self.axes if a in "zyx"]
        try:
            data = self.array()[tuple(index)]
        except InputError:
            raise
        except Exception as exc:  # a reader's own error: name the file and the region
            spans = ", ".join(f"{s.start}:{s.stop}" for s in region)
            raise InputError(f"{self.label}: cannot read channel {channel} region [{spans}]: "
                             f"{type(exc).__name__}: {exc}") from exc
        data = np.asarray(data)
        if data.ndim != len(kept):
            raise InputError(f"{self.label}: a read returned shape {data.shape} for axes {kept}")
        order = [kept.index(a) for a in "zyx" if a in kept]
        data = data.transpose(order)
        if "z" not in kept:
            data = data[np.newaxis]
        expected = tuple(s.stop - s.start for s in region)
        if data.shape != expected:
            raise InputError(f"{self.label}: read {data.shape} voxels where {expected} were expected (truncated data?)")
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        return data

    def describe(self) -> dict:
        return {**super().describe(), "kind": self.kind, "path": self.path, "key": self.key, "axes": self.axes}

    def identity(self) -> list:
        path = self.path if "://" in self.path else os.path.abspath(self.path)
        return [self.kind, path, self.key, self.axes, list(self.shape), str(self.dtype)]


class StackSource(Source):
    """Several single-channel sources of one shape, seen as the channels of one source."""

    def __init__(self, label, parts: Sequence[Source], names: Sequence[str]):
        parts = list(parts)
        if not parts:
            raise InputError(f"{label}: holds no channels")
        for p in parts:
            if p.n_channels != 1:
                raise InputError(f"{label}: member {p.label} has {p.n_channels} channels; "
                                 "a stack takes single-channel members")
        _same_shapes(label, parts)
        dtypes = {p.dtype for p in parts}
        if len(dtypes) != 1:
            raise InputError(f"{label}: members have different dtypes {sorted(map(str, dtypes))}")
        self.label, self.parts = label, parts
        self.shape = (len(parts),) + parts[0].spatial_shape
        self.dtype = parts[0].dtype
        self.channel_names = [str(n) for n in names]
        self.voxel_size, self.unit = parts[0].voxel_size, parts[0].unit

    def read(self, channel: int, region) -> np.ndarray:
        return self.parts[channel].read(0, region)

    def describe(self) -> dict:
        return {**super().describe(), "parts": [p.describe() for p in self.parts]}

    def identity(self) -> list:
        return [p.identity() for p in self.parts]


def _same_shapes(label, parts):
    shapes = {p.spatial_shape for p in parts}
    if len(shapes) != 1:
        listing = "; ".join(f"{p.label} {p.spatial_shape}" for p in parts)
        raise InputError(f"{label}: members have different shapes (z, y, x): {listing}")


# ---------------------------------------------------------------------------
# openers: kind -> function(source) -> array-like


def _open_npy(src):
    return np.load(src.path, mmap_mode="r", allow_pickle=False)


def _open_zarr(src):
    import zarr

    return zarr.open_array(src.path, path=src.key or "", mode="r") if src.key else zarr.open_array(src.path, mode="r")


def _n5_store(path):
    import zarr_n5
    from zarr.storage import LocalStore

    return zarr_n5.N5WrapperStore(LocalStore(path, read_only=True))


def _open_n5(src):
    import zarr

    return zarr.open_array(store=_n5_store(src.path), path=src.key or "", mode="r")


class _H5Dataset:
    """An h5py dataset that keeps its file open (and closes it with the cache)."""

    def __init__(self, path, key):
        import h5py

        self.file = h5py.File(path, "r")
        self.dataset = self.file[key]

    def __getitem__(self, index):
        return self.dataset[index]

    def close(self):
        self.file.close()


def _open_hdf5(src):
    return _H5Dataset(src.path, src.key)


class _Precomputed:
    """A cloud-volume layer indexed in voxel coordinates from 0, axes x, y, z, c."""

    def __init__(self, url, mip):
        from cloudvolume import CloudVolume

        self.volume = CloudVolume(url, mip=mip, fill_missing=False, bounded=True, progress=False)
        self.offset = [int(v) for v in self.volume.voxel_offset]

    def __getitem__(self, index):
        x, y, z, c = index
        region = tuple(slice(s.start + o, s.stop + o) for s, o in zip((x, y, z), self.offset))
        return np.asarray(self.volume[region])[..., c]


def _open_precomputed(src):
    return _Precomputed(src.path, int(src.extra.get("mip", 0)))


class _TiffPages:
    """A TIFF series read page by page: the page axes index pages, the rest crops a plane."""

    def __init__(self, path, series, page_ndim):
        import tifffile

        self.tif = tifffile.TiffFile(path)
        self.path = path
        self.series = self.tif.series[series]
        self.shape = tuple(self.series.shape)
        self.page_ndim = page_ndim  # leading axes that enumerate pages
        self.pages = self.series.pages

    def __getitem__(self, index):
        lead, rest = index[: self.page_ndim], tuple(index[self.page_ndim:])
        lead_shape = self.shape[: self.page_ndim]
        ranges = [range(*i.indices(n)) if isinstance(i, slice) else range(int(i), int(i) + 1)
                  for i, n in zip(lead, lead_shape)]
        kept = tuple(len(r) for r, i in zip(ranges, lead) if isinstance(i, slice))
        planes = []
        for position in itertools.product(*ranges):
            page_index = int(np.ravel_multi_index(position, lead_shape)) if position else 0
            try:
                plane = self.pages[page_index].asarray()
            except Exception as exc:  # tifffile / codec errors differ by compression
                raise InputError(f"{self.path}: unreadable TIFF page {page_index}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            planes.append(plane.reshape(self.shape[self.page_ndim:])[rest])
        return np.stack(planes).reshape(kept + planes[0].shape)

    def close(self):
        self.tif.close()


def _open_tiff(src):
    import tifffile

    if src.extra.get("memmap"):
        try:
            return tifffile.memmap(src.path, series=int(src.key or 0), mode="r")
        except (ValueError, OSError) as exc:
            raise InputError(f"{src.path}: cannot memory-map the TIFF image data: {exc}") from exc
    return _TiffPages(src.path, int(src.key or 0), src.extra["page_ndim"])


class _TiffPlanes:
    """A folder of one-plane TIFF files as a (z, y, x) array."""

    def __init__(self, files, plane_shape, dtype, offsets):
        self.files, self.plane_shape, self.dtype, self.offsets = files, plane_shape, np.dtype(dtype), offsets

    def __getitem__(self, index):
        zs, ys, xs = index  # ArraySource.read passes three unit-step slices
        zr = range(*zs.indices(len(self.files)))
        y0, y1, _ = ys.indices(self.plane_shape[0])
        x0, x1, _ = xs.indices(self.plane_shape[1])
        out = np.empty((len(zr), y1 - y0, x1 - x0), dtype=self.dtype.newbyteorder("="))
        for k, z in enumerate(zr):
            out[k] = self._plane(z, y0, y1)[:, x0:x1]
        return out

    def _plane(self, z, y0, y1):
        path = self.files[z]
        if self.offsets is not None:
            row = self.plane_shape[1] * self.dtype.itemsize
            count = (y1 - y0) * row
            try:
                with open(path, "rb") as f:
                    buf = os.pread(f.fileno(), count, self.offsets[z] + y0 * row)
            except OSError as exc:
                raise InputError(f"{path}: cannot read TIFF plane: {exc}") from exc
            if len(buf) != count:
                raise InputError(f"{path}: TIFF plane data is truncated ({len(buf)} of {count} bytes)")
            return np.frombuffer(buf, dtype=self.dtype).reshape(y1 - y0, self.plane_shape[1])
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                plane = tif.pages.first.asarray()
        except Exception as exc:  # tifffile / codec errors differ by compression
            raise InputError(f"{path}: unreadable TIFF page 0: {type(exc).__name__}: {exc}") from exc
        return plane.reshape(self.plane_shape)[y0:y1]


def _open_tiffplanes(src):
    return _TiffPlanes(src.extra["files"], src.extra["plane_shape"], src.extra["file_dtype"], src.extra["offsets"])


_OPENERS = {
    "npy": _open_npy,
    "zarr": _open_zarr,
    "n5": _open_n5,
    "hdf5": _open_hdf5,
    "tiff": _open_tiff,
    "tiffplanes": _open_tiffplanes,
    "precomputed": _open_precomputed,
}


# ---------------------------------------------------------------------------
# format detection and metadata


def _pattern(text: str) -> str:
    """``text`` as a glob pattern, its folder taken literally when that folder exists.

    Folder names may hold ``[`` or ``?`` (``exp[1]/raw``): only the file name
    is then a pattern, so ``exp[1]/raw/*.tif`` finds that folder's planes.
    """
    folder, name = os.path.split(text)
    if folder and os.path.isdir(folder):
        return os.path.join(glob.escape(folder), name)
    return text


def open_source(path, *, dataset: str | None = None, axes: str | None = None) -> Source:
    """Open ``path`` (and ``dataset`` inside it) as a :class:`Source`.

    Parameters
    ----------
    path : str or PathLike
        A file, a folder (Zarr, N5, TIFF planes, folder of TIFF-plane folders,
        Neuroglancer precomputed), a glob pattern of TIFF planes, or a URL
        (``file://``, ``gs://``, ``s3://``: Neuroglancer precomputed). A path
        that exists is opened as itself even when its name holds glob
        characters, and a pattern's existing folder is taken literally.
    dataset : str, optional
        Array or group inside a container; TIFF: the series index.
    axes : str, optional
        Storage axis names, overriding the metadata (e.g. ``"zcyx"``).

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable or truncated file, missing
        dataset; one line naming the file.
    """
    text = str(path)
    if text.startswith(_REMOTE):
        return _precomputed_source(text, dataset, axes)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        files = sorted(glob.glob(_pattern(text)), key=natural_key)
        if not files:
            raise InputError(f"{text}: no files match this pattern")
        return _tiff_planes_source(text, files, axes)
    p = Path(text)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix == ".npy":
            return _npy_source(p, axes)
        if suffix in TIFF_SUFFIXES:
            return _tiff_source(p, dataset, axes)
        if suffix in HDF5_SUFFIXES or _is_hdf5(p):
            return _hdf5_source(p, dataset, axes)
        raise InputError(f"{p}: unknown file format {suffix or '(no suffix)'}; expected TIFF, HDF5, .npy, "
                         "or a Zarr / N5 / Neuroglancer precomputed folder")
    if (p / "zarr.json").exists() or (p / ".zgroup").exists() or (p / ".zarray").exists():
        return _zarr_source(p, dataset, axes)
    if suffix == ".n5" or (p / "attributes.json").exists():
        return _n5_source(p, dataset, axes)
    if (p / "info").is_file():
        return _precomputed_source(p.resolve().as_uri(), dataset, axes)
    files = _tiff_files(p)
    if files:
        return _tiff_planes_source(str(p), files, axes)
    subdirs = sorted((d for d in p.iterdir() if d.is_dir() and _tiff_files(d)), key=lambda d: natural_key(d.name))
    if subdirs:
        parts = [_tiff_planes_source(str(d), _tiff_files(d), axes) for d in subdirs]
        return StackSource(str(p), parts, [d.name for d in subdirs])
    raise InputError(f"{p}: folder is not Zarr, N5 or Neuroglancer precomputed and holds no TIFF files")


def _tiff_files(folder: Path) -> list[str]:
    files = (f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    return sorted((str(f) for f in files if f.suffix.lower() in TIFF_SUFFIXES), key=lambda f: natural_key(Path(f).name))


def _is_hdf5(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


# -- .npy ---------------------------------------------------------------------

def _npy_source(p, axes):
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{p}: not a readable .npy file: {exc}") from None
    _check_dtype(p, arr.dtype)
    return ArraySource("npy", p, None, axes or default_axes(arr.ndim), arr.shape, arr.dtype)


def _check_dtype(label, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind not in "buif":
        raise InputError(f"{label}: unsupported data type {dtype} (expected integers or floats)")


# -- TIFF ---------------------------------------------------------------------

_TIFF_AXES = {"Z": "z", "C": "c", "Y": "y", "X": "x"}


def _tiff_axes(series_axes, shape):
    """Map tifffile axis codes to ours: Z->z, C (or S)->c, one other long axis -> z."""
    axes = []
    for code in series_axes:
        if code in _TIFF_AXES:
            axes.append(_TIFF_AXES[code])
        elif code == "S":
            axes.append("c" if "C" not in series_axes else "s")
        else:
            axes.append(code.lower())
    if "z" not in axes:
        long_axes = [i for i, (a, s) in enumerate(zip(axes, shape)) if a not in "cyx" and s > 1]
        if len(long_axes) == 1:
            axes[long_axes[0]] = "z"
    # other tifffile codes (Q, I, T, ...) stay as placeholders that must have size 1
    return "".join(axes)


class _TiffDamage(logging.Handler):
    """Collect tifffile's warnings about a damaged file while it parses one."""

    _WORDS = ("offset", "truncat", "corrupt", "invalid", "beyond", "eof")

    def __init__(self):
        super().__init__(logging.WARNING)
        self.problems = []

    def emit(self, record):
        text = record.getMessage()
        if any(w in text.lower() for w in self._WORDS):
            self.problems.append(" ".join(text.split()))

    def __enter__(self):
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("tifffile").removeHandler(self)
        return False

    def check(self, path):
        if self.problems:
            raise InputError(f"{path}: truncated or damaged TIFF: {self.problems[0]}")


def _tiff_source(p, dataset, axes):
    import tifffile

    series_index = int(dataset) if dataset not in (None, "") else 0
    try:
        with _TiffDamage() as damage, tifffile.TiffFile(p) as tif:
            damage.check(p)
            if not tif.series:
                raise InputError(f"{p}: TIFF file has no image series")
            if series_index >= len(tif.series):
                raise InputError(f"{p}: no TIFF series {series_index}; it has {len(tif.series)}")
            series = tif.series[series_index]
            shape, dtype = tuple(series.shape), series.dtype
            _check_dtype(p, dtype)
            my_axes = axes or _tiff_axes(series.axes, shape)
            size = os.path.getsize(p)
            memmap = series.dataoffset is not None
            if memmap:
                nbytes = int(np.prod(shape)) * dtype.itemsize
                if series.dataoffset + nbytes > size:
                    raise InputError(
                        f"{p}: truncated TIFF: image data needs {nbytes} bytes from offset "
                        f"{series.dataoffset} but the file has {size}"
                    )
            else:
                _check_pages(p, series, size)
            page_ndim = len(shape) - len(series.keyframe.shape)
            names, voxel_size, unit = _tiff_metadata(tif, series)
            damage.check(p)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many kinds for malformed files
        raise InputError(f"{p}: unreadable TIFF: {type(exc).__name__}: {exc}") from None
    return ArraySource("tiff", p, str(series_index) if series_index else None, my_axes, shape, dtype,
                       label=str(p), channel_names=names, voxel_size=voxel_size, unit=unit,
                       extra={"memmap": memmap, "page_ndim": page_ndim})


def _check_pages(p, series, size):
    pages = series.pages
    expected = int(np.prod(series.shape[: len(series.shape) - len(series.keyframe.shape)]))
    if len(pages) < expected:
        raise InputError(f"{p}: truncated TIFF: {len(pages)} of {expected} pages are readable")
    for i, page in enumerate(pages):
        if page is None:
            raise InputError(f"{p}: unreadable TIFF page {i} (missing from the file)")
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset + count > size:
                raise InputError(f"{p}: truncated TIFF: page {i} data ends at byte {offset + count}, "
                                 f"past the end of the file ({size} bytes)")


def _tiff_metadata(tif, series):
    """Channel names and voxel size (z, y, x) from OME-XML or ImageJ metadata."""
    import tifffile

    names, voxel_size, unit = None, None, None
    if tif.is_ome and tif.ome_metadata:
        try:
            ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
            image = ome["Image"]
            image = image[0] if isinstance(image, list) else image
            pixels = image["Pixels"]
            channels = pixels.get("Channel", [])
            channels = channels if isinstance(channels, list) else [channels]
            if channels and all("Name" in c for c in channels):
                names = [str(c["Name"]) for c in channels]
            sizes = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
            if sizes[1] is not None and sizes[2] is not None:
                units = {normalize_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "ZYX"}
                if len(units) == 1:
                    unit = units.pop()
                    voxel_size = (float(sizes[0] or 1.0), float(sizes[1]), float(sizes[2]))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            log.warning("%s: ignoring unreadable OME metadata (%s)", tif.filehandle.path, exc)
    elif tif.is_imagej:
        meta = tif.imagej_metadata or {}
        page = series.keyframe
        try:
            xres = page.tags["XResolution"].value
            yres = page.tags["YResolution"].value
            ysize, xsize = yres[1] / yres[0], xres[1] / xres[0]
            unit_text = meta.get("unit", "micron")
            unit = normalize_unit(unit_text.encode().decode("unicode_escape") if "\\" in unit_text else unit_text)
            voxel_size = (float(meta.get("spacing", 1.0)), float(ysize), float(xsize))
        except (KeyError, ZeroDivisionError, ConfigError, TypeError):
            voxel_size, unit = None, None
    return names, voxel_size, unit


def _tiff_planes_source(label, files, axes):
    import tifffile

    offsets, plane_shape, dtype = [], None, None
    for f in files:
        try:
            size = os.path.getsize(f)
            with _TiffDamage() as damage, tifffile.TiffFile(f) as tif:
                damage.check(f)
                pages = tif.pages
                if len(pages) != 1:
                    raise InputError(f"{f}: a TIFF-plane folder needs one plane per file, this one has "
                                     f"{len(pages)} pages (give multi-page files as separate sources)")
                page = pages.first
                shape = tuple(s for s in page.shape if s != 1) or (1, 1)
                if len(shape) != 2:
                    raise InputError(f"{f}: a plane must be 2-D (y, x), this one has shape {page.shape}")
                if plane_shape is None:
                    plane_shape, dtype = shape, page.dtype
                    _check_dtype(f, dtype)
                elif shape != plane_shape or page.dtype != dtype:
                    raise InputError(f"{f}: plane shape {shape} {page.dtype} differs from "
                                     f"{files[0]} {plane_shape} {dtype}")
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    if offset + count > size:
                        raise InputError(f"{f}: truncated TIFF: page 0 data ends at byte {offset + count}, "
                                         f"past the end of the file ({size} bytes)")
                contiguous = page.is_contiguous and page.compression == 1 and page.fillorder == 1
                if offsets is not None and contiguous:
                    offsets.append(int(page.dataoffsets[0]))
                    file_dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
                else:
                    offsets = None
        except InputError:
            raise
        except Exception as exc:  # tifffile raises many kinds for malformed files
            raise InputError(f"{f}: unreadable TIFF: {type(exc).__name__}: {exc}") from None
    stored_dtype = file_dtype if offsets is not None else np.dtype(dtype)
    shape = (len(files),) + plane_shape
    name = Path(label).name if not any(ch in label for ch in "*?[") else Path(files[0]).parent.name
    return ArraySource("tiffplanes", label, None, axes or "zyx", shape, dtype, label=label,
                       channel_names=[name or "tiff"],
                       extra={"files": list(files), "plane_shape": plane_shape, "file_dtype": stored_dtype.str,
                              "offsets": offsets})


# -- HDF5 ---------------------------------------------------------------------

def _hdf5_source(p, dataset, axes):
    import h5py

    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p}: not a readable HDF5 file: {exc}") from None
    with f:
        container = _Container(
            label=str(p),
            is_array=lambda k: isinstance(f[k] if k else f, h5py.Dataset),
            children=lambda k: sorted((f[k] if k else f).keys(), key=natural_key),
            attrs=lambda k: dict((f[k] if k else f).attrs),
            exists=lambda k: (not k) or k in f,
            shape_dtype=lambda k: (f[k].shape, f[k].dtype),
            make=lambda k, ax, shape, dtype, names, vs, unit: ArraySource(
                "hdf5", p, k, ax, shape, dtype, label=f"{p}:{k}", channel_names=names, voxel_size=vs, unit=unit),
            metadata=_hdf5_metadata,
        )
        return container.resolve(dataset, axes)


def _hdf5_metadata(attrs, ndim):
    size = attrs.get("element_size_um")
    if size is not None and len(size) >= 3:
        return tuple(float(v) for v in size[-3:]), "micrometer"
    return None, None


# -- Zarr ---------------------------------------------------------------------

def _zarr_source(p, dataset, axes):
    import zarr

    try:
        root = zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several kinds for malformed stores
        raise InputError(f"{p}: not a readable Zarr store: {type(exc).__name__}: {exc}") from None

    def node(k):
        return root[k] if k else root

    if isinstance(root, zarr.Array) and dataset:
        raise InputError(f"{p}: is a single Zarr array; it has no dataset {dataset!r}")

    container = _Container(
        label=str(p),
        is_array=lambda k: isinstance(node(k), zarr.Array),
        children=lambda k: sorted(node(k).keys(), key=natural_key),
        attrs=lambda k: node(k).attrs.asdict(),
        exists=lambda k: (not k) or k in root,
        shape_dtype=lambda k: (node(k).shape, node(k).dtype),
        make=lambda k, ax, shape, dtype, names, vs, unit: ArraySource(
            "zarr", p, k or None, ax, shape, dtype, label=f"{p}/{k}" if k else str(p),
            channel_names=names, voxel_size=vs, unit=unit),
        metadata=lambda attrs, ndim: (None, None),
    )
    return container.resolve(dataset, axes)


# -- N5 -----------------------------------------------------------------------

def _n5_source(p, dataset, axes):
    def attrs(k):
        f = p / k / "attributes.json" if k else p / "attributes.json"
        if not f.exists():
            return {}
        try:
            return json.loads(f.read_text())
        except ValueError as exc:
            raise InputError(f"{f}: malformed N5 attributes: {exc}") from None

    def is_array(k):
        return "dimensions" in attrs(k)

    def children(k):
        folder = p / k if k else p
        return sorted((d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)

    def shape_dtype(k):
        a = attrs(k)
        return tuple(a["dimensions"]), np.dtype(a["dataType"])

    def make(k, ax, shape, dtype, names, vs, unit):
        return ArraySource("n5", p, k, ax, shape, dtype, label=f"{p}/{k}", channel_names=names,
                           voxel_size=vs, unit=unit)

    container = _Container(
        label=str(p), is_array=is_array, children=children, attrs=attrs,
        exists=lambda k: (not k) or (p / k).is_dir(), shape_dtype=shape_dtype, make=make,
        metadata=_n5_metadata, default_axes=lambda nd: default_axes(nd)[::-1],
    )
    return container.resolve(dataset, axes)


def _n5_metadata(attrs, ndim):
    """N5 stores dimensions x-first; resolution attributes follow that order."""
    for key in ("resolution", "pixelResolution"):
        value = attrs.get(key)
        unit = "micrometer"
        if isinstance(value, dict):
            unit = value.get("unit", unit)
            value = value.get("dimensions")
        if isinstance(value, list) and len(value) >= 3:
            try:
                return tuple(float(v) for v in value[:3][::-1]), normalize_unit(unit)
            except (ConfigError, TypeError, ValueError):
                return None, None
    return None, None


# -- group navigation shared by HDF5, Zarr and N5 -----------------------------

class _Container:
    """Find the array (or channel arrays) that a dataset path names inside a container.

    A path may name an array; an OME-Zarr multiscale group (level 0 is used);
    a group of scale arrays ``s0, s1, ...`` or ``0, 1, ...`` (the first); or
    a group whose children are channels (one channel per child, natural order).
    """

    def __init__(self, label, is_array, children, attrs, exists, shape_dtype, make, metadata,
                 default_axes=default_axes):
        self.label = label
        self.is_array, self.children, self.attrs, self.exists = is_array, children, attrs, exists
        self.shape_dtype, self.make, self.metadata = shape_dtype, make, metadata
        self.default_axes = default_axes

    def _missing(self, key):
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        if parent and not self.exists(parent):
            return self._missing(parent)
        listing = [c for c in self.children(parent) if c != "attributes.json"]
        where = f"group {parent!r}" if parent else "the top level"
        return InputError(f"{self.label}: no dataset {key!r}; {where} holds {listing}")

    def resolve(self, key, axes, depth=0) -> Source:
        key = (key or "").strip("/")
        if not self.exists(key):
            raise self._missing(key)
        if self.is_array(key):
            return self._array(key, axes, {})
        attrs = self.attrs(key)
        level0 = self._level0(key, attrs)
        if level0 is not None:
            path, ms_axes, scale, unit, names = level0
            return self._array(path, axes or ms_axes, {"scale": scale, "unit": unit, "names": names})
        children = [c for c in self.children(key) if c not in ("labels", "attributes.json") and not c.startswith(".")]
        if not children or depth > 0:
            what = "no arrays" if not children else f"groups {children}"
            raise InputError(f"{self.label}: {key or 'the top level'!r} holds {what}; "
                             "name an array or a group of channel arrays as the dataset")
        parts = [self.resolve(f"{key}/{c}" if key else c, axes, depth + 1) for c in children]
        return StackSource(f"{self.label}/{key}" if key else self.label, parts, children)

    def _level0(self, key, attrs):
        ome = attrs.get("ome", attrs)
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
        if isinstance(multiscales, list) and multiscales:
            ms = multiscales[0]
            datasets = ms.get("datasets") or []
            if datasets:
                path = datasets[0]["path"]
                ms_axes = None
                unit = None
                ax = ms.get("axes")
                if isinstance(ax, list) and ax:
                    names = [a["name"] if isinstance(a, dict) else a for a in ax]
                    ms_axes = "".join(n.lower()[0] if n.lower() in ("c", "z", "y", "x", "t") else "q" for n in names)
                    units = {a.get("unit") for a in ax if isinstance(a, dict) and a.get("type") == "space"}
                    units.discard(None)
                    if len(units) == 1:
                        try:
                            unit = normalize_unit(units.pop())
                        except ConfigError:
                            unit = None
                scale = None
                for t in datasets[0].get("coordinateTransformations", []):
                    if t.get("type") == "scale":
                        scale = t.get("scale")
                labels = None
                omero = ome.get("omero") or attrs.get("omero")
                if isinstance(omero, dict):
                    labels = [c.get("label") for c in omero.get("channels", [])]
                    labels = labels if all(labels) else None
                full = f"{key}/{path}" if key else path
                return full, ms_axes, (scale, ms_axes), unit, labels
        children = self.children(key)
        for name in ("s0", "0"):
            if name in children and self.is_array(f"{key}/{name}" if key else name):
                return (f"{key}/{name}" if key else name), None, None, None, None
        return None

    def _array(self, key, axes, meta):
        shape, dtype = self.shape_dtype(key)
        _check_dtype(f"{self.label}:{key}", dtype)
        axes = axes or self.default_axes(len(shape))
        voxel_size, unit = self.metadata(self.attrs(key), len(shape))
        values, scale_axes = meta.get("scale") or (None, None)
        if values:
            scale_axes = scale_axes or default_axes(len(values))
            by_axis = dict(zip(scale_axes, values))
            if len(scale_axes) == len(values) and all(a in by_axis for a in "yx"):
                voxel_size = tuple(float(by_axis.get(a, 1.0)) for a in "zyx")
                unit = meta.get("unit") or "micrometer"
        if voxel_size is not None and unit is None:
            unit = "micrometer"
        return self.make(key, axes, shape, dtype, meta.get("names"), voxel_size, unit)


# -- Neuroglancer precomputed -------------------------------------------------

def _precomputed_source(url, dataset, axes):
    try:
        from cloudvolume import CloudVolume
    except ImportError:
        raise InputError(f"{url}: reading Neuroglancer precomputed needs cloud-volume "
                         "(pip install cloud-volume)") from None
    if url.startswith("precomputed://"):
        url = url[len("precomputed://"):]
    if url.startswith("file://") and not Path(url[len("file://"):]).exists():
        raise InputError(f"{url}: no such file or directory")
    mip = int(dataset) if dataset not in (None, "") else 0
    try:
        vol = CloudVolume(url, mip=mip, fill_missing=False, bounded=True, progress=False)
    except Exception as exc:  # cloud-volume raises many kinds (info missing, auth, network)
        raise InputError(f"{url}: cannot open as Neuroglancer precomputed: {type(exc).__name__}: {exc}") from None
    if vol.layer_type not in ("image", "segmentation"):
        raise InputError(f"{url}: layer type {vol.layer_type!r} is not an image")
    shape = tuple(int(s) for s in vol.shape)  # x, y, z, c
    resolution = tuple(float(r) for r in vol.resolution)[::-1]  # nm, z y x
    return ArraySource("precomputed", url, str(mip) if mip else None, axes or "xyzc", shape, vol.dtype,
                       label=url, voxel_size=resolution, unit="nanometer", extra={"mip": mip})
