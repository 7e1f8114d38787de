"""Fused CUDA kernels of the unmixing contact pass (:mod:`segment.unmix`) for CuPy arrays.

On the host, numba fuses the pass's inner loops; these are the same loops
for a GPU, one thread per voxel:

- ``mix`` and ``update``, the two slot passes of every Richardson-Lucy
  iteration of :func:`segment.unmix.unmix_abundances`. The array path
  spends 3 x slots x channels whole-block operations on each (a gather of
  the barcode weights, a product, a sum), each a launch and a round trip
  through device memory; fused, each pass reads a voxel's slots once.
  They round every product and sum as the array path does (``__fmul_rn``,
  ``__fadd_rn``: no fused multiply-add), in its order, so both give the
  same bits on a GPU.
- ``grow``, one axis of :func:`segment.unmix.candidate_slots`: the
  neighbours' labels a voxel has not seen yet fill its free slots, in the
  order the numba kernel and the array path fill them.
- :func:`smooth_by_sorted_entries`, :func:`segment.unmix.smooth_abundances` by each
  neuron's own (slot, voxel) entries: one Gaussian of each neuron's
  bounding box (grown by the kernel's reach) instead of one of the whole
  block per neuron.

Every kernel is compiled on first use (CuPy caches the binary on disk), so
importing this module needs no GPU; none of it runs without CuPy.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline import array_module, to_host
from pipeline.filters import gaussian

__all__ = ["MAX_GROW_SLOTS", "device_grow", "device_slot_passes", "smooth_by_sorted_entries"]

MAX_GROW_SLOTS = 16
"""Largest ``max_candidates`` the ``grow`` kernel holds in registers; more take the array path."""

_THREADS = 256

_SOURCE = r"""
typedef SLOT_TYPE slot_t;

extern "C" __global__ void unmix_mix(const slot_t* slots, const float* u, const float* table,
                                     long long n_slots, long long n_ch, long long n_vox, float* out) {
    long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n_vox) return;
    for (long long ch = 0; ch < n_ch; ++ch) {
        float acc = 0.0f;
        for (long long k = 0; k < n_slots; ++k) {
            long long label = (long long)slots[k * n_vox + v];
            acc = __fadd_rn(acc, __fmul_rn(table[label * n_ch + ch], u[k * n_vox + v]));
        }
        out[ch * n_vox + v] = acc;
    }
}

// ``out`` may be ``start``: each (slot, voxel) entry is read before it is written, by its own thread.
extern "C" __global__ void unmix_update(const slot_t* slots, const float* start, const float* table,
                                        const float* ratio, long long n_slots, long long n_ch,
                                        long long n_vox, float scale, float* out) {
    long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n_vox) return;
    for (long long k = 0; k < n_slots; ++k) {
        long long label = (long long)slots[k * n_vox + v];
        float total = 0.0f;
        for (long long ch = 0; ch < n_ch; ++ch) {
            total = __fadd_rn(total, __fmul_rn(table[label * n_ch + ch], ratio[ch * n_vox + v]));
        }
        float step = __fmul_rn(__fmul_rn(total, scale), start[k * n_vox + v]);
        out[k * n_vox + v] = label != 0 ? step : 0.0f;
    }
}

