"""The unmixing contact pass: candidate slots, abundance fit, contact decisions."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from segment.unmix import (UnmixSettings, candidate_slots, core_barcodes, smooth_abundances, unmix_abundances,
                           unmix_contacts, unmix_rounds)

PSF = (1.5, 1.5, 1.5)


def _box_sets(labels, radius):
    """Brute force: the set of non-zero labels within the box around every voxel."""
    z, y, x = labels.shape
    out = {}
    for i in range(z):
        for j in range(y):
            for k in range(x):
                box = labels[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1,
                             max(k - radius, 0):k + radius + 1]
                out[i, j, k] = set(np.unique(box[box > 0]).tolist())
    return out


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_candidate_slots_are_the_labels_in_the_box(radius, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(5, 7, 6)).astype(np.uint32)
    labels[rng.random(labels.shape) < 0.5] = 0
    slots, overflow = candidate_slots(labels, radius, max_candidates=4)
    assert overflow == 0 and slots.shape == (4,) + labels.shape
    # own label first
    np.testing.assert_array_equal(slots[0][labels > 0], labels[labels > 0])
    for (i, j, k), expected in _box_sets(labels, radius).items():
        got = slots[:, i, j, k]
        assert set(got[got > 0].tolist()) == expected
        assert len(got[got > 0]) == len(expected)          # distinct


def test_candidate_slots_count_the_overflow_and_reject_bad_arguments():
    labels = np.zeros((1, 1, 5), np.uint32)
    labels[0, 0, :] = [1, 2, 3, 4, 5]
    slots, overflow = candidate_slots(labels, 2, max_candidates=2)
    assert overflow == 5                                    # every voxel sees >= 3 labels
    assert (slots > 0).all()
    with pytest.raises(ValueError, match="radius"):
        candidate_slots(labels, -1)
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        candidate_slots(labels[0], 1)


def _two_slabs(boundary=8, shape=(16, 12, 12), noise=0.0, seed=0):
    """Two neurons stacked along z, orthogonal-ish barcodes, blurred by the PSF."""
    truth = np.ones(shape, np.uint32)
    truth[boundary:] = 2
    codes = np.array([[0, 0, 0, 0], [1.0, 1.0, 0.05, 0.0], [0.0, 0.05, 1.2, 0.9]])
    density = codes[truth].transpose(3, 0, 1, 2).astype(np.float32)
    image = np.stack([ndi.gaussian_filter(ch, PSF, mode="reflect") for ch in density])
    if noise:
        image += np.random.default_rng(seed).normal(0, noise, image.shape).astype(np.float32)
    return truth, np.maximum(image, 0), codes[1:]


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_unmix_contacts_move_a_misplaced_boundary_back(noise):
    truth, image, codes = _two_slabs(noise=noise)
    labels = truth.copy()
    labels[8] = 1                                            # neuron 1 took one layer of neuron 2
    out = unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=60)
    assert np.count_nonzero(labels != truth) == 144
    assert np.count_nonzero(out != truth) <= (0 if noise == 0 else 14)
    # the cosine of the blurred image alone would keep the misplaced layer: it is a 50/50 mixture
    assert out.dtype == np.uint32


def test_unmix_contacts_change_only_contact_voxels_to_nearby_neurons():
    truth, image, codes = _two_slabs()
    labels = truth.copy()
    labels[:, :, :2] = 0                                    # unlabelled voxels stay unlabelled
    labels[0:3, 0:3, 5:8] = 2                               # a misplaced island far from neuron 2's slab
    out = unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=40)
    assert (out[labels == 0] == 0).all() and (out[labels > 0] > 0).all()
    changed = out != labels
    pad = np.pad(labels, 1)
    touching = np.zeros(labels.shape, bool)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nb = pad[1 + dz:1 + dz + 16, 1 + dy:1 + dy + 12, 1 + dx:1 + dx + 12]
                touching |= (nb != labels) & (nb > 0)
    assert not (changed & ~touching).any()


def test_unmix_without_contacts_or_labels_returns_the_labels():
    truth, image, codes = _two_slabs()
    one = np.ones_like(truth)
    np.testing.assert_array_equal(unmix_contacts(one, image, codes, psf_sigma=PSF, iterations=5), one)
    none = np.zeros_like(truth)
    np.testing.assert_array_equal(unmix_contacts(none, image, codes, psf_sigma=PSF, iterations=5), none)
    with pytest.raises(ValueError, match="barcodes"):
        unmix_contacts(truth, image, codes[:1], psf_sigma=PSF, iterations=5)
    with pytest.raises(ValueError, match="spatial shape"):
        unmix_contacts(truth[1:], image, codes, psf_sigma=PSF, iterations=5)


@pytest.mark.parametrize("seed", range(4))
def test_candidate_slot_engines_agree(seed):
    """The numba kernel fills the same slots in the same order as the array path, overflow included."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    for _ in range(10):
        shape = tuple(int(v) for v in rng.integers(1, 10, 3))
        labels = rng.integers(0, 9, size=shape).astype(np.uint16)
        labels[rng.random(shape) < 0.4] = 0
        radius, slots_per_voxel = int(rng.integers(0, 4)), int(rng.integers(1, 7))
        fast, fast_overflow = candidate_slots(labels, radius, slots_per_voxel)
        plain, plain_overflow = candidate_slots(labels, radius, slots_per_voxel, engine="xp")
        np.testing.assert_array_equal(fast, plain)
        assert fast_overflow == plain_overflow
    with pytest.raises(ValueError, match="engine"):
        candidate_slots(labels, 1, engine="numba")


