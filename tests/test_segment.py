"""Segmentation kernels, codebook and agglomeration on tiny arrays (no volumes, no runner)."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from pipeline import ConfigError, validate_config
from segment import kernels
from segment.agglomerate import EdgeTable, FragmentTable, agglomerate, proximity_links
from segment.blockwise import contact_edges
from segment.codebook import (
    _samples_per_code,
    assign_codes,
    code_statistics,
    codebook_from_statistics,
    despeckle,
    gap_codes,
    merge_code_statistics,
    refine_contacts,
    split_code,
)
from segment.config import SegmentConfig


# -- kernels ---------------------------------------------------------------
def test_normalize_maps_percentiles_and_clips():
    data = np.array([[[[10, 20, 30, 1000]]], [[[0, 5, 10, 15]]]], dtype=np.uint16)
    out = kernels.normalize(data, lo=[10, 5], hi=[30, 15], clip_max=4.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.5, 1.0, 4.0])
    np.testing.assert_allclose(out[1, 0, 0], [0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="one lo/hi per channel"):
        kernels.normalize(data, lo=[0], hi=[1])
    with pytest.raises(ValueError, match=r"\(c, z, y, x\)"):
        kernels.normalize(data[0], lo=[0], hi=[1])


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_normalize_into_a_channels_last_buffer_gives_the_same_bits(dtype):
    data = (np.random.default_rng(3).random((5, 4, 6, 7)) * 3000).astype(dtype)
    lo, hi = [100, 0, 50, 7, 3], [900, 2000, 60, 3000, 1500]
    want = kernels.normalize(data, lo, hi)
    last = np.empty((4, 6, 7, 5), np.float32)
    got = kernels.normalize(data, lo, hi, out=np.moveaxis(last, -1, 0))
    assert np.shares_memory(got, last)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="out must be float32"):
        kernels.normalize(data, lo, hi, out=np.empty(data.shape, np.float64))
    with pytest.raises(ValueError, match="out must be float32"):
        kernels.normalize(data, lo, hi, out=np.empty((5, 4, 6, 6), np.float32))


def test_barcode_discontinuity_is_zero_inside_and_high_between_codes():
    bc = np.zeros((2, 6, 12, 12), np.float32)
    bc[0, :, :, :6] = 1.0          # left half: code (1, 0)
    bc[1, :, :, 6:] = 0.8          # right half: code (0, 1), other brightness
    d = kernels.barcode_discontinuity(bc, floor=0.05)
    assert d.shape == (6, 12, 12) and d.dtype == np.float32
    assert float(d[:, :, :4].max()) == 0.0 and float(d[:, :, 8:].max()) == 0.0
    assert float(d[:, :, 5:7].min()) > 0.4
    # brightness alone does not count: one code at two levels
    same = np.ones((2, 4, 8, 8), np.float32)
    same[:, :, :, 4:] *= 0.3
    assert float(kernels.barcode_discontinuity(same, floor=0.01).max()) < 0.05


@pytest.mark.parametrize("shape", [(8, 9, 17, 19), (3, 1, 5, 7), (2, 2, 1, 9), (4, 5, 2, 2), (1, 1, 1, 1), (5, 6, 4, 1)],
                         ids=str)
@pytest.mark.parametrize("floor", [0.1, 0.5])
def test_barcode_discontinuity_kernel_equals_the_array_path_bit_for_bit(shape, floor):
    """The host kernel (three planes of directions at a time) against the array operations,
    with axes of length 1 and 2 (no difference, one-sided differences only) and dark voxels."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(sum(shape))
    bc = (rng.random(shape, dtype=np.float32) ** 3) * 2.0
    bc[:, rng.random(shape[1:]) < 0.2] = 0.0
    got = kernels.barcode_discontinuity(bc, floor=floor)
    np.testing.assert_array_equal(got, kernels.barcode_discontinuity(bc, floor=floor, engine="xp"))
    assert got.shape == shape[1:] and got.dtype == np.float32
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0
    with pytest.raises(ValueError, match="engine"):
        kernels.barcode_discontinuity(bc, floor=floor, engine="numba")


def test_barcode_discontinuity_holds_no_copy_of_the_barcodes():
    """The evidence pass's largest step was this one: on the host it holds the output and three
    planes of directions, not the directions and differences of the whole region."""
    pytest.importorskip("numba")
    import tracemalloc

    bc = np.random.default_rng(0).random((8, 24, 40, 40), dtype=np.float32)
    kernels.barcode_discontinuity(bc[:, :3])                       # compiled before measuring
    tracemalloc.start()
    kernels.barcode_discontinuity(bc)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    voxels = bc[0].size
    budget = voxels * 4 + 3 * bc[:, 0].nbytes + 16 * 1024
    assert peak < budget, f"peak {peak / voxels:.1f} B per voxel, budget {budget / voxels:.1f}"


def test_boundary_map_combines_terms_in_unit_range():
    fill = np.array([[[0.0, 0.5, 1.0, 2.0]]], np.float32)
    disc = np.array([[[0.0, 0.2, 0.2, 0.9]]], np.float32)
    b = kernels.boundary_map(fill, disc, barcode_weight=1.0)
    np.testing.assert_allclose(b[0, 0], [1.0, 0.7, 0.2, 0.9], rtol=1e-6)
    np.testing.assert_allclose(kernels.boundary_map(fill, disc, barcode_weight=0.0)[0, 0], [1.0, 0.5, 0.0, 0.0])


