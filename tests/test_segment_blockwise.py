"""segment_volume end to end on small synthetic volumes: blocks, stitching, barcodes, reruns, errors.

Tolerance for block-shape independence: on the truth foreground every block
shape reproduces the one-block segmentation exactly here (VOI 0); over all
voxels labelled by either run (which includes the blurred halo around the
neurons, outside the truth) the VOI between a blocked run and the one-block
run stays below 0.5 bits.
"""

import json

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from pipeline import BlockGrid, Channel, ComputeConfig, ConfigError, Executor, MissingChannelError, Volume
from pipeline.volume import open_label_image
from segment import SegmentConfig, segment_volume
from segment.synthetic import Ball, Tube, random_objects, render, write_volume

#: Settings for volumes of a few thousand voxels per neuron (the defaults suit the 96x256x256 sample).
SMALL = dict(code_min_support=50, psf_sigma=(0.7, 1.0, 1.0), min_neuron_size=50)


def voi(a, b):
    """Variation of information (bits) between two label arrays, from their contingency table."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.bincount(ai * (bi.max() + 1) + bi).astype(float)
    joint = joint[joint > 0] / a.size
    pa = np.bincount(ai) / a.size
    pb = np.bincount(bi) / a.size

    def h(p):
        return float(-(p * np.log2(p)).sum())

    return 2 * h(joint) - h(pa) - h(pb)


def _segment(tmp_path, synthetic, block_shape, name="run", chunks=(8, 32, 32), executor=None, **overrides):
    path = tmp_path / "volume.zarr"
    volume = Volume.open(path) if path.exists() else write_volume(path, synthetic, chunks_zyx=chunks)
    grid = BlockGrid(volume.spatial_shape, block_shape, chunks=volume.chunks)
    summary = segment_volume(volume, tmp_path / name, SegmentConfig(**{**SMALL, **overrides}), grid=grid,
                             executor=executor or Executor(ComputeConfig(scheduler="synchronous")))
    return summary, zarr.open_array(summary["labels_path"], mode="r")[:]


@pytest.fixture(scope="module")
def scene():
    shape = (24, 64, 64)
    return render(shape, random_objects(shape, 8, n_barcodes=6, seed=2), seed=2)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, scene):
    """The scene segmented as one block: (folder, summary, labels)."""
    folder = tmp_path_factory.mktemp("whole")
    summary, labels = _segment(folder, scene, (24, 64, 64))
    return folder, summary, labels


def test_touching_tubes_with_different_barcodes_are_split(tmp_path):
    tubes = [Tube((8, 20, 2), (8, 20, 62), 3.5, (1, 1, 0, 0)), Tube((8, 27, 2), (8, 27, 62), 3.5, (0, 0, 1, 1))]
    syn = render((16, 48, 64), tubes, seed=0)
    summary, labels = _segment(tmp_path, syn, (8, 16, 32), chunks=(8, 16, 32))
    assert summary["n_neurons"] == 2 and summary["method"] == "codebook" and summary["n_blocks"] == 12
    fg = syn.truth > 0
    assert voi(syn.truth[fg], labels[fg]) < 1e-9
    # Without barcodes the same fill gives one merged neuron (the ablation).
    summary, labels = _segment(tmp_path, syn, (8, 16, 32), name="fill_only", chunks=(8, 16, 32),
                               use_barcodes=False)
    assert summary["method"] == "fill" and len(np.unique(labels[fg])) == 1


def test_one_tube_across_block_faces_is_one_neuron(tmp_path):
    objects = [Tube((8, 30, 4), (8, 34, 60), 3.0, (1, 0, 1, 0)), Ball((8, 50, 20), 5.0, (0, 1, 0, 1))]
    syn = render((16, 64, 64), objects, seed=1)
    summary, labels = _segment(tmp_path, syn, (16, 32, 32))
    tube = labels[syn.truth == 1]
    assert len(np.unique(tube)) == 1 and tube[0] > 0
    assert np.unique(labels[syn.truth == 2]).tolist() != np.unique(tube).tolist()
    assert summary["n_neurons"] == 2 and summary["n_blocks"] == 4


def test_labels_are_an_ome_zarr_label_image_with_consecutive_ids(scene, whole):
    folder, summary, labels = whole
    arr = open_label_image(folder / "run" / "labels.zarr", "neurons")
    assert arr.dtype == np.uint64 and arr.shape == scene.truth.shape
    meta = json.loads((folder / "run" / "labels.zarr" / "neurons" / "zarr.json").read_text())
    assert "image-label" in meta["attributes"]["ome"]
    ids = np.unique(labels)
    assert ids.tolist() == list(range(0, summary["n_neurons"] + 1))
    fg = scene.truth > 0
    assert voi(scene.truth[fg], labels[fg]) < 0.05
    assert set(summary["timings"]) >= {"statistics", "evidence", "fragments", "edges", "agglomerate", "relabel"}
    assert summary["n_fragments"] >= summary["n_neurons"]


@pytest.mark.parametrize("block_shape", [(8, 32, 32), (16, 32, 64), (24, 64, 32)])
def test_block_shape_changes_little(scene, whole, block_shape):
    folder, _, one_block = whole
    summary, blocked = _segment(folder, scene, block_shape, name=f"blocks_{block_shape[0]}_{block_shape[2]}")
    assert summary["n_blocks"] > 1
    fg = scene.truth > 0
    assert voi(one_block[fg], blocked[fg]) < 0.05
    assert voi(scene.truth[fg], blocked[fg]) < 0.05
    either = (one_block > 0) | (blocked > 0)
    assert voi(one_block[either], blocked[either]) < 0.5


def test_evidence_is_exact_blockwise_without_deconvolution(tmp_path, scene):
    _segment(tmp_path, scene, (24, 64, 64), name="whole", deconvolution_iterations=0)
    _segment(tmp_path, scene, (8, 32, 32), name="blocked", deconvolution_iterations=0)
    for name in ("evidence", "barcodes"):
        a = zarr.open_array(str(tmp_path / "whole" / "work" / name), mode="r")[:]
        b = zarr.open_array(str(tmp_path / "blocked" / "work" / name), mode="r")[:]
        np.testing.assert_array_equal(a, b)


def test_rerun_and_resume_are_identical(tmp_path, scene):
    first, labels = _segment(tmp_path, scene, (8, 32, 32))
    again, same = _segment(tmp_path, scene, (8, 32, 32))           # every block done: resumes
    np.testing.assert_array_equal(labels, same)
    # a run killed half way: drop some done-markers and garble the output of those blocks
    state = tmp_path / "run" / "work" / "blocks"
    grid = BlockGrid(scene.truth.shape, (8, 32, 32), chunks=(8, 32, 32))
    out = zarr.open_array(str(tmp_path / "run" / "labels.zarr" / "neurons" / "0"), mode="r+")
    frags = zarr.open_array(str(tmp_path / "run" / "work" / "fragments"), mode="r+")
    for block in list(grid)[::2]:
        (state / "segment_fragments" / f"{block.id}.pkl").unlink()
        (state / "segment_relabel" / f"{block.id}.pkl").unlink()
        out[block.write] = 7
        frags[block.write] = 0
    _, resumed = _segment(tmp_path, scene, (8, 32, 32))
    np.testing.assert_array_equal(labels, resumed)
    _, fresh = _segment(tmp_path, scene, (8, 32, 32), name="fresh")
    np.testing.assert_array_equal(labels, fresh)
    assert first["n_neurons"] == again["n_neurons"]


def test_changed_config_recomputes(scene, whole):
    folder, _, labels = whole
    summary, changed = _segment(folder, scene, (24, 64, 64), name="changed", min_neuron_size=10**6)
    assert summary["n_neurons"] == 0 and not changed.any()
    summary, back = _segment(folder, scene, (24, 64, 64), name="changed")
    np.testing.assert_array_equal(back, labels)


def test_fill_only_volume_uses_the_watershed(tmp_path):
    syn = render((16, 40, 64), [Ball((8, 20, 16), 6.0, (1,)), Ball((8, 20, 46), 6.0, (1,))], seed=3)
    fill_only = write_volume(tmp_path / "fill.zarr", syn, chunks_zyx=(8, 20, 32), channels=["fill"])
    grid = BlockGrid(fill_only.spatial_shape, (16, 20, 32), chunks=fill_only.chunks)
    summary = segment_volume(fill_only, tmp_path / "run", SegmentConfig(**SMALL), grid=grid)
    labels = zarr.open_array(summary["labels_path"], mode="r")[:]
    assert summary["method"] == "fill" and summary["n_neurons"] == 2
    assert labels[8, 20, 16] != labels[8, 20, 46]


def test_missing_fill_channel_and_bad_grid_raise(tmp_path, scene):
    no_fill = write_volume(tmp_path / "nofill.zarr", scene, chunks_zyx=(8, 32, 32), channels=["bc00", "bc01"])
    grid = BlockGrid(no_fill.spatial_shape, (8, 32, 32), chunks=no_fill.chunks)
    with pytest.raises(MissingChannelError, match="fill"):
        segment_volume(no_fill, tmp_path / "run", SegmentConfig(), grid=grid)
    volume = write_volume(tmp_path / "v.zarr", scene, chunks_zyx=(8, 32, 32))
    with pytest.raises(ConfigError, match="does not match"):
        segment_volume(volume, tmp_path / "run", SegmentConfig(), grid=BlockGrid((8, 8, 8), (8, 8, 8)))


def test_empty_volume_gives_no_neurons(tmp_path):
    vol = Volume.create(tmp_path / "empty.zarr", shape_zyx=(8, 32, 32),
                        channels=[Channel("fill", "fill"), Channel("bc00", "barcode"), Channel("bc01", "barcode")],
                        chunks_zyx=(8, 16, 16))
    grid = BlockGrid(vol.spatial_shape, (8, 16, 16), chunks=vol.chunks)
    summary = segment_volume(vol, tmp_path / "run", SegmentConfig(**SMALL), grid=grid)
    assert summary["n_neurons"] == 0
    assert not zarr.open_array(summary["labels_path"], mode="r")[:].any()


def _global_statistics_reference(volume, channels, fill, percentiles, sigma, max_voxels):
    """The previous global_statistics: percentiles of the concatenated sample, fill read again for Otsu."""
    from skimage.filters import threshold_otsu

    from segment import kernels
    from segment.blockwise import _sample_regions

    channels = sorted(set(channels) | set(fill))
    regions = _sample_regions(volume, max_voxels)
    lo, hi = {}, {}
    for i, c in enumerate(channels):
        v = np.concatenate([volume.read(r, channels)[i].ravel() for r in regions])
        p = np.percentile(v, list(percentiles))
        lo[c], hi[c] = float(p[0]), float(p[1])
        if hi[c] <= lo[c]:
            hi[c] = lo[c] + 1.0
    smoothed = []
    for r in regions:
        data = volume.read(r, list(fill)).astype(np.float32)
        norm = kernels.normalize(data, [lo[c] for c in fill], [hi[c] for c in fill]).mean(axis=0)
        smoothed.append(kernels.smooth(norm, sigma).ravel())
    return lo, hi, float(threshold_otsu(np.concatenate(smoothed), nbins=512))


@pytest.mark.parametrize("chunks, max_voxels", [((8, 32, 32), 2**23), ((8, 16, 32), 2**23), ((24, 64, 64), 2**23),
                                                ((4, 16, 16), 6000), ((5, 24, 40), 2**23)])
def test_global_statistics_equal_the_concatenated_percentiles(tmp_path, scene, chunks, max_voxels):
    from segment.blockwise import global_statistics

    volume = write_volume(tmp_path / "v.zarr", scene, chunks_zyx=chunks)
    fill = volume.channels_with_role("fill")
    channels = fill + volume.channels_with_role("barcode") + volume.channels_with_role("membrane")
    got = global_statistics(volume, channels, fill, percentiles=(1.0, 99.5), sigma=(0.5, 1.0, 1.0),
                            max_voxels=max_voxels)
    lo, hi, otsu = _global_statistics_reference(volume, channels, fill, (1.0, 99.5), (0.5, 1.0, 1.0), max_voxels)
    assert got["lo"] == lo and got["hi"] == hi and got["otsu"] == otsu


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_histogram_percentiles_equal_numpy(dtype):
    from segment.blockwise import _percentiles

    rng = np.random.default_rng(3)
    for trial in range(60):
        top = int(rng.choice([2, 40, 250] + ([5000, 60000] if dtype == np.uint16 else [])))
        parts = [rng.integers(0, top + 1, size=int(rng.integers(1, 400))).astype(dtype)
                 for _ in range(int(rng.integers(1, 4)))]
        q = [(1.0, 99.5), (0.0, 100.0), (37.3, 50.0)][trial % 3]
        np.testing.assert_array_equal(_percentiles(parts, q), np.percentile(np.concatenate(parts), q))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_background_level_is_the_histogram_mode(dtype):
    """A sparse channel: 85 % background at 100 +- 8, signal in a long upper tail; the low percentile is far below."""
    from segment.blockwise import _background_level, _percentiles

    rng = np.random.default_rng(5)
    background = rng.normal(100.0, 8.0, 170_000)
    signal = 100.0 + rng.exponential(400.0, 30_000)
    values = np.concatenate([background, signal]).clip(0, 65535)
    parts = [values[:90_000].astype(dtype), values[90_000:].astype(dtype)]   # split like sampled chunks
    lo, hi = _percentiles(parts, (1.0, 99.5))
    assert lo < 85.0
    level = _background_level(parts, lo, hi)
    assert abs(level - 100.0) < 5.0, level
    assert _background_level([np.zeros(0, dtype)], 10.0, 20.0) == 10.0     # nothing counted: lo


def test_contact_pass_on_and_off(scene, whole):
    """The final contact pass changes contact voxels and grows into unlabelled ones; off, labels are the lookup table's."""
    folder, summary, with_pass = whole
    assert summary["contact_changes"] > 0
    off_summary, without = _segment(folder, scene, (24, 64, 64), name="no_contact_pass", refine_neuron_contacts=False)
    assert off_summary["contact_changes"] is None
    frags = zarr.open_array(str(folder / "no_contact_pass" / "work" / "fragments"), mode="r")[:]
    lut = np.load(folder / "no_contact_pass" / "work" / "segment_lut.npz")
    expected = np.where(frags == 0, 0, lut["values"][np.searchsorted(lut["keys"], frags)])
    np.testing.assert_array_equal(without, expected)
    changed = with_pass != without
    assert 0 < changed.sum() <= summary["contact_changes"] * 1.0
    # no labelled voxel is dropped; a voxel only takes a neuron labelled near it (three rounds of radius 3)
    assert not (changed & (with_pass == 0)).any()
    for neuron in np.unique(with_pass[changed]):
        near = ndi.binary_dilation(without == neuron, np.ones((19, 19, 19), bool))
        assert near[changed & (with_pass == neuron)].all()
    fg = scene.truth > 0
    # here the labels are right before the pass (VOI 0.0); the smoothed pass costs up to 0.015 on this scene
    assert voi(scene.truth[fg], with_pass[fg]) <= voi(scene.truth[fg], without[fg]) + 0.02