def test_abundances_fit_a_blurred_mixture_and_stay_in_their_support():
    truth, image, codes = _two_slabs()
    slots, _ = candidate_slots(truth, 2)
    table = np.concatenate([np.zeros((1, 4)), codes])
    u = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=80, beta=0.01)
    assert (u[slots == 0] == 0).all() and (u >= 0).all()
    # the neuron that fills a voxel has the larger abundance there, away from the volume's z faces
    own = np.where(slots == truth[None], u, 0).max(axis=0)
    other = np.where((slots != truth[None]) & (slots > 0), u, 0).max(axis=0)
    inner = np.zeros(truth.shape, bool)
    inner[2:-2] = True
    assert (own[inner] > other[inner]).mean() > 0.99
    with pytest.raises(ValueError, match="barcodes"):
        unmix_abundances(image, slots, table[:2], psf_sigma=PSF, iterations=1)


def _poisson_misfit(u, slots, table, image, beta=0.05):
    """The I-divergence the fit lowers: observation + beta against the blurred mixture + beta."""
    rows = np.maximum(table, 0.0)
    rows = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1e-12) * rows.shape[1]
    rows[0] = 0.0
    mixture = np.einsum("szyx,szyxc->czyx", u, rows[slots])
    model = np.stack([ndi.gaussian_filter(ch, PSF, mode="reflect", truncate=2.5) for ch in mixture]) + beta
    observed = image + beta
    return float((observed * np.log(observed / model) - observed + model).sum())


def test_a_narrower_back_projector_fits_in_fewer_iterations():
    """Guo et al.'s unmatched back projector: larger steps toward the same fit, and the matched one by default."""
    truth, image, codes = _two_slabs()
    labels = truth.copy()
    labels[8] = 1
    slots, _ = candidate_slots(labels, 2)
    table = np.concatenate([np.zeros((1, 4)), codes])

    def misfit(iterations, back):
        u = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations, back_projector=back)
        return _poisson_misfit(u, slots, table, image)

    narrow = (1.0, 1.0, 1.0)
    for iterations in (5, 10, 20, 30):
        assert misfit(iterations, narrow) < misfit(iterations, None), iterations
    assert misfit(40, narrow) < misfit(60, None)
    same = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=7, back_projector=PSF)
    np.testing.assert_array_equal(same, unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=7))
    for bad in [(1.0, 1.0), (1.0, -1.0, 1.0)]:
        with pytest.raises(ValueError, match="back_projector"):
            unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=1, back_projector=bad)


def _dense_reference(u, slots, sigma):
    """Brute force: every neuron's abundance as a whole-block map, scipy-blurred, read back per slot."""
    out = np.zeros_like(u)
    for neuron in range(1, int(slots.max()) + 1):
        mine = slots == neuron
        blurred = ndi.gaussian_filter((u * mine).sum(axis=0), sigma, mode="reflect", truncate=4.0)
        out += mine * blurred[None]
    return out


@pytest.mark.parametrize("sigma", [(0.3, 0.6, 0.6), (0.0, 1.0, 0.5), (1.2, 0.4, 0.4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_smoothed_abundances_equal_a_blur_of_each_neurons_map(sigma, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((9, 14, 13), np.uint32)
    labels[:, :7] = 1
    labels[:, 7:] = 2
    labels[2:5, 3:9, 8:12] = 3                              # a neuron inside the block: boxes, not the block
    labels[rng.random(labels.shape) < 0.2] = 0
    slots, _ = candidate_slots(labels, 2)
    u = (rng.random(slots.shape).astype(np.float32) * (slots > 0))
    got = smooth_abundances(u, slots, sigma)
    np.testing.assert_allclose(got, _dense_reference(u, slots, sigma), rtol=1e-5, atol=1e-6)
    assert (got[slots == 0] == 0).all()
    in_place = u.copy()
    assert smooth_abundances(in_place, slots, sigma, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, got)


def test_smoothing_zero_or_bad_arguments():
    slots, _ = candidate_slots(np.ones((3, 4, 5), np.uint32), 1)
    u = np.random.default_rng(0).random(slots.shape).astype(np.float32) * (slots > 0)
    np.testing.assert_array_equal(smooth_abundances(u, slots, (0, 0, 0)), u)
    with pytest.raises(ValueError, match="one \\(s, z, y, x\\) shape"):
        smooth_abundances(u[:1], slots, (1, 1, 1))
    with pytest.raises(ValueError, match="three sigmas"):
        smooth_abundances(u, slots, (1, -1, 1))


def _touching_tubes(seed, shape=(20, 40, 40), n=8, cv=0.3, levels=(1.0, 1.0)):
    """Crossing capsules (one neuron each, 4 of 8 barcode bits at ``levels``), 30 % expression noise, the PSF."""
    from sample_data._raster import paint_segments

    rng = np.random.default_rng(seed)
    p0, p1 = rng.uniform(0, 1, (2, n, 3)) * shape
    r = rng.uniform(1.5, 4.0, n)
    truth = (paint_segments(shape, p0, p1, np.stack([np.maximum(r / 2, 0.75), r, r], axis=1)) + 1).astype(np.uint32)
    codes = np.zeros((n, 8))
    for row in codes:
        row[rng.choice(8, 4, replace=False)] = rng.uniform(*levels, 4)
    density = np.concatenate([np.zeros((1, 8)), codes])[truth].transpose(3, 0, 1, 2).astype(np.float32)
    density *= rng.lognormal(-0.5 * cv ** 2, cv, density.shape).astype(np.float32)
    image = np.stack([ndi.gaussian_filter(ch, PSF, mode="reflect") for ch in density])
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return truth, np.maximum(image, 0), codes


def test_smoothing_the_abundances_places_noisy_boundaries_better():
    """Summed over seeds, fewer contact voxels go wrong when each neuron's abundance is smoothed first."""
    raw_errors = smooth_errors = 0
    for seed in range(4):
        truth, image, codes = _touching_tubes(seed)
        raw = unmix_contacts(truth, image, codes, psf_sigma=PSF, iterations=60)
        smooth = unmix_contacts(truth, image, codes, psf_sigma=PSF, iterations=60, smoothing=(0.3, 0.6, 0.6))
        raw_errors += np.count_nonzero(raw != truth)
        smooth_errors += np.count_nonzero(smooth != truth)
    # measured: 39 -> 32 wrong voxels of 11,108
    assert smooth_errors < raw_errors, (smooth_errors, raw_errors)


def test_dividing_by_the_true_brightness_decides_by_occupancy():
    """Bits at levels 0.6-1.4 and the true barcodes: bright neurons take fewer of their dim neighbours' voxels."""
    errors = {0.0: 0, 1.0: 0}
    for seed in range(6):
        truth, image, codes = _touching_tubes(seed, levels=(0.6, 1.4))
        for power in errors:
            out = unmix_contacts(truth, image, codes, psf_sigma=PSF, iterations=60, smoothing=(0.3, 0.6, 0.6),
                                 brightness_power=power)
            errors[power] += np.count_nonzero(out != truth)
    # measured: 56 wrong voxels comparing abundances, 50 comparing occupancies
    assert errors[1.0] < errors[0.0], errors


def test_grow_labels_bright_unlabelled_voxels_and_leaves_dark_ones():
    truth, image, codes = _two_slabs()
    image[:, :, :, 9:] = 0.0                                  # a dark margin: no neuron there
    labels = truth.copy()
    labels[:, :, 6:] = 0                                      # the labels stop short of the signal
    out = unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=40, grow_threshold=0.05)
    assert (out[labels > 0] > 0).all()                        # nothing labelled is dropped
    grown = (labels == 0) & (out > 0)
    # only within the candidate radius (2) of a label, and into the bright columns only
    assert grown[:, :, 6:8].all() and not grown[:, :, 8:].any()
    np.testing.assert_array_equal(out[grown], truth[grown])
    # without a threshold, unlabelled voxels stay unlabelled
    still = unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=40)
    assert (still[labels == 0] == 0).all()
    with pytest.raises(ValueError, match="grow_threshold"):
        unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=5, grow_threshold=0.0)
    with pytest.raises(ValueError, match="brightness_power"):
        unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=5, brightness_power=-0.5)


@pytest.mark.gpu
def test_gpu_smoothed_abundances_match_cpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    truth, image, codes = _two_slabs(noise=0.02)
    slots, _ = candidate_slots(truth, 2)
    u = np.random.default_rng(0).random(slots.shape).astype(np.float32) * (slots > 0)
    cpu = smooth_abundances(u, slots, (0.3, 0.6, 0.6))
    gpu = smooth_abundances(cp.asarray(u), cp.asarray(slots), (0.3, 0.6, 0.6))
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_unmix_contacts_match_cpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    truth, image, codes = _two_slabs(noise=0.02)
    labels = truth.copy()
    labels[8] = 1
    cpu = unmix_contacts(labels, image, codes, psf_sigma=PSF, iterations=40)
    gpu = unmix_contacts(cp.asarray(labels), cp.asarray(image), codes, psf_sigma=PSF, iterations=40)
    assert isinstance(gpu, cp.ndarray)
    assert np.mean(cp.asnumpy(gpu) == cpu) > 0.999


@pytest.mark.parametrize("c", [3, 8])
def test_fused_host_fit_equals_the_array_loop_bit_for_bit(c):
    """The fused host loop (ratio in one pass; update, extrapolation and mixture in another) against
    the array loop, with a channel count whose 1 / c is not a power of two and with empty slots."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(c)
    labels = rng.integers(0, 5, size=(6, 14, 15)).astype(np.uint32)
    labels[:, :, :4] = 0
    slots, _ = candidate_slots(labels, 1, max_candidates=6)
    table = np.concatenate([np.zeros((1, c)), rng.random((4, c))])
    image = rng.random((c,) + labels.shape).astype(np.float32)
    for iterations in (1, 3, 12):
        fused = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations, engine="auto")
        plain = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations, engine="xp")
        np.testing.assert_array_equal(fused, plain, err_msg=f"{iterations} iterations")
        assert (fused[slots == 0] == 0).all()


@pytest.mark.parametrize("c", [5, 8])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_host_fit_drops_zero_entries_without_changing_a_bit(monkeypatch, fraction, c):
    """The host fit sheds the entries whose abundance reached zero (at every zero: fraction 0; when
    they are a quarter: the default; never: 1). Zeros are absorbing, so the result is the array
    loop's, bit for bit, over enough iterations for many candidates to die; with eight channels
    through the kernel that keeps them in registers."""
    pytest.importorskip("numba")
    import segment.unmix as unmix

    monkeypatch.setattr(unmix, "COMPACT_FRACTION", fraction)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, size=(7, 16, 18)).astype(np.uint16)
    labels[:, :, :3] = 0
    slots, _ = candidate_slots(labels, 1, max_candidates=6)
    table = np.concatenate([np.zeros((1, c)), rng.random((5, c)) ** 3])
    image = rng.random((c,) + labels.shape).astype(np.float32) ** 2
    for iterations in (2, 9, 30):
        fused = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations, engine="auto")
        plain = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations, engine="xp")
        np.testing.assert_array_equal(fused, plain, err_msg=f"{iterations} iterations")
    assert ((fused == 0) & (slots > 0)).mean() > 0.2      # many candidates died on the way


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 33, 40)])
def test_host_slot_passes_equal_the_array_passes_bit_for_bit(shape):
    """``_slot_passes``' numba mix and update (tiled; the benchmarks' breakdown times them) against
    the array operations, on volumes smaller than one tile and spanning several, update in place."""
    pytest.importorskip("numba")
    from segment.unmix import STEP_TILE, _slot_passes

    rng = np.random.default_rng(len(shape) + shape[1])
    c = 3
    labels = rng.integers(0, 6, size=shape).astype(np.uint16)
    slots, _ = candidate_slots(labels, 1, max_candidates=5)
    assert (np.prod(shape) < STEP_TILE) == (shape[1] == 5)
    table = np.concatenate([np.zeros((1, c)), rng.random((5, c))]).astype(np.float32)
    start = ((slots > 0) * rng.random(slots.shape)).astype(np.float32)
    ratio = rng.random((c,) + shape).astype(np.float32)
    results = {}
    for engine in ("auto", "xp"):
        mix, update = _slot_passes(np.ascontiguousarray(slots), table, c, engine)
        mixed, step = np.empty_like(ratio), start.copy()
        mix(start, mixed)
        update(step, ratio, step)
        results[engine] = (mixed, step)
    for fused, plain in zip(results["auto"], results["xp"]):
        np.testing.assert_array_equal(fused, plain)


@pytest.mark.parametrize("seed", [0, 1])
def test_numba_and_array_engines_agree(seed):
    pytest.importorskip("numba")
    truth, image, codes = _two_slabs(noise=0.02, seed=seed)
    labels = truth.copy()
    labels[5:11, 3:6, 3:6] = 3                               # a third neuron: three candidates per voxel
    codes = np.vstack([codes, [0.5, 0.0, 0.0, 1.0]])
    slots, _ = candidate_slots(labels, 2)
    table = np.concatenate([np.zeros((1, 4)), codes])
    for iterations in (0, 1, 2, 15):
        for back in (None, (1.0, 1.0, 1.0), (0.5, 1.2, 0.8)):
            fused = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations,
                                     back_projector=back, engine="auto")
            plain = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=iterations,
                                     back_projector=back, engine="xp")
            # the fused loop does the array loop's float32 operations in the same order: the same bits
            np.testing.assert_array_equal(fused, plain, err_msg=f"{iterations} iterations, back projector {back}")
    with pytest.raises(ValueError, match="engine"):
        unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=1, engine="numba")


def test_core_barcodes_average_away_from_contacts_and_fall_back_when_small():
    labels = np.zeros((12, 12, 12), np.uint32)
    labels[:, :6] = 1
    labels[:, 6:] = 2
    labels[0:2, 0:2, 0:2] = 3                                 # too small to have a core
    observed = np.zeros((2, 12, 12, 12), np.float32)
    observed[0][labels == 1] = 2.0
    observed[1][labels == 2] = 3.0
    observed[:, :, 5:7] = 9.0                                 # the contact plane: mixed signal, excluded
    fallback = np.array([[0.0, 0.0], [0.0, 0.0], [7.0, 8.0]])
    got = core_barcodes(labels, observed, fallback, margin=2, min_voxels=10)
    np.testing.assert_allclose(got, [[2.0, 0.0], [0.0, 3.0], [7.0, 8.0]])


@pytest.mark.parametrize("engine", ["auto", "xp"])
def test_abundance_fit_holds_two_estimates_and_no_copy_of_the_observation(engine):
    """Working memory of the fit: per voxel, the mixture and the model (float32 per channel; the
    host fit keeps both in one buffer, blurred in place), the occupancy and the result; per used
    slot (xp) or occupied slot (the host fit's entries: also their slot, and per voxel an offset
    into them), two float32 estimates. A channels-last observation, as the
    pipeline passes it, is not copied. The fit is the pass's largest allocation, and blocks run
    it on whole read regions."""
    import tracemalloc

    rng = np.random.default_rng(0)
    labels = np.zeros((16, 40, 40), np.uint32)
    labels[:, :20] = 1
    labels[:, 20:] = 2
    labels[:, 10:30, 10:30] = 3
    c = 8
    codes = rng.random((3, c))
    image = np.moveaxis(rng.random(labels.shape + (c,)).astype(np.float32), -1, 0)   # channels-last memory
    slots, _ = candidate_slots(labels, 2)                    # 3 of 4 slots used
    table = np.concatenate([np.zeros((1, c)), codes])
    used = int(sum(bool((slots[k] > 0).any()) for k in range(len(slots))))
    entries = int((slots > 0).sum())
    unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=2, engine=engine)
    tracemalloc.start()
    u = unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=3, engine=engine)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    voxels = labels.size
    if engine == "xp":
        # each slot's barcode weights gathered into one reused plane (plus two more for its sums),
        # never all of them at once
        budget = voxels * (2 * 4 * used + 2 * 4 * c + len(slots) + used + 3 * 4 + 4 * len(slots) + 16)
    else:
        # entries: two estimates and a slot each; the voxels' entry offsets
        budget = (voxels * (4 * c + len(slots) + 4 * used + 4 * len(slots) + 16 + 4)
                  + entries * (2 * 4 + 1))
    assert u.shape == slots.shape
    assert peak < budget, f"peak {peak / voxels:.0f} B per voxel, budget {budget / voxels:.0f}"


def test_host_fit_takes_a_planar_observation_too():
    """A (c, z, y, x) observation in planar memory gives the same abundances as the channels-last one."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(5, 9, 11)).astype(np.uint32)
    slots, _ = candidate_slots(labels, 1)
    table = np.concatenate([np.zeros((1, 3)), rng.random((3, 3))])
    planar = rng.random((3,) + labels.shape).astype(np.float32)
    last = np.moveaxis(np.ascontiguousarray(np.moveaxis(planar, 0, -1)), -1, 0)
    assert not last.flags.c_contiguous
    got = [unmix_abundances(image, slots, table, psf_sigma=PSF, iterations=7) for image in (planar, last)]
    np.testing.assert_array_equal(got[0], got[1])


