"""pipeline.filters against scipy.ndimage: same kernel, same borders, same numbers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage as ndi

from pipeline import filters
from pipeline.filters import gaussian, gaussian_kernel1d, maximum

RTOL = 1e-5


def _close(got, want, rtol=RTOL):
    """float32 agreement relative to the data's scale (values near 0 compare absolutely)."""
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} x {scale:.3g}"


def _data(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


@pytest.fixture(params=["one-pass", "opencv"])
def engine(request, monkeypatch):
    """The Gaussian tests run on both host engines: the numba one pass (where it applies) and OpenCV."""
    if request.param == "opencv":
        monkeypatch.setattr(filters, "_one_pass_kernel", lambda: None)
    return request.param


@pytest.fixture
def opencv(monkeypatch):
    """Tests of the OpenCV path's own machinery: the numba one pass stands aside."""
    monkeypatch.setattr(filters, "_one_pass_kernel", lambda: None)


def test_opencv_is_used():
    assert filters.opencv_available()


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_kernel_matches_scipy(sigma, order):
    from scipy.ndimage._filters import _gaussian_kernel1d

    radius = int(4.0 * sigma + 0.5)
    np.testing.assert_allclose(gaussian_kernel1d(sigma, order), _gaussian_kernel1d(sigma, order, radius)[::-1],
                               rtol=1e-12, atol=1e-15)


SHAPES = [(16, 40, 48), (1, 32, 32), (8, 1, 20), (8, 20, 1), (1, 1, 1), (3, 5, 7), (2, 3, 2), (33, 17, 65),
          (5, 130, 9)]
SIGMAS = [(1.0, 2.0, 2.0), (0.0, 1.5, 1.5), (2.0, 0.0, 0.0), (0.5, 0.8, 0.8), (0.0, 0.0, 3.0), (3.0, 3.0, 3.0),
          (6.0, 0.7, 9.0)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("sigma", SIGMAS, ids=str)
def test_gaussian_matches_scipy(shape, sigma, engine):
    a = _data(shape)
    want = ndi.gaussian_filter(a, sigma, mode="reflect", truncate=4.0)
    got = gaussian(a, sigma, truncate=4.0)
    assert got.dtype == np.float32
    _close(got, want)


@pytest.mark.parametrize("rows", [1, 3, 7, 32])
@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant"])
def test_slab_pass_equals_the_two_pass_path_bit_for_bit(monkeypatch, rows, mode, opencv):
    """Small planes go z-slab by z-slab (``_slab_pass``); the result must be the two-pass path's,
    bit for bit: slabs thinner than the kernel, derivatives, float64, channel stacks, ``output``."""
    cases = [((40, 12, 15), (1.5, 1.5, 1.5), 0, np.float32),
             ((23, 9, 31), (4.0, 0.7, 2.0), 0, np.float32),        # z kernel radius 16 > most slabs
             ((17, 8, 8), (1.0, 0.0, 2.0), 1, np.float32),         # x only in the plane, a derivative
             ((19, 6, 7), (2.0, 1.0, 0.0), (2, 0, 0), np.float64),
             ((3, 21, 10, 11), (0.0, 1.5, 1.5, 1.5), 0, np.float32)]   # (c, z, y, x), sigma 0 on c
    for shape, sigma, order, dtype in cases:
        a = _data(shape, seed=len(shape) + shape[0], dtype=dtype)
        monkeypatch.setattr(filters, "_SLAB_ROWS", rows)
        monkeypatch.setattr(filters, "_SLAB_MAX_PLANE_BYTES", 1 << 30)
        slabs = gaussian(a, sigma, order=order, mode=mode)
        into = np.empty(shape, dtype)
        assert gaussian(a, sigma, order=order, mode=mode, output=into) is into
        monkeypatch.setattr(filters, "_SLAB_MAX_PLANE_BYTES", 0)
        whole = gaussian(a, sigma, order=order, mode=mode)
        np.testing.assert_array_equal(slabs, whole, err_msg=f"{shape} {sigma} order {order}")
        np.testing.assert_array_equal(into, whole)
        _close(whole, ndi.gaussian_filter(a, sigma, order=order, mode=mode), rtol=1e-4 if order else RTOL)


def test_slab_scratch_is_kept_per_thread_and_bounded(monkeypatch, opencv):
    """The run process fixes glibc's mmap threshold, so a scratch allocated per call would be a fresh
    mapping each time: the slab pass reuses one per thread, and leaves planes it cannot hold to the
    two-pass path."""
    import threading

    a = _data((70, 40, 40), seed=7)
    want = gaussian(a, (1.5, 1.5, 1.5))
    first = filters._scratch.buffer
    assert first.nbytes <= filters._SLAB_SCRATCH_BYTES
    for _ in range(3):
        np.testing.assert_array_equal(gaussian(a, (1.5, 1.5, 1.5)), want)
    assert filters._scratch.buffer is first
    other = []
    thread = threading.Thread(target=lambda: other.append((gaussian(a, (1.5, 1.5, 1.5)), filters._scratch.buffer)))
    thread.start()
    thread.join()
    np.testing.assert_array_equal(other[0][0], want)
    assert other[0][1] is not first
    # a scratch too small for a useful slab: the two-pass path, the same numbers
    monkeypatch.setattr(filters, "_SLAB_SCRATCH_BYTES", 40 * 40 * 4 * 10)
    assert filters._slab_rows(70, 3, 40 * 40 * 4) == 4 and filters._slab_rows(70, 4, 40 * 40 * 4) == 0
    slabs = {sigma: gaussian(a, sigma) for sigma in [(0.7, 1.5, 1.5), (2.0, 1.5, 1.5)]}   # z reach 3, 8
    monkeypatch.setattr(filters, "_SLAB_MAX_PLANE_BYTES", 0)
    for sigma, got in slabs.items():
        np.testing.assert_array_equal(got, gaussian(a, sigma))
    monkeypatch.undo()
    assert filters._slab_rows(70, 1, 600 * 600 * 4) == 0                       # plane over the limit


def test_slab_pass_is_not_used_in_place(monkeypatch, opencv):
    """Filtering an array into itself: a slab would read planes an earlier slab already wrote."""
    monkeypatch.setattr(filters, "_SLAB_ROWS", 4)
    a = _data((30, 10, 12), seed=5)
    want = gaussian(a, (2.0, 1.0, 1.0))
    b = a.copy()
    assert gaussian(b, (2.0, 1.0, 1.0), output=b) is b
    np.testing.assert_array_equal(b, want)


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "grid-wrap", "constant", "grid-constant"])
@pytest.mark.parametrize("shape", [(9, 12, 15), (2, 3, 4), (1, 2, 1), (4, 50, 3)], ids=str)
def test_gaussian_modes(mode, shape, engine):
    a = _data(shape, seed=1)
    for sigma in [(1.0, 1.0, 1.0), (2.5, 0.5, 4.0)]:
        _close(gaussian(a, sigma, mode=mode), ndi.gaussian_filter(a, sigma, mode=mode))