def test_cosine_contact_method_still_decides_contacts(scene, whole):
    """``contact_method: cosine`` (session 5's pass) runs too; the unmixing pass only adds foreground; both stay close."""
    folder, summary, unmixed = whole
    cos_summary, cosine = _segment(folder, scene, (24, 64, 64), name="cosine_pass", contact_method="cosine")
    assert cos_summary["contact_changes"] > 0
    assert not ((cosine > 0) & (unmixed == 0)).any()
    fg = scene.truth > 0
    # on this scene (PSF 0.7-1 voxel: the fit's back projector is the PSF) the unmixing pass gives VOI
    # 0.005 (0.009 with 60 iterations until session 23), the cosine pass 0.009
    assert voi(scene.truth[fg], unmixed[fg]) <= voi(scene.truth[fg], cosine[fg]) + 0.01


def test_unmixing_rounds_smoothing_and_growth_each_keep_or_add_foreground(scene, whole):
    """One plain round (session 8's pass) against the default (two rounds, smoothed, growing): no worse here."""
    folder, summary, default = whole
    plain_summary, plain = _segment(folder, scene, (24, 64, 64), name="one_plain_round", contact_unmix_rounds=1,
                                    contact_unmix_smoothing=None, contact_unmix_grow=None)
    no_grow_summary, no_grow = _segment(folder, scene, (24, 64, 64), name="no_grow", contact_unmix_grow=None)
    np.testing.assert_array_equal(no_grow > 0, plain > 0)               # without growth the foreground is fixed
    assert not ((plain > 0) & (default == 0)).any()                      # growth only adds
    fg = scene.truth > 0
    # this scene's plain pass recovers the truth exactly; the smoothed default costs up to 0.015 here,
    # while on the sample seeds it gains about 0.08 (README, session 9)
    assert voi(scene.truth[fg], default[fg]) <= voi(scene.truth[fg], plain[fg]) + 0.02


