"""Synaptic partners decided from barcodes (graph.partners) and their use in pairing."""

import numpy as np
import pandas as pd
import pytest
import zarr

from graph.partners import PARTNER_COLUMNS, _mixture_residual, barcode_partners, choose_partners
from graph.synapses import SynapseConfig, pair_puncta
from pipeline import BlockGrid
from pipeline.volume import create_label_image

VOXEL = (0.4, 0.1, 0.1)
CODE_A = np.array([1, 1, 0, 0, 1, 0], np.float64)
CODE_B = np.array([0, 1, 1, 0, 0, 1], np.float64)
CODE_C = np.array([1, 0, 0, 1, 0, 1], np.float64)


def _unit(v):
    return v / np.linalg.norm(v)


def test_mixture_residual_of_a_pure_and_a_mixed_vector():
    basis = np.stack([_unit(CODE_A), _unit(CODE_B)], axis=1)
    res, share = _mixture_residual(basis, 3.0 * _unit(CODE_A))
    assert res == pytest.approx(0.0, abs=1e-12) and share == pytest.approx(1.0)
    res, share = _mixture_residual(basis, 0.25 * _unit(CODE_A) + 0.75 * _unit(CODE_B))
    assert res == pytest.approx(0.0, abs=1e-12) and share == pytest.approx(0.25)
    # a vector outside the span: a real residual, a share in [0, 1]
    res, share = _mixture_residual(basis, _unit(CODE_C))
    assert 0.0 < res < 1.0 and 0.0 <= share <= 1.0
    # the unconstrained fit would give neuron B a negative share: A alone
    res, share = _mixture_residual(basis, np.array([1, 0, 0, 0, 1, 0], np.float64))
    assert 0.0 < res < 1.0 and share == 1.0
    assert _mixture_residual(basis, np.zeros(6)) == (1.0, 0.5)


def test_the_pre_neuron_is_the_relatively_larger_share_at_the_pre_punctum():
    means = {1: _unit(CODE_A), 2: _unit(CODE_B), 3: _unit(CODE_C)}
    # both puncta are dominated by neuron 2 (the labels there would both say 2),
    # but the pre punctum carries relatively more of neuron 1: 1 -> 2
    x_pre = 0.4 * means[1] + 0.6 * means[2]
    x_post = 0.1 * means[1] + 0.9 * means[2]
    pre, post, certainty = choose_partners(x_pre, x_post, [2, 3, 1], means)
    assert (pre, post) == (1, 2)
    assert 0.5 < certainty <= 1.0
    # swapped puncta: swapped partners
    assert choose_partners(x_post, x_pre, [2, 3, 1], means)[:2] == (2, 1)
    # identical shares: no orientation evidence, certainty 0
    assert choose_partners(x_pre, x_pre, [1, 2], means)[2] == 0.0
    # fewer than two usable candidates: undecided
    assert choose_partners(x_pre, x_post, [1, 99], means) == (0, 0, 0.0)


def test_pairing_uses_the_partner_table_over_the_labels():
    pre = pd.DataFrame({"z": [5.0], "y": [10.0], "x": [10.0], "neuron_id": np.array([1], np.uint64)})
    post = pd.DataFrame({"z": [5.0], "y": [10.0], "x": [12.0], "neuron_id": np.array([1], np.uint64)})
    # both puncta on label 1: no synapse from the labels alone
    assert pair_puncta(pre, post, VOXEL).empty
    partners = pd.DataFrame({"pre_index": [0], "post_index": [0], "pre_neuron": [2], "post_neuron": [1],
                             "certainty": [0.5]})
    syn = pair_puncta(pre, post, VOXEL, partners=partners)
    assert syn[["pre_neuron", "post_neuron"]].values.tolist() == [[2, 1]]
    assert syn["pre_neuron"].dtype == np.uint64
    # the partner certainty enters the confidence (contrast and proximity are 1 here)
    assert syn["confidence"].iloc[0] == pytest.approx(0.5 * (1 - (0.2 / 0.6) ** 2))


def _run_dir(tmp_path):
    """Two touching slabs (neuron 1 below y=20, neuron 2 above) with a blurred barcode boundary."""
    shape = (8, 40, 64)
    run = tmp_path / "run"
    labels = create_label_image(run / "labels.zarr", "neurons", shape_zyx=shape, voxel_size=VOXEL,
                                chunks_zyx=(8, 8, 16))
    lab = np.zeros(shape, np.uint64)
    lab[:, 4:20] = 1
    lab[:, 20:36] = 2
    labels[:] = lab
    y = np.arange(shape[1], dtype=np.float64)
    weight_a = 1.0 / (1.0 + np.exp((y - 20.0) / 2.0))  # share of neuron 1 along y
    a, b = _unit(CODE_A), _unit(CODE_B)
    bc = (weight_a[None, :, None] * a[:, None, None] + (1 - weight_a)[None, :, None] * b[:, None, None])
    bc = np.broadcast_to(bc[:, None], (6,) + shape) * (lab > 0)
    barcodes = zarr.create_array(str(run / "work" / "barcodes"), shape=(6,) + shape, chunks=(1, 8, 8, 16),
                                 dtype="float16", fill_value=0)
    barcodes[:] = bc.astype(np.float16)
    np.savez(run / "work" / "neuron_barcodes.npz", ids=np.array([1, 2], np.uint64),
             means=np.stack([a, b]).astype(np.float32))
    # synapse sites along the contact, all pre on neuron 1, post on neuron 2, both puncta
    # within a voxel or two of the boundary (several on the wrong side of it)
    xs = np.arange(4, 60, 5, dtype=np.float64)
    pre = pd.DataFrame({"z": 4.0, "y": 19.0 + (xs % 3 == 0) * 1.5, "x": xs})
    post = pd.DataFrame({"z": 4.0, "y": 21.5, "x": xs + 0.5})
    for frame in (pre, post):
        frame["neuron_id"] = lab[frame.z.astype(int), np.round(frame.y).astype(int),
                                 np.round(frame.x).astype(int)].astype(np.uint64)
    return run, shape, pre, post