def test_context_radius_covers_smoothing_and_differences():
    assert kernels.context_radius((0.5, 1.0, 1.0)) == (2, 4, 4)
    assert kernels.context_radius((0.5, 1.0, 1.0), (1.0, 1.0, 1.0)) == (5, 5, 5)


def test_deconvolve_sharpens_a_blurred_point_and_keeps_zero_iterations():
    x = np.zeros((1, 15, 15, 15), np.float32)
    x[0, 7, 7, 7] = 100.0
    blurred = ndi.gaussian_filter(x, (0, 1.5, 1.5, 1.5)) + 1e-3
    assert kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 0) is blurred
    sharp = kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 10)
    assert sharp.shape == blurred.shape
    assert sharp[0, 7, 7, 7] > 3 * blurred[0, 7, 7, 7]
    assert abs(float(sharp.sum()) - float(blurred.sum())) < 0.05 * float(blurred.sum())


def _two_slabs(sigma=1.5):
    """Channel 0 on z 3..7, channel 1 on z 8..12 (touching neurites along z), blurred by the PSF."""
    truth = np.zeros((2, 16, 24, 24), np.float32)
    truth[0, 3:8, 4:20, 4:20] = 1.0
    truth[1, 8:13, 4:20, 4:20] = 1.0
    return truth, ndi.gaussian_filter(truth, (0, sigma, sigma, sigma)) + 1e-3


@pytest.mark.parametrize("method, iterations", [("richardson-lucy", 16), ("binned-richardson-lucy", 24),
                                                ("wiener", 0), ("wiener", 4)])
def test_deconvolution_methods_unmix_touching_codes(method, iterations):
    truth, blurred = _two_slabs()
    out = kernels.deconvolve(blurred, (1.5, 1.5, 1.5), iterations, method=method)
    assert out.shape == blurred.shape and out.dtype == np.float32 and float(out.min()) >= 0

    def crosstalk(x):      # channel 0's share of the barcode signal inside slab 1 (near the contact)
        return float(x[0, 8:10, 8:16, 8:16].sum() / x[:, 8:10, 8:16, 8:16].sum())

    def error(x):
        return float(np.abs(x - truth)[:, 2:14, 6:18, 6:18].mean())

    assert crosstalk(out) < 0.8 * crosstalk(blurred), (method, crosstalk(out), crosstalk(blurred))
    assert error(out) < error(blurred), (method, error(out), error(blurred))


@pytest.mark.parametrize("method, iterations", [("binned-richardson-lucy", 24), ("wiener", 0)])
def test_cheap_deconvolutions_are_block_local_within_a_halo_of_eight_sigmas(method, iterations):
    rng = np.random.default_rng(3)
    truth = np.zeros((2, 48, 64, 64), np.float32)
    for c in range(2):
        truth[c][tuple(rng.integers(0, (48, 64, 64), size=(150, 3)).T)] = 5.0
    blurred = ndi.gaussian_filter(ndi.gaussian_filter(truth, (0, 1, 1, 1)), (0, 1.5, 1.5, 1.5)) + 1e-3
    whole = kernels.deconvolve(blurred, (1.5, 1.5, 1.5), iterations, method=method)
    halo = 12                              # 8 PSF sigmas; even, so the (y, x) bins line up
    core = (slice(None), slice(16, 32), slice(24, 40), slice(24, 40))
    read = (slice(None), slice(16 - halo, 32 + halo), slice(24 - halo, 40 + halo), slice(24 - halo, 40 + halo))
    block = kernels.deconvolve(blurred[read], (1.5, 1.5, 1.5), iterations, method=method)
    inner = (slice(None),) + (slice(halo, halo + 16),) * 3
    assert float(np.abs(block[inner] - whole[core]).max()) < 2e-3 * float(whole.max())


@pytest.mark.parametrize("method, iterations, acceleration", [
    ("richardson-lucy", 0, "nesterov"), ("richardson-lucy", 1, "nesterov"), ("richardson-lucy", 7, "nesterov"),
    ("richardson-lucy", 5, "none"), ("binned-richardson-lucy", 6, "nesterov"), ("wiener", 3, "nesterov")])
def test_fused_richardson_lucy_equals_the_array_loop_bit_for_bit(monkeypatch, method, iterations, acceleration):
    pytest.importorskip("numba")
    rng = np.random.default_rng(iterations)
    x = rng.random((3, 9, 14, 13)).astype(np.float32) * rng.random((1, 9, 14, 13)).astype(np.float32)
    x[0, 2, 3, 4] = 0.0                                    # below the floor
    given = x.copy()
    fused = kernels.deconvolve(x, (1.2, 1.5, 1.5), iterations, method=method, acceleration=acceleration)
    np.testing.assert_array_equal(x, given)                # the input is never written over
    own = x.copy()                                         # unless the caller gives it up
    np.testing.assert_array_equal(kernels.deconvolve(own, (1.2, 1.5, 1.5), iterations, method=method,
                                                     acceleration=acceleration, overwrite_x=True), fused)
    if method == "binned-richardson-lucy" or iterations == 0:
        assert np.shares_memory(kernels.deconvolve(own, (1.2, 1.5, 1.5), iterations, method=method,
                                                   overwrite_x=True), own)
    monkeypatch.setattr(kernels, "_rl_kernels", lambda: None)           # as without numba
    plain = kernels.deconvolve(x, (1.2, 1.5, 1.5), iterations, method=method, acceleration=acceleration)
    np.testing.assert_array_equal(fused, plain)


