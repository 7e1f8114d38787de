"""Puncta detection: sub-voxel accuracy, block invariance, labels, missing channels."""

import numpy as np
import pandas as pd
import pytest

from pipeline.blocks import BlockGrid
from pipeline.errors import MissingChannelError
from pipeline.volume import Channel, Volume, create_label_image
from segment.puncta import (
    PunctaConfig,
    detect_puncta,
    detect_puncta_volume,
    estimate_noise,
    lookup_labels,
    puncta_halo,
    robust_noise,
)

SHAPE = (32, 64, 64)
VOXEL = (0.3, 0.1, 0.1)


def _blobs(shape, centers, sigma=(0.8, 1.0, 1.0), amplitude=400.0):
    """Sum of anisotropic Gaussian blobs (float64)."""
    out = np.zeros(shape)
    grids = [np.arange(s, dtype=np.float64) for s in shape]
    r = [int(np.ceil(4 * s)) for s in sigma]
    for c in centers:
        lo = [max(int(np.floor(ci)) - ri, 0) for ci, ri in zip(c, r)]
        hi = [min(int(np.floor(ci)) + ri + 2, s) for ci, ri, s in zip(c, r, shape)]
        zz, yy, xx = np.meshgrid(*[g[a:b] for g, a, b in zip(grids, lo, hi)], indexing="ij")
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += amplitude * np.exp(
            -((zz - c[0]) ** 2 / (2 * sigma[0] ** 2) + (yy - c[1]) ** 2 / (2 * sigma[1] ** 2)
              + (xx - c[2]) ** 2 / (2 * sigma[2] ** 2)))
    return out


def _face_centers(rng, n=60):
    """Puncta scattered over the volume, many within a voxel of the faces of 16x32x32 blocks."""
    centers = []
    for i in range(n):
        c = rng.uniform([2, 3, 3], [SHAPE[0] - 2, SHAPE[1] - 3, SHAPE[2] - 3])
        if i % 2 == 0:  # snap one axis next to a block face
            axis = i % 3
            face = {0: 16, 1: 32, 2: 32}[axis]
            c[axis] = face + rng.uniform(-1.2, 0.8)
        centers.append(c)
    # keep them apart so that each is a separate peak
    kept = []
    for c in centers:
        if all(np.linalg.norm((np.asarray(c) - k) * [2, 1, 1]) > 6 for k in kept):
            kept.append(np.asarray(c))
    return np.array(kept)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("puncta")
    pre_c = _face_centers(rng)
    post_c = pre_c + np.array([0.0, 2.5, 0.0])
    noise = rng.normal(0, 6.0, (2,) + SHAPE)
    pre = _blobs(SHAPE, pre_c) + 100 + noise[0]
    post = _blobs(SHAPE, post_c) + 100 + noise[1]
    fill = np.full(SHAPE, 100.0)
    channels = [Channel("fill", "fill"), Channel("pre", "pre"), Channel("post", "post")]
    vol = Volume.create(root / "volume.zarr", shape_zyx=SHAPE, channels=channels, voxel_size=VOXEL,
                        chunks_zyx=(16, 32, 32))
    vol.write(tuple(slice(0, s) for s in SHAPE),
              np.clip(np.stack([fill, pre, post]), 0, 65535).astype(np.uint16))
    # labels: neuron 1 in y < 33, neuron 2 above (post puncta sit 2.5 voxels further in y)
    labels = np.zeros(SHAPE, dtype=np.uint64)
    labels[:, :33] = 1
    labels[:, 34:] = 2
    run = root / "run"
    arr = create_label_image(run / "labels.zarr", "neurons", shape_zyx=SHAPE, voxel_size=VOXEL,
                             chunks_zyx=(16, 32, 32))
    arr[...] = labels
    return vol, run, pre_c, post_c, labels


def test_subvoxel_accuracy_on_known_blobs():
    rng = np.random.default_rng(0)
    shape = (20, 40, 40)
    for sigma in [(0.7, 1.0, 1.0), (1.2, 1.0, 1.0), (0.6, 1.4, 1.4)]:
        for _ in range(5):
            c = np.array([10.0, 20.0, 20.0]) + rng.uniform(-0.5, 0.5, 3)
            image = (_blobs(shape, [c], sigma, 1000.0) + 100.0).astype(np.float32)
            found = detect_puncta(image, PunctaConfig(), noise=1.0)
            assert len(found) == 1
            err = np.abs(found[["z", "y", "x"]].to_numpy()[0] - c)
            assert err.max() < 0.25, (sigma, c, err)
            assert found["score"].iloc[0] > 10
            assert np.all(found[["size_y", "size_x"]].to_numpy() > 0)


