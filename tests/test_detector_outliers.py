"""The outlier detector: with nothing planted (i.i.d. and clustered features, ten seeds each) Benjamini-Hochberg
flags nothing in most seeds and the false-discovery proportion stays within q; planted far-off points are found and
ranked first, as the old per-image cut found them; detectors.outlier_fdr changes the flags; the cut follows the
data's own scale, not a constant; the thresholds record the recall on each synthetic outlier type with its
interval, and say so when the cut separates none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditor.intervals import jeffreys_interval
from auditor.config import ConfigError, load_config
from auditor.detectors.contract import DetectorContext
from auditor.detectors.outlier_calibration import CALIBRATION, SYNTHETIC, knn_distance, synthetic_outliers
from auditor.detectors.outliers import detect, outlier_flags
from auditor.detectors.neighbors import knn

SEEDS = range(10)
Q = 0.05
# The largest mean false-discovery proportion over len(SEEDS) seeds that still fits FDR <= Q: an FDP lies in [0, 1],
# so with mean mu <= Q <= 0.5 its variance is at most Q (1 - Q), and the mean of 10 seeds exceeds Q + 2 standard
# errors (0.188: a second seed with a false flag) with probability < 0.09 even at FDR exactly Q; the tail p-values
# are conservative (no seed flagged anything when this was written), and the seeds are fixed, so it is not flaky.
FDP_BOUND = Q + 2 * np.sqrt(Q * (1 - Q) / len(SEEDS))


def _flags(x: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None, fdr: float = Q):
    return outlier_flags(knn(x, 10), x, labels, np.arange(len(x)).astype(str) if ids is None else ids, fdr=fdr)


def _clusters(n: int, d: int, seed: int, spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((5, d))) * spread
    labels = rng.integers(0, 5, n)
    return (centres[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


def _iid(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(seed).standard_normal((2000, 32)).astype(np.float32) + 3.0, np.zeros(2000, int)


@pytest.mark.parametrize("make", [_iid, lambda seed: _clusters(3000, 32, seed)], ids=["iid", "clustered"])
def test_null_nothing_planted_flags_nothing_in_most_seeds(make):
    flagged, before = [], []
    for seed in SEEDS:
        x, labels = make(seed)
        flags, threshold = _flags(x, labels)
        flagged.append(len(flags))
        before.append(threshold.detail["null_above"])  # the old rule: one test per image at alpha, no control
        assert threshold.detail["flagged"] == len(flags) and threshold.detail["tested"] == len(x)
    # Nothing planted: every flag is false, so a seed's FDP is 1 if it flags anything, else 0.
    fdp = np.mean(np.asarray(flagged) > 0)
    assert fdp <= FDP_BOUND and sum(f == 0 for f in flagged) >= 9, (flagged, before)


def _planted(seed: int, per_seed: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered data with per_seed points moved away from every cluster: (x, labels, planted rows)."""
    x, labels = _clusters(1500, 32, seed)
    planted = np.arange(0, 1500, 1500 // per_seed)
    x[planted] = np.random.default_rng(100 + seed).standard_normal((len(planted), 32)).astype(np.float32) * 4
    return x, labels, planted


def test_planted_far_off_points_are_found_and_the_false_discoveries_stay_within_q():
    found = {"before": 0, "after": 0}
    fdp, total = [], 0
    for seed in range(5):
        x, labels, planted = _planted(seed)
        ids = np.arange(len(x)).astype(str)
        flags, threshold = _flags(x, labels, ids)
        distance = knn_distance(knn(x, 10))
        found["before"] += int(np.sum(distance[planted] > threshold.detail["alpha_cut"]))
        found["after"] += len(set(flags["sample_id"]) & set(ids[planted]))
        fdp.append(len(set(flags["sample_id"]) - set(ids[planted])) / max(len(flags), 1))
        total += len(planted)
    intervals = {rule: jeffreys_interval(hits, total) for rule, hits in found.items()}
    # 50 of 50 by both rules (Jeffreys [0.951, 1]): the control costs no recall on far-off points.
    assert found["after"] == found["before"] == total and intervals["after"][0] > 0.95, (found, intervals)
    assert np.mean(fdp) <= FDP_BOUND, fdp


def test_planted_far_off_points_are_ranked_first_with_their_evidence():
    x, labels = _clusters(1500, 32, 7)
    planted = np.arange(0, 1500, 150)
    rng = np.random.default_rng(8)
    x[planted] = rng.standard_normal((len(planted), 32)).astype(np.float32) * 4  # away from every cluster
    ids = np.array([f"s{i:04d}" for i in range(len(x))])
    flags, threshold = _flags(x, labels, ids)
    assert set(flags["sample_id"]) == set(ids[planted])
    top = flags.sort_values("score", ascending=False).head(len(planted))
    assert set(top["sample_id"]) == set(ids[planted])
    detail = json.loads(flags["detail"].iloc[0])
    assert detail["distance"] > threshold.value > detail["median"] and "nearest neighbours" in detail["summary"]
    assert detail["p_value"] <= detail["q_value"] <= detail["fdr"] == Q
    assert detail["tested"] == 1500 and detail["flagged"] == len(flags) == 10 and detail["expected_false"] == 0.5
    assert "FDR 5 %: of 10 flagged, about 0.5 may be ordinary images" in detail["summary"]
    assert threshold.detail["p_cut"] == Q * 10 / 1500 and threshold.detail["flagged"] == 10
    assert threshold.method == "synthetic_outliers" and 0 < flags["score"].min() <= flags["score"].max() < 1


def _graded(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Clustered data with 20 points pushed off their cluster by noise of growing size (0.5 to 3 SDs a feature)."""
    x, labels = _clusters(1500, 32, seed)
    planted = np.arange(0, 1500, 75)
    noise = np.random.default_rng(seed + 1).standard_normal((len(planted), 32)) * np.linspace(0.5, 3, 20)[:, None]
    x[planted] += noise.astype(np.float32)
    return x, labels


def test_the_fdr_config_key_changes_the_flags():
    x, labels = _graded()
    graph = knn(x, 10)
    counts = {}
    for fdr in (0.01, 0.5):
        config = load_config(profile="quick", overrides={"detectors": {"outlier_fdr": fdr}}).detectors
        context = DetectorContext(train_ids=np.arange(len(x)).astype(str), labels=labels, graph=graph, embeddings=x,
                                  images=lambda: [], config=config, seed=0)
        result = detect(context)
        counts[fdr] = len(result.flags)
        assert result.thresholds["outlier"].detail["fdr"] == fdr
    # A looser FDR reaches further down the graded points (6 and 17 flags when this was written).
    assert counts[0.01] < counts[0.5], counts
    with pytest.raises(ConfigError, match="outlier_fdr"):
        load_config(overrides={"detectors": {"outlier_fdr": 1.0}})


def test_the_cut_is_calibrated_per_dataset_not_a_constant():
    rng = np.random.default_rng(3)
    tight = (3.0 + 0.5 * rng.standard_normal((1000, 16))).astype(np.float32)
    loose = (3.0 + 2.0 * rng.standard_normal((1000, 16))).astype(np.float32)
    labels = np.zeros(1000, dtype=int)
    _, tight_cut = _flags(tight, labels)
    loose_flags, loose_cut = _flags(loose, labels)
    # The tight data's cut lies below the loose data's typical distance: no one constant serves both.
    assert tight_cut.value < np.median(knn_distance(knn(loose, 10))) < loose_cut.value
    assert len(loose_flags) == 0


def test_recall_per_synthetic_type_is_recorded_with_its_interval():
    x, labels = _clusters(1000, 64, 5)
    _, threshold = _flags(x, labels)
    recall = threshold.detail["recall"]
    assert list(recall) == list(SYNTHETIC)
    for name, entry in recall.items():
        low, high = entry["interval"]
        assert entry["n"] == threshold.detail["per_type"] and low <= entry["recall"] <= high
        assert entry["held_out"] == (name not in CALIBRATION)
        low, high = entry["at_flag_cut"]["interval"]
        assert low <= entry["at_flag_cut"]["recall"] <= high
    # Well-separated clusters: the structure-destroying types are all found, at the flag cut too.
    assert all(recall[name]["at_flag_cut"]["recall"] == 1.0 for name in CALIBRATION) and threshold.detail["separable"]


def test_an_embedding_that_separates_nothing_says_so():
    # Isotropic Gaussian features around the origin: a shuffled or noised row is as far as any real one.
    x = np.random.default_rng(4).standard_normal((800, 16)).astype(np.float32)
    flags, threshold = _flags(x, np.zeros(len(x), dtype=int))
    assert not threshold.detail["separable"]
    assert "does not separate" in threshold.detail["summary"] and len(flags) == 0


def test_synthetic_outliers_are_seeded_and_keep_the_data_scale():
    x, labels = _clusters(200, 8, 1)
    a, types = synthetic_outliers(x, labels, per_type=20, seed=3)
    b, _ = synthetic_outliers(x, labels, per_type=20, seed=3)
    assert np.array_equal(a, b) and a.shape == (20 * len(SYNTHETIC), 8)
    shuffled = a[types == "shuffled"]
    assert np.allclose(np.sort(shuffled, axis=1).sum(axis=1), shuffled.sum(axis=1))
    with pytest.raises(ValueError, match="outlier_alpha"):
        outlier_flags(knn(x, 10), x, labels, np.arange(200), alpha=0.6)
    with pytest.raises(ValueError, match="outlier_fdr"):
        outlier_flags(knn(x, 10), x, labels, np.arange(200), fdr=0.0)
