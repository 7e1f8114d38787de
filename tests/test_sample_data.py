"""Tests of the synthetic sample generator (sample_data)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from sample_data import (
    CELL_TYPES,
    MARKERS,
    SampleConfig,
    generate_sample,
    is_complete,
    load_sample,
    write_sample,
)
from sample_data._morphology import AXON, DENDRITE, SOMA
from sample_data._raster import paint_segments

K = 6


def tiny_config(**overrides) -> SampleConfig:
    # small but with enough contacts: every touching pair connects
    values = dict(shape=(32, 96, 96), n_neurons=8, n_barcodes=K, seed=3,
                  contact_voxels_per_synapse=30, connection_matrix=((0.8,) * 3,) * 3)
    values.update(overrides)
    return SampleConfig(**values)


def digest(sample) -> str:
    h = hashlib.sha256()
    h.update(sample.image.tobytes())
    h.update(sample.truth_labels.tobytes())
    h.update(pd.util.hash_pandas_object(sample.neurons, index=True).values.tobytes())
    h.update(pd.util.hash_pandas_object(sample.synapses, index=True).values.tobytes())
    h.update(json.dumps(sample.meta, sort_keys=True).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sample():
    return generate_sample(tiny_config())


@pytest.fixture(scope="module")
def dense_sample():
    return generate_sample(tiny_config(dense=True, n_neurons=12))


def test_same_seed_same_bytes(sample):
    assert digest(generate_sample(tiny_config())) == digest(sample)


def test_different_seed_differs(sample):
    other = generate_sample(tiny_config(seed=4))
    assert not np.array_equal(other.truth_labels, sample.truth_labels)
    assert not np.array_equal(other.image, sample.image)


def test_shapes_dtypes_and_channel_roles(sample):
    cfg = tiny_config()
    names = ["fill"] + [f"bc{k:02d}" for k in range(K)] + ["pre", "post"] + list(MARKERS)
    roles = ["fill"] + ["barcode"] * K + ["pre", "post"] + ["marker"] * len(MARKERS)
    assert sample.channels == list(zip(names, roles))
    assert sample.image.dtype == np.uint16
    assert sample.image.shape == (len(names),) + cfg.shape
    assert sample.truth_labels.dtype == np.uint64
    assert sample.truth_labels.shape == cfg.shape
    assert list(sample.neurons.columns) == [
        "neuron_id", "cell_type", "barcode", "soma_z", "soma_y", "soma_x"]
    assert sample.neurons["neuron_id"].dtype == np.uint64
    assert list(sample.synapses.columns) == [
        "synapse_id", "pre_neuron", "post_neuron",
        "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x"]
    assert sample.synapses["synapse_id"].dtype == np.int64
    assert sample.synapses["pre_neuron"].dtype == np.uint64
    assert sample.synapses["post_neuron"].dtype == np.uint64
    json.dumps(sample.meta)  # serialisable


def test_realistic_intensities(sample):
    fill = sample.image[sample.channel_index("fill")]
    labels = sample.truth_labels
    background = np.median(fill[labels == 0])
    inside = np.median(fill[labels > 0])
    assert 50 < background < 400
    assert inside > 2 * background


def test_every_neuron_present_with_soma(sample):
    ids = np.unique(sample.truth_labels)
    assert list(ids) == list(range(0, len(sample.neurons) + 1))
    for row in sample.neurons.itertuples():
        z, y, x = (int(round(v)) for v in (row.soma_z, row.soma_y, row.soma_x))
        assert sample.truth_labels[z, y, x] == row.neuron_id
        assert sample.compartments[z, y, x] == SOMA


def _window(volume, point, radius=2):
    z, y, x = (int(round(v)) for v in point)
    return volume[max(z - radius, 0):z + radius + 1, max(y - radius, 0):y + radius + 1,
                  max(x - radius, 0):x + radius + 1]


def test_synapses_sit_on_their_partners(sample):
    syn = sample.synapses
    assert len(syn) >= 10
    assert (syn["pre_neuron"] != syn["post_neuron"]).all()
    pre = syn[["pre_z", "pre_y", "pre_x"]].to_numpy()
    post = syn[["post_z", "post_y", "post_x"]].to_numpy()
    for i, row in enumerate(syn.itertuples()):
        assert row.pre_neuron in _window(sample.truth_labels, pre[i])
        assert row.post_neuron in _window(sample.truth_labels, post[i])
        # placed exactly: the rounded positions are on the axon / dendrite
        zp, yp, xp = np.rint(pre[i]).astype(int)
        zq, yq, xq = np.rint(post[i]).astype(int)
        assert sample.truth_labels[zp, yp, xp] == row.pre_neuron
        assert sample.compartments[zp, yp, xp] == AXON
        assert sample.truth_labels[zq, yq, xq] == row.post_neuron
        assert sample.compartments[zq, yq, xq] == DENDRITE
    voxel = np.asarray(tiny_config().voxel_size)
    gap = np.linalg.norm((np.rint(post) - np.rint(pre)) * voxel, axis=1)
    assert gap.min() >= 0.2 - 1e-9 and gap.max() <= 0.4 + 1e-9
    mid = 0.5 * (np.rint(pre) + np.rint(post)) * voxel
    spacing = np.linalg.norm(mid[:, None] - mid[None], axis=2) + np.eye(len(mid)) * 1e9
    assert spacing.min() >= tiny_config().synapse_spacing_um - 1e-9


def test_puncta_visible_at_synapses(sample):
    pre_img = sample.image[sample.channel_index("pre")].astype(float)
    background = np.median(pre_img)
    for row in sample.synapses.itertuples():
        assert _window(pre_img, (row.pre_z, row.pre_y, row.pre_x), 1).max() > background + 500


def test_barcodes_and_collisions(sample):
    codes = sample.neurons["barcode"]
    assert all(len(c) == K and set(c) <= {"0", "1"} and c.count("1") in (3, 4) for c in codes)
    collisions = sample.meta["collisions"]
    assert len(collisions) == tiny_config().n_collisions
    by_id = dict(zip(sample.neurons["neuron_id"].astype(int), codes))
    for a, b in collisions:
        assert by_id[a] == by_id[b]
    assert codes.nunique() == len(codes) - len(collisions)


def test_few_barcode_channels_clip_bits():
    s = generate_sample(tiny_config(n_barcodes=3, n_neurons=1, n_collisions=0))
    assert list(s.neurons["barcode"]) == ["111"]


def test_cell_types_and_markers(sample):
    meta = sample.meta
    assert meta["cell_types"] == list(CELL_TYPES)
    assert set(meta["connection_matrix"]) == set(CELL_TYPES)
    assert set(sample.neurons["cell_type"]) <= set(CELL_TYPES)
    labels = sample.truth_labels
    soma = sample.compartments == SOMA
    for marker, types in MARKERS.items():
        img = sample.image[sample.channel_index(marker)].astype(float)
        means = {int(r.neuron_id): img[soma & (labels == r.neuron_id)].mean()
                 for r in sample.neurons.itertuples()}
        on = [means[int(r.neuron_id)] for r in sample.neurons.itertuples() if r.cell_type in types]
        off = [means[int(r.neuron_id)] for r in sample.neurons.itertuples() if r.cell_type not in types]
        if on and off:
            assert min(on) > max(off), marker


def test_dense_mode_fills_more(sample, dense_sample):
    sparse_fg = (sample.truth_labels > 0).mean()
    dense_fg = (dense_sample.truth_labels > 0).mean()
    assert dense_fg > sparse_fg + 0.2
    assert dense_fg >= 0.5
    assert abs(dense_fg - dense_sample.meta["foreground_fraction"]) < 1e-12
    assert SampleConfig(dense=True).n_neurons > SampleConfig().n_neurons


def test_painting_independent_of_batching():
    rng = np.random.default_rng(0)
    p0 = rng.uniform(0, 20, (60, 3))
    p1 = p0 + rng.normal(0, 4, (60, 3))
    radius = rng.uniform(0.75, 3, (60, 3))
    a = paint_segments((20, 20, 20), p0, p1, radius)
    b = paint_segments((20, 20, 20), p0, p1, radius, max_batch_voxels=1)
    assert np.array_equal(a, b)
    assert (a >= 0).any()


def test_config_validation():
    with pytest.raises(ValidationError):
        SampleConfig(n_neurons=2, n_collisions=2)
    with pytest.raises(ValidationError, match="n_barcodes"):
        SampleConfig(n_neurons=30, n_barcodes=4)
    with pytest.raises(ValidationError):
        SampleConfig(no_such_option=1)
    with pytest.raises(ValidationError):
        SampleConfig(voxel_size=(0.4, 0.0, 0.1))
    with pytest.raises(TypeError):
        generate_sample({"seed": 1})


def test_write_sample_round_trip(tmp_path, sample):
    pytest.importorskip("pipeline.volume")
    from pipeline.volume import Volume

    cfg = tiny_config()
    out = write_sample(tmp_path / "sample", cfg)
    assert out == tmp_path / "sample" and is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temp dirs left
    vol = Volume.open(out / "volume.zarr", mode="r")
    assert [(c.name, c.role) for c in vol.channels] == sample.channels
    assert vol.voxel_size == cfg.voxel_size
    assert "truth" in vol.label_names()
    back = load_sample(out)
    assert np.array_equal(back.image, sample.image)
    assert np.array_equal(back.truth_labels, sample.truth_labels)
    assert back.truth_labels.dtype == np.uint64
    pd.testing.assert_frame_equal(back.neurons, sample.neurons)
    pd.testing.assert_frame_equal(back.synapses, sample.synapses)
    assert back.meta == json.loads(json.dumps(sample.meta))

    with pytest.raises(FileExistsError):
        write_sample(out, cfg)
    write_sample(out, tiny_config(seed=5), overwrite=True)
    assert load_sample(out).meta["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("pipeline.volume")
    import sample_data.io as sio

    real = sio._write_into

    def broken(directory, sample):
        real(directory, sample)
        raise RuntimeError("disk full")

    monkeypatch.setattr(sio, "_write_into", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_sample(tmp_path / "sample", tiny_config())
    assert list(tmp_path.iterdir()) == []
    assert not is_complete(tmp_path / "sample")
