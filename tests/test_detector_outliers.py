"""The outlier detector: on i.i.d. features (no planted problem) it flags at most its promised rate; planted far-off
points are found and ranked first; the cut follows the data's own scale, not a constant."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditor.detectors.outliers import knn_distance, outlier_flags
from auditor.neighbors import knn


def _points(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32) + 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_iid_features_flag_at_most_the_promised_rate(seed):
    x = _points(2000, 32, seed)
    flags, threshold = outlier_flags(knn(x, 10), np.arange(len(x)).astype(str))
    # The promise: the robust cut (c = 4) flags well under 1% of clean data (the floor caps it at 1% regardless).
    assert len(flags) <= 0.003 * len(x), threshold.detail
    assert threshold.detail["binding"] == "mad"


def test_planted_far_off_points_are_found_first():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((5, 32)) * 4
    x = (centres[rng.integers(0, 5, 1500)] + rng.standard_normal((1500, 32))).astype(np.float32)
    planted = np.arange(0, 1500, 150)
    x[planted] = rng.standard_normal((len(planted), 32)).astype(np.float32) * 4  # away from every cluster
    ids = np.array([f"s{i:04d}" for i in range(len(x))])
    flags, threshold = outlier_flags(knn(x, 10), ids)
    assert set(ids[planted]) <= set(flags["sample_id"])
    assert len(flags) <= 0.01 * len(x) + len(planted)
    top = flags.sort_values("score", ascending=False).head(len(planted))
    assert set(top["sample_id"]) == set(ids[planted])
    detail = json.loads(flags["detail"].iloc[0])
    assert detail["distance"] > threshold.value > detail["median"] and "nearest neighbours" in detail["summary"]
    assert threshold.method == "robust_upper_tail" and 0 < flags["score"].min() <= flags["score"].max() < 1


def test_the_cut_is_calibrated_per_dataset_not_a_constant():
    rng = np.random.default_rng(3)
    tight = (3.0 + 0.5 * rng.standard_normal((1000, 16))).astype(np.float32)
    loose = (3.0 + 2.0 * rng.standard_normal((1000, 16))).astype(np.float32)
    _, tight_cut = outlier_flags(knn(tight, 10), np.arange(1000))
    loose_flags, loose_cut = outlier_flags(knn(loose, 10), np.arange(1000))
    # The tight data's cut lies below the loose data's typical distance: no one constant serves both.
    assert tight_cut.value < np.median(knn_distance(knn(loose, 10))) < loose_cut.value
    assert len(loose_flags) <= 0.01 * 1000
