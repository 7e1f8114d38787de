"""The numba PSF blur of channels-last stacks (segment.blur) against scipy."""

import threading

import numpy as np
import pytest
import scipy.ndimage as ndi

import segment.blur as blur_module
from segment.blur import MAX_TAPS, blur_channels_last, blur_ratio_channels_last, one_pass_takes
from segment.kernels import PSF_TRUNCATE


def _scipy(image, sigma, truncate=PSF_TRUNCATE):
    return ndi.gaussian_filter(image.astype(np.float64), tuple(sigma) + (0.0,), truncate=truncate, mode="reflect")


# z and y not multiples of the kernel's 4-plane / 4-row blocks, axes shorter than the kernel, one voxel
SHAPES = [(1, 1, 1, 2), (2, 3, 4, 1), (3, 2, 9, 3), (5, 7, 6, 8), (9, 4, 4, 1), (13, 17, 3, 8), (8, 12, 20, 8),
          (17, 9, 11, 5)]
SIGMAS = [(1.5, 1.5, 1.5), (0.7, 1.0, 1.0), (0.0, 1.2, 0.5), (1.8, 0.3, 0.0), (0.0, 0.0, 0.0)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_blur_equals_scipy_and_in_place_gives_the_same_bits(shape, sigma):
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    expected = _scipy(image, sigma)
    out = blur_channels_last(image, sigma, truncate=PSF_TRUNCATE)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    in_place = image.copy()
    assert blur_channels_last(in_place, sigma, truncate=PSF_TRUNCATE, output=in_place) is in_place
    np.testing.assert_array_equal(in_place, out)
    into = np.full(shape, np.nan, np.float32)
    blur_channels_last(image, sigma, truncate=PSF_TRUNCATE, output=into)
    np.testing.assert_array_equal(into, out)


def test_blur_into_an_overlapping_view_blurs_the_original():
    base = np.random.default_rng(7).random((9, 6, 5, 2), dtype=np.float32)
    expected = _scipy(base[:8], (1.5, 1.5, 1.5))
    blur_channels_last(base[:8], (1.5, 1.5, 1.5), truncate=PSF_TRUNCATE, output=base[1:])
    np.testing.assert_allclose(base[1:], expected, rtol=0, atol=1e-6)


def test_blur_runs_the_numba_pass_for_kernels_up_to_nine_taps(monkeypatch):
    pytest.importorskip("numba")
    calls = []
    monkeypatch.setattr(blur_module, "_blur_elsewhere", lambda *args: calls.append(args))
    image = np.ones((6, 8, 8, 3), np.float32)
    blur_channels_last(image, (1.5, 1.5, 1.5), truncate=PSF_TRUNCATE)   # radius 4: 9 taps
    assert calls == []
    blur_channels_last(image, (2.0, 1.5, 1.5), truncate=PSF_TRUNCATE)   # radius 5 on z: OpenCV
    assert len(calls) == 1
    assert one_pass_takes((1.5, 1.5, 1.5), PSF_TRUNCATE) and not one_pass_takes((2.0, 1.5, 1.5), PSF_TRUNCATE)


@pytest.mark.parametrize("shape", [(5, 7, 6, 8), (13, 17, 3, 2)])
def test_seven_tap_sums_equal_the_nine_tap_loop_bit_for_bit(shape):
    """Kernels of 7 taps or fewer skip the zero outer pair: the same sums as the 9-tap loop, in the same order."""
    pytest.importorskip("numba")
    kernel = blur_module._kernel()
    image = np.random.default_rng(3).uniform(0.5, 1.0, shape).astype(np.float32)
    short = np.array(blur_module._weights((1.0, 0.7, 1.0), PSF_TRUNCATE))     # 7, 5 and 7 taps
    assert (short[:, 0] == 0).all()
    full = short.copy()
    full[:, 0] = full[:, -1] = 1e-30      # a product far below these sums' last bit: the 9-tap loop, same values
    z, y, x, c = shape
    outs = []
    for weights in (short, full):
        out = np.empty(shape, np.float32)
        saved, rows, padded = blur_module._buffers(y, x * c, c, False)
        kernel(image.reshape(z, y, x * c), out.reshape(z, y, x * c), weights, c, saved, rows, padded, False,
               out.reshape(z, y, x * c), np.float32(0), np.float32(0), False)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], blur_channels_last(image, (1.0, 0.7, 1.0), truncate=PSF_TRUNCATE))