def test_barcode_partners_are_right_and_do_not_depend_on_the_block_shape(tmp_path):
    run, shape, pre, post = _run_dir(tmp_path)
    results = []
    for block_shape in [(8, 40, 64), (8, 8, 16), (8, 16, 32)]:
        frame = barcode_partners(pre, post, run, VOXEL, grid=BlockGrid(shape, block_shape, chunks=(8, 8, 16)),
                                 max_distance_um=0.6, window_um=0.3)
        assert list(frame.columns) == list(PARTNER_COLUMNS)
        results.append(frame)
    for other in results[1:]:
        pd.testing.assert_frame_equal(results[0], other)
    syn = pair_puncta(pre, post, VOXEL, SynapseConfig(max_distance_um=0.6), partners=results[0])
    assert len(syn) == len(pre)
    assert (syn["pre_neuron"] == 1).all() and (syn["post_neuron"] == 2).all()
    # the labels alone lose the pre puncta that sit over the boundary
    by_label = pair_puncta(pre, post, VOXEL, SynapseConfig(max_distance_um=0.6))
    assert len(by_label) < len(pre)


def test_without_barcode_work_files_the_labels_stand(tmp_path):
    run, shape, pre, post = _run_dir(tmp_path)
    (run / "work" / "neuron_barcodes.npz").unlink()
    grid = BlockGrid(shape, shape, chunks=(8, 8, 16))
    assert barcode_partners(pre, post, run, VOXEL, grid=grid, max_distance_um=0.6, window_um=0.3) is None
    empty = barcode_partners(pre.iloc[:0], post, tmp_path / "run", VOXEL, grid=grid, max_distance_um=0.6,
                             window_um=0.3)
    assert empty is None


def test_a_poorly_explained_pair_searches_wider(tmp_path):
    # The axon of neuron 1 carries the pre punctum, but there its voxels are labelled 3
    # (swallowed by a neighbour); neuron 1's own label is 0.8 um away. The barcodes at the
    # pre punctum are 1 + 2, which neurons 3 and 2 (the near candidates) cannot explain.
    shape = (8, 40, 32)
    run = tmp_path / "run"
    labels = create_label_image(run / "labels.zarr", "neurons", shape_zyx=shape, voxel_size=VOXEL,
                                chunks_zyx=(8, 8, 16))
    lab = np.zeros(shape, np.uint64)
    lab[:, 8:12] = 1
    lab[:, 12:20] = 3
    lab[:, 20:36] = 2
    labels[:] = lab
    a, b, c = _unit(CODE_A), _unit(CODE_B), _unit(CODE_C)
    bc = np.zeros((6,) + shape)
    bc[:, :, 8:12] = a[:, None, None, None]
    bc[:, :, 12:20] = c[:, None, None, None]
    bc[:, :, 20:36] = b[:, None, None, None]
    bc[:, :, 17:21, 14:19] = (0.6 * a + 0.4 * b)[:, None, None, None]     # the axon's bouton
    barcodes = zarr.create_array(str(run / "work" / "barcodes"), shape=(6,) + shape, chunks=(1, 8, 8, 16),
                                 dtype="float32", fill_value=0)
    barcodes[:] = bc.astype(np.float32)
    np.savez(run / "work" / "neuron_barcodes.npz", ids=np.array([1, 2, 3], np.uint64),
             means=np.stack([a, b, c]).astype(np.float32))
    pre = pd.DataFrame({"z": [4.0], "y": [19.0], "x": [16.0], "neuron_id": np.array([3], np.uint64)})
    post = pd.DataFrame({"z": [4.0], "y": [21.5], "x": [16.0], "neuron_id": np.array([2], np.uint64)})
    grid = BlockGrid(shape, shape, chunks=(8, 8, 16))
    near = barcode_partners(pre, post, run, VOXEL, grid=grid, max_distance_um=0.6, window_um=0.3)
    assert near[["pre_neuron", "post_neuron"]].values.tolist() != [[1, 2]]
    wide = barcode_partners(pre, post, run, VOXEL, grid=grid, max_distance_um=0.6, window_um=0.3,
                            wide_window_um=0.8, expand_residual=0.1)
    assert wide[["pre_neuron", "post_neuron"]].values.tolist() == [[1, 2]]
    # a pair the near candidates explain well never looks further
    calm = barcode_partners(pre, post, run, VOXEL, grid=grid, max_distance_um=0.6, window_um=0.3,
                            wide_window_um=0.8, expand_residual=1.0)
    pd.testing.assert_frame_equal(calm, near)
