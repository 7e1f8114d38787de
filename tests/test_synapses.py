"""Pre/post pairing on hand-made puncta."""

import numpy as np
import pandas as pd
import pytest

from graph.synapses import SYNAPSE_TABLE_COLUMNS, SynapseConfig, pair_puncta
from pipeline.errors import InputError

VOXEL = (0.2, 0.1, 0.1)


def _puncta(rows, score=20.0, certainty=1.0):
    frame = pd.DataFrame(rows, columns=["z", "y", "x", "neuron_id"])
    frame["neuron_id"] = frame["neuron_id"].astype(np.uint64)
    frame["score"] = score
    frame["label_certainty"] = certainty
    return frame


def test_one_to_one_nearest_first_and_cutoff():
    # two pre puncta compete for one post punctum; the nearer one wins, the other
    # pairs with its own (farther) partner; a lone post beyond the cutoff stays unpaired
    pre = _puncta([[5, 10, 10, 1], [5, 10, 13, 3], [5, 50, 50, 1]])
    post = _puncta([[5, 10, 12, 2], [5, 10, 16, 2], [5, 50, 60, 2]])
    syn = pair_puncta(pre, post, VOXEL, SynapseConfig(max_distance_um=0.45))
    assert list(syn.columns) == list(SYNAPSE_TABLE_COLUMNS)
    pairs = set(zip(syn["pre_x"], syn["post_x"]))
    # distances (um): pre13-post12 0.1, pre10-post12 0.2, pre13-post16 0.3, pre10-post16 0.6.
    # Nearest first takes pre13-post12; the next two candidates reuse a taken punctum.
    assert pairs == {(13.0, 12.0)}
    assert syn["synapse_id"].tolist() == [0]
    assert syn["pre_neuron"].dtype == np.uint64 and syn["synapse_id"].dtype == np.int64
    # with a larger cutoff the greedy matching still gives each punctum one partner
    syn = pair_puncta(pre, post, VOXEL, SynapseConfig(max_distance_um=0.65))
    pairs = set(zip(syn["pre_x"], syn["post_x"]))
    assert pairs == {(13.0, 12.0), (10.0, 16.0)}
    assert syn["pre_x"].is_unique and syn["post_x"].is_unique


def test_same_neuron_and_background_are_dropped():
    pre = _puncta([[1, 1, 1, 4], [1, 20, 1, 0], [1, 40, 1, 5]])
    post = _puncta([[1, 1, 3, 4], [1, 20, 3, 6], [1, 40, 3, 6]])
    # the default pairs only valid candidates
    syn = pair_puncta(pre, post, VOXEL)
    assert syn[["pre_neuron", "post_neuron"]].values.tolist() == [[5, 6]]
    assert syn.attrs["candidates_removed"] == 2
    # pairing first, dropping afterwards, counts what was dropped
    syn = pair_puncta(pre, post, VOXEL, SynapseConfig(pair_valid_only=False))
    assert len(syn) == 1
    assert syn.attrs["dropped"]["same_neuron"] == 1
    assert syn.attrs["dropped"]["background"] == 1


def test_invalid_candidate_does_not_steal_a_valid_partner():
    # a same-neuron pre punctum sits closest to the post punctum
    pre = _puncta([[1, 1, 2, 8], [1, 1, 5, 7]])
    post = _puncta([[1, 1, 3, 8]])
    syn = pair_puncta(pre, post, VOXEL)
    assert syn[["pre_neuron", "post_neuron"]].values.tolist() == [[7, 8]]
    assert pair_puncta(pre, post, VOXEL, SynapseConfig(pair_valid_only=False)).empty


def test_confidence_formula_and_midpoint():
    pre = _puncta([[2, 10, 10, 1]], score=6.0, certainty=0.25)
    post = _puncta([[2, 10, 13, 2]], score=12.0, certainty=1.0)
    config = SynapseConfig(max_distance_um=0.6, contrast_half=6.0)
    syn = pair_puncta(pre, post, VOXEL, config)
    d = 0.3
    expected = (6 / 12) * (1 - (d / 0.6) ** 2) * np.sqrt(0.25)
    assert syn["confidence"].iloc[0] == pytest.approx(expected)
    assert syn[["z_um", "y_um", "x_um"]].values[0] == pytest.approx([0.4, 1.0, 1.15])
    assert 0 <= syn["confidence"].iloc[0] <= 1
    low = pair_puncta(pre, post, VOXEL, SynapseConfig(min_confidence=0.5))
    assert low.empty and low.attrs["dropped"]["low_confidence"] == 1


def test_deterministic_ids_sorted_by_position_and_edges():
    rng = np.random.default_rng(0)
    n = 50
    pos = rng.uniform(0, 100, (n, 3))
    pre = _puncta(np.c_[pos, rng.integers(1, 4, n)])
    post = _puncta(np.c_[pos + [0, 2, 0], rng.integers(4, 6, n)])
    syn = pair_puncta(pre, post, VOXEL)
    assert len(syn) == n
    shuffled = pair_puncta(pre.sample(frac=1, random_state=1), post.sample(frac=1, random_state=2), VOXEL)
    pd.testing.assert_frame_equal(syn, shuffled)
    key = syn[["z_um", "y_um", "x_um"]].to_numpy()
    assert np.all(np.diff(key[:, 0]) >= 0)
    edges = syn.groupby(["pre_neuron", "post_neuron"]).size()
    assert edges.sum() == n


def test_empty_and_bad_inputs():
    empty = _puncta(np.zeros((0, 4)))
    syn = pair_puncta(empty, _puncta([[1, 1, 1, 1]]), VOXEL)
    assert syn.empty and list(syn.columns) == list(SYNAPSE_TABLE_COLUMNS)
    with pytest.raises(InputError, match="neuron_id"):
        pair_puncta(pd.DataFrame({"z": [1.0], "y": [1.0], "x": [1.0]}), empty, VOXEL)
    with pytest.raises(InputError, match="voxel_size"):
        pair_puncta(empty, empty, (1.0, 1.0))