def test_gaussian_mixed_modes_and_cval(engine):
    a = _data((6, 20, 30), seed=2)
    modes = ("nearest", "mirror", "reflect")
    _close(gaussian(a, 1.5, mode=modes), ndi.gaussian_filter(a, 1.5, mode=modes))
    modes = ("reflect", "constant", "wrap")
    _close(gaussian(a, (1, 2, 3), mode=modes), ndi.gaussian_filter(a, (1, 2, 3), mode=modes))
    # cval != 0 is not an OpenCV border: falls back to scipy, same answer
    _close(gaussian(a, 1.0, mode="constant", cval=0.5), ndi.gaussian_filter(a, 1.0, mode="constant", cval=0.5))


@pytest.mark.parametrize("truncate", [2.0, 2.5, 3.0, 4.0, 6.0])
def test_gaussian_truncate_and_radius(truncate, engine):
    a = _data((12, 24, 24), seed=3)
    sigma = (0.7, 1.3, 2.1)
    _close(gaussian(a, sigma, truncate=truncate), ndi.gaussian_filter(a, sigma, truncate=truncate))
    _close(gaussian(a, sigma, radius=(1, 5, 2)), ndi.gaussian_filter(a, sigma, radius=(1, 5, 2)))


@pytest.mark.parametrize("order", [(0, 0, 1), (0, 2, 0), (2, 0, 0), (1, 1, 0), (0, 0, 2), (3, 0, 1), 1])
def test_gaussian_derivatives(order):
    a = _data((10, 30, 26), seed=4)
    sigma = (0.5, 0.8, 1.2)
    _close(gaussian(a, sigma, order=order, truncate=3.0), ndi.gaussian_filter(a, sigma, order=order, truncate=3.0),
           rtol=2e-5)


