"""Memorization, cross-influence and LOO estimates on hand-made in/out tables, Newcombe's published examples, and a
simulation with known true in/out accuracies."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from auditor.memorization.estimates import (
    INFLUENCE_COLUMNS,
    SCORE_COLUMNS,
    cross_influence,
    influence_tests,
    flag_memorized,
    loo_scores,
    memorization_scores,
    newcombe_interval,
)
from auditor.multiple_testing import benjamini_hochberg
from auditor.memorization.sharding import loo_design, ploo_design, ploo_improved_design


# Newcombe (1998), Table II, method 10 (hybrid score, no continuity correction), to 4 decimals. Example (c) is
# 0.0582 to 0.8062: Wilson 6/7 = [0.4869, 0.9743], 2/7 = [0.0822, 0.6411], so L = 0.5714 - sqrt(0.3703^2 +
# 0.3554^2) and U = 0.5714 + sqrt(0.1172^2 + 0.2035^2).
@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "low", "high"), [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
])
def test_newcombe_interval_matches_published_examples(x1, n1, x2, n2, low, high):
    got_low, got_high = newcombe_interval(x1, n1, x2, n2)
    assert float(got_low) == pytest.approx(low, abs=5e-5)
    assert float(got_high) == pytest.approx(high, abs=5e-5)


def test_newcombe_interval_is_vectorised_antisymmetric_and_nan_without_data():
    x1, n1 = np.array([56, 9, 0, 3]), np.array([70, 10, 0, 4])
    x2, n2 = np.array([48, 3, 1, 0]), np.array([80, 10, 2, 0])
    low, high = newcombe_interval(x1, n1, x2, n2)
    swapped_low, swapped_high = newcombe_interval(x2, n2, x1, n1)
    assert low.shape == (4,)
    np.testing.assert_allclose(low[:2], -swapped_high[:2])
    np.testing.assert_allclose(high[:2], -swapped_low[:2])
    assert np.isnan(low[2:]).all() and np.isnan(high[2:]).all()
    assert float(newcombe_interval(10, 10, 0, 20)[1]) == 1.0  # exact, not 1 + 1e-16
    with pytest.raises(ValueError, match="0 <= x1 <= n1"):
        newcombe_interval(5, 4, 0, 1)


def test_memorization_scores_on_a_hand_made_table():
    # Point 0: in models 0-1 (right both times), out of 2-3 (right once) -> 1 - 1/2.
    # Point 1: in every model -> no "out" models, NaN. Point 2: right only when out -> -1.
    membership = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1], [0, 1, 1]], dtype=bool)
    correct = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=bool)
    got = memorization_scores(correct, membership)
    assert list(got.columns) == SCORE_COLUMNS
    row = got.iloc[0]
    assert (row["mem"], row["p_in"], row["p_out"], row["mem_n_in"], row["mem_n_out"]) == (0.5, 1.0, 0.5, 2, 2)
    low, high = newcombe_interval(2, 2, 1, 2)
    assert (row["mem_low"], row["mem_high"]) == (pytest.approx(float(low)), pytest.approx(float(high)))
    never_out = got.iloc[1]
    assert math.isnan(never_out["mem"]) and math.isnan(never_out["mem_low"]) and math.isnan(never_out["p_out"])
    assert (never_out["mem_n_in"], never_out["mem_n_out"], never_out["p_in"]) == (4, 0, 0.75)
    assert got.iloc[2]["mem"] == -1.0


def test_memorization_scores_for_chosen_points_keep_their_order():
    membership = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=bool)
    correct = np.ones((3, 3), dtype=bool)
    got = memorization_scores(correct, membership, points=np.array([2, 0]))
    assert got["point"].tolist() == [2, 0]
    assert got["mem"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="points index out of range"):
        memorization_scores(correct, membership, points=[3])
    with pytest.raises(ValueError, match="must be 2-D, of one shape"):
        memorization_scores(correct[:, :2], membership)


def test_flag_memorized_needs_a_high_score_and_an_interval_above_zero():
    scores = pd.DataFrame({"mem": [0.3, 0.3, 0.2, np.nan, 0.25],
                           "mem_low": [0.05, -0.01, 0.1, np.nan, 0.001]}, index=[10, 11, 12, 13, 14])
    flags = flag_memorized(scores)
    assert flags.dtype == bool and flags.name == "memorized"
    assert flags.to_dict() == {10: True, 11: False, 12: False, 13: False, 14: True}
    assert flag_memorized(scores, threshold=0.1).tolist() == [True, False, True, False, True]


def _factorial_membership(n_train: int) -> np.ndarray:
    """One model per subset of the training points: each point's membership is independent of every other's."""
    return np.array(list(itertools.product([False, True], repeat=n_train)))


def test_cross_influence_finds_the_training_point_a_test_point_depends_on():
    membership = _factorial_membership(4)  # 16 models
    test_correct = np.stack([
        membership[:, 3],                    # test 0: right exactly when training point 3 is in
        np.ones(16, dtype=bool),             # test 1: always right -> no influence
        ~membership[:, 1],                   # test 2: right only when training point 1 is out
        membership[:, 3] & membership[:, 0],  # test 3: needs both 3 and 0
    ], axis=1)
    got = cross_influence(test_correct, membership, candidates=np.arange(4), min_abs_score=0.1)
    assert list(got.columns) == INFLUENCE_COLUMNS
    pairs = {(r.train_index, r.test_index): r.score for r in got.itertuples()}
    assert pairs == {(0, 3): 0.5, (1, 2): -1.0, (3, 0): 1.0, (3, 3): 0.5}
    assert got[["train_index", "test_index"]].values.tolist() == [[0, 3], [1, 2], [3, 0], [3, 3]]
    assert (got["n_in"] == 8).all() and (got["n_out"] == 8).all()
    low, high = newcombe_interval(8, 8, 0, 8)
    first = got[(got.train_index == 3) & (got.test_index == 0)].iloc[0]
    assert (first["low"], first["high"]) == (pytest.approx(float(low)), pytest.approx(float(high)))
    top1 = cross_influence(test_correct, membership, candidates=[3], top_k_per_train=1)
    assert top1[["train_index", "test_index", "score"]].values.tolist() == [[3, 0, 1.0]]
    assert cross_influence(test_correct, membership, candidates=[2]).empty  # point 2 influences nothing


def test_cross_influence_matches_a_direct_computation_and_drops_thin_candidates():
    rng = np.random.default_rng(7)
    membership = rng.random((30, 12)) < 0.5
    membership[:, 5] = True  # never out -> no estimate
    membership[0, 6], membership[1:, 6] = True, False  # in only one model -> below min_count
    test_correct = rng.random((30, 9)) < 0.6
    got = cross_influence(test_correct, membership, np.arange(12), min_abs_score=0.0, top_k_per_train=None)
    assert set(got["train_index"]) == set(range(12)) - {5, 6}
    assert len(got) == 10 * 9
    for r in got.itertuples():
        inside = membership[:, r.train_index]
        expected = test_correct[inside, r.test_index].mean() - test_correct[~inside, r.test_index].mean()
        assert r.score == pytest.approx(expected)
    assert got.groupby("train_index")["score"].apply(lambda s: (np.diff(s.abs()) <= 0).all()).all()


def test_cross_influence_at_audit_scale_keeps_top_k_per_candidate():
    rng = np.random.default_rng(0)
    design = ploo_improved_design(10_000, np.arange(4000), 400, seed=0)
    test_correct = rng.random((400, 1000)) < 0.8
    got = cross_influence(test_correct, design.membership, design.candidates, min_abs_score=0.0)
    assert len(got) == 4000 * 20
    assert got.groupby("train_index").size().max() == 20


def test_loo_scores_on_a_constructed_case():
    design = loo_design(n_train=6, points=[1, 4], n_models_per_arm=3)
    correct = np.ones_like(design.membership)
    correct[design.groups == 0, 1] = False   # point 1 is wrong whenever it is left out: memorized
    correct[[0, 6], 4] = False                # point 4: wrong in one shared (row 0) and one of its own (row 6)
    got = loo_scores(correct, design)
    assert list(got.columns) == SCORE_COLUMNS
    assert got["point"].tolist() == [1, 4]
    assert got["mem"].tolist() == [1.0, 0.0]
    assert got["mem_n_in"].tolist() == [3, 3] and got["mem_n_out"].tolist() == [3, 3]
    low, high = newcombe_interval(3, 3, 0, 3)
    assert got.loc[0, "mem_low"] == pytest.approx(float(low)) and got.loc[0, "mem_high"] == pytest.approx(float(high))
    with pytest.raises(ValueError, match="needs a loo design"):
        loo_scores(correct, ploo_design(6, 4))


def test_estimates_are_unbiased_and_intervals_cover_the_truth():
    # Known per-point accuracies with (p_in) and without (p_out) the point; models drawn from a pLOO design.
    rng = np.random.default_rng(11)
    n_models, n_points = 200, 600
    design = ploo_design(n_points, n_models, fraction=0.5, seed=2)
    p_in = rng.uniform(0.2, 1.0, n_points)
    p_out = rng.uniform(0.0, p_in)
    correct = rng.random((n_models, n_points)) < np.where(design.membership, p_in, p_out)
    got = memorization_scores(correct, design.membership)
    truth = p_in - p_out
    assert abs((got["mem"] - truth).mean()) < 0.015
    covered = (got["mem_low"] <= truth) & (truth <= got["mem_high"])
    assert covered.mean() >= 0.90


def test_benjamini_hochberg_step_up_by_hand():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    # q k / m for m = 8, q = 0.05: 0.00625, 0.0125, 0.01875, 0.025, ...: the first two pass, and nothing later does.
    assert benjamini_hochberg(p, 8, 0.05).tolist() == [True, True] + [False] * 6
    # Step-up: p_(5) = 0.042 <= 0.05 * 5 / 5, so all five smallest are kept although p_(3) > 0.05 * 3 / 5.
    assert benjamini_hochberg(np.array([0.01, 0.02, 0.035, 0.04, 0.042]), 5, 0.05).all()
    # p-values above q left out of the array still count as tests: the same answer with m = 8.
    assert benjamini_hochberg(p[:5], 8, 0.05).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError):
        benjamini_hochberg(p, 3, 0.05)


def _kept_pairs(test_correct: np.ndarray, design, q: float = 0.05) -> pd.DataFrame:
    """The pairs the memorization stage keeps: Benjamini-Hochberg over every tested pair."""
    pairs = cross_influence(test_correct, design.membership, design.candidates, min_abs_score=0.0,
                            top_k_per_train=None, max_p=q)
    tested = influence_tests(test_correct, design.membership, design.candidates)
    return pairs[benjamini_hochberg(pairs["p_value"].to_numpy(), tested, q)]


def test_influence_null_test_shuffled_signal_keeps_no_pairs():
    """Null test: test-point correctness independent of membership (the default design: 20 models, 200 scored
    points, 1,000 test points). Benjamini-Hochberg at q = 0.05 must find nothing in at least 18 of 20 such audits
    (under the complete null its family-wise error is <= q); the old per-pair 95% interval kept hundreds."""
    rng = np.random.default_rng(11)
    with_pairs, old_rule = 0, []
    for seed in range(20):
        design = ploo_improved_design(2000, np.arange(200), 20, seed=seed)
        test_correct = rng.random((20, 1000)) < rng.uniform(0.5, 0.99, 1000)
        with_pairs += len(_kept_pairs(test_correct, design)) > 0
        every = cross_influence(test_correct, design.membership, design.candidates, min_abs_score=0.0,
                                top_k_per_train=None)
        old_rule.append(int(((every["low"] > 0) | (every["high"] < 0)).sum()))
    assert with_pairs <= 2
    assert min(old_rule) > 100  # why a multiple-comparison control is needed


def test_influence_with_a_planted_dependence_is_found():
    """Positive control: 5 test points are right mostly when candidate 3 is in the model; with 100 models (the
    standard profile trains 171) BH finds those pairs among 100,000 tested."""
    rng = np.random.default_rng(12)
    design = ploo_improved_design(2000, np.arange(200), 100, seed=1)
    test_correct = rng.random((100, 500)) < 0.8
    inside = design.membership[:, 3]
    test_correct[:, :5] = np.where(inside[:, None], rng.random((100, 5)) < 0.95, rng.random((100, 5)) < 0.3)
    kept = _kept_pairs(test_correct, design)
    assert {(3, j) for j in range(5)} <= set(zip(kept["train_index"], kept["test_index"]))
    assert len(kept) <= 5 + 2  # hardly anything else