@pytest.mark.parametrize("group", [1, 2, 5])
@pytest.mark.parametrize("sigma", [(1.2, 1.5, 1.5), (2.0, 0.8, 0.8)])        # 2.0: wider than the numba blur
def test_host_richardson_lucy_in_channel_groups_equals_the_array_loop(monkeypatch, group, sigma):
    """The fused loop takes the channels in groups, channels last (here 1, 2 + 2 + 1, or all 5 at
    once): every grouping gives the array loop's bits, through the numba blur or OpenCV's."""
    pytest.importorskip("numba")
    x = np.random.default_rng(group).random((5, 10, 13, 12)).astype(np.float32)
    monkeypatch.setattr(kernels, "RL_GROUP_BYTES", group * 4 * 10 * 13 * 12)
    fused = kernels.deconvolve(x, sigma, 6)
    monkeypatch.setattr(kernels, "_rl_kernels", lambda: None)
    np.testing.assert_array_equal(fused, kernels.deconvolve(x, sigma, 6))


@pytest.mark.parametrize("coarse_shape, fine_yx", [((2, 3, 5, 7), (10, 14)), ((3, 4, 7, 6), (13, 11)),
                                                   ((1, 2, 1, 1), (2, 1)), ((8, 5, 9, 9), (17, 17))])
def test_fused_upsampled_gain_equals_the_array_path_bit_for_bit(monkeypatch, coarse_shape, fine_yx):
    pytest.importorskip("numba")
    rng = np.random.default_rng(sum(coarse_shape))
    est = (rng.random(coarse_shape) * 3).astype(np.float32)
    obs = rng.random(coarse_shape[:2] + fine_yx).astype(np.float32)
    own = obs.copy()
    fused = kernels._upsampled_gain(est, own)
    assert fused is own                                                 # written over the observation
    monkeypatch.setattr(kernels, "_upsample_kernel", lambda: None)     # as without numba
    plain = kernels._upsampled_gain(est, obs)
    assert fused.shape == plain.shape == obs.shape and fused.dtype == np.float32
    np.testing.assert_array_equal(fused, plain)


def test_binned_upsampling_is_linear_interpolation_and_deconvolve_rejects_bad_parameters():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 5, 7)).astype(np.float32)
    ref = ndi.zoom(a, (1, 1, 2, 1), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(kernels._upsample2(a, 2), ref, atol=1e-6)
    odd = rng.random((1, 6, 13, 11)).astype(np.float32)      # odd (y, x): reflect-extended, cropped back
    assert kernels.deconvolve(odd, (1.5, 1.5, 1.5), 3, method="binned-richardson-lucy").shape == odd.shape
    assert kernels.deconvolve(odd, (1.5, 1.5, 1.5), 0, method="wiener").shape == odd.shape
    assert kernels.deconvolve(odd, (1.5, 1.5, 1.5), 0, method="binned-richardson-lucy") is odd
    with pytest.raises(ValueError, match="method"):
        kernels.deconvolve(odd, (1.5, 1.5, 1.5), 3, method="lucy")
    with pytest.raises(ValueError, match="balance"):
        kernels.deconvolve(odd, (1.5, 1.5, 1.5), 0, method="wiener", balance=0.0)
    with pytest.raises(ValueError, match="iterations"):
        kernels.deconvolve(odd, (1.5, 1.5, 1.5), -1)
    with pytest.raises(ValueError, match="balance"):
        kernels.wiener_filter((4, 4, 4), (1.5, 1.5, 1.5), -1.0)
    assert SegmentConfig().deconvolution_method in kernels.DECONVOLUTION_METHODS
    for bad in ({"deconvolution_method": "lucy"}, {"wiener_balance": 0}, {"wiener_balance": 2}):
        with pytest.raises(ConfigError):
            validate_config(SegmentConfig, bad, source="test")


def test_gpu_deconvolution_methods_match_cpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    bc = np.random.default_rng(0).random((3, 8, 18, 22)).astype(np.float32)
    for method, iterations in (("binned-richardson-lucy", 4), ("wiener", 0), ("wiener", 2)):
        cpu = kernels.deconvolve(bc, (1.0, 1.5, 1.5), iterations, method=method)
        gpu = kernels.deconvolve(cp.asarray(bc), (1.0, 1.5, 1.5), iterations, method=method)
        np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=1e-3, atol=1e-4, err_msg=method)


def test_seeded_watershed_labels_every_masked_voxel():
    mask = np.zeros((5, 20, 20), bool)
    mask[1:4, 2:8, 2:8] = True
    mask[1:4, 12:18, 12:18] = True          # a component without a seed
    seeds = np.zeros(mask.shape, np.uint32)
    seeds[2, 5, 5] = 1
    labels = kernels.seeded_watershed(np.zeros(mask.shape, np.float32), seeds, mask)
    assert set(np.unique(labels[mask])) == {1, 2}
    assert (labels[~mask] == 0).all()


