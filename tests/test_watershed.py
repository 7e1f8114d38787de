"""The host watershed's bucket queue (segment.watershed) against scikit-image's heap."""

import numpy as np
import pytest
from skimage.segmentation import watershed as skimage_watershed

import segment.watershed as watershed_module
from segment.flood import quantise
from segment.watershed import watershed


def _scene(seed, shape, plateaus):
    rng = np.random.default_rng(seed)
    landscape = rng.random(shape).astype(np.float32)
    if plateaus:                                     # many voxels on one level: ties broken by queue age
        landscape = np.round(landscape * 4) / 4
    mask = rng.random(shape) < 0.8
    markers = np.zeros(shape, np.int64)
    inside = np.flatnonzero(mask)
    places = rng.choice(inside, size=min(5, inside.size), replace=False)
    markers.flat[places] = np.arange(1, places.size + 1)
    # markers on distinct levels: scikit-image's heap breaks ties between markers by its own layout
    landscape.flat[places] = 0.1 + 0.013 * np.arange(places.size)
    return landscape, markers, mask


@pytest.mark.parametrize("plateaus", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_bucket_queue_equals_scikit_image_on_the_quantised_landscape(seed, plateaus):
    """Bit for bit, over random shapes (axes of 1 voxel included), masks and markers."""
    pytest.importorskip("numba")
    shape = tuple(int(n) for n in np.random.default_rng(100 + seed).integers(1, 13, 3))
    landscape, markers, mask = _scene(seed, shape, plateaus)
    expected = skimage_watershed(quantise(landscape, mask, 65536).astype(np.float64), markers=markers, mask=mask)
    got = watershed(landscape, markers, mask)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, expected)


def test_markers_on_one_level_go_in_raster_order():
    """A plateau between two markers splits it in the middle, the first marker taking the odd voxel."""
    landscape = np.zeros((1, 1, 7), np.float32)
    markers = np.zeros((1, 1, 7), np.int64)
    markers[0, 0, 0], markers[0, 0, 6] = 2, 1
    got = watershed(landscape, markers, np.ones_like(markers, bool))
    np.testing.assert_array_equal(got[0, 0], [2, 2, 2, 2, 1, 1, 1])
    np.testing.assert_array_equal(got, skimage_watershed(landscape, markers=markers))


def test_unreached_voxels_and_markers_outside_the_mask_stay_zero():
    landscape = np.zeros((3, 4, 9), np.float32)
    mask = np.zeros(landscape.shape, bool)
    mask[:, :, :3] = mask[:, :, 6:] = True               # two parts; the second has no marker inside
    markers = np.zeros(landscape.shape, np.int64)
    markers[1, 1, 1], markers[1, 1, 4] = 3, 7            # 7 lies outside the mask
    got = watershed(landscape, markers, mask)
    assert (got[:, :, :3] == 3).all() and (got[:, :, 3:] == 0).all()


def test_without_numba_scikit_image_floods_the_same_levels(monkeypatch):
    landscape, markers, mask = _scene(3, (6, 9, 8), plateaus=True)
    fast = watershed(landscape, markers, mask)
    monkeypatch.setattr(watershed_module, "_kernel", lambda: None)
    np.testing.assert_array_equal(watershed(landscape, markers, mask), fast)


def test_bad_input_is_named():
    good = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"markers \(2, 3\)"):
        watershed(good, np.zeros((2, 3), np.int64), good > 0)
    with pytest.raises(ValueError, match="non-negative"):
        watershed(good, -np.ones(good.shape, np.int64), good == 0)
    with pytest.raises(ValueError, match="levels"):
        watershed(good, np.zeros(good.shape, np.int64), good == 0, levels=1)