def test_contact_halo_is_the_psf_reach_and_changes_little(scene, whole):
    """One round reads 3 PSF sigmas + 1 + radius + smoothing reach around each block; the full halo decides alike."""
    folder, _, _ = whole
    small_summary, small = _segment(folder, scene, (24, 32, 32), name="contact_halo_auto", contact_unmix_rounds=1)
    volume = Volume.open(folder / "volume.zarr")
    expected = SegmentConfig(**SMALL, contact_unmix_rounds=1).contact_halo_voxels(volume.voxel_size)
    assert small_summary["contact_halo"] == list(expected)
    assert all(c <= h for c, h in zip(expected, small_summary["halo"]))
    assert tuple(expected) != tuple(small_summary["halo"])           # the point: a smaller read region
    full_summary, full = _segment(folder, scene, (24, 32, 32), name="contact_halo_full",
                                  contact_halo=small_summary["halo"], contact_unmix_rounds=1)
    assert full_summary["contact_halo"] == small_summary["halo"]
    # growth into unlabelled voxels follows the fit, which sees a little more with the full halo
    assert np.mean((small > 0) == (full > 0)) >= 0.999
    assert np.mean(small == full) >= 0.995
    fg = scene.truth > 0
    assert abs(voi(scene.truth[fg], small[fg]) - voi(scene.truth[fg], full[fg])) <= 0.02