def test_threshold_uses_noise_and_plateau_gives_one_peak():
    image = np.zeros((9, 15, 15), np.float32)
    image[4, 7, 7:9] = 50.0  # two equal voxels: a tie of equal responses at x = 7 and 8
    found = detect_puncta(image, PunctaConfig(), noise=1.0)
    assert len(found) == 1
    assert found[["iz", "iy", "ix"]].values.tolist() == [[4, 7, 7]]  # smallest coordinate wins
    assert found["x"].iloc[0] == pytest.approx(7.5)
    assert len(detect_puncta(image, PunctaConfig(), noise=1e6)) == 0


def test_size_grows_with_punctum():
    shape = (20, 40, 40)
    sizes = []
    for s in (0.8, 1.2, 1.8):
        image = (_blobs(shape, [(10.0, 20.0, 20.0)], (1.5, s, s), 1000.0)).astype(np.float32)
        sizes.append(detect_puncta(image, PunctaConfig(), noise=1.0)["size_x"].iloc[0])
    assert sizes[0] < sizes[1] < sizes[2]


def test_robust_noise_ignores_sparse_spikes():
    rng = np.random.default_rng(1)
    values = rng.normal(0, 2.0, 100_000)
    values[:500] = 1000.0
    assert abs(robust_noise(values) - 2.0) < 0.1
    assert robust_noise(np.zeros(10)) == 1.0


def test_lookup_labels_nearest_and_certainty():
    labels = np.zeros((5, 9, 9), dtype=np.uint64)
    labels[:, :, :3] = 7
    labels[:, :, 6:] = 9
    pts = np.array([[2, 4, 1], [2, 4, 3], [2, 4, 5], [2, 4, 8]])
    lab, dist, cert = lookup_labels(labels, pts, radius=1.5)
    assert lab.tolist() == [7, 7, 9, 9]
    assert dist.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert cert[0] == 1.0 and cert[1] == 0.5
    lab, dist, cert = lookup_labels(labels, np.array([[2, 4, 4]]), radius=0.5)
    assert lab.tolist() == [0] and np.isnan(dist[0]) and cert[0] == 0.0


def test_blockwise_detection_is_block_invariant(sample, tmp_path):
    vol, run, pre_c, post_c, labels = sample
    config = PunctaConfig()
    noise = {"pre": estimate_noise(vol, 1, config), "post": estimate_noise(vol, 2, config)}
    results = []
    for i, block_shape in enumerate([(16, 32, 32), (32, 64, 64), (16, 64, 32)]):
        run_i = tmp_path / f"run{i}"
        (run_i).mkdir()
        # share the labels of the fixture run
        (run_i / "labels.zarr").symlink_to(run / "labels.zarr")
        grid = BlockGrid(SHAPE, block_shape, chunks=(16, 32, 32))
        pre, post = detect_puncta_volume(vol, run_i, config, grid=grid, noise=noise)
        results.append((pre, post))
    for pre, post in results[1:]:
        pd.testing.assert_frame_equal(pre, results[0][0])
        pd.testing.assert_frame_equal(post, results[0][1])
    pre, post = results[0]
    # every planted punctum found once, at sub-voxel accuracy, with the right neuron
    for found, truth in ((pre, pre_c), (post, post_c)):
        assert len(found) == len(truth)
        pos = found[["z", "y", "x"]].to_numpy()
        d = np.linalg.norm(pos[:, None] - truth[None], axis=2)
        assert np.all(d.min(axis=1) < 0.5)
        assert len(set(d.argmin(axis=1))) == len(truth)
        expected = labels[tuple(found[["iz", "iy", "ix"]].to_numpy().T)]
        got = found["neuron_id"].to_numpy()
        on = expected != 0
        assert np.array_equal(got[on], expected[on])
        assert np.all(got != 0)  # the gap voxels at y = 33 take the nearest neuron
        assert np.all(found.loc[~on, "label_distance"] > 0)
    assert pre["punctum_id"].tolist() == list(range(len(pre)))
    # the noise estimate does not depend on the grid and is near the planted noise
    # (DoG of white noise with sd 6 has a much smaller sd)
    assert 0 < noise["pre"] < 6.0


def test_halo_covers_filter_and_label_search():
    halo = puncta_halo(PunctaConfig(), voxel_size=(0.3, 0.1, 0.1))
    assert all(h >= 3 for h in halo)


def test_missing_post_channel_raises(tmp_path):
    vol = Volume.create(tmp_path / "v.zarr", shape_zyx=(8, 16, 16),
                        channels=[Channel("fill", "fill"), Channel("pre", "pre")])
    with pytest.raises(MissingChannelError, match="post"):
        detect_puncta_volume(vol, tmp_path / "run", grid=BlockGrid((8, 16, 16), (8, 16, 16)))