def test_blur_taps_are_centred_and_mirror_symmetric():
    """The kernel adds mirrored taps before multiplying (w[8 - k] == w[k]); zero padding keeps that."""
    for sigma in (0.0, 0.3, 0.5, 0.7, 1.0, 1.2, 1.5, 1.79):          # 1.79: the widest nine-tap kernel
        weights = blur_module._weights((sigma, sigma, sigma), PSF_TRUNCATE)
        np.testing.assert_array_equal(weights, weights[:, ::-1])
        assert weights.shape == (3, MAX_TAPS) and abs(float(weights[0].sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("case", ["wide kernel", "float64", "strided"])
def test_blur_falls_back_to_the_opencv_gaussian_with_the_same_result(case):
    rng = np.random.default_rng(3)
    image = rng.random((6, 10, 12, 4), dtype=np.float32)
    sigma = (1.5, 1.5, 1.5)
    if case == "wide kernel":
        sigma = (2.5, 1.0, 3.0)
        assert int(PSF_TRUNCATE * 3.0 + 0.5) * 2 + 1 > MAX_TAPS
    elif case == "float64":
        image = image.astype(np.float64)
    else:
        image = np.moveaxis(rng.random((4, 6, 10, 12), dtype=np.float32), 0, -1)
        assert not image.flags.c_contiguous
    out = blur_channels_last(image, sigma, truncate=PSF_TRUNCATE)
    np.testing.assert_allclose(out, _scipy(image, sigma), rtol=0, atol=1e-6)


def test_blur_keeps_one_scratch_per_thread_and_grows_it():
    rng = np.random.default_rng(5)
    small = rng.random((5, 6, 7, 8), dtype=np.float32)
    large = rng.random((9, 30, 40, 8), dtype=np.float32)
    expected = {id(a): _scipy(a, (1.5, 1.5, 1.5)) for a in (small, large)}
    for image in (small, large, small):
        work = image.copy()
        blur_channels_last(work, (1.5, 1.5, 1.5), truncate=PSF_TRUNCATE, output=work)
        np.testing.assert_allclose(work, expected[id(image)], rtol=0, atol=1e-6)
    results, errors = {}, []

    def run(name, image):
        try:
            for _ in range(3):
                work = image.copy()
                blur_channels_last(work, (1.5, 1.5, 1.5), truncate=PSF_TRUNCATE, output=work)
            results[name] = work
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name, image)) for name, image in (("small", small), ("large", large))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    np.testing.assert_allclose(results["small"], expected[id(small)], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results["large"], expected[id(large)], rtol=0, atol=1e-6)


def test_blur_rejects_bad_shapes_naming_them():
    with pytest.raises(ValueError, match=r"\(z, y, x, c\).*\(4, 5, 6\)"):
        blur_channels_last(np.zeros((4, 5, 6), np.float32), (1, 1, 1), truncate=PSF_TRUNCATE)
    with pytest.raises(ValueError, match=r"output \(4, 5, 6, 3\).*\(4, 5, 6, 2\)"):
        blur_channels_last(np.zeros((4, 5, 6, 2), np.float32), (1, 1, 1), truncate=PSF_TRUNCATE,
                           output=np.zeros((4, 5, 6, 3), np.float32))
    with pytest.raises(ValueError, match="sigma must be"):
        blur_channels_last(np.zeros((4, 5, 6, 2), np.float32), (1, 1), truncate=PSF_TRUNCATE)


@pytest.mark.parametrize("sigma", [(1.5, 1.5, 1.5), (0.0, 1.2, 0.5), (2.0, 1.5, 1.5)], ids=str)  # the last: fallback
@pytest.mark.parametrize("shape", [(9, 14, 11, 8), (5, 7, 6, 3), (1, 1, 1, 2)], ids=str)
def test_blur_ratio_is_the_blur_then_the_ratio_bit_for_bit(shape, sigma):
    """Richardson-Lucy's ratio taken row by row inside the blur equals a second pass after it."""
    rng = np.random.default_rng(sum(shape))
    model = rng.random(shape, dtype=np.float32) * np.float32(0.01)       # some rows under the floor
    observed = rng.random(shape, dtype=np.float32)
    beta, floor = np.float32(0.02), np.float32(0.021)
    expected = blur_channels_last(model, sigma, truncate=PSF_TRUNCATE)
    expected = (observed + beta) / np.maximum(expected + beta, floor)
    got = model.copy()
    assert blur_ratio_channels_last(got, sigma, truncate=PSF_TRUNCATE, observed=observed, beta=0.02, floor=0.021) is got
    np.testing.assert_array_equal(got, expected)


def test_blur_ratio_rejects_mismatched_or_strided_observations():
    image = np.ones((4, 5, 6, 2), np.float32)
    with pytest.raises(ValueError, match=r"observed \(4, 5, 6, 3\)"):
        blur_ratio_channels_last(image, (1.0, 1.0, 1.0), truncate=PSF_TRUNCATE, observed=np.ones((4, 5, 6, 3), np.float32),
                                 beta=0.0, floor=1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        blur_ratio_channels_last(image, (1.0, 1.0, 1.0), truncate=PSF_TRUNCATE,
                                 observed=np.ones((4, 5, 6, 4), np.float32)[..., ::2], beta=0.0, floor=1.0)
