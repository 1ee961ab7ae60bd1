"""Benjamini-Hochberg adjusted p-values (q-values) by hand, and their agreement with the step-up's discoveries."""

import numpy as np
import pytest

from auditor.multiple_testing import benjamini_hochberg, bh_adjusted


def test_adjusted_p_values_by_hand():
    p = np.array([0.042, 0.001, 0.008, 0.039, 0.041, 0.06, 0.074, 0.205])
    # Sorted: 0.001 x 8/1 = 0.008, 0.008 x 8/2 = 0.032, then 0.039 x 8/3 = 0.104 is lowered to the later minimum
    # 0.042 x 8/5 = 0.0672 (and so are 0.041 x 8/4 = 0.082 and 0.042 itself); 0.06 x 8/6 = 0.08, 0.074 x 8/7 = 0.0846,
    # 0.205 x 8/8 = 0.205.
    expected = [0.0672, 0.008, 0.032, 0.0672, 0.0672, 0.08, 0.0845714, 0.205]
    assert bh_adjusted(p, 8) == pytest.approx(expected, rel=1e-5)
    # Untested p-values count: the same three p-values out of 100 tests; capped at 1.
    assert bh_adjusted(np.array([0.001, 0.5, 0.9]), 100).tolist() == pytest.approx([0.1, 1.0, 1.0])
    with pytest.raises(ValueError):
        bh_adjusted(p, 3)


def test_a_q_value_at_most_q_is_exactly_a_discovery_at_q():
    p = np.random.default_rng(0).uniform(size=300) ** 3
    adjusted = bh_adjusted(p, 500)
    for q in (0.01, 0.05, 0.2):
        assert np.array_equal(adjusted <= q, benjamini_hochberg(p, 500, q))