def test_contact_halo_config():
    config = SegmentConfig(psf_sigma=(0.6, 0.15, 0.15), sigma_unit="physical", contact_unmix_radius=2)
    # ceil(3 * 1.5) + 1, plus per round the radius 2 and the smoothing kernel's reach (4 sigmas of
    # (0.2, 0.4, 0.4) * 1.5 voxels: 1, 2, 2), capped by the halo (8, 16, 16)
    assert config.contact_halo_voxels((0.4, 0.1, 0.1)) == (8, 16, 16)
    one_round = SegmentConfig(psf_sigma=(0.6, 0.15, 0.15), sigma_unit="physical", contact_unmix_radius=2,
                              contact_unmix_rounds=1)
    assert one_round.contact_halo_voxels((0.4, 0.1, 0.1)) == (8, 10, 10)
    plain = SegmentConfig(psf_sigma=(0.6, 0.15, 0.15), sigma_unit="physical", contact_unmix_radius=2,
                          contact_unmix_smoothing=None, contact_unmix_rounds=1)
    assert plain.contact_halo_voxels((0.4, 0.1, 0.1)) == (8, 8, 8)
    cosine = SegmentConfig(psf_sigma=(0.6, 0.15, 0.15), sigma_unit="physical", contact_method="cosine",
                           contact_unmix_radius=2, contact_unmix_smoothing=None)
    assert cosine.contact_halo_voxels((0.4, 0.1, 0.1)) == (8, 8, 8)
    assert config.contact_smoothing_voxels((0.4, 0.1, 0.1)) == pytest.approx((0.3, 0.6, 0.6))
    assert SegmentConfig(contact_unmix_smoothing=0.5).contact_unmix_smoothing == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="contact_unmix_smoothing"):
        SegmentConfig(contact_unmix_smoothing=(0.1, -0.2, 0.1))
    with pytest.raises(ValueError, match="contact_unmix_grow"):
        SegmentConfig(contact_unmix_grow=0.0)
    assert SegmentConfig(halo=(4, 16, 16)).contact_halo_voxels((1.0, 1.0, 1.0))[0] <= 4
    assert SegmentConfig(contact_halo=5).contact_halo_voxels((1.0, 1.0, 1.0)) == (5, 5, 5)
    with pytest.raises(ValueError, match="contact_halo"):
        SegmentConfig(contact_halo=(1, -1, 2))


