"""The GPU workflow benchmark's pieces that run without a GPU."""

import numpy as np
import pytest

from benchmarks.gpu.workflow_bench import label_agreement


def test_label_agreement_identical_up_to_ids():
    reference = np.zeros((4, 6, 6), np.uint64)
    reference[:, :3] = 1
    reference[:, 3:5] = 2
    labels = np.where(reference == 1, 7, np.where(reference == 2, 3, 0)).astype(np.uint64)
    out = label_agreement(labels, reference)
    assert out["same_voxels"] == 1.0
    assert out["voi_split"] == pytest.approx(0.0) and out["voi_merge"] == pytest.approx(0.0)
    assert out["arand"] == pytest.approx(0.0)


def test_label_agreement_counts_a_merge():
    reference = np.zeros((2, 4, 4), np.uint64)
    reference[:, :2] = 1
    reference[:, 2:] = 2
    labels = np.ones_like(reference)  # both merged into one
    out = label_agreement(labels, reference)
    assert out["same_voxels"] == pytest.approx(0.5)
    assert out["voi_merge"] > 0.9 and out["voi_split"] == pytest.approx(0.0)
