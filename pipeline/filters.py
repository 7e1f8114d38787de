"""Fast separable filters: Gaussian (and its derivatives) and the box maximum filter.

Drop-in replacements for ``scipy.ndimage.gaussian_filter`` and
``scipy.ndimage.maximum_filter(size=...)`` on the arrays the pipeline filters
(float32 (z, y, x) blocks, or (c, z, y, x) stacks with sigma 0 on ``c``):
same kernel (scipy's weights, ``truncate``, ``radius``), same boundary
modes, same result to float32 rounding (≈ 1e-6 relative; the maximum filter
is exact). Both dispatch on the array kind like every kernel of the
pipeline (:func:`pipeline.backend.array_module`): a CuPy array goes to
``cupyx.scipy.ndimage``, a NumPy array to numba or OpenCV.

Why not scipy on the CPU: ``scipy.ndimage`` filters one line at a time through
a double-precision line buffer (≈ 35-40 Mvox/s per core for a σ=2 Gaussian
here). Most Gaussians the pipeline takes (float32 smoothing of a (z, y, x)
block, or of a stack with sigma 0 on its channel axis, first or last, in mode
reflect, mirror or nearest) run through one numba pass
(:func:`_one_pass_kernel`): per output plane, the z taps row by row into a
scratch plane, then each row's y taps and its x taps, every sum vectorised
over a whole row. σ 2 on the 64×256×256 sample: ≈ 290 Mvox/s per core,
OpenCV's path below ≈ 180; σ 3.2: ≈ 180 against ≈ 55. The rest (derivatives,
float64, ``constant`` mode, 1-D and 2-D arrays) goes to OpenCV's SIMD
row/column filters, ≈ 5× scipy. The OpenCV path is:

* the last two axes (y, x) of every slice in one ``cv2.sepFilter2D`` call
  (``cv2.dilate`` with a rectangle for the maximum filter);
* every other axis with ``sigma > 0`` (z, or c when asked) as a *column*
  filter on a 2-D view (that axis, the flattened rest). The rest is cut into
  cache-sized pieces: each piece is a strided (axis, width) view into the
  array, so no data is copied and the pass runs about twice as fast as on
  the whole (axis, y*x) plane;
* except for small planes (≤ 256 KiB, e.g. 256×256 float32) filtered along z
  only besides (y, x): those go slab by slab, z into a small scratch and its
  planes straight into the output (:func:`_slab_pass`; the same bits,
  ×1.2-1.4 faster for 64×144×144 to 64×256×256).
* a trailing axis that is not filtered (sigma 0) and has 2 to 128 entries,
  as in a channels-last (z, y, x, c) stack, rides along as OpenCV's
  channels: each (y, x, c) plane is one call. The result is scipy's to
  float32 rounding, like every path here, but not always the same bits as
  filtering each channel on its own (OpenCV's SIMD lanes group the
  interleaved values differently for some plane widths): code that must
  agree bit for bit filters channels-last on both sides.

OpenCV runs single-threaded here (``cv2.setNumThreads(1)`` on first use):
workers run one block per thread (``threads_per_worker``), the block grid
is where the parallelism is. :func:`set_num_threads` changes it for the
whole process. Without OpenCV (not importable) the CPU path falls back to
SciPy with a one-time warning; results are the same.

Boundary modes map exactly: scipy ``reflect`` (d c b a | a b c d | d c b a)
= OpenCV ``BORDER_REFLECT``, ``mirror`` (d c b | a b c d | c b a) =
``BORDER_REFLECT_101``, ``nearest`` = ``BORDER_REPLICATE``, ``constant`` /
``grid-constant`` with ``cval=0`` = ``BORDER_CONSTANT``. OpenCV extends a
border by repeated reflection, like scipy, so kernels longer than the array
give the same answer. ``wrap`` (OpenCV's column filters reject
``BORDER_WRAP``) and ``constant`` with ``cval != 0`` go to SciPy, as does
the maximum filter for modes that are not "ignore the outside".

Example::

    from pipeline.filters import gaussian, maximum
    smoothed = gaussian(block, (1.0, 2.0, 2.0))          # (z, y, x) float32
    per_channel = gaussian(stack, (0.0, 1.0, 2.0, 2.0))  # (c, z, y, x), sigma 0 on c
    peaks = block >= maximum(block, 3, mode="nearest")
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import threading

import numpy as np
import scipy.ndimage

from .backend import array_module
from .jit import numba_kernels

__all__ = ["gaussian", "gaussian_kernel1d", "maximum", "opencv_available", "set_num_threads"]

log = logging.getLogger(__name__)

#: Default truncation of Gaussian kernels, in sigmas (scipy's default).
TRUNCATE = 4.0

#: Width (elements) of the pieces a column pass works on: 4096 float32 = 16 KiB
#: per row, so a kernel's rows stay in L2 cache.
_COLUMN_TILE = 4096

#: Planes of at most this many bytes are filtered slab by slab (:func:`_slab_pass`).
_SLAB_MAX_PLANE_BYTES = 256 * 1024

#: Output planes per slab of :func:`_slab_pass`.
_SLAB_ROWS = 32

#: Most channels one OpenCV image may have (CV_CN_MAX: 512 in OpenCV 4, 128 in OpenCV 5).
_CV_MAX_CHANNELS = 128

#: Bytes of the scratch each thread keeps for :func:`_slab_pass` (a slab and the kernel's reach
#: on both sides must fit, else the two-pass path runs). Kept, not allocated per call: the run
#: process fixes glibc's mmap threshold at 1 MiB, so a fresh few-MiB scratch per Gaussian would
#: be a fresh mapping, faulted page by page (700k faults and 20 % slower per contact-pass fit).
_SLAB_SCRATCH_BYTES = 8 * 1024 * 1024

_scratch = threading.local()

_cv2 = None            # the cv2 module once imported; False when it is not importable
_threads: int | None = None


def _opencv():
    """cv2 (threads set to the budget on first use), or None when it is not importable."""
    global _cv2
    if _cv2 is None:
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
            log.warning("OpenCV is not importable (%s): filters fall back to scipy.ndimage (slower)", exc)
            _cv2 = False
        else:
            cv2.setNumThreads(1 if _threads is None else _threads)
            _cv2 = cv2
    return _cv2 or None


def opencv_available() -> bool:
    """True when the CPU path runs on OpenCV (else on scipy.ndimage)."""
    return _opencv() is not None


def set_num_threads(n: int) -> None:
    """Threads OpenCV may use in this process (default 1: one block per worker thread)."""
    global _threads
    _threads = max(1, int(n))
    cv2 = _opencv()
    if cv2 is not None:
        cv2.setNumThreads(_threads)


def _is_gpu(x) -> bool:
    return array_module(x) is not np


def _per_axis(value, ndim: int, name: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return [value] * ndim
    value = list(value)
    if len(value) != ndim:
        raise ValueError(f"{name} has {len(value)} entries for an array of {ndim} dimensions")
    return value


def gaussian_kernel1d(sigma: float, order: int = 0, radius: int | None = None, *,
                      truncate: float = TRUNCATE) -> np.ndarray:
    """The correlation weights scipy's ``gaussian_filter1d`` uses (float64, length ``2 * radius + 1``).

    ``radius`` defaults to ``int(truncate * sigma + 0.5)``; ``order`` is the
    derivative order (0: smoothing).
    """
    sigma = float(sigma)
    if radius is None:
        radius = int(truncate * sigma + 0.5)
    if not isinstance(radius, numbers.Integral) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    order = int(order)
    if order < 0:
        raise ValueError(f"order must be non-negative, got {order}")
    x = np.arange(-radius, radius + 1)
    sigma2 = sigma * sigma
    phi = np.exp(-0.5 / sigma2 * x ** 2)
    phi = phi / phi.sum()
    if order == 0:
        return phi[::-1].copy()
    # f(x) = q(x) phi(x): q' + q p' with p' = -x / sigma^2, as a matrix on q's coefficients
    exponents = np.arange(order + 1)
    q = np.zeros(order + 1)
    q[0] = 1.0
    deriv = np.diag(exponents[1:], 1) + np.diag(np.ones(order) / -sigma2, -1)
    for _ in range(order):
        q = deriv.dot(q)
    q = (x[:, None] ** exponents).dot(q)
    return (q * phi)[::-1].copy()


@functools.lru_cache(maxsize=256)
def _work_kernel(sigma: float, order: int, radius: int | None, truncate: float, dtype: str) -> np.ndarray:
    """:func:`gaussian_kernel1d` in ``dtype``, read-only: a fit blurs with the same few kernels thousands of times."""
    kernel = gaussian_kernel1d(sigma, order, radius, truncate=truncate).astype(dtype)
    kernel.flags.writeable = False
    return kernel


#: scipy mode -> OpenCV border; None: OpenCV has no exact equivalent (its filter engine rejects
#: BORDER_WRAP along columns), scipy does it.
_GAUSSIAN_MODES = {"reflect": "BORDER_REFLECT", "grid-mirror": "BORDER_REFLECT", "mirror": "BORDER_REFLECT_101",
                   "nearest": "BORDER_REPLICATE", "constant": "BORDER_CONSTANT", "grid-constant": "BORDER_CONSTANT",
                   "wrap": None, "grid-wrap": None}


def _border(cv2, mode: str, cval: float):
    if mode not in _GAUSSIAN_MODES:
        raise ValueError(f"unknown boundary mode {mode!r}; expected one of {', '.join(_GAUSSIAN_MODES)}")
    name = _GAUSSIAN_MODES[mode]
    if name is None or (name == "BORDER_CONSTANT" and float(cval) != 0.0):
        return None                      # no exact OpenCV border (OpenCV's filters pad with 0 only)
    return getattr(cv2, name)


def _call(cv2, op: str, src, dst, kx, ky, border, ddepth) -> None:
    """One OpenCV 2-D call ``src -> dst`` (distinct memory; ``dst`` a writable view OpenCV fills in place)."""
    if op == "filter":
        res = cv2.sepFilter2D(src, ddepth, kx, ky, dst=dst, borderType=border)
    else:
        res = cv2.dilate(src, kx, dst=dst)
    if res is not dst:                   # pragma: no cover - OpenCV wrote into a new array: copy it in
        dst[...] = res


def _column_pass(cv2, src3, dst3, kernel, border, ddepth, op: str) -> None:
    """Filter along axis 1 of (p, n, r) C-contiguous arrays: per p, a column pass on (n, width) pieces.

    Each piece ``[:, o:o + width]`` is a view with contiguous rows and the
    full row step r, which OpenCV takes as is, so nothing is copied;
    ``src3`` and ``dst3`` may be the same array (the piece then goes through
    a small scratch buffer: we do not rely on OpenCV's in-place behaviour).
    """
    p, n, r = src3.shape
    tile = max(1, _COLUMN_TILE * 4 // src3.itemsize)
    # sepFilter2D(kx=[1], ky=kernel) filters columns; dilate takes the (size, 1) element as is
    kx, ky = (np.ones(1, kernel.dtype), kernel) if op == "filter" else (kernel, None)
    in_place = np.shares_memory(src3[:1, :1, :1], dst3[:1, :1, :1])
    scratch = np.empty((n, min(tile, r)), dst3.dtype) if in_place else None
    for i in range(p):
        s2, d2 = src3[i], dst3[i]
        for o in range(0, r, tile):
            w = min(tile, r - o)
            sv, dv = s2[:, o:o + w], d2[:, o:o + w]
            if in_place:
                tmp = scratch[:, :w]
                _call(cv2, op, sv, tmp, kx, ky, border, ddepth)
                dv[...] = tmp
            else:
                _call(cv2, op, sv, dv, kx, ky, border, ddepth)


def _plane_pass(cv2, src3, dst3, kx, ky, border, ddepth, op: str) -> None:
    """Filter (y, x) of (p, y, x) or (p, y, x, c) C-contiguous arrays, one 2-D call per plane (may be in place)."""
    in_place = np.shares_memory(src3[:1, :1, :1], dst3[:1, :1, :1])
    scratch = np.empty(dst3.shape[1:], dst3.dtype) if in_place else None
    for i in range(src3.shape[0]):
        if in_place:
            _call(cv2, op, src3[i], scratch, kx, ky, border, ddepth)
            dst3[i] = scratch
        else:
            _call(cv2, op, src3[i], dst3[i], kx, ky, border, ddepth)


def _slab_rows(nz: int, r: int, plane_bytes: int) -> int:
    """Output planes per slab for a z kernel of reach ``r``; 0 when the scratch cannot hold a useful slab."""
    if plane_bytes > _SLAB_MAX_PLANE_BYTES:
        return 0
    room = _SLAB_SCRATCH_BYTES // plane_bytes - 2 * r
    if room < min(nz, 4):
        return 0
    return max(1, min(_SLAB_ROWS, nz, room))


def _slab_scratch(size: int, dtype) -> np.ndarray:
    """``size`` elements of ``dtype`` from this thread's kept scratch (grown when too small).

    Two users, never at once within a call: :func:`_slab_pass`'s slabs (at most
    :data:`_SLAB_SCRATCH_BYTES`) and the numba one pass's z-summed plane (one
    plane of the array, whatever its size).
    """
    nbytes = size * np.dtype(dtype).itemsize
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _scratch.buffer = np.empty(nbytes, np.uint8)
    return buffer[:nbytes].view(dtype)


def _slab_pass(cv2, src4, dst4, rows: int, kz, kx, ky, border_z, border_plane, ddepth) -> None:
    """Filter axis 1 (z) and then (y, x) of (p, z, y, x) or (p, z, y, x, c) C-contiguous arrays, slab by slab.

    Each slab of ``rows`` output planes (:func:`_slab_rows`) is filtered along z,
    with ``r`` planes of real data on either side, into a small scratch
    buffer; its planes then go through the (y, x) filter straight into
    ``dst4``. The two-pass path writes the whole z-filtered volume and then
    filters its planes in place through a scratch plane and a copy: for
    small planes that copy and the volume's round trip through memory cost
    more (×1.2-1.4 at 64×144×144 to 64×256×256; not at 512×512).

    The result is the two-pass one bit for bit: an output plane the slab
    keeps sees the same input planes, and the slab's cut edges (handled as
    borders by OpenCV) only reach the ``r`` planes it discards; at the
    array's own edges the slab starts or ends there, and the border is the
    array's as before.
    """
    p, nz = src4.shape[:2]
    r = len(kz) // 2
    plane = math.prod(src4.shape[2:])          # (y, x) or, with channels last, (y, x, c)
    scratch = _slab_scratch(min(rows + 2 * r, nz) * plane, dst4.dtype).reshape(-1, plane)
    one = np.ones(1, kz.dtype)
    for i in range(p):
        flat = src4[i].reshape(nz, plane)
        for z0 in range(0, nz, rows):
            z1 = min(z0 + rows, nz)
            a, b = max(z0 - r, 0), min(z1 + r, nz)
            slab = scratch[:b - a]
            _call(cv2, "filter", flat[a:b], slab, one, kz, border_z, ddepth)
            planes = slab.reshape(b - a, *src4.shape[2:])
            for z in range(z0, z1):
                _call(cv2, "filter", planes[z - a], dst4[i, z], kx, ky, border_plane, ddepth)


#: scipy mode -> index rule of the numba pass (:func:`_one_pass_kernel`): 0 reflect, 1 mirror, 2 nearest.
_ONE_PASS_MODES = {"reflect": 0, "grid-mirror": 0, "mirror": 1, "nearest": 2}


@numba_kernels
def _one_pass_kernel(numba):
    """The numba pass of :func:`_gaussian_one_pass`, or None without numba.

    ``smooth(src, dst, kz, ky, kx, modes, c, plane, padded)`` filters a
    float32 (z, y, x * c) array into another (distinct memory) with odd,
    symmetric kernels per axis (length 1 leaves an axis alone) and a
    boundary rule per axis; ``c`` channels ride along, side by side. For each
    output plane it sums the z taps row by row into ``plane`` (y, x * c),
    then each row's y taps into the middle of ``padded``, pads that row by
    the x rule, and sums its x taps into the output row. Every sum runs over
    a whole row, and mirrored taps are added before their one product, two
    pairs per sweep: ``acc += w1 (a1 + b1) + w2 (a2 + b2)``.
    """

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def smooth(src, dst, kz, ky, kx, modes, c, plane, padded):
        def source(i, n, mode):
            # the index that scipy's mode gives position i of an axis of n (repeated for long kernels)
            if mode == 2:                               # nearest: a a a | a b c d | d d d
                return 0 if i < 0 else (n - 1 if i >= n else i)
            if mode == 1:                               # mirror: d c b | a b c d | c b a
                if n == 1:
                    return 0
                period = 2 * n - 2
                i = i % period
                return i if i < n else period - i
            period = 2 * n                              # reflect: d c b a | a b c d | d c b a
            i = i % period
            return i if i < n else period - 1 - i

        # Row sums; the rows are sliced to the output's length so that the loops vectorise.
        def centre(out, a, w):
            n = out.size
            a = a[:n]
            for j in range(n):
                out[j] = w * a[j]

        def pair(out, a, b, w):
            n = out.size
            a, b = a[:n], b[:n]
            for j in range(n):
                out[j] += w * (a[j] + b[j])

        def two_pairs(out, a1, b1, w1, a2, b2, w2):
            n = out.size
            a1, b1, a2, b2 = a1[:n], b1[:n], a2[:n], b2[:n]
            for j in range(n):
                out[j] += w1 * (a1[j] + b1[j]) + w2 * (a2[j] + b2[j])

        nz, ny, width = src.shape
        nx = width // c
        rz, ry, rx = kz.size // 2, ky.size // 2, kx.size // 2
        lo_x = rx * c                                   # where a row's own values start in ``padded``
        mid = padded[lo_x:lo_x + width]
        for z in range(nz):
            for y in range(ny):                         # z taps -> plane
                row = plane[y]
                centre(row, src[z, y], kz[rz])
                for k in range(1, rz, 2):
                    two_pairs(row, src[source(z - k, nz, modes[0]), y], src[source(z + k, nz, modes[0]), y],
                              kz[rz + k], src[source(z - k - 1, nz, modes[0]), y],
                              src[source(z + k + 1, nz, modes[0]), y], kz[rz + k + 1])
                if rz % 2:
                    pair(row, src[source(z - rz, nz, modes[0]), y], src[source(z + rz, nz, modes[0]), y], kz[2 * rz])
            for y in range(ny):                         # y taps -> the middle of padded
                centre(mid, plane[y], ky[ry])
                for k in range(1, ry, 2):
                    two_pairs(mid, plane[source(y - k, ny, modes[1])], plane[source(y + k, ny, modes[1])], ky[ry + k],
                              plane[source(y - k - 1, ny, modes[1])], plane[source(y + k + 1, ny, modes[1])],
                              ky[ry + k + 1])
                if ry % 2:
                    pair(mid, plane[source(y - ry, ny, modes[1])], plane[source(y + ry, ny, modes[1])], ky[2 * ry])
                for x in range(rx):                     # the x border, by the x rule
                    left, right = source(x - rx, nx, modes[2]), source(nx + x, nx, modes[2])
                    for ch in range(c):
                        padded[x * c + ch] = mid[left * c + ch]
                        padded[lo_x + width + x * c + ch] = mid[right * c + ch]
                out = dst[z, y]                         # x taps -> the output row
                centre(out, mid, kx[rx])
                for k in range(1, rx, 2):
                    two_pairs(out, padded[lo_x - k * c:], padded[lo_x + k * c:], kx[rx + k],
                              padded[lo_x - (k + 1) * c:], padded[lo_x + (k + 1) * c:], kx[rx + k + 1])
                if rx % 2:
                    pair(out, padded[lo_x - rx * c:], padded[lo_x + rx * c:], kx[2 * rx])

    return smooth


def _one_pass_layout(image, sigmas, orders, modes, output, dtype):
    """How :func:`_gaussian_one_pass` takes this call: ``(spatial axes, channel axis or None)``, or None.

    It takes host float32 work (``dtype``; float32 or no ``output``) on a
    (z, y, x) array, or a (c, z, y, x) / (z, y, x, c) stack with sigma 0 on
    ``c``, smoothing only (order 0), in modes reflect, mirror or nearest.
    """
    if _one_pass_kernel() is None or dtype != np.float32 or image.size == 0:
        return None
    if output is not None and output.dtype != np.float32:
        return None
    if image.ndim == 3:
        spatial, channel = (0, 1, 2), None
    elif image.ndim == 4 and sigmas[0] <= 1e-15:
        spatial, channel = (1, 2, 3), 0
    elif image.ndim == 4 and sigmas[3] <= 1e-15 and image.shape[3] <= _CV_MAX_CHANNELS:
        spatial, channel = (0, 1, 2), 3
    else:
        return None
    if any(orders[a] != 0 for a in range(image.ndim)) or any(modes[a] not in _ONE_PASS_MODES for a in spatial):
        return None
    return spatial, channel


def _gaussian_one_pass(image, layout, sigmas, modes, truncate, radii, output):
    """:func:`gaussian` through the numba pass (:func:`_one_pass_kernel`) for what :func:`_one_pass_layout` takes.

    One pass over the data instead of OpenCV's two (a z pass, then each
    plane), with scipy's weights: the result is scipy's to float32 rounding
    (the sums are taken in another order than OpenCV's, so not its bits).
    On the 64×256×256 sample's fill channel, σ 2: ≈ 290 Mvox/s per core
    against OpenCV's ≈ 180; σ 3.2 (the puncta DoG's outer σ): ≈ 180 against
    ≈ 55 (``python -m benchmarks --stages kernels``, BENCHMARKS.md "Session 22").
    """
    spatial, channel = layout
    kernels = [_work_kernel(sigmas[a], 0, radii[a], truncate, "f") if sigmas[a] > 1e-15
               else np.ones(1, np.float32) for a in spatial]
    rules = np.array([_ONE_PASS_MODES[modes[a]] for a in spatial], np.int64)
    src = np.ascontiguousarray(image, dtype=np.float32)
    if output is not None and output.flags.c_contiguous and np.may_share_memory(src, output):
        src = src.copy()                 # the pass reads planes it has already written
    out = output if output is not None and output.flags.c_contiguous else np.empty(image.shape, np.float32)
    if channel == 0:
        stacks = [(src[i], out[i], 1) for i in range(image.shape[0])]
    elif channel == 3:
        stacks = [(src, out, image.shape[3])]
    else:
        stacks = [(src, out, 1)]
    smooth = _one_pass_kernel()
    for s, o, c in stacks:
        nz, ny, nx = s.shape[:3]
        plane = _slab_scratch(ny * nx * c, np.float32).reshape(ny, nx * c)    # kept: no fresh mapping per call
        padded = np.empty((nx + 2 * (kernels[2].size // 2)) * c, np.float32)
        smooth(s.reshape(nz, ny, nx * c), o.reshape(nz, ny, nx * c), kernels[0], kernels[1], kernels[2], rules, c,
               plane, padded)
    if output is not None and out is not output:
        output[...] = out
        return output
    return out


def gaussian(image, sigma, *, order=0, mode: str = "reflect", cval: float = 0.0, truncate: float = TRUNCATE,
             radius=None, output=None):
    """Gaussian filter of an N-D array, equal to ``scipy.ndimage.gaussian_filter`` up to float32 rounding.

    Parameters
    ----------
    image : ndarray (NumPy or CuPy)
        Typically a float32 (z, y, x) block or a (c, z, y, x) stack. Any
        layout (non-contiguous views are copied once).
    sigma : float or sequence of float, one per axis
        Standard deviation in voxels; an axis with ``sigma <= 1e-15`` is not
        filtered (also not differentiated), as in scipy. Pass 0 for the
        channel axis of a (c, z, y, x) stack.
    order : int or sequence of int
        Derivative order per axis (0 = smoothing, 1, 2, ...), as in scipy.
    mode : str or sequence of str
        Boundary mode(s): ``reflect`` (default), ``mirror``, ``nearest``,
        ``constant``/``grid-constant``; ``wrap``/``grid-wrap`` (via scipy).
    cval : float
        Value outside the array in ``constant`` mode.
    truncate : float
        Kernel radius in sigmas: ``radius = int(truncate * sigma + 0.5)``.
    radius : int or sequence of int, optional
        Explicit kernel radius per axis (overrides ``truncate``).
    output : ndarray, optional
        Where to write (same shape; float32 or float64); a new array by default.
        May be ``image`` itself: the filter then goes through small scratch
        tiles and planes, with the same result bit for bit.

    Returns
    -------
    ndarray
        float32 on the CPU (float64 input stays float64; other dtypes are
        converted to float32, unlike scipy, which keeps integer dtypes), the
        input's dtype on the GPU (cupyx semantics). Same array kind as
        ``image``.
    """
    if _is_gpu(image):
        return _gaussian_gpu(image, sigma, order, mode, cval, truncate, radius, output)
    image = np.asarray(image)
    ndim = image.ndim
    sigmas = [float(s) for s in _per_axis(sigma, ndim, "sigma")]
    orders = [int(o) for o in _per_axis(order, ndim, "order")]
    modes = _per_axis(mode, ndim, "mode")
    radii = _per_axis(radius, ndim, "radius")
    dtype = np.float64 if image.dtype == np.float64 else np.float32
    if output is not None and (output.shape != image.shape or output.dtype not in (np.float32, np.float64)):
        raise ValueError(f"output must be a float32/float64 array of shape {image.shape}")
    layout = _one_pass_layout(image, sigmas, orders, modes, output, dtype)
    if layout is not None:
        return _gaussian_one_pass(image, layout, sigmas, modes, truncate, radii, output)
    active = [a for a in range(ndim) if sigmas[a] > 1e-15]
    cv2 = _opencv()
    borders = [_border(cv2, modes[a], cval) if cv2 is not None else None for a in range(ndim)]
    if cv2 is None or ndim == 0 or image.size == 0 or any(borders[a] is None for a in active):
        src = image.astype(dtype, copy=False)
        if output is None:
            output = np.empty(image.shape, dtype)
        return scipy.ndimage.gaussian_filter(src, sigmas, order=orders, output=output, mode=modes, cval=cval,
                                             truncate=truncate, radius=radii)
    work_dtype = np.float64 if (output is not None and output.dtype == np.float64) else dtype
    ddepth = cv2.CV_64F if work_dtype == np.float64 else cv2.CV_32F
    kernels = {a: _work_kernel(sigmas[a], orders[a], radii[a], truncate, np.dtype(work_dtype).char) for a in active}
    src = np.ascontiguousarray(image, dtype=work_dtype)
    shape = image.shape
    # a trailing axis left alone (channels last) rides along as OpenCV channels: one call per plane
    channels = ()
    if ndim >= 3 and ndim - 1 not in active and 1 < shape[-1] <= _CV_MAX_CHANNELS:
        channels, shape, ndim = shape[-1:], shape[:-1], ndim - 1
    if ndim == 1:                        # a 1-D array is one row of a (1, n) image
        shape, kernels, borders = (1,) + shape, {a + 1: k for a, k in kernels.items()}, [None] + borders
        active = [a + 1 for a in active]
        ndim = 2
    src = src.reshape(shape + channels)
    direct = output is not None and output.dtype == work_dtype and output.flags.c_contiguous
    out = output.reshape(shape + channels) if direct else np.empty(shape + channels, work_dtype)
    cur = src                            # where the data is now: the input, then ``out``
    ya, xa = ndim - 2, ndim - 1
    # small planes filtered along z: slab by slab (``_slab_pass``), else the two passes below
    za = ndim - 3
    rows = 0
    if (ndim >= 3 and [a for a in active if a < ya] == [za] and (ya in kernels or xa in kernels)
            and (ya not in kernels or xa not in kernels or borders[ya] == borders[xa])
            and not np.may_share_memory(src, out)):     # in place, a slab would read planes already written
        rows = _slab_rows(shape[za], len(kernels[za]) // 2, math.prod(shape[-2:] + channels) * out.itemsize)
    if rows:
        one = np.ones(1, work_dtype)
        four = (math.prod(shape[:za]),) + shape[za:] + channels
        _slab_pass(cv2, src.reshape(four), out.reshape(four), rows, kernels[za], kernels.get(xa, one),
                   kernels.get(ya, one), borders[za], borders[xa] if xa in kernels else borders[ya], ddepth)
        cur, active = out, []            # every axis is filtered
    # every axis before the last two: column passes on (prefix, n, rest) views
    for a in active:
        if a >= ndim - 2:
            continue
        p, n, r = math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:] + channels)
        _column_pass(cv2, cur.reshape(p, n, r), out.reshape(p, n, r), kernels[a], borders[a], ddepth, "filter")
        cur = out
    # the last two axes: one 2-D separable call per plane
    if ya in active or xa in active:
        one = np.ones(1, work_dtype)
        p = math.prod(shape[:-2])
        planes = (p,) + shape[-2:] + channels
        ky, kx = kernels.get(ya, one), kernels.get(xa, one)
        if ya in kernels and xa in kernels and borders[ya] != borders[xa]:
            # one 2-D call has one border type: y first, then x
            _plane_pass(cv2, cur.reshape(planes), out.reshape(planes), one, ky, borders[ya], ddepth, "filter")
            cur, ky = out, one
        border = borders[xa] if xa in kernels else borders[ya]
        _plane_pass(cv2, cur.reshape(planes), out.reshape(planes), kx, ky, border, ddepth, "filter")
        cur = out
    if cur is src:                       # nothing to filter: a copy, as scipy
        out[...] = src
    if output is not None:
        if not direct:
            output[...] = out.reshape(image.shape)
        return output
    return out.reshape(image.shape)


def _gaussian_gpu(image, sigma, order, mode, cval, truncate, radius, output):
    """``cupyx.scipy.ndimage.gaussian_filter`` with the 1-D weights kept on the device.

    cupyx computes every axis's weights on the host and uploads them on every
    call (a blocking copy, ≈ 1 ms: a quarter of the deconvolution's time on a
    67 Mvox block on an H100). Here they are uploaded once per (sigma, order,
    radius, device) and the same ``correlate1d`` passes run, axis by axis, in
    the input's dtype, as cupyx does.
    """
    import cupy
    import cupyx.scipy.ndimage as cndi

    ndim = image.ndim
    sigmas = [float(s) for s in _per_axis(sigma, ndim, "sigma")]
    orders = [int(o) for o in _per_axis(order, ndim, "order")]
    modes = _per_axis(mode, ndim, "mode")
    radii = _per_axis(radius, ndim, "radius")
    active = [a for a in range(ndim) if sigmas[a] > 1e-15]
    if not active:
        if output is None:
            return image.copy()
        output[...] = image
        return output
    device = cupy.cuda.runtime.getDevice()
    # cupyx's rule (``_get_weights_dtype``): float weights of the input's precision, float64 for integers
    weights_dtype = np.promote_types(image.dtype, np.float32) if image.dtype.kind == "f" else np.dtype(np.float64)
    cur = image
    for i, a in enumerate(active):
        weights = _device_weights(sigmas[a], orders[a], radii[a], float(truncate), weights_dtype.str, device)
        last = i == len(active) - 1
        cur = cndi.correlate1d(cur, weights, axis=a, output=output if last else None, mode=modes[a], cval=cval)
    return cur


@functools.lru_cache(maxsize=256)
def _device_weights(sigma: float, order: int, radius, truncate: float, dtype: str, device: int):
    """scipy's 1-D Gaussian correlation weights as a CuPy array of ``dtype`` on ``device`` (cached)."""
    import cupy

    with cupy.cuda.Device(device):
        return cupy.asarray(gaussian_kernel1d(sigma, order, radius, truncate=truncate).astype(dtype))


