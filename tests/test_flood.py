"""The level-synchronous flood (segment.flood) against scikit-image's watershed, on NumPy and CuPy."""

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.segmentation import watershed

from segment.flood import flood, quantise


def _scene(seed, shape=(12, 40, 40), n_seeds=6):
    rng = np.random.default_rng(seed)
    land = ndi.gaussian_filter(rng.random(shape), 2.0)
    mask = ndi.gaussian_filter(rng.random(shape), 3.0) > 0.47
    markers = np.zeros(shape, np.int32)
    idx = rng.choice(np.flatnonzero(mask), size=n_seeds, replace=False)
    markers.ravel()[idx] = np.arange(1, n_seeds + 1)
    return land, markers, mask


@pytest.mark.parametrize("seed", range(6))
def test_flood_equals_skimage_watershed_up_to_ties(seed):
    land, markers, mask = _scene(seed)
    q = quantise(land, mask)
    ours = flood(q, markers, mask)
    theirs = watershed(q, markers=markers, mask=mask, connectivity=1)
    # the same voxels are reached, and each basin keeps its seed
    np.testing.assert_array_equal(ours > 0, theirs > 0)
    np.testing.assert_array_equal(ours[markers > 0], markers[markers > 0])
    # labels differ only where two basins arrive in the same sweep (tie-breaking)
    differ = ours != theirs
    assert differ[mask].mean() < 0.005, differ[mask].mean()  # measured 0.00005-0.0016
    if differ.any():
        # a differing voxel touches both labels' basins in our result
        z, y, x = np.argwhere(differ)[0]
        near = ours[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        assert theirs[z, y, x] in near or ours[z, y, x] in near


def test_flood_follows_the_landscape_not_the_distance():
    # a corridor: the right seed is nearer to the middle, but a ridge (high
    # values) sits between it and the middle, so the left basin takes the middle
    land = np.zeros((1, 1, 21))
    land[0, 0, 14] = 5.0
    markers = np.zeros((1, 1, 21), np.int32)
    markers[0, 0, 0], markers[0, 0, 18] = 1, 2
    out = flood(land, markers)
    assert out[0, 0, :14].tolist() == [1] * 14 and out[0, 0, 15:].tolist() == [2] * 6
    np.testing.assert_array_equal(out, watershed(quantise(land, np.ones_like(land, bool)), markers=markers,
                                                 connectivity=1))


def test_unreachable_voxels_stay_zero_and_bad_input_is_rejected():
    mask = np.zeros((4, 8, 8), bool)
    mask[:, :3] = True
    mask[:, 5:] = True  # a second component with no seed
    markers = np.zeros((4, 8, 8), np.int32)
    markers[1, 1, 1] = 7
    out = flood(np.zeros((4, 8, 8)), markers, mask)
    assert (out[:, :3] == 7).all() and (out[:, 3:] == 0).all()
    assert out.dtype == markers.dtype
    with pytest.raises(ValueError, match="one shape"):
        flood(np.zeros((4, 8, 8)), markers[:2], mask)
    with pytest.raises(ValueError, match="integers"):
        flood(np.zeros((4, 8, 8)), markers.astype(float), mask)
    with pytest.raises(ValueError, match="levels"):
        quantise(np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool), levels=1)
    # empty mask and constant landscape
    assert not flood(np.zeros((4, 8, 8)), markers, np.zeros_like(mask)).any()
    assert not quantise(np.ones((2, 2, 2)), np.ones((2, 2, 2), bool)).any()


@pytest.mark.gpu
def test_flood_on_the_gpu_equals_the_cpu():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    for seed in range(3):
        land, markers, mask = _scene(seed)
        cpu = flood(land, markers, mask)
        gpu = flood(cp.asarray(land), cp.asarray(markers), cp.asarray(mask))
        assert isinstance(gpu, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)


@pytest.mark.gpu
def test_despeckle_on_the_gpu_matches_the_cpu_up_to_ties():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    from segment.codebook import despeckle

    land, markers, mask = _scene(1)
    rng = np.random.default_rng(1)
    labels = np.where(mask, rng.integers(1, 4, mask.shape), 0).astype(np.uint32)
    labels = ndi.median_filter(labels, size=3)  # blobs with specks between them
    cpu = despeckle(labels, mask, land, 20)
    gpu = cp.asnumpy(despeckle(cp.asarray(labels), cp.asarray(mask), cp.asarray(land), 20))
    np.testing.assert_array_equal(gpu > 0, cpu > 0)
    assert (gpu != cpu)[mask].mean() < 0.02