def test_gaussian_kernel_longer_than_array(engine):
    # radius 40 on axes of 1..5 voxels: OpenCV reflects repeatedly, like scipy
    for shape in [(3, 4, 5), (1, 2, 3), (5, 1, 1)]:
        a = _data(shape, seed=5)
        for mode in ("reflect", "mirror", "nearest", "wrap"):
            _close(gaussian(a, 10.0, mode=mode), ndi.gaussian_filter(a, 10.0, mode=mode))


def test_gaussian_long_kernel(engine):
    a = _data((4, 300, 300), seed=6)
    _close(gaussian(a, (0.0, 25.0, 40.0)), ndi.gaussian_filter(a, (0.0, 25.0, 40.0)))


def test_gaussian_noncontiguous_and_views(engine):
    base = _data((20, 40, 60), seed=7)
    for view in (base[::2, 3:35, ::3], base.transpose(2, 0, 1), base[:, :, 5:50], np.asfortranarray(base)):
        _close(gaussian(view, (1.0, 2.0, 0.5)), ndi.gaussian_filter(view, (1.0, 2.0, 0.5)))
    assert np.array_equal(base, _data((20, 40, 60), seed=7))   # input untouched


def test_gaussian_channels_and_other_ndims(engine):
    stack = _data((3, 8, 20, 24), seed=8)
    sigma = (0.0, 1.0, 1.5, 1.5)
    _close(gaussian(stack, sigma), ndi.gaussian_filter(stack, sigma))
    _close(gaussian(stack, (0.8, 1.0, 1.5, 1.5)), ndi.gaussian_filter(stack, (0.8, 1.0, 1.5, 1.5)))
    for shape, sigma in [((50,), 2.0), ((1,), 3.0), ((30, 40), (1.0, 3.0)), ((2, 3, 4, 5, 6), 1.0)]:
        a = _data(shape, seed=9)
        _close(gaussian(a, sigma), ndi.gaussian_filter(a, sigma))


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant"])
@pytest.mark.parametrize("shape, sigma", [
    ((5, 7, 9, 3), (1.0, 2.0, 0.5, 0.0)),          # (z, y, x, c): z slab by slab, planes with channels
    ((40, 30, 20, 8), (1.5, 1.5, 1.5, 0.0)),
    ((6, 33, 3), (1.2, 0.8, 0.0)),                 # (y, x, c)
    ((4, 6, 7, 5), (0.0, 1.0, 1.0, 0.0)),
    ((4, 6, 7, 5), (1.0, 0.0, 1.0, 0.0)),
    ((3, 4, 5, 6, 2), (1.0, 1.0, 1.0, 1.0, 0.0)),  # a column pass before the planes
    ((6, 8, 9, 130), (1.0, 1.0, 1.0, 0.0)),        # more channels than OpenCV takes: plain path
], ids=str)
def test_gaussian_channels_last(shape, sigma, mode, engine):
    """A trailing axis with sigma 0 rides along as OpenCV channels (one call per plane): the result
    is scipy's, and each channel's is the one its own Gaussian gives, into ``output`` or not."""
    a = _data(shape, seed=len(shape) + shape[-1])
    want = ndi.gaussian_filter(a, sigma, mode=mode, truncate=2.5)
    got = gaussian(a, sigma, mode=mode, truncate=2.5)
    _close(got, want)
    out = np.empty_like(a)
    assert gaussian(a, sigma, mode=mode, truncate=2.5, output=out) is out
    np.testing.assert_array_equal(out, got)
    in_place = a.copy()                  # the host unmixing fit blurs its one channel buffer in place
    assert gaussian(in_place, sigma, mode=mode, truncate=2.5, output=in_place) is in_place
    np.testing.assert_array_equal(in_place, got)
    one_by_one = np.stack([gaussian(np.ascontiguousarray(a[..., i]), sigma[:-1], mode=mode, truncate=2.5)
                           for i in range(shape[-1])], axis=-1)
    _close(got, one_by_one, rtol=1e-6)