def maximum(image, size, *, mode: str = "reflect", cval: float = 0.0, output=None):
    """Maximum over a box of ``size`` voxels, equal to ``scipy.ndimage.maximum_filter(image, size=size)``.

    Parameters
    ----------
    image : ndarray (NumPy or CuPy)
        Any numeric dtype OpenCV's ``dilate`` takes (float32, float64,
        uint8, uint16, int16); others go to scipy.
    size : int or sequence of int
        Box size per axis (1 = no filtering along that axis); even sizes
        are placed as scipy places them (origin 0).
    mode : str
        scipy boundary mode. ``reflect``, ``nearest`` and (for odd sizes)
        ``mirror`` only repeat values already inside the box, so they equal
        ignoring the outside, which is what OpenCV's ``dilate`` does;
        ``constant``/``wrap`` (and ``mirror`` with an even size) go to scipy.
    cval, output
        As in scipy.

    Returns
    -------
    ndarray of the input's dtype, same array kind.
    """
    if _is_gpu(image):
        import cupyx.scipy.ndimage as cndi

        return cndi.maximum_filter(image, size=size, output=output, mode=mode, cval=cval)
    image = np.asarray(image)
    ndim = image.ndim
    sizes = [int(s) for s in _per_axis(size, ndim, "size")]
    if any(s < 1 for s in sizes):
        raise ValueError(f"size must be >= 1 on every axis, got {sizes}")
    cv2 = _opencv()
    exact_modes = {"reflect", "nearest", "grid-mirror"} | ({"mirror"} if all(s % 2 for s in sizes) else set())
    if (cv2 is None or mode not in exact_modes or ndim == 0 or image.size == 0
            or image.dtype not in (np.float32, np.float64, np.uint8, np.uint16, np.int16)):
        return scipy.ndimage.maximum_filter(image, size=sizes, mode=mode, cval=cval, output=output)
    src = np.ascontiguousarray(image)
    if ndim == 1:
        src = src.reshape(1, -1)
        sizes = [1] + sizes
    shape = src.shape
    direct = output is not None and output.dtype == src.dtype and output.flags.c_contiguous
    out = output.reshape(shape) if direct else np.empty(shape, src.dtype)
    cur = src
    for a in range(len(shape) - 2):
        if sizes[a] == 1:
            continue
        p, n, r = math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:])
        _column_pass(cv2, cur.reshape(p, n, r), out.reshape(p, n, r), np.ones((sizes[a], 1), np.uint8), None,
                     None, "max")
        cur = out
    if sizes[-1] > 1 or sizes[-2] > 1:
        p = math.prod(shape[:-2])
        _plane_pass(cv2, cur.reshape(p, *shape[-2:]), out.reshape(p, *shape[-2:]),
                    np.ones((sizes[-2], sizes[-1]), np.uint8), None, None, None, "max")
        cur = out
    if cur is src:
        out[...] = src
    if output is not None:
        if not direct:
            output[...] = out.reshape(image.shape)
        return output
    return out.reshape(image.shape)
