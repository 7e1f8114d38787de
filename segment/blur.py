"""The PSF blur of channels-last stacks on the host: one numba pass, in place.

The contact fit (:mod:`segment.unmix`) blurs a (z, y, x, c) buffer twice per
Richardson-Lucy iteration, about 360 times per block; through OpenCV those
blurs were more than half of the pipeline's time. :func:`blur_channels_last`
does each in one pass over the buffer instead of OpenCV's three (a z column
pass, then each (y, x) plane through a scratch copy). Each axis is a Gaussian
of scipy's weights (``truncate``), mode ``reflect``; the channels ride along,
a voxel's c values side by side. The result is scipy's to float32 rounding,
like :func:`pipeline.filters.gaussian` (not its bits: the sums are taken in
another order).

How the pass walks the buffer (9 taps per axis, r = 4)::

        z blocks of 4 output planes        one z block, row by row
      ┌──────────────┐ z0 - 4           rows of the 12 source planes
      │  saved  ring │   ...            ──────────────────────────── ▶ z sums:
      ├──────────────┤ z0               4 z-filtered rows per source row
      │ output planes│ (written here:   (a ring of 16 rows per plane)
      │   z0 .. z0+3 │  saved first)          │ y sums, 4 output rows from 12
      ├──────────────┤ z0 + 4                 ▼
      │  not yet     │ read in place    x sums from a row padded by
      │  written     │   ...            reflection ──▶ the output row
      └──────────────┘ z0 + 7

Every sum is vectorised over a whole row of x * c values. The kernel is
symmetric, so mirrored taps are added before their one multiplication
(``w4 a4 + w3 (a3 + a5) + ... + w0 (a0 + a8)``): 5 products instead of 9.
On a CPU whose multipliers set the pace that is 7 % less time per blur. A z or y sum makes 4 outputs from 12 rows, so each source row
is loaded 3 times instead of 9. Blurring in place, the original of an output
plane is still needed by the next block: the 4 planes a block overwrites are
copied to an 8-plane ring first. Kernels shorter than 9 taps are padded with
zero weights (an added ``0 * (x + y)`` is +0.0: the same sum). Those of 7 or
fewer skip the outer pair altogether, the same values with two fewer adds and
one product fewer per sum: the contact fit's back projector on the sample (σ 1
voxel) blurs in 13.9 ms instead of 17.0 through the 9-tap loop (same process,
random (64, 144, 144, 8) buffer, medians of 10). Longer ones (sigma
above 1.8 voxels at ``truncate`` 2.5) and arrays the kernel does not take
go to :func:`pipeline.filters.gaussian`.

Measured on the fit's (64, 144, 144, 8) buffer, σ 1.5 voxels, in place
(BENCHMARKS.md "Sessions 20 and 21"): see there for the numbers and the command.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from pipeline.filters import gaussian, gaussian_kernel1d
from pipeline.jit import numba_kernels

__all__ = ["MAX_TAPS", "blur_channels_last", "blur_ratio_channels_last", "one_pass_takes"]

#: Taps per axis of the numba pass (radius 4); wider kernels go to pipeline.filters.gaussian.
MAX_TAPS = 9

#: Output planes (z) and rows (y) each sum makes at once.
_BLOCK = 4

#: Planes of the ring that keeps the originals of overwritten planes (two blocks).
_SAVED_PLANES = 2 * _BLOCK

#: z-filtered rows kept per output plane: the 12 a y sum reads, and those the next one computes.
_ROW_RING = 16

_scratch = threading.local()


def blur_channels_last(image, sigma, *, truncate: float, output=None):
    """Gaussian blur of a host (z, y, x, c) stack over z, y and x; the channels are not mixed.

    Parameters
    ----------
    image : ndarray (z, y, x, c) of float32
    sigma : (z, y, x)
        Standard deviation per axis, in voxels; 0 leaves an axis alone.
    truncate : float
        Kernel radius in sigmas: ``int(truncate * sigma + 0.5)`` per axis.
    output : ndarray like ``image``, optional
        Where to write; may be ``image`` itself (no copy of it is made).

    Returns
    -------
    ndarray
        ``output``, or a new array.
    """
    image = _stack(image, "image")
    if output is None:
        output = np.empty(image.shape, np.float32)
    if output.shape != image.shape or output.dtype != np.float32:
        raise ValueError(f"blur_channels_last: output {output.shape} {output.dtype} must be float32 "
                         f"of the image's shape {image.shape}")
    _blur(image, _sigma(sigma), float(truncate), output, None, np.float32(0), np.float32(0))
    return output


def blur_ratio_channels_last(image, sigma, *, truncate: float, observed, beta, floor):
    """Richardson-Lucy's ratio, in place: ``image := (observed + beta) / max(blur(image) + beta, floor)``.

    The blur is :func:`blur_channels_last`'s. The numba pass takes each row's
    ratio as soon as the row is blurred, while it is still in cache, instead
    of in a second pass over the stack: the same float32 operations, so the
    same bits as the blur followed by the ratio (which is what runs where the
    numba pass does not take ``sigma``).

    Parameters
    ----------
    image : ndarray (z, y, x, c) of float32, C-contiguous
        The model before the blur; the ratio on return.
    sigma, truncate
        As for :func:`blur_channels_last`.
    observed : ndarray like ``image``
    beta, floor : float
        Taken as float32.

    Returns
    -------
    ndarray
        ``image``.
    """
    image = _stack(image, "image")
    observed = _stack(observed, "observed")
    if (observed.shape != image.shape or observed.dtype != np.float32 or image.dtype != np.float32
            or not (image.flags.c_contiguous and observed.flags.c_contiguous)):
        raise ValueError(f"blur_ratio_channels_last: image {image.shape} {image.dtype} and observed "
                         f"{observed.shape} {observed.dtype} must be C-contiguous float32 of one shape")
    _blur(image, _sigma(sigma), float(truncate), image, observed, np.float32(beta), np.float32(floor))
    return image


def _stack(array, name: str):
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"segment.blur: {name} must be (z, y, x, c), got shape {array.shape}")
    return array


def _sigma(sigma) -> tuple:
    sigma = tuple(float(s) for s in sigma)
    if len(sigma) != 3:
        raise ValueError(f"blur_channels_last: sigma must be (z, y, x), got {sigma}")
    return sigma


def _blur(image, sigma: tuple, truncate: float, output, observed, beta, floor) -> None:
    """``output := blur(image)``, then, with ``observed``, the ratio of :func:`blur_ratio_channels_last`."""
    weights = _weights(sigma, truncate)
    kernel = _kernel()
    fits = (kernel is not None and weights is not None and image.dtype == np.float32
            and image.flags.c_contiguous and output.flags.c_contiguous and image.size > 0)
    if not fits:
        _blur_elsewhere(image, sigma, truncate, output)
        if observed is not None:             # the kernel's per-row ratio, as array operations
            output += beta
            np.maximum(output, floor, out=output)
            np.divide(observed + beta, output, out=output)
        return
    z, y, x, c = image.shape
    in_place = bool(np.may_share_memory(image, output))
    if in_place and image.__array_interface__["data"][0] != output.__array_interface__["data"][0]:
        image, in_place = image.copy(), False   # overlapping but not the same array: the ring cannot help
    saved, rows, padded = _buffers(y, x * c, c, in_place)
    fuse = observed is not None
    seen = (observed if fuse else output).reshape(z, y, x * c)
    kernel(image.reshape(z, y, x * c), output.reshape(z, y, x * c), weights, c, saved, rows, padded, in_place,
           seen, beta, floor, fuse)


def one_pass_takes(sigma, truncate: float) -> bool:
    """Whether :func:`blur_channels_last` blurs float32 stacks with ``sigma`` in its numba pass.

    Then each channel's result is the same whatever channels are blurred with
    it; the OpenCV fallback filters the stack as one array and does not
    promise that bit for bit.
    """
    return _kernel() is not None and _weights(tuple(float(s) for s in sigma), float(truncate)) is not None


@functools.lru_cache(maxsize=64)
def _weights(sigma: tuple, truncate: float):
    """The (3, 9) float32 taps of z, y and x, centred and padded with zeros; None when one is wider.

    Symmetric (``w[8 - k] == w[k]``), as the kernel's paired sums assume: a Gaussian's taps are.

    Cached and read-only: the fit blurs with the same sigma hundreds of times per block.
    """
    weights = np.zeros((3, MAX_TAPS), np.float32)
    for axis, s in enumerate(sigma):
        taps = gaussian_kernel1d(s, truncate=truncate) if s > 1e-15 else np.ones(1)
        if taps.size > MAX_TAPS:
            return None
        r = taps.size // 2
        weights[axis, MAX_TAPS // 2 - r:MAX_TAPS // 2 + r + 1] = taps
    weights.flags.writeable = False
    return weights


def _blur_elsewhere(image, sigma, truncate: float, output) -> None:
    """The blur through :func:`pipeline.filters.gaussian` (OpenCV), for what the numba pass does not take."""
    if image.shape[-1] == 1:
        gaussian(image[..., 0], sigma, truncate=truncate, mode="reflect", output=output[..., 0])
    else:
        gaussian(image, sigma + (0.0,), truncate=truncate, mode="reflect", output=output)


def _buffers(y: int, width: int, c: int, in_place: bool):
    """This thread's kept scratch: the saved-plane ring, the z-filtered rows, the padded rows.

    Kept, not allocated per call: a run process maps fresh allocations above
    1 MiB page by page (see pipeline.filters), and the fit calls this ~360
    times per block. Zeroed when first made: rows the kernel computes only to
    discard may read ring slots no plane was saved to yet.
    """
    planes = _SAVED_PLANES if in_place else 0
    need = (planes * y * width, _BLOCK * _ROW_RING * width, _BLOCK * (width + (MAX_TAPS - 1) * c))
    kept = getattr(_scratch, "buffers", None) or (np.empty(0, np.float32),) * 3
    if any(k.size < n for k, n in zip(kept, need)):
        kept = tuple(np.zeros(max(n, k.size), np.float32) for n, k in zip(need, kept))
        _scratch.buffers = kept
    return (kept[0][:need[0]].reshape(planes, y, width),
            kept[1][:need[1]].reshape(_BLOCK, _ROW_RING, width),
            kept[2][:need[2]].reshape(_BLOCK, width + (MAX_TAPS - 1) * c))


@numba_kernels
def _kernel(numba):
    """The numba pass of :func:`blur_channels_last`, or None without numba.

    Its helpers are inner functions of the kernel (numba inlines them), not
    dispatchers of their own: a kernel that calls dispatchers held in a
    closure gets a new cache key in every process (their pickles carry a
    per-process id), so it would be compiled again by every worker.
    """

    # error_model="numpy": IEEE division in the ratio, without the zero check that keeps a loop scalar
    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def blur(src, dst, weights, c, saved, rows, padded, in_place, observed, beta, floor, ratio):
        # src, dst: (z, y, x * c); weights: (3, 9) for z, y, x. With ``ratio``, each output row becomes
        # (observed + beta) / max(row + beta, floor) once it is written (observed: dst's shape)
        def reflect(i, n):
            # scipy's "reflect" (d c b a | a b c d | d c b a), repeated for kernels longer than the axis
            period = 2 * n
            i = i % period
            if i < 0:
                i += period
            return i if i < n else period - 1 - i

        def sources(image, kept, plane, from_saved, y):
            # row y of each of a z block's 12 source planes: its saved original (kept), or the image's plane
            return (kept[plane[0], y] if from_saved[0] else image[plane[0], y],
                    kept[plane[1], y] if from_saved[1] else image[plane[1], y],
                    kept[plane[2], y] if from_saved[2] else image[plane[2], y],
                    kept[plane[3], y] if from_saved[3] else image[plane[3], y],
                    kept[plane[4], y] if from_saved[4] else image[plane[4], y],
                    kept[plane[5], y] if from_saved[5] else image[plane[5], y],
                    kept[plane[6], y] if from_saved[6] else image[plane[6], y],
                    kept[plane[7], y] if from_saved[7] else image[plane[7], y],
                    kept[plane[8], y] if from_saved[8] else image[plane[8], y],
                    kept[plane[9], y] if from_saved[9] else image[plane[9], y],
                    kept[plane[10], y] if from_saved[10] else image[plane[10], y],
                    kept[plane[11], y] if from_saved[11] else image[plane[11], y])

        def sum9(out, r0, r1, r2, r3, r4, r5, r6, r7, r8, w):
            # out = sum_k w[k] r_k, mirrored taps paired; rows sliced to out's length so the loop vectorises
            n = out.size
            r0, r1, r2, r3, r4, r5, r6, r7, r8 = r0[:n], r1[:n], r2[:n], r3[:n], r4[:n], r5[:n], r6[:n], r7[:n], r8[:n]
            w0, w1, w2, w3, w4 = w[0], w[1], w[2], w[3], w[4]      # w[8 - k] == w[k]
            if w0 == 0:                     # 7 taps: the outer pair's +0.0 left out
                for j in range(n):
                    out[j] = w4 * r4[j] + w3 * (r3[j] + r5[j]) + w2 * (r2[j] + r6[j]) + w1 * (r1[j] + r7[j])
                return
            for j in range(n):
                out[j] = (w4 * r4[j] + w3 * (r3[j] + r5[j]) + w2 * (r2[j] + r6[j]) + w1 * (r1[j] + r7[j])
                          + w0 * (r0[j] + r8[j]))

        def sum9x4(o0, o1, o2, o3, r, w):
            # o_i = sum_k w[k] r[i + k] for i < 4 from the 12 rows of ``r``: each row loaded once for four sums
            n = o0.size
            o0, o1, o2, o3 = o0[:n], o1[:n], o2[:n], o3[:n]
            r0, r1, r2, r3, r4, r5 = r[0][:n], r[1][:n], r[2][:n], r[3][:n], r[4][:n], r[5][:n]
            r6, r7, r8, r9, r10, r11 = r[6][:n], r[7][:n], r[8][:n], r[9][:n], r[10][:n], r[11][:n]
            w0, w1, w2, w3, w4 = w[0], w[1], w[2], w[3], w[4]      # w[8 - k] == w[k]
            if w0 == 0:                     # 7 taps: rows 0 and 11 unread, the outer pair's +0.0 left out
                for j in range(n):
                    a1, a2, a3, a4, a5 = r1[j], r2[j], r3[j], r4[j], r5[j]
                    a6, a7, a8, a9, a10 = r6[j], r7[j], r8[j], r9[j], r10[j]
                    o0[j] = w4 * a4 + w3 * (a3 + a5) + w2 * (a2 + a6) + w1 * (a1 + a7)
                    o1[j] = w4 * a5 + w3 * (a4 + a6) + w2 * (a3 + a7) + w1 * (a2 + a8)
                    o2[j] = w4 * a6 + w3 * (a5 + a7) + w2 * (a4 + a8) + w1 * (a3 + a9)
                    o3[j] = w4 * a7 + w3 * (a6 + a8) + w2 * (a5 + a9) + w1 * (a4 + a10)
                return
            for j in range(n):
                a0, a1, a2, a3, a4, a5 = r0[j], r1[j], r2[j], r3[j], r4[j], r5[j]
                a6, a7, a8, a9, a10, a11 = r6[j], r7[j], r8[j], r9[j], r10[j], r11[j]
                o0[j] = w4 * a4 + w3 * (a3 + a5) + w2 * (a2 + a6) + w1 * (a1 + a7) + w0 * (a0 + a8)
                o1[j] = w4 * a5 + w3 * (a4 + a6) + w2 * (a3 + a7) + w1 * (a2 + a8) + w0 * (a1 + a9)
                o2[j] = w4 * a6 + w3 * (a5 + a7) + w2 * (a4 + a8) + w1 * (a3 + a9) + w0 * (a2 + a10)
                o3[j] = w4 * a7 + w3 * (a6 + a8) + w2 * (a5 + a9) + w1 * (a4 + a10) + w0 * (a3 + a11)

        nz, ny, width = src.shape
        nx = width // c
        kz, ky, kx = weights[0], weights[1], weights[2]
        n_saved = saved.shape[0]
        plane = np.empty(12, np.int64)      # source plane of each of a z block's 12 taps
        from_saved = np.empty(12, np.bool_)
        row = np.empty(12, np.int64)        # ring row of each of a y block's 12 taps
        for z0 in range(0, nz, 4):
            if in_place:                    # the planes this block overwrites, kept for the next block
                for p in range(z0, min(z0 + 4, nz)):
                    into, plane_p = saved[p % n_saved], src[p]
                    for y in range(ny):          # element loops: slice assignment costs seconds of compiling
                        for j in range(width):
                            into[y, j] = plane_p[y, j]
            for k in range(12):
                p = reflect(z0 + k - 4, nz)
                from_saved[k] = in_place and p < z0 + 4
                plane[k] = p % n_saved if from_saved[k] else p
            done = 0                        # z-filtered rows [0, done) of this block's planes exist
            for y0 in range(0, ny, 4):
                while done < min(ny, y0 + 8):
                    slot = done % rows.shape[1]
                    sum9x4(rows[0, slot], rows[1, slot], rows[2, slot], rows[3, slot],
                           sources(src, saved, plane, from_saved, done), kz)
                    done += 1
                for k in range(12):
                    row[k] = reflect(y0 + k - 4, ny) % rows.shape[1]
                lo, hi = 4 * c, 4 * c + width   # the unpadded middle of each padded row
                for dz in range(min(4, nz - z0)):
                    zf = rows[dz]               # this plane's z-filtered rows
                    sum9x4(padded[0, lo:hi], padded[1, lo:hi], padded[2, lo:hi], padded[3, lo:hi],
                           (zf[row[0]], zf[row[1]], zf[row[2]], zf[row[3]], zf[row[4]], zf[row[5]],
                            zf[row[6]], zf[row[7]], zf[row[8]], zf[row[9]], zf[row[10]], zf[row[11]]), ky)
                    for dy in range(min(4, ny - y0)):
                        line = padded[dy]
                        for x in range(4):      # reflected voxels either side, for the x sums
                            left, right = reflect(x - 4, nx), reflect(nx + x, nx)
                            for ch in range(c):
                                line[x * c + ch] = line[(4 + left) * c + ch]
                                line[(nx + 4 + x) * c + ch] = line[(4 + right) * c + ch]
                        out = dst[z0 + dz, y0 + dy]
                        sum9(out, line, line[c:], line[2 * c:], line[3 * c:], line[4 * c:],
                             line[5 * c:], line[6 * c:], line[7 * c:], line[8 * c:], kx)
                        if ratio:               # the row is in cache: Richardson-Lucy's ratio now
                            seen = observed[z0 + dz, y0 + dy]
                            for j in range(width):
                                m = out[j] + beta
                                if m < floor:
                                    m = floor
                                out[j] = (seen[j] + beta) / m

    return blur