@pytest.mark.parametrize("method", ["hmaxima", "local_max"])
def test_distance_seeds_split_two_balls(method):
    z, y, x = np.ogrid[:12, :24, :40]
    mask = ((z - 6) ** 2 + (y - 12) ** 2 + (x - 10) ** 2 <= 36) | ((z - 6) ** 2 + (y - 12) ** 2 + (x - 29) ** 2 <= 36)
    ev = kernels.Evidence(fill=mask.astype(np.float32), boundary=1.0 - mask.astype(np.float32),
                          foreground=mask, interior=mask, discontinuity=None)
    labels = kernels.fragment_labels(ev, seed_method=method, seed_h=1.0, seed_min_distance=4.0)
    assert len(np.unique(labels[mask])) == 2
    assert labels[6, 12, 10] != labels[6, 12, 29]


# -- codebook ----------------------------------------------------------------
def test_gap_codes_find_on_channels_despite_levels():
    v = np.array([
        [1.3, 0.6, 0.02, 0.03],    # channels 0, 1 on at different levels
        [0.01, 0.9, 0.8, 1.4],     # channels 1, 2, 3
        [0.5, 0.5, 0.5, 0.5],      # no gap: not confident
    ])
    codes, confident = gap_codes(v, min_gap=2.0)
    assert codes[0] == 0b0011 and codes[1] == 0b1110
    assert confident.tolist() == [True, True, False]


def test_codebook_drops_mixtures_and_groups_near_codes():
    rng = np.random.default_rng(0)

    def votes(code_bits, n, levels):
        v = np.full((n, 5), 0.02) + rng.normal(0, 0.005, (n, 5))
        for b, level in zip(code_bits, levels):
            v[:, b] = level
        return v

    a = votes([0, 1], 500, [1.0, 1.0])
    b = votes([2, 3], 400, [1.0, 1.0])
    # blur mixture of a and b: the mixing ratio varies across the contact
    share = rng.uniform(0.2, 0.8, (200, 1))
    mix = share * a[:200] + (1 - share) * b[:200]
    dim = votes([0, 1, 4], 150, [1.0, 1.0, 0.2])              # a with a faint extra channel
    stats = merge_code_statistics([code_statistics(x) for x in (a, b, mix, dim)])
    assert 0b01111 in stats["codes"]
    book = codebook_from_statistics(stats, min_support=100, merge_distance=0.2)
    assert set(book.codes.tolist()) == {0b00011, 0b01100, 0b10011}
    # a neuron whose code happens to be the union of a's and b's: one direction, kept
    union = votes([0, 1, 2, 3], 200, [0.8, 1.2, 1.0, 0.9])
    stats = merge_code_statistics([code_statistics(x) for x in (a, b, union, dim)])
    assert 0b01111 in codebook_from_statistics(stats, min_support=100, merge_distance=0.2).codes
    assert 0b01111 not in codebook_from_statistics(stats, min_support=100, merge_distance=0.2,
                                                   mixture_coherence=1.0).codes
    stats = merge_code_statistics([code_statistics(x) for x in (a, b, mix, dim)])
    book = codebook_from_statistics(stats, min_support=100, merge_distance=0.2)
    assert book.n_identities == 2
    ident = dict(zip(book.codes.tolist(), book.identity.tolist()))
    assert ident[0b10011] == ident[0b00011] != ident[0b01100]
    assert book.code_strings()[0] == "11000"
    assert codebook_from_statistics(stats, min_support=10_000).n_identities == 0


def _merge_in_memory(parts, at_most):
    """The merge as one concatenation (np.add.at over every block's votes): the reference."""
    parts = [p for p in parts if len(p["codes"])]
    k = parts[0]["unit_sums"].shape[1]
    codes = np.concatenate([p["codes"] for p in parts])
    values, inverse = np.unique(codes, return_inverse=True)
    counts = np.zeros(len(values), np.int64)
    np.add.at(counts, inverse, np.concatenate([p["counts"] for p in parts]))
    sums = np.zeros((len(values), k))
    np.add.at(sums, inverse, np.concatenate([p["unit_sums"] for p in parts]))
    sample_codes = np.concatenate([p.get("sample_codes", np.zeros(0, np.int64)) for p in parts])
    samples = np.concatenate([p.get("samples", np.zeros((0, k), np.float32)) for p in parts])
    sample_codes, samples = _samples_per_code(sample_codes, samples, at_most)
    return {"codes": values, "counts": counts, "unit_sums": sums, "sample_codes": sample_codes, "samples": samples}


class _CountingParts:
    """A sequence of block statistics built on each access (as StoredSummaries reads them), counting reads."""

    def __init__(self, seeds, k):
        self.seeds, self.k, self.reads = seeds, k, 0

    def __len__(self):
        return len(self.seeds)

    def __getitem__(self, i):
        seed = self.seeds[i]
        self.reads += 1
        rng = np.random.default_rng(seed)
        if seed % 7 == 3:                                   # a block without any confident voxel
            return code_statistics(np.zeros((0, self.k)))
        n = int(rng.integers(50, 3000))
        on = rng.random((6, self.k)) < 0.5                  # six "neurons", random binary codes
        which = rng.integers(0, 6, n)
        vectors = np.where(on[which], rng.uniform(0.5, 1.5, (n, self.k)), rng.uniform(0, 0.05, (n, self.k)))
        stats = code_statistics(vectors)
        if seed % 7 == 5:                                   # written before samples existed
            stats = {key: stats[key] for key in ("codes", "counts", "unit_sums")}
        return stats


