"""The outlier detector: on i.i.d. features (no planted problem) it flags at most its promised rate; planted far-off
points are found and ranked first; the cut follows the data's own scale, not a constant; the thresholds record the
recall on each synthetic outlier type with its interval, and say so when the cut separates none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditor.detectors.outlier_calibration import CALIBRATION, SYNTHETIC, knn_distance, synthetic_outliers
from auditor.detectors.outliers import outlier_flags
from auditor.neighbors import knn


def _flags(x: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None, alpha: float = 0.005):
    return outlier_flags(knn(x, 10), x, labels, np.arange(len(x)).astype(str) if ids is None else ids, alpha=alpha)


def _clusters(n: int, d: int, seed: int, spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((5, d))) * spread
    labels = rng.integers(0, 5, n)
    return (centres[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_iid_features_flag_at_most_the_promised_rate(seed):
    x = np.random.default_rng(seed).standard_normal((2000, 32)).astype(np.float32) + 3.0
    flags, threshold = _flags(x, np.zeros(len(x), dtype=int))
    # The promise: at most alpha (0.5 %) of clean data; the Jeffreys interval's lower end must not exceed it.
    assert len(flags) <= 0.005 * len(x), threshold.detail
    assert threshold.detail["null_rate_interval"][0] <= 0.005
    assert threshold.detail["null_above"] == len(flags)


@pytest.mark.parametrize("seed", [0, 1])
def test_null_clustered_features_flag_at_most_the_promised_rate(seed):
    x, labels = _clusters(3000, 32, seed)
    flags, threshold = _flags(x, labels)
    assert len(flags) <= 0.005 * len(x), threshold.detail


def test_planted_far_off_points_are_found_first():
    x, labels = _clusters(1500, 32, 7)
    planted = np.arange(0, 1500, 150)
    rng = np.random.default_rng(8)
    x[planted] = rng.standard_normal((len(planted), 32)).astype(np.float32) * 4  # away from every cluster
    ids = np.array([f"s{i:04d}" for i in range(len(x))])
    flags, threshold = _flags(x, labels, ids)
    assert set(ids[planted]) <= set(flags["sample_id"])
    assert len(flags) <= 0.005 * len(x) + len(planted)
    top = flags.sort_values("score", ascending=False).head(len(planted))
    assert set(top["sample_id"]) == set(ids[planted])
    detail = json.loads(flags["detail"].iloc[0])
    assert detail["distance"] > threshold.value > detail["median"] and "nearest neighbours" in detail["summary"]
    assert detail["p_value"] < detail["alpha"] == 0.005
    assert detail["expected_by_chance"] == 7.5 and detail["flagged"] == len(flags)  # 0.005 x 1,500 tests
    assert f"about 8 of 1,500 ordinary images pass it by chance; {len(flags)} flagged" in detail["summary"]
    assert threshold.method == "synthetic_outliers" and 0 < flags["score"].min() <= flags["score"].max() < 1


def test_the_cut_is_calibrated_per_dataset_not_a_constant():
    rng = np.random.default_rng(3)
    tight = (3.0 + 0.5 * rng.standard_normal((1000, 16))).astype(np.float32)
    loose = (3.0 + 2.0 * rng.standard_normal((1000, 16))).astype(np.float32)
    labels = np.zeros(1000, dtype=int)
    _, tight_cut = _flags(tight, labels)
    loose_flags, loose_cut = _flags(loose, labels)
    # The tight data's cut lies below the loose data's typical distance: no one constant serves both.
    assert tight_cut.value < np.median(knn_distance(knn(loose, 10))) < loose_cut.value
    assert len(loose_flags) <= 0.005 * 1000


def test_recall_per_synthetic_type_is_recorded_with_its_interval():
    x, labels = _clusters(1000, 64, 5)
    _, threshold = _flags(x, labels)
    recall = threshold.detail["recall"]
    assert list(recall) == list(SYNTHETIC)
    for name, entry in recall.items():
        low, high = entry["interval"]
        assert entry["n"] == threshold.detail["per_type"] and low <= entry["recall"] <= high
        assert entry["held_out"] == (name not in CALIBRATION)
    # Well-separated clusters: the structure-destroying types are all found.
    assert all(recall[name]["recall"] == 1.0 for name in CALIBRATION) and threshold.detail["separable"]


def test_an_embedding_that_separates_nothing_says_so():
    # Isotropic Gaussian features around the origin: a shuffled or noised row is as far as any real one.
    x = np.random.default_rng(4).standard_normal((800, 16)).astype(np.float32)
    flags, threshold = _flags(x, np.zeros(len(x), dtype=int))
    assert not threshold.detail["separable"]
    assert "does not separate" in threshold.detail["summary"] and len(flags) <= 0.005 * len(x)


def test_synthetic_outliers_are_seeded_and_keep_the_data_scale():
    x, labels = _clusters(200, 8, 1)
    a, types = synthetic_outliers(x, labels, per_type=20, seed=3)
    b, _ = synthetic_outliers(x, labels, per_type=20, seed=3)
    assert np.array_equal(a, b) and a.shape == (20 * len(SYNTHETIC), 8)
    shuffled = a[types == "shuffled"]
    assert np.allclose(np.sort(shuffled, axis=1).sum(axis=1), shuffled.sum(axis=1))
    with pytest.raises(ValueError, match="outlier_alpha"):
        outlier_flags(knn(x, 10), x, labels, np.arange(200), alpha=0.6)
