"""Multiple-comparison control shared by the memorization stage (cross-influence pairs) and the detectors (per-image
outlier tests): Benjamini & Hochberg's step-up at a false discovery rate q."""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(p_values: np.ndarray, n_tests: int, q: float) -> np.ndarray:
    """Bool mask of the discoveries among `p_values` by Benjamini & Hochberg's step-up at FDR q over `n_tests` tests
    in all (p-values above q may be left out of `p_values`: none of them can be a discovery)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    if n_tests < len(p_values):
        raise ValueError(f"n_tests ({n_tests}) is smaller than the number of p-values ({len(p_values)})")
    order = np.argsort(p_values, kind="stable")
    below = np.flatnonzero(p_values[order] <= q * np.arange(1, len(order) + 1) / max(n_tests, 1))
    keep = np.zeros(len(p_values), bool)
    if len(below):
        keep[order[:below[-1] + 1]] = True
    return keep


def bh_adjusted(p_values: np.ndarray, n_tests: int) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over `n_tests` tests in all: the smallest FDR at which each
    p-value would be a discovery, min over j >= i of p_(j) n / j, capped at 1."""
    p_values = np.asarray(p_values, dtype=np.float64)
    if n_tests < len(p_values):
        raise ValueError(f"n_tests ({n_tests}) is smaller than the number of p-values ({len(p_values)})")
    order = np.argsort(p_values, kind="stable")
    scaled = p_values[order] * n_tests / np.arange(1, len(order) + 1)
    adjusted = np.empty(len(p_values))
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted
