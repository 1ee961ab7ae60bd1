"""Binomial rate intervals shared by the memorization audit sample and the detectors' calibrations."""

from __future__ import annotations

import numpy as np


def jeffreys_interval(x: np.ndarray | int, n: np.ndarray | int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval of a binomial rate x/n (Brown, Cai & DasGupta 2001: near-nominal coverage at small n);
    0 and 1 at x = 0 and x = n, NaN where n = 0."""
    from scipy import stats

    x, n = np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)
    alpha = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(x > 0, stats.beta.ppf(alpha, x + 0.5, n - x + 0.5), 0.0)
        high = np.where(x < n, stats.beta.ppf(1 - alpha, x + 0.5, n - x + 0.5), 1.0)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