def test_unmix_rounds_decide_again_with_the_cores_of_the_last_round_and_grow_once():
    truth, image, codes = _two_slabs(noise=0.05, seed=3)
    labels = truth.copy()
    labels[:, 5:7] = 0                                       # a gap for the first round to grow into
    labels[4, 4, 4] = 2                                      # a wrong voxel inside neuron 1
    settings = UnmixSettings(psf_sigma=PSF, iterations=20, radius=2, background=0.02, rounds=2,
                             smoothing=(0.3, 0.6, 0.6), grow=0.05, brightness=0.25)
    by_hand = [labels]
    for grow in (0.05, None):
        last = by_hand[-1]
        by_hand.append(unmix_contacts(last, image, core_barcodes(last, image, codes), psf_sigma=PSF,
                                      iterations=20, radius=2, beta=0.02, smoothing=(0.3, 0.6, 0.6),
                                      grow_threshold=grow, brightness_power=0.25))
    np.testing.assert_array_equal(unmix_rounds(labels, image, codes, settings), by_hand[2])
    one = unmix_rounds(labels, image, codes, dataclasses.replace(settings, rounds=1))
    np.testing.assert_array_equal(one, by_hand[1])
    assert (one[labels == 0] > 0).any()                      # the first round grew into the gap
    assert one[4, 4, 4] == 1 == truth[4, 4, 4]               # and gave the wrong voxel back