@pytest.mark.parametrize("at_most", [5, 300, 4096])
def test_merge_code_statistics_streams_and_equals_the_concatenated_merge(monkeypatch, at_most):
    import segment.codebook as codebook

    monkeypatch.setattr(codebook, "SAMPLES_PER_CODE", at_most)
    parts = _CountingParts(list(range(40)), k=5)
    merged = merge_code_statistics(parts)
    assert parts.reads == 2 * len(parts), "two walks, one block at a time"
    reference = _merge_in_memory([parts[i] for i in range(len(parts))], at_most)
    assert merged.keys() == reference.keys()
    for key in merged:
        assert merged[key].dtype == reference[key].dtype, key
        np.testing.assert_array_equal(merged[key], reference[key], err_msg=key)
    if at_most == 5:
        assert np.bincount(np.unique(merged["sample_codes"], return_inverse=True)[1]).max() == 5
    assert merge_code_statistics([code_statistics(np.zeros((0, 3)))])["codes"].size == 0
    assert merge_code_statistics([])["samples"].shape == (0, 0)


def test_codebook_splits_a_code_shared_by_two_expression_levels():
    # Two neurons with code 0b0111 but different levels (a collision), one neuron
    # with code 0b1100 whose levels vary as much as noise: only the collision splits.
    rng = np.random.default_rng(3)

    def votes(levels, n, noise=0.03):
        v = np.full((n, 4), 0.02) + rng.normal(0, noise, (n, 4))
        v[:, :len(levels)] += np.asarray(levels) - 0.02
        return np.clip(v, 1e-3, None)

    first = votes([1.3, 0.7, 0.9], 900)
    second = votes([0.6, 1.2, 1.1], 700)
    alone = np.roll(votes([1.0, 1.0], 800, noise=0.06), 2, axis=1)   # code 0b1100
    blocks = [code_statistics(np.concatenate([first[i::3], second[i::3], alone[i::3]])) for i in range(3)]
    stats = merge_code_statistics(blocks)
    book = codebook_from_statistics(stats, min_support=300, merge_distance=0.2, split_distance=0.2)
    assert sorted(book.codes.tolist()) == [0b0111, 0b0111, 0b1100]
    assert book.n_identities == 3
    rows = np.flatnonzero(book.codes == 0b0111)
    truth = np.stack([_unit_rows(np.array([[1.3, 0.7, 0.9, 0.02]]))[0], _unit_rows(np.array([[0.6, 1.2, 1.1, 0.02]]))[0]])
    # each split centroid sits on one neuron's direction, the larger group first
    np.testing.assert_allclose(book.centroids[rows], truth, atol=0.05)
    assert book.support[rows[0]] > book.support[rows[1]]
    # assign_codes then tells the two neurons apart voxel by voxel
    labels = assign_codes(np.concatenate([first, second]).T.reshape(4, 1, 1, -1), book.centroids, book.identity)
    first_ids, second_ids = labels.ravel()[:900], labels.ravel()[900:]
    assert np.mean(first_ids == np.bincount(first_ids).argmax()) > 0.95
    assert np.mean(second_ids == np.bincount(second_ids).argmax()) > 0.95
    assert np.bincount(first_ids).argmax() != np.bincount(second_ids).argmax()
    # disabled, or too far apart to count: one row per code, as before
    assert sorted(codebook_from_statistics(stats, min_support=300, split_distance=0).codes.tolist()) == [0b0111, 0b1100]
    assert len(codebook_from_statistics(stats, min_support=300, split_distance=0.9)) == 2