def test_relabel_pass_does_not_hold_the_per_block_tables(scene, whole, monkeypatch):
    """Votes, block summaries, edges and fragments grow with the block count: freed before the relabel pass.

    The relabel pass (with the contact pass) has the largest block working set,
    so what the client still holds then adds to the run's peak memory.
    """
    import sys

    import segment

    real = segment.run_blockwise
    held = {}

    def spy(step, blocks, *, name, **kwargs):
        if name == "segment_relabel":
            held.update(sys._getframe(1).f_locals)       # segment_volume's variables at this point
        return real(step, blocks, name=name, **kwargs)

    monkeypatch.setattr(segment, "run_blockwise", spy)
    folder, _, _ = whole
    summary, _ = _segment(folder, scene, (24, 32, 32), name="held_tables")
    assert held, "the relabel pass did not run"
    assert {"votes", "summaries", "edges", "links", "fragments"}.isdisjoint(held), sorted(held)
    assert "neuron_of" in held                            # the probe sees the real frame
    assert summary["n_edges"] > 0 and summary["n_fragments"] > 0


def test_agglomeration_in_a_child_process_gives_the_same_labels(scene, whole):
    """isolate_agglomeration (the default) only moves where the agglomeration runs."""
    from pipeline.isolate import fork_available

    folder, summary, labels = whole
    assert summary["agglomeration"]["process"]["isolated"] == fork_available()
    in_process, same = _segment(folder, scene, (24, 64, 64), name="agglomeration_in_process",
                                isolate_agglomeration=False)
    np.testing.assert_array_equal(same, labels)
    assert in_process["agglomeration"]["process"] == {"isolated": False, "start_rss_mib": None, "peak_rss_mib": None}
    strip = lambda info: {k: v for k, v in info.items() if k != "process"}  # noqa: E731
    assert strip(in_process["agglomeration"]) == strip(summary["agglomeration"])