extern "C" __global__ void unmix_grow(const slot_t* slots, slot_t* out, unsigned char* overflow,
                                      long long n_slots, long long nz, long long ny, long long nx,
                                      long long radius, int axis) {
    long long n_vox = nz * ny * nx;
    long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n_vox) return;
    slot_t own[MAX_SLOTS];
    long long z = v / (ny * nx);
    long long y = (v / nx) % ny;
    long long x = v % nx;
    long long position = axis == 0 ? z : (axis == 1 ? y : x);
    long long size = axis == 0 ? nz : (axis == 1 ? ny : nx);
    long long stride = axis == 0 ? ny * nx : (axis == 1 ? nx : 1);
    // a voxel's labels fill its first slots (packed): count them
    int n = 0;
    for (int k = 0; k < n_slots; ++k) {
        own[k] = slots[k * n_vox + v];
        if (own[k] != 0) n = k + 1;
    }
    bool over = false;
    for (long long offset = -radius; offset <= radius; ++offset) {
        // the label that a shift by ``offset`` brings here: the source voxel's
        long long source = position - offset;
        if (offset == 0 || source < 0 || source >= size) continue;
        long long from = v + (source - position) * stride;
        for (int k = 0; k < n_slots; ++k) {
            slot_t value = slots[k * n_vox + from];
            if (value == 0) break;
            bool seen = false;
            for (int j = 0; j < n; ++j) {
                if (own[j] == value) { seen = true; break; }
            }
            if (seen) continue;
            if (n < n_slots) { own[n] = value; n += 1; } else { over = true; }
        }
    }
    for (int k = 0; k < n_slots; ++k) out[k * n_vox + v] = own[k];
    if (over) overflow[v] = 1;
}
"""

_SLOT_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.uint16): "unsigned short",
               np.dtype(np.uint32): "unsigned int", np.dtype(np.int32): "int",
               np.dtype(np.int64): "long long", np.dtype(np.uint64): "unsigned long long"}


@functools.lru_cache(maxsize=None)
def _module(slot_dtype: str):
    """The compiled kernels for slots of ``slot_dtype`` (a NumPy dtype string)."""
    import cupy

    ctype = _SLOT_TYPES.get(np.dtype(slot_dtype))
    if ctype is None:
        raise TypeError(f"unmixing kernels take integer slots of {sorted(str(d) for d in _SLOT_TYPES)}, "
                        f"got {np.dtype(slot_dtype)}")
    source = _SOURCE.replace("SLOT_TYPE", ctype).replace("MAX_SLOTS", str(MAX_GROW_SLOTS))
    return cupy.RawModule(code=source, options=("--std=c++11",))


def _grid(n_vox: int) -> tuple:
    return (max(1, -(-int(n_vox) // _THREADS)),), (_THREADS,)


def device_slot_passes(slots, table, c: int):
    """``mix(start, mixed)`` and ``update(start, ratio, step)`` of the fit, fused, for CuPy arrays.

    The same contract as :func:`segment.unmix._slot_passes`: ``slots``
    (s, z, y, x), ``table`` (n + 1, c) float32 on the device; ``start`` and
    ``step`` (s, z, y, x), ``mixed`` and ``ratio`` (c, z, y, x), all
    C-contiguous float32 (the fit allocates them so).
    """
    import cupy

    flat_slots = cupy.ascontiguousarray(slots).reshape(slots.shape[0], -1)
    table = cupy.ascontiguousarray(table, dtype=cupy.float32)
    module = _module(flat_slots.dtype.str)
    mix_kernel, update_kernel = module.get_function("unmix_mix"), module.get_function("unmix_update")
    n_slots, n_vox = (np.int64(v) for v in flat_slots.shape)
    n_ch, scale = np.int64(c), np.float32(1.0 / c)
    grid, block = _grid(n_vox)

    def contiguous(name, array):
        if not array.flags.c_contiguous:
            raise ValueError(f"fused unmixing kernels need a C-contiguous {name}, got strides {array.strides}")
        return array

    def mix(start, mixed):
        mix_kernel(grid, block, (flat_slots, contiguous("start", start), table, n_slots, n_ch, n_vox,
                                 contiguous("mixed", mixed)))

    def update(start, ratio, step):
        update_kernel(grid, block, (flat_slots, contiguous("start", start), table, contiguous("ratio", ratio),
                                    n_slots, n_ch, n_vox, scale, contiguous("step", step)))

    return mix, update


def device_grow(slots, radius: int):
    """:func:`segment.unmix.candidate_slots`'s three axis passes on packed CuPy ``slots`` (s, z, y, x).

    Returns the grown slots and the number of voxels that ran out of slots.
    """
    import cupy

    n_slots = slots.shape[0]
    if n_slots > MAX_GROW_SLOTS:
        raise ValueError(f"device_grow holds at most {MAX_GROW_SLOTS} slots per voxel, got {n_slots}")
    slots = cupy.ascontiguousarray(slots)
    grown = cupy.empty_like(slots)
    overflow = cupy.zeros(slots.shape[1:], dtype=cupy.uint8)
    kernel = _module(slots.dtype.str).get_function("unmix_grow")
    nz, ny, nx = (np.int64(v) for v in slots.shape[1:])
    grid, block = _grid(int(nz * ny * nx))
    for axis in range(3):
        kernel(grid, block, (slots, grown, overflow, np.int64(n_slots), nz, ny, nx, np.int64(radius),
                             np.int32(axis)))
        slots, grown = grown, slots
    return slots, int(overflow.sum())


def smooth_by_sorted_entries(out, slots, sigma, reach, truncate: float):
    """:func:`segment.unmix.smooth_abundances` in place, neuron by neuron in its box, for CuPy arrays.

    The (slot, voxel) entries are grouped by neuron with one sort; each
    neuron's box is its bounding box grown by ``reach`` (z, y, x) and clipped
    to the block, found from three sorted (neuron, coordinate) keys. Its
    abundances go into the zeroed box, are blurred there and read back into
    its entries. The Gaussian's reach ends inside the box wherever the box
    was not clipped, so each entry gets what a blur of the whole block gives
    it (the array path). Written with ``xp`` (no kernel of its own), so the
    host tests check it on NumPy arrays; the host itself runs the numba
    kernels, which need no sort.
    """
    xp = array_module(out)
    shape = slots.shape[1:]
    n_vox = int(np.prod(shape))
    work = xp.ascontiguousarray(out)
    flat_out = work.reshape(-1)
    flat_slots = xp.ascontiguousarray(slots).reshape(-1)
    entries = xp.flatnonzero(flat_slots)
    if entries.size == 0:
        return out
    neuron = flat_slots[entries].astype(xp.int64)
    order = xp.argsort(neuron)
    entries, neuron = entries[order], neuron[order]
    del order
    voxel = entries % n_vox
    coords = (voxel // (shape[1] * shape[2]), (voxel // shape[2]) % shape[1], voxel % shape[2])
    del voxel
    n = int(neuron[-1])
    ids = xp.arange(1, n + 2, dtype=xp.int64)
    starts = xp.searchsorted(neuron, ids)              # entries of neuron i: starts[i - 1]:starts[i]
    present = starts[1:] > starts[:-1]
    lo = np.zeros((n, 3), np.int64)
    hi = np.zeros((n, 3), np.int64)
    for a, (coord, size) in enumerate(zip(coords, shape)):
        # sorted (neuron, coordinate) keys: a neuron's first and last key hold its extent on this axis
        keys = xp.sort(neuron * size + coord)
        first = keys[xp.minimum(starts[:-1], keys.size - 1)]
        last = keys[xp.maximum(starts[1:] - 1, 0)]
        lo[:, a] = to_host(first - ids[:-1] * size)
        hi[:, a] = to_host(last - ids[:-1] * size)
        del keys
    starts, present = to_host(starts), to_host(present)
    reach = np.asarray(reach, np.int64)
    corners = np.maximum(lo - reach, 0)
    stops = np.minimum(hi + 1 + reach, np.asarray(shape, np.int64))
    box_shapes = np.where(present[:, None], stops - corners, 0)
    # each entry's flat index in its neuron's box
    corner_d, extent_d = xp.asarray(corners), xp.asarray(box_shapes)
    row = neuron - 1
    offsets = (coords[0] - corner_d[row, 0]) * extent_d[row, 1]
    offsets += coords[1] - corner_d[row, 1]
    offsets *= extent_d[row, 2]
    offsets += coords[2] - corner_d[row, 2]
    del coords, row, neuron
    largest = int(box_shapes.prod(axis=1).max())
    dense_buffer = xp.empty(largest, work.dtype)
    blurred_buffer = xp.empty(largest, work.dtype)
    for i in np.flatnonzero(present):
        box_shape = tuple(int(v) for v in box_shapes[i])
        size = int(np.prod(box_shape))
        dense, blurred = dense_buffer[:size], blurred_buffer[:size]
        dense.fill(0)
        mine = slice(int(starts[i]), int(starts[i + 1]))
        dense[offsets[mine]] = flat_out[entries[mine]]
        gaussian(dense.reshape(box_shape), sigma, truncate=truncate, mode="reflect",
                 output=blurred.reshape(box_shape))
        flat_out[entries[mine]] = blurred[offsets[mine]]
    if work is not out:
        out[...] = work
    return out