def test_split_code_needs_two_real_groups():
    rng = np.random.default_rng(0)
    one = _unit_rows(np.array([1.0, 0.8, 0.9]) + rng.normal(0, 0.05, (500, 3)))
    assert split_code(one, min_distance=0.2) is None
    few = _unit_rows(np.array([[1.0, 0.0, 0.0]] * 29 + [[0.0, 1.0, 0.0]] * 10, dtype=float))
    assert split_code(few, min_distance=0.2) is None                       # fewer than 40 samples
    lopsided = _unit_rows(np.array([[1.0, 0.1, 0.1]] * 95 + [[0.1, 1.0, 0.1]] * 5, dtype=float))
    assert split_code(lopsided, min_distance=0.2) is None                  # 5 % is not a neuron
    # a smear (one channel's level varying evenly, e.g. with depth): far apart halves, no valley
    t = np.linspace(0, 1, 400)[:, None]
    smear = _unit_rows((1 - t) * np.array([1.0, 0.3, 0.5]) + t * np.array([0.3, 1.0, 0.5]))
    assert split_code(smear + rng.normal(0, 0.01, smear.shape), min_distance=0.2) is None
    # one Gaussian cloud stretched along one direction: cut in half, D < 3.4
    blob = _unit_rows(np.array([1.0, 1.0, 1.0]) + rng.normal(0, 1, (500, 1)) * np.array([0.2, -0.2, 0.0])
                      + rng.normal(0, 0.01, (500, 3)))
    assert split_code(blob, min_distance=0.1) is None
    two = _unit_rows(np.array([[1.0, 0.2, 0.2]] * 60 + [[0.2, 1.0, 0.2]] * 40, dtype=float))
    centers, fractions = split_code(two, min_distance=0.2)
    np.testing.assert_allclose(fractions, [0.6, 0.4])
    np.testing.assert_allclose(centers[0], two[0], atol=1e-9)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_assign_codes_and_despeckle():
    cent = np.array([[1.0, 0.0], [0.0, 1.0]])
    bc = np.zeros((2, 3, 10, 10), np.float32)
    bc[0, :, :, :5] = 1.0
    bc[1, :, :, 5:] = 1.0
    bc[:, 1, 4, 2] = [0.0, 1.0]            # one speck of the other code
    bc[:, 0, 0, 0] = 0.0                   # too dim to call
    mask = np.ones((3, 10, 10), bool)
    labels = assign_codes(bc, cent, [7, 9], mask=mask, floor=0.1)
    assert labels.dtype == np.uint32
    assert labels[0, 0, 0] == 0 and labels[1, 4, 2] == 9 and labels[2, 2, 2] == 7 and labels[2, 2, 8] == 9
    clean = despeckle(labels, mask, np.zeros(mask.shape, np.float32), min_size=5)
    assert clean[1, 4, 2] == 7 and clean[0, 0, 0] == 7
    assert (clean[:, :, 5:] == 9).all()


def test_refine_contacts_gives_flooded_contact_voxels_back_to_the_code_they_show():
    # Two regions (identity 7 left, 9 right); flooding gave column x=5, whose
    # barcode shows code 9, to identity 7.
    cent = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ident = [7, 9, 9]                       # identity 9 has two codes
    bc = np.zeros((3, 3, 6, 10), np.float32)
    bc[0, :, :, :5] = 1.0
    bc[1, :, :, 5:] = 0.3                   # dim at the contact ...
    bc[2, :, :, 5] = 0.4                    # ... and closest to 9's second code
    bc[1, :, :, 6:] = 1.0
    bc[:, 1, 3, 2] = [0.0, 1.0, 0.0]        # interior voxel pointing to 9: no 9 nearby, stays 7
    bc[:, 1, 3, 5] = [0.4, 0.4, 0.0]        # a tie keeps the current label
    labels = np.zeros((3, 6, 10), np.uint32)
    labels[:, :, :6] = 7
    labels[:, :, 6:] = 9
    labels[0, 0, 9] = 0                     # unlabelled stays unlabelled
    out = refine_contacts(labels, bc, cent, ident)
    assert out.dtype == np.uint32 and out.shape == labels.shape
    assert out[1, 3, 5] == 7 and (out[:, :, 5] == 9).sum() == 3 * 6 - 1   # the flooded column goes to 9
    assert (out[:, :, :5] == 7).all()       # voxels that point to 7 stay
    assert out[1, 3, 2] == 7 and out[0, 0, 9] == 0
    assert (out[:, :, 6:][labels[:, :, 6:] > 0] == 9).all()
    # nothing to do: no codes, or no contact
    np.testing.assert_array_equal(refine_contacts(labels, bc, np.zeros((0, 3)), []), labels)
    one = np.full((2, 2, 2), 3, np.uint32)
    np.testing.assert_array_equal(refine_contacts(one, np.ones((3, 2, 2, 2), np.float32), cent, [1, 2, 3]), one)



@pytest.mark.parametrize("chunk_bytes", [4 * 7 * 5, 4 * 7 * 64, 1 << 20])
def test_code_scores_by_column_chunks_equal_one_table(monkeypatch, chunk_bytes):
    """assign_codes and refine_contacts give the same labels whatever the chunk of their score tables."""
    import segment.codebook as codebook

    rng = np.random.default_rng(4)
    cent = rng.random((7, 5)).astype(np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    ident = [1, 2, 2, 3, 4, 5, 5]
    bc = rng.random((5, 6, 9, 11)).astype(np.float32)
    mask = rng.random(bc.shape[1:]) < 0.7
    whole_labels = assign_codes(bc, cent, ident, mask=mask, floor=0.2)
    flooded = (rng.integers(1, 6, mask.shape) * mask).astype(np.uint32)       # labels the barcodes disagree with
    whole_refined = refine_contacts(flooded, bc, cent, ident)
    monkeypatch.setattr(codebook, "SCORE_CHUNK_BYTES", chunk_bytes)
    assert len(codebook._column_chunks(int(mask.sum()), 7)) > (1 if chunk_bytes < 1 << 20 else 0)
    labels = assign_codes(bc, cent, ident, mask=mask, floor=0.2)
    np.testing.assert_array_equal(labels, whole_labels)
    np.testing.assert_array_equal(refine_contacts(flooded, bc, cent, ident), whole_refined)
    assert (whole_refined != flooded).any()                # the contact pass had something to decide

# -- edges and agglomeration ---------------------------------------------------
def test_contact_edges_count_each_pair_once_across_blocks():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(6, 8, 8)).astype(np.uint64)
    feats = rng.integers(0, 256, size=(2, 6, 8, 8)).astype(np.uint8)
    whole = contact_edges(labels, feats, (0, 0, 0))
    # the same contacts from 2 x 2 x 2 blocks, each with its one-voxel low margin
    parts = []
    for z0 in (0, 3):
        for y0 in (0, 4):
            for x0 in (0, 4):
                lo = [max(z0 - 1, 0), max(y0 - 1, 0), max(x0 - 1, 0)]
                region = (slice(lo[0], z0 + 3), slice(lo[1], y0 + 4), slice(lo[2], x0 + 4))
                margins = [z0 - lo[0], y0 - lo[1], x0 - lo[2]]
                parts.append(contact_edges(labels[region], feats[(slice(None),) + region], margins))
    table = EdgeTable.concat(parts)
    np.testing.assert_array_equal(table.a, whole["a"])
    np.testing.assert_array_equal(table.b, whole["b"])
    np.testing.assert_array_equal(table.contact, whole["contact"])
    np.testing.assert_allclose(table.fill_sum, whole["sums"][:, 0])