def test_unmix_rounds_fit_every_round_but_the_last_for_early_iterations(monkeypatch):
    import segment.unmix as unmix

    truth, image, codes = _two_slabs(noise=0.05, seed=4)
    labels = truth.copy()
    labels[:, 5:7] = 0
    settings = UnmixSettings(psf_sigma=PSF, iterations=20, radius=2, background=0.02, rounds=3,
                             smoothing=(0.3, 0.6, 0.6), grow=0.05, brightness=0.25, early_iterations=6)
    assert [settings.iterations_of(k) for k in range(3)] == [6, 6, 20]
    # never more than the last round's: fewer iterations in all cut the early rounds too
    assert dataclasses.replace(settings, iterations=4).iterations_of(0) == 4
    by_hand = [labels]
    for grow, iterations in ((0.05, 6), (None, 6), (None, 20)):
        last = by_hand[-1]
        by_hand.append(unmix_contacts(last, image, core_barcodes(last, image, codes), psf_sigma=PSF,
                                      iterations=iterations, radius=2, beta=0.02, smoothing=(0.3, 0.6, 0.6),
                                      grow_threshold=grow, brightness_power=0.25))
    fitted = []
    original = unmix.unmix_contacts

    def recording(*args, **kwargs):
        fitted.append(kwargs["iterations"])
        return original(*args, **kwargs)

    monkeypatch.setattr(unmix, "unmix_contacts", recording)
    np.testing.assert_array_equal(unmix_rounds(labels, image, codes, settings), by_hand[3])
    assert fitted == [6, 6, 20]
    # a single round is the last one: it fits all its iterations
    fitted.clear()
    unmix_rounds(labels, image, codes, dataclasses.replace(settings, rounds=1))
    unmix_rounds(labels, image, codes, dataclasses.replace(settings, rounds=2, early_iterations=None))
    assert fitted == [20, 20, 20]


