"""Tests of workflows.metrics and workflows.evaluate on hand-made cases."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.metrics import adapted_rand_error as sk_adapted_rand_error
from skimage.metrics import variation_of_information as sk_variation_of_information

from workflows.evaluate import METRIC_KEYS, evaluate_run, format_report
from workflows.metrics import (
    adapted_rand_error,
    contingency_table,
    detection_scores,
    edge_scores,
    map_edges,
    match_labels,
    match_points,
    match_truth_labels,
    variation_of_information,
)


# ---------------------------------------------------------------------------
# Segmentation metrics
# ---------------------------------------------------------------------------
def _random_labels(seed, shape=(6, 7, 8), n_truth=5, n_seg=7):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_truth, shape)
    # Correlated prediction: mostly truth, partly noise.
    seg = np.where(rng.random(shape) < 0.7, truth + 1, rng.integers(0, n_seg, shape))
    return seg, truth


def test_identical_segmentations_score_perfectly():
    _, truth = _random_labels(0)
    assert variation_of_information(truth, truth) == (0.0, 0.0)
    assert adapted_rand_error(truth, truth) == (0.0, 1.0, 1.0)


def test_identical_up_to_relabelling_scores_perfectly():
    _, truth = _random_labels(1)
    seg = (truth.astype(np.uint64) * np.uint64(2**40) + np.uint64(7)).astype(np.uint64)
    seg[truth == 0] = 0
    split, merge = variation_of_information(seg, truth)
    assert split == pytest.approx(0.0, abs=1e-12)
    assert merge == pytest.approx(0.0, abs=1e-12)
    assert adapted_rand_error(seg, truth) == pytest.approx((0.0, 1.0, 1.0))


def test_pure_split_into_equal_halves_is_one_bit():
    truth = np.ones((4, 4), dtype=np.uint64)
    seg = np.ones((4, 4), dtype=np.uint64)
    seg[2:] = 2
    assert variation_of_information(seg, truth) == (1.0, 0.0)
    error, precision, recall = adapted_rand_error(seg, truth)
    # Pairs of distinct voxels: together in both 2*8*7, in truth 16*15.
    assert precision == 1.0
    assert recall == pytest.approx(112 / 240)
    assert error == pytest.approx(1 - 112 / ((112 + 240) / 2))


def test_pure_merge_of_two_equal_objects_is_one_bit():
    truth = np.ones((4, 4), dtype=np.uint64)
    truth[2:] = 2
    seg = np.full((4, 4), 5, dtype=np.uint64)
    assert variation_of_information(seg, truth) == (0.0, 1.0)
    error, precision, recall = adapted_rand_error(seg, truth)
    assert precision == pytest.approx(112 / 240)
    assert recall == 1.0


def test_truth_background_is_ignored_but_predicted_background_counts():
    truth = np.array([[0, 0, 1, 1]])
    seg = np.array([[3, 4, 1, 1]])
    assert variation_of_information(seg, truth) == (0.0, 0.0)
    # A predicted 0 inside a truth object is one more predicted segment.
    seg_hole = np.array([[0, 0, 1, 0]])
    split, merge = variation_of_information(seg_hole, truth)
    assert split == pytest.approx(1.0)
    assert merge == 0.0
    # Without ignoring, the truth background counts as an object of its own.
    split_all, merge_all = variation_of_information(seg, truth, ignore_truth_background=False)
    assert split_all == pytest.approx(0.5)
    assert merge_all == 0.0


def test_scores_are_invariant_to_label_permutation():
    seg, truth = _random_labels(2)
    rng = np.random.default_rng(3)
    perm_seg = rng.permutation(np.arange(1, seg.max() + 2)).astype(np.uint64) * np.uint64(977)
    perm_truth = np.r_[0, rng.permutation(np.arange(1, truth.max() + 1))].astype(np.uint64)
    seg_p = perm_seg[seg]
    truth_p = perm_truth[truth]
    assert variation_of_information(seg_p, truth_p) == pytest.approx(variation_of_information(seg, truth))
    assert adapted_rand_error(seg_p, truth_p) == pytest.approx(adapted_rand_error(seg, truth))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_skimage(seed):
    seg, truth = _random_labels(seed, n_truth=4 + seed, n_seg=3 + 2 * seed)
    sk_split, sk_merge = sk_variation_of_information(truth, seg, ignore_labels=(0,))
    assert variation_of_information(seg, truth) == pytest.approx((sk_split, sk_merge), abs=1e-10)
    sk = sk_variation_of_information(truth, seg)
    assert variation_of_information(seg, truth, ignore_truth_background=False) == pytest.approx(
        tuple(sk), abs=1e-10
    )
    sk_are, sk_prec, sk_rec = sk_adapted_rand_error(truth, seg, ignore_labels=(0,))
    error, precision, recall = adapted_rand_error(seg, truth)
    assert error == pytest.approx(sk_are, abs=1e-12)
    # scikit-image swaps precision and recall (issue #6485); we follow the docs.
    assert precision == pytest.approx(sk_rec, abs=1e-12)
    assert recall == pytest.approx(sk_prec, abs=1e-12)
    sk_are_all = sk_adapted_rand_error(truth, seg, ignore_labels=())[0]
    assert adapted_rand_error(seg, truth, ignore_truth_background=False)[0] == pytest.approx(sk_are_all)


def test_empty_truth_foreground_is_defined():
    zeros = np.zeros((3, 3), dtype=np.uint64)
    seg = np.arange(9).reshape(3, 3)
    assert variation_of_information(seg, zeros) == (0.0, 0.0)
    assert adapted_rand_error(seg, zeros) == (0.0, 1.0, 1.0)


def test_segmentation_metrics_validate_inputs():
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        variation_of_information(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer"):
        adapted_rand_error(np.zeros((3, 3), float), np.zeros((3, 3), int))


def test_contingency_table_counts_overlaps():
    seg = np.array([5, 5, 6, 6, 0])
    truth = np.array([1, 2, 2, 2, 0])
    table = contingency_table(seg, truth)
    assert table.to_dict("list") == {"segmentation": [5, 5, 6], "truth": [1, 2, 2], "count": [1, 1, 2]}
    assert len(contingency_table(seg, truth, ignore_truth_background=False)) == 4


# ---------------------------------------------------------------------------
# Label matching
# ---------------------------------------------------------------------------
def test_match_labels_picks_largest_overlap():
    truth = np.array([1, 1, 1, 2, 2, 0, 0, 0, 3, 4])
    seg = np.array([7, 7, 8, 8, 8, 9, 9, 0, 5, 5])
    mapping = match_labels(seg, truth)
    # 8 overlaps 1 once and 2 twice; 9 lies in background; 5 ties 3/4 -> smallest.
    assert mapping.to_dict() == {5: 3, 7: 1, 8: 2, 9: 0}
    assert mapping.index.name == "pred_label"


def test_match_truth_labels_requires_majority():
    truth = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    seg = np.array([4, 4, 0, 5, 5, 6, 6, 6, 6, 0])
    mapping = match_truth_labels(seg, truth)
    # 1: 2 of 3 -> 4; 2: halves -> unmatched; 3: 2 of 3 -> 6 (background never wins).
    assert mapping.to_dict() == {1: 4, 2: 0, 3: 6}
    assert match_truth_labels(seg, truth, min_overlap_fraction=0.0).to_dict() == {1: 4, 2: 5, 3: 6}
    with pytest.raises(ValueError, match="min_overlap_fraction"):
        match_truth_labels(seg, truth, min_overlap_fraction=1.0)


# ---------------------------------------------------------------------------
# Point matching and detection scores
# ---------------------------------------------------------------------------
def test_match_points_radius_is_inclusive_and_strict_outside():
    true = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    pred = np.array([[0.0, 0.0, 0.999], [10.0, 0.0, 1.001], [0.0, 0.0, 0.0]])
    pairs, un_pred, un_true = match_points(pred, true, 1.0)
    # pred 2 coincides with true 0 (distance 0) and wins over pred 0.
    assert pairs.tolist() == [[2, 0]]
    assert un_pred.tolist() == [0, 1]
    assert un_true.tolist() == [1]
    pairs, _, _ = match_points([[0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0]], 1.0)
    assert pairs.tolist() == [[0, 0]]


def test_match_points_is_globally_optimal_not_greedy():
    # Greedy nearest-first would take (A, X) at distance 0.1 and leave one match;
    # the optimum pairs A-Y and B-X (distances 0.9) for two matches.
    true = np.array([[0.0], [-0.8]])  # X, Y
    pred = np.array([[0.1], [0.9]])  # A, B
    pairs, un_pred, un_true = match_points(pred, true, 1.0)
    assert pairs.tolist() == [[0, 1], [1, 0]]
    assert un_pred.size == 0 and un_true.size == 0


def test_match_points_minimises_distance_among_maximum_matchings():
    true = np.array([[0.0], [1.0]])
    pred = np.array([[0.9], [0.1]])
    pairs, _, _ = match_points(pred, true, 1.0)
    assert pairs.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("seed", range(20))
def test_match_points_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 3, (rng.integers(0, 5), 2))
    true = rng.uniform(0, 3, (rng.integers(0, 5), 2))
    radius = 1.0
    pairs, un_pred, un_true = match_points(pred, true, radius)
    dist = np.linalg.norm(pred[:, None] - true[None], axis=-1) if len(pred) and len(true) else None
    best = (0, 0.0)
    for k in range(min(len(pred), len(true)), 0, -1):
        costs = [
            sum(dist[i, j] for i, j in zip(rows, cols))
            for rows in itertools.combinations(range(len(pred)), k)
            for cols in itertools.permutations(range(len(true)), k)
            if all(dist[i, j] <= radius for i, j in zip(rows, cols))
        ]
        if costs:
            best = (k, min(costs))
            break
    assert len(pairs) == best[0]
    if len(pairs):
        assert dist[pairs[:, 0], pairs[:, 1]].sum() == pytest.approx(best[1])
        assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))
    assert sorted(un_pred.tolist() + pairs[:, 0].tolist()) == list(range(len(pred)))
    assert sorted(un_true.tolist() + pairs[:, 1].tolist()) == list(range(len(true)))


def test_match_points_empty_and_invalid_inputs():
    pairs, un_pred, un_true = match_points(np.zeros((0, 3)), [[1.0, 2.0, 3.0]], 1.0)
    assert pairs.shape == (0, 2) and un_pred.size == 0 and un_true.tolist() == [0]
    pairs, un_pred, _ = match_points([[0.0, 0.0, 0.0]], [], 1.0)
    assert pairs.shape == (0, 2) and un_pred.tolist() == [0]
    with pytest.raises(ValueError, match=r"\(1, 2\).*\(1, 3\)"):
        match_points([[0.0, 0.0]], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="radius"):
        match_points([[0.0]], [[0.0]], -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        match_points([[np.nan]], [[0.0]], 1.0)
    with pytest.raises(ValueError, match="shape"):
        match_points([0.0, 1.0], [[0.0]], 1.0)


def test_detection_scores():
    assert detection_scores(3, 4, 6) == pytest.approx((0.75, 0.5, 0.6))
    assert detection_scores(0, 0, 0) == (1.0, 1.0, 1.0)
    assert detection_scores(0, 5, 0) == (0.0, 1.0, 0.0)
    assert detection_scores(0, 0, 5) == (1.0, 0.0, 0.0)
    assert detection_scores(0, 2, 2) == (0.0, 0.0, 0.0)
    assert detection_scores(2, 2, 2).f1 == 1.0
    with pytest.raises(ValueError, match="n_matched"):
        detection_scores(3, 2, 5)
    with pytest.raises(ValueError, match="n_pred"):
        detection_scores(0, -1, 5)
    with pytest.raises(ValueError, match="n_true"):
        detection_scores(0, 1, 1.5)


# ---------------------------------------------------------------------------
# Edges
# ---------------------------------------------------------------------------
def test_edge_scores_on_hand_sets():
    pred = {(1, 2): 2, (2, 4): 1, (4, 1): 1}
    true = {(1, 2): 2, (1, 3): 1, (2, 4): 1, (4, 1): 1}
    scores = edge_scores(pred, true)
    assert scores.precision == 1.0
    assert scores.recall == 0.75
    assert scores.f1 == pytest.approx(2 * 0.75 / 1.75)
    # Union [(1,2),(1,3),(2,4),(4,1)]: x=[2,0,1,1], y=[2,1,1,1] -> r = 1/sqrt(1.5).
    assert scores.weight_correlation == pytest.approx(1 / math.sqrt(1.5))


def test_edge_scores_input_forms_and_conventions():
    frame = pd.DataFrame({"pre": [1, 1, 2], "post": [2, 2, 3]})  # weight 1 per row
    assert edge_scores(frame, {(1, 2): 2, (2, 3): 1}) == (1.0, 1.0, 1.0, 1.0)
    assert edge_scores([(1, 2), (1, 2)], [(1, 2), (3, 4)]) == pytest.approx(
        (1.0, 0.5, 2 / 3, 0.0)  # true weights constant -> correlation 0 by convention
    )
    assert edge_scores([], []) == (1.0, 1.0, 1.0, 1.0)
    assert edge_scores([], [(1, 2)]) == (1.0, 0.0, 0.0, 0.0)
    assert edge_scores([(1, 2)], [(1, 2)]).weight_correlation == 1.0
    with pytest.raises(ValueError, match="post"):
        edge_scores(pd.DataFrame({"pre": [1]}), [])
    with pytest.raises(ValueError, match="pair"):
        edge_scores([(1, 2, 3)], [])


def test_map_edges_relabels_drops_and_aggregates():
    edges = pd.DataFrame(
        {"pre": [1, 2, 3, 4, 5], "post": [2, 3, 1, 9, 6], "synapse_count": [2, 1, 1, 1, 4]}
    )
    mapping = pd.Series({1: 10, 2: 20, 3: 10, 4: 30, 5: 10, 6: 20})
    out = map_edges(edges, mapping)
    # (1,2)->(10,20); (2,3)->(20,10); (3,1)->(10,10) dropped; (4,9)->(30,0) dropped;
    # (5,6)->(10,20) summed with the first.
    assert out.to_dict("list") == {"pre": [10, 20], "post": [20, 10], "synapse_count": [6, 1]}
    assert out["pre"].dtype == np.uint64


# ---------------------------------------------------------------------------
# evaluate_run on a tiny fake run and sample
# ---------------------------------------------------------------------------
VOXEL_SIZE = [2.0, 0.5, 0.5]


def _write_labels(path, data):
    arr = zarr.open_array(str(path), mode="w", shape=data.shape, dtype="uint64", chunks=(1, 2, 4))
    arr[...] = data


def _synapses(rows):
    """Rows (pre, post, mid_z, mid_y, mid_x); pre/post sit +-0.5 voxel along x."""
    out = []
    for i, (pre, post, z, y, x) in enumerate(rows):
        out.append(
            {"synapse_id": i, "pre_neuron": pre, "post_neuron": post,
             "pre_z": z, "pre_y": y, "pre_x": x - 0.5, "post_z": z, "post_y": y, "post_x": x + 0.5}
        )
    frame = pd.DataFrame(out)
    return frame.astype({"synapse_id": np.int64, "pre_neuron": np.uint64, "post_neuron": np.uint64})


def _write_fixture(tmp_path, *, voxel_size_in_run=True):
    run = tmp_path / "run"
    sample = tmp_path / "sample"
    (sample / "truth").mkdir(parents=True)
    run.mkdir()

    truth = np.zeros((2, 4, 12), dtype=np.uint64)
    truth[:, :, 0:4] = 1  # 32 voxels
    truth[:, 0:2, 4:8] = 2  # 16
    truth[:, 2:4, 4:8] = 3  # 16
    truth[:, :, 8:12] = 4  # 32
    seg = np.zeros_like(truth)
    seg[:, :, 0:4] = 1  # == truth 1
    seg[:, :, 4:8] = 2  # merges truth 2 and 3
    seg[:, 0:2, 8:12] = 3  # splits truth 4 into halves
    seg[:, 2:4, 8:12] = 4
    _write_labels(sample / "volume.zarr" / "labels" / "truth" / "0", truth)
    _write_labels(run / "labels.zarr" / "neurons" / "0", seg)

    pd.DataFrame(
        {"neuron_id": np.array([1, 2, 3, 4], np.uint64), "cell_type": ["A", "B", "B", "B"],
         "barcode": ["01", "10", "11", "00"], "soma_z": 0.0, "soma_y": 0.0, "soma_x": 0.0}
    ).to_parquet(sample / "truth" / "neurons.parquet")
    _synapses(
        [(1, 2, 0, 1, 3), (1, 3, 1, 2, 3), (2, 4, 0, 1, 8), (4, 1, 1, 3, 10), (1, 2, 1, 0, 1)]
    ).to_parquet(sample / "truth" / "synapses.parquet")
    (sample / "truth" / "meta.json").write_text(json.dumps({"seed": 0, "voxel_size": VOXEL_SIZE}))

    pd.DataFrame(
        {"neuron_id": np.array([1, 2, 3, 4], np.uint64), "size_voxels": np.array([32, 32, 16, 16]),
         "barcode": ["01", "11", "00", "00"], "barcode_confidence": 1.0,
         "cell_type": ["A", "B", "A", "A"], "cell_type_confidence": 1.0}
    ).to_parquet(run / "neurons.parquet")
    pred_syn = _synapses(
        [
            (1, 2, 0, 1, 4),  # 0.5 um from truth 0, partners map to (1, 2): right
            (1, 2, 1, 2, 3),  # on truth 1, partners (1, 2) vs (1, 3): wrong
            (2, 3, 1, 1, 8),  # 2 um (one z voxel) from truth 2: unmatched
            (3, 1, 1, 2, 10),  # 0.5 um from truth 3, maps to (4, 1): right
            (4, 9, 0, 0, 0),  # far from everything
        ]
    )
    mid = pred_syn[["pre_z", "pre_y", "pre_x"]].to_numpy() + [0, 0, 0.5]
    pred_syn[["z_um", "y_um", "x_um"]] = mid * VOXEL_SIZE
    pred_syn["confidence"] = 0.9
    pred_syn.to_parquet(run / "synapses.parquet")
    pd.DataFrame(
        {"pre": np.array([1, 2, 3, 4, 3], np.uint64), "post": np.array([2, 3, 1, 9, 4], np.uint64),
         "synapse_count": np.array([2, 1, 1, 1, 1], np.int64)}
    ).assign(confidence_sum=1.0, confidence_mean=0.9).to_parquet(run / "edges.parquet")
    config = {"config": {"voxel_size": VOXEL_SIZE}} if voxel_size_in_run else {"config": {}}
    (run / "run.json").write_text(json.dumps(config))
    return run, sample


EXPECTED = {
    # N = 96; truth 4 (1/3 of voxels) split in halves, pred 2 (1/3) merges two halves.
    "voi_split": 1 / 3,
    "voi_merge": 1 / 3,
    # pairs together: both 32^2*2+16^2*4-96, seg and truth each 32^2*2+16^2*2-96.
    "arand": 1 - 1952 / 2464,
    "foreground_precision": 1.0,          # every voxel is foreground in both
    "foreground_recall": 1.0,
    "synapse_precision": 3 / 5,
    "synapse_recall": 3 / 5,
    "synapse_f1": 3 / 5,
    # mapped pred edges {(1,2):2, (2,4):1, (4,1):1}; truth {(1,2):2, (1,3):1, (2,4):1, (4,1):1}
    "edge_precision": 1.0,
    "edge_recall": 0.75,
    "edge_f1": 2 * 0.75 / 1.75,
    "edge_weight_correlation": 1 / math.sqrt(1.5),
    "partner_accuracy": 2 / 3,
    # truth -> pred: 1->1, 2->2, 3->2, 4->unmatched (split in halves)
    "cell_type_accuracy": 3 / 4,
    "barcode_accuracy": 2 / 4,
    "n_neurons_pred": 4,
    "n_neurons_true": 4,
    "n_synapses_pred": 5,
    "n_synapses_true": 5,
}


def test_evaluate_run_on_tiny_fixture(tmp_path):
    run, sample = _write_fixture(tmp_path)
    metrics = evaluate_run(run, sample, synapse_radius_um=1.0)
    assert tuple(metrics) == METRIC_KEYS
    assert set(metrics) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
        expected_type = int if key.startswith("n_") else float
        assert type(metrics[key]) is expected_type, key
    json.dumps(metrics)  # plain Python scalars


def test_foreground_precision_and_recall_see_what_voi_ignores(tmp_path):
    run, sample = _write_fixture(tmp_path)
    truth_path = sample / "volume.zarr" / "labels" / "truth" / "0"
    truth = zarr.open_array(str(truth_path), mode="r")[...]
    truth[:, :, 0] = 0                    # 8 voxels of truth 1 become background: a predicted halo
    _write_labels(truth_path, truth)
    seg_path = run / "labels.zarr" / "neurons" / "0"
    seg = zarr.open_array(str(seg_path), mode="r")[...]
    seg[:, 0, 11] = 0                     # 2 voxels of truth 4 missed
    _write_labels(seg_path, seg)
    metrics = evaluate_run(run, sample, synapse_radius_um=1.0)
    assert metrics["foreground_precision"] == pytest.approx(86 / 94)
    assert metrics["foreground_recall"] == pytest.approx(86 / 88)


def test_evaluate_run_radius_and_voxel_size_fallback(tmp_path):
    run, sample = _write_fixture(tmp_path, voxel_size_in_run=False)
    metrics = evaluate_run(run, sample)  # voxel size from truth/meta.json
    assert metrics["synapse_f1"] == pytest.approx(3 / 5)
    # 2.03 um also reaches the synapse one z voxel (2 um) away; the far one stays out.
    metrics = evaluate_run(run, sample, synapse_radius_um=2.03)
    assert metrics["synapse_recall"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="synapse_radius_um"):
        evaluate_run(run, sample, synapse_radius_um=0)


def test_evaluate_run_names_missing_files(tmp_path):
    run, sample = _write_fixture(tmp_path)
    (run / "edges.parquet").unlink()
    (sample / "truth" / "synapses.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="edges.parquet") as info:
        evaluate_run(run, sample)
    assert "synapses.parquet" in str(info.value)
    with pytest.raises(FileNotFoundError, match="labels.zarr"):
        evaluate_run(tmp_path / "nowhere", sample)


def test_format_report_is_aligned(tmp_path):
    run, sample = _write_fixture(tmp_path)
    metrics = evaluate_run(run, sample)
    report = format_report(metrics)
    rows = [line for line in report.splitlines() if line.split() and line.split()[0] in metrics]
    assert sorted(line.split()[0] for line in rows) == sorted(METRIC_KEYS)  # each once
    assert len({len(line) for line in rows}) == 1  # right-aligned values
    assert "0.7500" in report and "\n" in report
    assert format_report({}) == "(no metrics)"