def test_gaussian_channels_last_is_one_opencv_call_per_plane(monkeypatch, opencv):
    """The channels are not filtered one plane row at a time: a (z, y, x, c) stack costs z plane calls
    (plus its z pass), as a single channel does."""
    cv2 = filters._opencv()
    calls = []
    real = cv2.sepFilter2D

    class Counting:
        def __getattr__(self, name):
            return getattr(cv2, name)

        @staticmethod
        def sepFilter2D(src, *args, **kwargs):
            calls.append(src.shape)
            return real(src, *args, **kwargs)

    monkeypatch.setattr(filters, "_cv2", Counting())
    gaussian(_data((6, 16, 20, 8)), (1.0, 1.0, 1.0, 0.0))
    planes = [shape for shape in calls if shape == (16, 20, 8)]
    assert len(planes) == 6 and len(calls) <= 6 + 6, calls


def test_gaussian_dtypes_output_and_zero_sigma(engine):
    a64 = _data((6, 16, 16), seed=10, dtype=np.float64)
    got = gaussian(a64, 1.2)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ndi.gaussian_filter(a64, 1.2), rtol=1e-12, atol=1e-14)
    u16 = (np.random.default_rng(11).random((6, 16, 16)) * 1000).astype(np.uint16)
    got = gaussian(u16, 1.0)
    assert got.dtype == np.float32
    _close(got, ndi.gaussian_filter(u16.astype(np.float32), 1.0))
    a = _data((6, 16, 16), seed=12)
    out = np.empty_like(a)
    assert gaussian(a, 1.0, output=out) is out
    _close(out, ndi.gaussian_filter(a, 1.0))
    inplace = a.copy()
    assert gaussian(inplace, (1.0, 2.0, 0.5), output=inplace) is inplace          # output may be the input
    _close(inplace, ndi.gaussian_filter(a, (1.0, 2.0, 0.5)))
    inplace = a.copy()
    assert maximum(inplace, 3, output=inplace) is inplace
    np.testing.assert_array_equal(inplace, ndi.maximum_filter(a, size=3))
    same = gaussian(a, 0.0)
    assert np.array_equal(same, a) and same is not a
    assert gaussian(np.zeros((0, 4, 4), np.float32), 1.0).shape == (0, 4, 4)
    with pytest.raises(ValueError):
        gaussian(a, (1.0, 1.0))
    with pytest.raises(ValueError):
        gaussian(a, 1.0, mode="bogus")


MAX_SHAPES = [(16, 40, 48), (1, 32, 32), (8, 1, 20), (3, 5, 7), (1, 1, 1), (2, 2, 2), (33, 17, 65)]


@pytest.mark.parametrize("shape", MAX_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("size", [3, (3, 3, 3), (1, 3, 3), (3, 1, 1), (5, 7, 3), (2, 4, 3), (9, 9, 9), 1])
@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "constant", "wrap"])
def test_maximum_matches_scipy(shape, size, mode):
    a = _data(shape, seed=13)
    got = maximum(a, size, mode=mode)
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, ndi.maximum_filter(a, size=size, mode=mode))