def test_unmix_settings_come_from_the_segment_config():
    from segment import SegmentConfig

    config = SegmentConfig(contact_unmix_rounds=2, contact_unmix_grow=None)
    settings = UnmixSettings.from_config(config, (0.4, 0.1, 0.1))
    assert settings.rounds == 2 and settings.grow is None
    assert settings.iterations == config.contact_unmix_iterations
    assert settings.early_iterations == config.contact_unmix_early_iterations
    assert UnmixSettings.from_config(SegmentConfig(contact_unmix_early_iterations=None),
                                     (0.4, 0.1, 0.1)).iterations_of(0) == config.contact_unmix_iterations
    with pytest.raises(ValueError, match="contact_unmix_early_iterations"):
        SegmentConfig(contact_unmix_early_iterations=0)
    assert settings.psf_sigma == tuple(config.sigma_voxels((0.4, 0.1, 0.1), "psf_sigma"))
    assert settings.smoothing == config.contact_smoothing_voxels((0.4, 0.1, 0.1))
    psf = config.sigma_voxels((0.4, 0.1, 0.1), "psf_sigma")
    assert settings.back_projector == pytest.approx(tuple(max(p * 2 / 3, min(p, 1.0)) for p in psf))
    # 2/3 of the PSF, but not below one voxel unless the PSF is narrower
    narrow = SegmentConfig(psf_sigma=(0.7, 1.2, 2.4)).contact_back_projector_voxels((1.0, 1.0, 1.0))
    assert narrow == pytest.approx((0.7, 1.0, 1.6))
    matched = UnmixSettings.from_config(SegmentConfig(contact_unmix_back_projector=1), (0.4, 0.1, 0.1))
    assert matched.back_projector == pytest.approx(psf)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="contact_unmix_back_projector"):
            SegmentConfig(contact_unmix_back_projector=bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_smoothing_engines_agree_bit_for_bit(seed):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(9, 14, 13)).astype(np.uint16)
    labels[rng.random(labels.shape) < 0.3] = 0
    slots, _ = candidate_slots(labels, 1, max_candidates=5)
    u = (rng.random(slots.shape) * (slots > 0)).astype(np.float32)
    fast = smooth_abundances(u, slots, (0.5, 0.8, 0.8))
    plain = smooth_abundances(u, slots, (0.5, 0.8, 0.8), engine="xp")
    np.testing.assert_array_equal(fast, plain)
    in_place = u.copy()
    smooth_abundances(in_place, slots, (0.5, 0.8, 0.8), out=in_place)
    np.testing.assert_array_equal(in_place, plain)
    strided = np.asfortranarray(u)                        # the host kernels index a C raster: copied in and out
    assert smooth_abundances(strided, slots, (0.5, 0.8, 0.8), out=strided) is strided
    np.testing.assert_array_equal(strided, plain)
    with pytest.raises(ValueError, match="engine"):
        smooth_abundances(u, slots, (0.5, 0.8, 0.8), engine="numba")


def test_host_smoothing_in_place_holds_eight_bytes_per_entry_and_one_box():
    """Working memory of the host smoothing in place: the occupancy mask, the neurons' entries
    (two 32-bit indices each) and one buffer of the largest box, blurred in place. It runs on
    whole read regions right after the fit, with about four entries per voxel."""
    pytest.importorskip("numba")
    import tracemalloc

    labels = np.zeros((16, 48, 48), np.uint32)
    labels[:, :24] = 1
    labels[:, 24:] = 2
    labels[:, 12:36, 12:36] = 3
    labels[4:12, 20:28, :] = 4
    slots, _ = candidate_slots(labels, 2)
    u = (np.random.default_rng(3).random(slots.shape) * (slots > 0)).astype(np.float32)
    smooth_abundances(u.copy(), slots, (0.5, 0.8, 0.8), out=None)        # compiled before measuring
    entries, voxels = int((slots > 0).sum()), labels.size
    tracemalloc.start()
    smooth_abundances(u, slots, (0.5, 0.8, 0.8), out=u)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    budget = voxels * len(slots) + entries * 8 + voxels * 4 + 64 * 1024
    assert peak < budget, f"peak {peak / entries:.1f} B per entry, budget {budget / entries:.1f}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_by_sorted_entries_equals_the_array_path_bit_for_bit(seed):
    """The GPU's smoothing (boxes from sorted slot entries), run here on NumPy arrays."""
    from segment.unmix_gpu import smooth_by_sorted_entries

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=(11, 15, 13)).astype(np.uint16)
    labels[rng.random(labels.shape) < 0.3] = 0
    labels[labels == 4] = 0                               # a neuron id with no entries
    labels[:3, :4, :5][labels[:3, :4, :5] > 0] = 8        # one neuron in a corner: its box is clipped
    slots, _ = candidate_slots(labels, 1, max_candidates=5)
    u = (rng.random(slots.shape) * (slots > 0)).astype(np.float32)
    sigma, truncate = (0.5, 0.8, 0.8), 4.0
    plain = smooth_abundances(u, slots, sigma, truncate=truncate, engine="xp")
    reach = [int(truncate * v + 0.5) for v in sigma]
    out = u.copy()
    assert smooth_by_sorted_entries(out, slots, sigma, reach, truncate) is out
    np.testing.assert_array_equal(out, plain)
    strided = np.asfortranarray(u)
    assert smooth_by_sorted_entries(strided, slots, sigma, reach, truncate) is strided
    np.testing.assert_array_equal(strided, plain)
    empty = np.zeros_like(u)
    np.testing.assert_array_equal(smooth_by_sorted_entries(empty, np.zeros_like(slots), sigma, reach, truncate), 0)


