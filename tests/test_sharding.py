"""Shard designs: balance, the pLOO_improved invariant, LOO structure, storage round trip and validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.memorization.sharding import (
    ShardDesign,
    balanced_membership,
    default_shard_count,
    loo_design,
    models_per_point,
    ploo_design,
    ploo_improved_design,
    unpack_rows,
)


def _assert_balanced(m: np.ndarray, n_in: int) -> None:
    assert m.dtype == np.bool_
    assert (m.sum(axis=0) == n_in).all()
    rows = m.sum(axis=1)
    assert rows.max() - rows.min() <= 1


@settings(max_examples=60, deadline=None)
@given(n_models=st.integers(2, 50), n_points=st.integers(0, 150), fraction=st.floats(0.01, 0.99),
       seed=st.integers(0, 2**32 - 1))
def test_balanced_membership_has_exact_point_counts_and_even_model_sizes(n_models, n_points, fraction, seed):
    m = balanced_membership(n_models, n_points, fraction, np.random.default_rng(seed))
    assert m.shape == (n_models, n_points)
    n_in = models_per_point(n_models, fraction)
    assert 1 <= n_in <= n_models - 1
    _assert_balanced(m, n_in)


def test_models_per_point_rounds_half_up_and_clamps():
    assert models_per_point(10, 0.7) == 7
    assert models_per_point(5, 0.5) == 3
    assert models_per_point(10, 0.01) == 1 and models_per_point(10, 0.99) == 9


def test_balanced_membership_at_audit_scale():
    m = balanced_membership(400, 4000, 0.5, np.random.default_rng(0))
    _assert_balanced(m, 200)


def test_balanced_membership_co_membership_looks_like_independent_random_subsets():
    # With r = 0.5, a greedy or cyclic deal puts pairs of points in complementary models (overlap 0) and the
    # next pairs in identical ones; a random balanced design's pairwise overlaps follow the hypergeometric law.
    n_models, n_in = 20, 10
    m = balanced_membership(n_models, 300, 0.5, np.random.default_rng(1)).astype(float)
    overlaps = (m.T @ m)[np.triu_indices(300, 1)]
    hypergeometric_var = n_in * (n_in / n_models) * (1 - n_in / n_models) * (n_models - n_in) / (n_models - 1)
    assert overlaps.mean() == pytest.approx(n_in ** 2 / n_models, rel=0.02)
    assert overlaps.var() / hypergeometric_var == pytest.approx(1.0, abs=0.15)
    assert (overlaps == 0).mean() < 0.001 and (overlaps == n_in).mean() < 0.001


def test_ploo_design_samples_every_point():
    d = ploo_design(n_train=50, n_models=20, seed=3)
    assert d.method == "ploo" and d.fraction == 0.7 and d.seed == 3 and d.groups is None
    assert (d.candidates == np.arange(50)).all()
    assert (d.n_models, d.n_train) == (20, 50)
    _assert_balanced(d.membership, 14)


def test_ploo_improved_keeps_every_non_candidate_in_every_shard():
    candidates = np.array([7, 2, 30, 11, 4, 19])
    d = ploo_improved_design(n_train=40, candidates=candidates, n_models=20, seed=5)
    assert d.method == "ploo_improved" and d.fraction == 0.5
    assert (d.candidates == candidates).all()
    others = np.setdiff1d(np.arange(40), candidates)
    assert d.membership[:, others].all()
    _assert_balanced(d.membership[:, candidates], 10)


def test_designs_are_deterministic_by_seed_and_differ_across_seeds():
    a, b, c = (ploo_improved_design(100, np.arange(0, 100, 3), 24, seed=s).membership for s in (1, 1, 2))
    assert (a == b).all()
    assert (a != c).any()
    assert (ploo_design(60, 20, seed=9).membership == ploo_design(60, 20, seed=9).membership).all()


@pytest.mark.parametrize("n_train", [0, 1, 8, 13])
def test_packed_rows_round_trip(n_train):
    d = ploo_design(n_train, n_models=5, seed=0)
    rows = d.packed_rows()
    assert len(rows) == 5 and all(len(r) == (n_train + 7) // 8 for r in rows)
    assert (unpack_rows(rows, n_train) == d.membership).all()


def test_unpack_rows_rejects_rows_of_the_wrong_length():
    with pytest.raises(ValueError, match="not 2 bytes long"):
        unpack_rows([b"\x00\x00", b"\x00"], 13)


def test_default_shard_count_uses_the_papers_ratio_with_a_floor():
    assert default_shard_count(50_000) == 2000
    assert default_shard_count(5_000) == 200
    assert default_shard_count(501) == 21  # ceil(20.04)
    assert default_shard_count(100) == 20 and default_shard_count(0) == 20
    assert default_shard_count(100, per_candidate=0.07, floor=1) == 7  # 0.07 * 100 is 7.000000000000001
    assert default_shard_count(100, floor=50) == 50


def test_loo_design_structure():
    d = loo_design(n_train=10, points=[3, 7], n_models_per_arm=2, seed=4)
    assert d.method == "loo" and d.fraction == 1.0 and d.seed == 4
    assert d.groups.tolist() == [-1, -1, 0, 0, 1, 1]
    assert (d.candidates == [3, 7]).all()
    expected = np.ones((6, 10), dtype=bool)
    expected[2:4, 3] = False
    expected[4:6, 7] = False
    assert (d.membership == expected).all()


@pytest.mark.parametrize(("call", "message"), [
    (lambda: ploo_design(10, 5, fraction=0.0), "fraction must be in"),
    (lambda: ploo_design(10, 5, fraction=1.0), "fraction must be in"),
    (lambda: ploo_improved_design(10, [1], 5, fraction=1.5), "fraction must be in"),
    (lambda: balanced_membership(5, 10, -0.1, np.random.default_rng(0)), "fraction must be in"),
    (lambda: ploo_design(10, 1), "n_models must be >= 2"),
    (lambda: ploo_improved_design(10, [1, 2], 0), "n_models must be >= 2"),
    (lambda: ploo_improved_design(10, [1, 10], 5), r"candidates index out of range \[0, 10\): \[10\]"),
    (lambda: ploo_improved_design(10, [-1], 5), "candidates index out of range"),
    (lambda: ploo_improved_design(10, [4, 2, 4], 5), r"candidates contain duplicates: \[4\]"),
    (lambda: ploo_improved_design(10, [1.5], 5), "candidates must be a 1-D array of integer indices"),
    (lambda: loo_design(10, [3, 12], 2), "points index out of range"),
    (lambda: loo_design(10, [3], 0), "n_models_per_arm must be >= 1"),
    (lambda: default_shard_count(-1), "n_candidates"),
    (lambda: ShardDesign("bootstrap", np.ones((2, 3), bool), np.arange(3), 0.5, 0), "method must be one of"),
    (lambda: ShardDesign("ploo", np.ones((2, 3), int), np.arange(3), 0.5, 0), "membership must be a 2-D bool"),
    (lambda: ShardDesign("loo", np.ones((2, 3), bool), np.arange(1), 1.0, 0, np.zeros(3)), "groups must have"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