def _table(counts, identity, barcodes=None, fill=None, first=None, lo=None, hi=None):
    n = len(counts)
    return FragmentTable(
        ids=np.arange(1, n + 1, dtype=np.uint64),
        counts=np.asarray(counts, np.int64),
        first=np.asarray(first if first is not None else np.arange(n) * 10, np.int64),
        barcode_sums=np.asarray(barcodes if barcodes is not None else np.zeros((n, 2)), float),
        fill_sums=np.asarray(fill if fill is not None else np.asarray(counts, float) * 0.8),
        identity=np.asarray(identity, np.int64),
        bbox_lo=np.asarray(lo if lo is not None else np.zeros((n, 3)), np.int64),
        bbox_hi=np.asarray(hi if hi is not None else np.ones((n, 3)), np.int64),
    )


def _edges(pairs, contact=10, fill=0.8):
    a = np.array([p[0] for p in pairs], np.uint64)
    b = np.array([p[1] for p in pairs], np.uint64)
    c = np.full(len(pairs), contact, np.int64)
    return EdgeTable(a, b, c, c * fill, np.zeros(len(pairs)))


def test_agglomerate_joins_same_identity_and_refuses_conflicts():
    frags = _table([500, 400, 300, 600, 10], identity=[1, 1, 2, 2, 0], first=[40, 30, 20, 10, 0])
    edges = _edges([(1, 2), (2, 3), (3, 4), (4, 5)])
    neuron_of, info = agglomerate(frags, edges, merge_threshold=0.5, min_fragment_size=20, min_neuron_size=0)
    # 1+2 (identity 1), 3+4 (identity 2), tiny 5 joins its only neighbour 4
    assert neuron_of[0] == neuron_of[1] != neuron_of[2]
    assert neuron_of[2] == neuron_of[3] == neuron_of[4]
    # ids follow the raster order of each neuron's first voxel: identity 2 holds voxel 0
    assert neuron_of[4] == 1 and neuron_of[0] == 2
    assert info["n_neurons"] == 2 and info["n_merges"] + info["n_small_merges"] == 3


def test_agglomerate_with_mean_barcodes_and_size_filter():
    bars = [[10.0, 0.0], [9.0, 0.5], [0.0, 10.0]]
    frags = _table([100, 100, 100], identity=[0, 0, 0], barcodes=bars)
    edges = _edges([(1, 2), (2, 3)])
    neuron_of, _ = agglomerate(frags, edges, merge_threshold=0.5, barcode_conflict=0.4, min_neuron_size=0)
    assert neuron_of[0] == neuron_of[1] != neuron_of[2]
    blind, _ = agglomerate(frags, edges, merge_threshold=0.5, use_barcodes=False, min_neuron_size=0)
    assert len(set(blind.tolist())) == 1
    dropped, info = agglomerate(frags, edges, merge_threshold=0.5, min_neuron_size=150)
    assert dropped[2] == 0 and dropped[0] == 1 and info["n_dropped"] == 1


def test_proximity_links_respect_identity_and_distance():
    lo = [[0, 0, 0], [0, 0, 12], [0, 0, 40], [0, 0, 12]]
    hi = [[2, 2, 10], [2, 2, 20], [2, 2, 50], [2, 2, 20]]
    frags = _table([50, 50, 50, 50], identity=[1, 1, 1, 2], lo=lo, hi=hi)
    pairs = proximity_links(frags, (1.0, 0.1, 0.1), radius=0.5)
    assert pairs.tolist() == [[0, 1]]          # gap 2 voxels = 0.2; fragment 2 is 2.0 away; 3 is another code
    assert len(proximity_links(frags, (1.0, 0.1, 0.1), radius=5.0)) == 3
    neuron_of, info = agglomerate(frags, _edges([]), merge_threshold=0.5, links=pairs, min_neuron_size=0)
    assert neuron_of[0] == neuron_of[1] and len(set(neuron_of.tolist())) == 3 and info["n_links"] == 1


