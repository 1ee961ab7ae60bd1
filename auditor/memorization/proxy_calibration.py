"""How far the cheap proxies (ApB, EL2N, forgetting events, confidence, variability) track mem on this dataset.

Scored points are not a random sample of the training set (the low-ApB shortlist and its extension are scored in
full, the other bands only through the audit sample), so every statistic weights each scored point by the inverse of
its chance of being scored: the estimates are then unbiased for the whole training set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.memorization.shadow_budget import Z95

# The direction in which each proxy points at memorization: -1 when a low value means "likely memorized".
PROXY_DIRECTIONS = {"apb": -1, "el2n": 1, "forgetting_events": 1, "confidence": -1, "variability": 1}
CALIBRATION_COLUMNS = ["proxy", "n_scored", "pearson", "pearson_low", "pearson_high", "spearman", "spearman_low",
                       "spearman_high", "top_k", "top_k_overlap", "top_k_overlap_low", "top_k_overlap_high"]


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Pearson correlation of x and y with observation weights w (NaN when either is constant)."""
    w = w / w.sum()
    dx, dy = x - w @ x, y - w @ y
    denominator = np.sqrt((w @ (dx * dx)) * (w @ (dy * dy)))
    return float(w @ (dx * dy) / denominator) if denominator > 0 else float("nan")


def weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks of x in the weighted population (the weight below a value plus half the weight of its ties), so
    the Spearman correlation of a weighted sample estimates that of the whole population."""
    order = np.argsort(x, kind="stable")
    values, weights = x[order], w[order]
    unique, start = np.unique(values, return_index=True)
    tie_weight = np.add.reduceat(weights, start)
    below = np.concatenate([[0.0], np.cumsum(tie_weight)[:-1]])
    return (below + tie_weight / 2)[np.searchsorted(unique, x)]


def weighted_spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Spearman correlation with observation weights: the weighted Pearson of the weighted ranks."""
    return weighted_pearson(weighted_ranks(x, w), weighted_ranks(y, w), w)


def _finite(values: np.ndarray) -> np.ndarray:
    """+inf (never-learned forgetting events) as one more than the largest finite value, so Pearson stays defined
    and the order is kept."""
    values = np.asarray(values, dtype=np.float64).copy()
    finite = np.isfinite(values)
    values[values == np.inf] = (values[finite].max() if finite.any() else 0.0) + 1
    return values


def _statistics(proxy: np.ndarray, mem: np.ndarray, w: np.ndarray, memorized: np.ndarray, top: np.ndarray,
                k: int) -> tuple[float, float, float]:
    """(pearson, spearman, top-k overlap) of one (re)sample of scored points."""
    overlap = float(w[top & memorized].sum() / k) if k else float("nan")
    return weighted_pearson(proxy, mem, w), weighted_spearman(proxy, mem, w), overlap


def _normal_interval(point: np.ndarray, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of (pearson, spearman, overlap) from the bootstrap standard error: correlations on Fisher's z
    scale, the overlap clipped to [0, 1] (steadier than percentiles of a few hundred resamples, which run narrow)."""
    z = np.arctanh(np.clip(point[:2], -0.999999, 0.999999))
    z_se = np.nanstd(np.arctanh(np.clip(boot[:, :2], -0.999999, 0.999999)), axis=0, ddof=1)
    overlap_se = np.nanstd(boot[:, 2], ddof=1)
    low = np.r_[np.tanh(z - Z95 * z_se), max(point[2] - Z95 * overlap_se, 0.0)]
    high = np.r_[np.tanh(z + Z95 * z_se), min(point[2] + Z95 * overlap_se, 1.0)]
    return low, high


def proxy_calibration(proxies: pd.DataFrame, mem: np.ndarray, weight: np.ndarray, memorized: np.ndarray,
                      k: int, resamples: int = 200, seed: int = 0) -> pd.DataFrame:
    """One row per proxy in PROXY_DIRECTIONS that `proxies` has: weighted Pearson and Spearman correlation with mem
    and the top-k overlap (of the proxy's k most memorized-looking training points, the estimated share memorized),
    each with a 95% interval from a bootstrap over the scored points (resampled within each weight stratum).

    proxies: one row per training point; mem, weight (inverse chance of being scored, 0 = not scored) and memorized
    (bool) align with its rows; k is the estimated number of memorized points in the training set."""
    scored = weight > 0
    strata = [np.flatnonzero(scored & (weight == w)) for w in np.unique(weight[scored])]
    rng = np.random.default_rng(seed)
    samples = [np.concatenate([rng.choice(s, size=len(s)) for s in strata]) for _ in range(resamples)]
    rows = []
    for name, direction in PROXY_DIRECTIONS.items():
        if name not in proxies.columns:
            continue
        values = _finite(proxies[name].to_numpy())
        usable = ~np.isnan(values)
        # The proxy's k most memorized-looking points over the whole training set (scored or not).
        top = np.zeros(len(values), bool)
        top[np.argsort(-direction * np.where(usable, values, -direction * np.inf), kind="stable")[:k]] = True
        keep = np.flatnonzero(scored & usable)
        point = _statistics(values[keep], mem[keep], weight[keep], memorized[keep], top[keep], k)
        boot = np.array([_statistics(values[s], mem[s], weight[s], memorized[s], top[s], k)
                         for s in (s[usable[s]] for s in samples)])
        low, high = _normal_interval(np.array(point), boot)
        rows.append({"proxy": name, "n_scored": len(keep), "pearson": point[0], "pearson_low": low[0],
                     "pearson_high": high[0], "spearman": point[1], "spearman_low": low[1], "spearman_high": high[1],
                     "top_k": k, "top_k_overlap": point[2], "top_k_overlap_low": low[2],
                     "top_k_overlap_high": high[2]})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