def _cupy_or_skip():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(3))
def test_gpu_fused_kernels_equal_the_array_path(seed):
    """The CUDA kernels (segment.unmix_gpu) against the array path, both on the GPU: the same bits."""
    cp = _cupy_or_skip()
    rng = np.random.default_rng(seed)
    for _ in range(6):
        shape = tuple(int(v) for v in rng.integers(1, 12, 3))
        labels = rng.integers(0, 9, size=shape).astype(np.uint16 if seed % 2 else np.uint32)
        labels[rng.random(shape) < 0.4] = 0
        radius, slots_per_voxel = int(rng.integers(0, 4)), int(rng.integers(1, 7))
        fused, fused_overflow = candidate_slots(cp.asarray(labels), radius, slots_per_voxel)
        plain, plain_overflow = candidate_slots(cp.asarray(labels), radius, slots_per_voxel, engine="xp")
        np.testing.assert_array_equal(cp.asnumpy(fused), cp.asnumpy(plain))
        assert fused_overflow == plain_overflow
        host, _ = candidate_slots(labels, radius, slots_per_voxel)
        np.testing.assert_array_equal(cp.asnumpy(fused), host)
    truth, image, codes = _two_slabs(noise=0.02, seed=seed)
    labels = truth.copy()
    labels[5:11, 3:6, 3:6] = 3
    codes = np.vstack([codes, [0.5, 0.0, 0.0, 1.0]])
    slots, _ = candidate_slots(labels, 2)
    table = np.concatenate([np.zeros((1, 4)), codes])
    device = [cp.asarray(image), cp.asarray(slots)]
    fused = unmix_abundances(*device, table, psf_sigma=PSF, iterations=15)
    plain = unmix_abundances(*device, table, psf_sigma=PSF, iterations=15, engine="xp")
    np.testing.assert_array_equal(cp.asnumpy(fused), cp.asnumpy(plain))
    narrow = unmix_abundances(*device, table, psf_sigma=PSF, iterations=15, back_projector=(1.0, 1.0, 1.0))
    narrow_plain = unmix_abundances(*device, table, psf_sigma=PSF, iterations=15, back_projector=(1.0, 1.0, 1.0),
                                    engine="xp")
    np.testing.assert_array_equal(cp.asnumpy(narrow), cp.asnumpy(narrow_plain))
    smooth = smooth_abundances(fused, device[1], (0.3, 0.6, 0.6))
    smooth_plain = smooth_abundances(fused, device[1], (0.3, 0.6, 0.6), engine="xp")
    np.testing.assert_array_equal(cp.asnumpy(smooth), cp.asnumpy(smooth_plain))
    labels_fused = unmix_contacts(cp.asarray(labels), cp.asarray(image), codes, psf_sigma=PSF, iterations=20,
                                  smoothing=(0.3, 0.6, 0.6))
    labels_plain = unmix_contacts(cp.asarray(labels), cp.asarray(image), codes, psf_sigma=PSF, iterations=20,
                                  smoothing=(0.3, 0.6, 0.6), engine="xp")
    np.testing.assert_array_equal(cp.asnumpy(labels_fused), cp.asnumpy(labels_plain))


def test_numba_kernels_are_built_once_and_none_without_numba(monkeypatch):
    from pipeline.jit import numba_kernels

    calls = []
    kernels = numba_kernels(lambda numba: calls.append(numba) or "built")
    monkeypatch.setitem(__import__("sys").modules, "numba", None)    # `import numba` now fails
    assert kernels() is None and kernels() is None and calls == []
    monkeypatch.undo()
    pytest.importorskip("numba")
    again = numba_kernels(lambda numba: calls.append(numba) or "built")
    assert again() == "built" and again() == "built" and len(calls) == 1


@pytest.mark.parametrize("top", [4, 70000])                  # 16-bit labels (OpenCV) and wider ones (scipy)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contact_voxels_are_labelled_voxels_with_another_label_among_their_26_neighbours(seed, top):
    from segment.codebook import contact_voxels

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (5, 7, 6)).astype(np.uint32) * (top // 3)     # up to 3 or 69,999
    labels[rng.random(labels.shape) < 0.5] = 0
    expected = np.zeros(labels.shape, bool)
    for index in np.ndindex(labels.shape):
        if labels[index]:
            box = labels[tuple(slice(max(i - 1, 0), i + 2) for i in index)]
            expected[index] = bool(((box != labels[index]) & (box > 0)).any())
    np.testing.assert_array_equal(contact_voxels(labels), expected)