# -- config ------------------------------------------------------------------
def test_config_defaults_and_validation():
    cfg = SegmentConfig()
    assert cfg.barcode_method == "codebook" and cfg.use_barcodes
    # boundary voxels: flood specks on the barcode discontinuity, then re-decide contacts
    assert cfg.despeckle_size == 50 and cfg.despeckle_landscape == "discontinuity" and cfg.refine_contacts
    assert SegmentConfig(sigma=2.0).sigma == (2.0, 2.0, 2.0)
    assert SegmentConfig(sigma_unit="physical", sigma=(0.4, 0.1, 0.1)).sigma_voxels((0.4, 0.1, 0.1)) == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="barcode_weight"):
        validate_config(SegmentConfig, {"barcode_weight": -1}, "segment")
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config(SegmentConfig, {"sigmaa": 1}, "segment")
    with pytest.raises(ConfigError, match="norm_percentiles"):
        validate_config(SegmentConfig, {"norm_percentiles": [50, 10]}, "segment")


# -- GPU ---------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_kernels_match_cpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    bc = rng.random((3, 8, 16, 16)).astype(np.float32)
    fill = rng.random((8, 16, 16)).astype(np.float32)
    cpu = kernels.compute_evidence(fill, bc, sigma=(0.5, 1, 1), barcode_sigma=(0.5, 1, 1), threshold=0.5)
    gpu = kernels.compute_evidence(cp.asarray(fill), cp.asarray(bc), sigma=(0.5, 1, 1),
                                   barcode_sigma=(0.5, 1, 1), threshold=0.5)
    np.testing.assert_allclose(cp.asnumpy(gpu.boundary), cpu.boundary, atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(gpu.discontinuity), cpu.discontinuity, atol=1e-4)
    dec = kernels.deconvolve(cp.asarray(bc), (1.0, 1.0, 1.0), 3)
    np.testing.assert_allclose(cp.asnumpy(dec), kernels.deconvolve(bc, (1.0, 1.0, 1.0), 3), rtol=1e-3, atol=1e-4)
    labels = assign_codes(cp.asarray(bc), np.eye(3), [1, 2, 3], floor=0.0)
    np.testing.assert_array_equal(cp.asnumpy(labels), assign_codes(bc, np.eye(3), [1, 2, 3], floor=0.0))
    cpu_labels = assign_codes(bc, np.eye(3), [1, 2, 3], floor=0.0)
    cpu_labels[:, :, ::2] = 2               # a striped labelling: every voxel at a contact
    np.testing.assert_array_equal(
        cp.asnumpy(refine_contacts(cp.asarray(cpu_labels), cp.asarray(bc), np.eye(3), [1, 2, 3])),
        refine_contacts(cpu_labels, bc, np.eye(3), [1, 2, 3]))


def test_accelerated_deconvolution_sharpens_faster_and_rejects_unknown_schedules():
    x = np.zeros((1, 15, 15, 15), np.float32)
    x[0, 7, 7, 7] = 100.0
    blurred = ndi.gaussian_filter(x, (0, 1.5, 1.5, 1.5)) + 1e-3
    plain = kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 8, acceleration="none")
    fast = kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 8, acceleration="nesterov")
    assert fast[0, 7, 7, 7] > 1.2 * plain[0, 7, 7, 7]
    assert np.all(fast >= 0)
    # the first two iterations have no momentum yet: identical to plain Richardson-Lucy
    np.testing.assert_array_equal(kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 1, acceleration="nesterov"),
                                  kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 1, acceleration="none"))
    with pytest.raises(ValueError, match="acceleration"):
        kernels.deconvolve(blurred, (1.5, 1.5, 1.5), 3, acceleration="biggs")


@pytest.mark.parametrize("shape", [(3, 4, 16, 16), (2, 5, 7, 9), (1, 2, 1, 1), (2, 3, 2, 33), (8, 6, 36, 36)])
def test_binning_is_the_float32_mean_of_each_2x2_bin_bit_for_bit(shape):
    # _bin_yx adds each bin as (a00 + a01) + (a10 + a11) / 4 instead of NumPy's two-axis mean:
    # the same float32 values, so the binned deconvolution is unchanged
    rng = np.random.default_rng(7)
    x = np.maximum(rng.random(shape, dtype=np.float32) * rng.choice([1e-3, 1.0, 4.0]), np.float32(1e-3))
    padded = np.pad(x, [(0, 0), (0, 0), (0, shape[2] % 2), (0, shape[3] % 2)], mode="symmetric")
    c, z, y, w = padded.shape
    reference = padded.reshape(c, z, y // 2, 2, w // 2, 2).mean(axis=(3, 5), dtype=np.float32)
    binned = kernels._bin_yx(x)
    assert binned.dtype == np.float32
    np.testing.assert_array_equal(binned, reference)


@pytest.mark.parametrize("n_codes, n_voxels", [(1, 10), (2, 0), (3, 57), (24, 5000)])
def test_assign_codes_argmax_equals_numpy_with_ties_and_nan(n_codes, n_voxels):
    from segment.codebook import _argmax_rows

    rng = np.random.default_rng(n_codes)
    scores = np.round(rng.random((n_codes, n_voxels), dtype=np.float32) * 4) / 4   # many ties
    np.testing.assert_array_equal(_argmax_rows(scores), np.argmax(scores, axis=0))
    if n_voxels:
        scores[rng.integers(n_codes), rng.integers(n_voxels)] = np.nan
        np.testing.assert_array_equal(_argmax_rows(scores), np.argmax(scores, axis=0))