def test_maximum_ties_dtypes_and_views():
    rng = np.random.default_rng(14)
    for dtype in (np.float32, np.float64, np.uint8, np.uint16, np.int16, np.int32):
        a = rng.integers(0, 5, (7, 19, 23)).astype(dtype)          # many ties and plateaus
        for size in (3, (1, 5, 5), (4, 2, 6)):
            np.testing.assert_array_equal(maximum(a, size), ndi.maximum_filter(a, size=size))
    base = _data((20, 30, 40), seed=15)
    for view in (base[::2, ::3, 1:], base.transpose(1, 2, 0)):
        np.testing.assert_array_equal(maximum(view, 3, mode="nearest"),
                                      ndi.maximum_filter(view, size=3, mode="nearest"))
    neg = -_data((5, 9, 9), seed=16) - 10.0                      # all negative: border must not add 0
    np.testing.assert_array_equal(maximum(neg, 5), ndi.maximum_filter(neg, size=5))
    stack = _data((2, 6, 10, 12), seed=17)
    np.testing.assert_array_equal(maximum(stack, (1, 3, 3, 3)), ndi.maximum_filter(stack, size=(1, 3, 3, 3)))
    line = _data((40,), seed=18)
    np.testing.assert_array_equal(maximum(line, 5), ndi.maximum_filter(line, size=5))
    with pytest.raises(ValueError):
        maximum(base, 0)


def test_set_num_threads():
    import cv2

    filters.set_num_threads(2)
    assert cv2.getNumThreads() == 2
    filters.set_num_threads(1)
    assert cv2.getNumThreads() == 1


def test_all_modes_sigma_grid(engine):
    """A denser sweep: every combination of small shapes and per-axis sigma on/off."""
    for shape in itertools.product((1, 2, 5), (1, 4), (1, 3, 9)):
        a = _data(shape, seed=sum(shape))
        for sigma in itertools.product((0.0, 0.6, 2.0), repeat=3):
            _close(gaussian(a, sigma), ndi.gaussian_filter(a, sigma))


# -- GPU ---------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_filters_match_cpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    a = _data((12, 40, 48), seed=19)
    ga = cp.asarray(a)
    for sigma, order in [((1.0, 2.0, 2.0), 0), ((0.5, 0.8, 0.8), (0, 0, 2)), ((0.0, 1.5, 1.5), 0)]:
        got = gaussian(ga, sigma, order=order, truncate=3.0)
        assert type(got).__module__.startswith("cupy")
        _close(cp.asnumpy(got), gaussian(a, sigma, order=order, truncate=3.0), rtol=1e-4)
    got = maximum(ga, 3, mode="nearest")
    assert type(got).__module__.startswith("cupy")
    np.testing.assert_array_equal(cp.asnumpy(got), maximum(a, 3, mode="nearest"))


@pytest.mark.gpu
def test_gpu_gaussian_equals_cupyx():
    """The device-cached weights give cupyx's gaussian_filter bit for bit (dtypes, modes, output=, sigma 0)."""
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    import cupyx.scipy.ndimage as cndi

    stack = cp.asarray(_data((3, 10, 33, 40), seed=21))
    cases = [(stack, (0.0, 1.0, 2.0, 2.0), 0, "reflect"), (stack[1], (1.0, 1.5, 2.0), 0, "nearest"),
             (stack[0].astype(cp.float64), (0.5, 0.8, 0.8), (0, 2, 0), "mirror"),
             (stack[2], 1.2, 1, "constant"), (stack[0], (0.0, 0.0, 0.0), 0, "reflect")]
    for image, sigma, order, mode in cases:
        want = cndi.gaussian_filter(image, sigma, order=order, mode=mode, truncate=3.0)
        for _ in range(2):   # the second call reads the cached weights
            got = gaussian(image, sigma, order=order, mode=mode, truncate=3.0)
            assert got.dtype == want.dtype
            cp.testing.assert_array_equal(got, want)
        out = cp.empty_like(image)
        assert gaussian(image, sigma, order=order, mode=mode, truncate=3.0, output=out) is out
        cp.testing.assert_array_equal(out, want)
    # an explicit radius (older cupyx has no ``radius`` argument): against the CPU path
    _close(cp.asnumpy(gaussian(stack[1], 1.5, radius=2)), gaussian(cp.asnumpy(stack[1]), 1.5, radius=2), rtol=1e-4)


def test_cpu_path_does_not_call_scipy(monkeypatch, opencv):
    """The supported modes really run on OpenCV (the scipy fallback would hide a slow path)."""
    a = _data((6, 20, 24), seed=20)
    want_g = {m: ndi.gaussian_filter(a, (1.0, 1.5, 2.0), mode=m) for m in ("reflect", "mirror", "nearest", "constant")}
    want_d = ndi.gaussian_filter(a, (0.5, 0.8, 0.8), order=(0, 2, 0), truncate=3.0)
    want_m = ndi.maximum_filter(a, size=3, mode="nearest")

    def boom(*args, **kwargs):
        raise AssertionError("scipy fallback used")

    monkeypatch.setattr(filters.scipy.ndimage, "gaussian_filter", boom)
    monkeypatch.setattr(filters.scipy.ndimage, "maximum_filter", boom)
    for m, want in want_g.items():
        _close(gaussian(a, (1.0, 1.5, 2.0), mode=m), want)
    _close(gaussian(a, (0.5, 0.8, 0.8), order=(0, 2, 0), truncate=3.0), want_d)
    np.testing.assert_array_equal(maximum(a, 3, mode="nearest"), want_m)


def test_benchmark_kernels_stage_runs(tmp_path):
    """``python -m benchmarks --stages kernels`` (the filter / puncta / statistics rows) on a tiny volume."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks", "--shape", "16,64,64", "--repeats", "1", "--stages", "kernels",
           "--json", str(out), "--tmpdir", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gaussian σ2 (pipeline.filters)" in proc.stdout and "max filter 3³ (scipy.ndimage)" in proc.stdout
    kernels = json.loads(out.read_text())["kernels"]
    assert kernels["gaussian_rel_err"] < 1e-5 and kernels["maximum_equal"] is True
    assert {"gaussian_ours", "gaussian_scipy", "maximum_ours", "maximum_scipy", "puncta", "puncta_scipy",
            "stats_ours", "stats_bincount"} <= set(kernels)
    assert kernels["puncta_n"] == kernels["puncta_scipy_n"]


def test_one_pass_takes_float32_smoothing_in_three_modes_without_opencv_or_scipy(monkeypatch):
    """(z, y, x) arrays and stacks with sigma 0 on c, in reflect/mirror/nearest, never reach OpenCV or scipy."""
    a = _data((9, 21, 17, 3), seed=30)
    want = {m: ndi.gaussian_filter(a, (1.0, 2.0, 1.5, 0.0), mode=m) for m in ("reflect", "mirror", "nearest")}

    def boom(*args, **kwargs):
        raise AssertionError("left the one pass")

    monkeypatch.setattr(filters, "_call", boom)
    monkeypatch.setattr(filters.scipy.ndimage, "gaussian_filter", boom)
    for m, expected in want.items():
        _close(gaussian(a, (1.0, 2.0, 1.5, 0.0), mode=m), expected)                     # channels last
        first = np.ascontiguousarray(np.moveaxis(a, -1, 0))
        _close(gaussian(first, (0.0, 1.0, 2.0, 1.5), mode=m), np.moveaxis(expected, -1, 0))   # channels first
        _close(gaussian(a[..., 0], (1.0, 2.0, 1.5), mode=m), expected[..., 0])
    b = a[..., 1].copy()
    assert gaussian(b, 2.0, output=b) is b
    np.testing.assert_array_equal(b, gaussian(a[..., 1], 2.0))                     # in place: the same bits


@pytest.mark.parametrize("layout", ["channels-last", "channels-first"])
def test_one_pass_filters_each_channel_as_on_its_own(layout):
    """Each channel of a stack comes out bit for bit as the channel filtered alone: grouping is free."""
    a = _data((7, 12, 10, 5), seed=31)
    if layout == "channels-last":
        stack = gaussian(a, (1.5, 1.5, 1.5, 0.0), truncate=2.5)
        channels = [stack[..., i] for i in range(5)]
    else:
        stack = gaussian(np.ascontiguousarray(np.moveaxis(a, -1, 0)), (0.0, 1.5, 1.5, 1.5), truncate=2.5)
        channels = list(stack)
    for i, got in enumerate(channels):
        np.testing.assert_array_equal(got, gaussian(np.ascontiguousarray(a[..., i]), 1.5, truncate=2.5))
