"""Memorization (self-influence) and cross-influence estimates from shadow models' correctness tables, with
Newcombe intervals: mem(i) = P[correct on i | i in shard] - P[correct on i | i out] (Feldman & Zhang 2020)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.memorization.sharding import ShardDesign, as_index_array

SCORE_COLUMNS = ["point", "mem", "mem_low", "mem_high", "mem_n_in", "mem_n_out", "p_in", "p_out"]
INFLUENCE_COLUMNS = ["train_index", "test_index", "score", "n_in", "n_out", "low", "high", "p_value"]
# cross_influence scores this many (candidate, test) cells at a time, to bound memory on large audits.
_BLOCK_CELLS = 1 << 22


def _proportion(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """x / n, NaN where n == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, x / n, np.nan)


def _wilson(x: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (no continuity correction) of x successes in n; NaN where n == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = (x + z * z / 2) / (n + z * z)
        half = z * np.sqrt(x * (n - x) / n + z * z / 4) / (n + z * z)
    # The exact bounds at x == 0 and x == n, rather than centre -/+ half, which round to +-1e-17.
    low = np.where(n == 0, np.nan, np.where(x == 0, 0.0, centre - half))
    high = np.where(n == 0, np.nan, np.where(x == n, 1.0, centre + half))
    return low, high


def newcombe_interval(x1: np.ndarray | int, n1: np.ndarray | int, x2: np.ndarray | int, n2: np.ndarray | int,
                      z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval (1998, method 10) for p1 - p2 of two independent proportions x1/n1 and
    x2/n2, vectorised; unlike the Wald interval it stays inside [-1, 1] and is not degenerate at 0/n or n/n.
    NaN where n1 or n2 is 0."""
    x1, n1, x2, n2 = (np.asarray(v, dtype=np.float64) for v in (x1, n1, x2, n2))
    if np.any((x1 < 0) | (x1 > n1) | (x2 < 0) | (x2 > n2)):
        raise ValueError("newcombe_interval needs 0 <= x1 <= n1 and 0 <= x2 <= n2")
    p1, p2 = _proportion(x1, n1), _proportion(x2, n2)
    (l1, u1), (l2, u2) = _wilson(x1, n1, z), _wilson(x2, n2, z)
    diff = p1 - p2
    return diff - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), diff + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _score_frame(points: np.ndarray, x_in: np.ndarray, n_in: np.ndarray, x_out: np.ndarray,
                 n_out: np.ndarray) -> pd.DataFrame:
    """The SCORE_COLUMNS frame from per-point correct counts with (in) and without (out) the point."""
    p_in, p_out = _proportion(x_in, n_in), _proportion(x_out, n_out)
    low, high = newcombe_interval(x_in, n_in, x_out, n_out)
    return pd.DataFrame({"point": points, "mem": p_in - p_out, "mem_low": low, "mem_high": high,
                         "mem_n_in": n_in.astype(np.int64), "mem_n_out": n_out.astype(np.int64),
                         "p_in": p_in, "p_out": p_out})


def memorization_scores(correct: np.ndarray, membership: np.ndarray,
                        points: np.ndarray | list[int] | None = None) -> pd.DataFrame:
    """One row per point of `points` (default all): mem = P[correct | in] - P[correct | out] over the shadow
    models, its Newcombe 95% interval and the counts; mem is NaN (never 0) when a point lacks in or out models.

    correct[m, i] is whether model m classifies training point i correctly; membership[m, i] whether m trained on i.
    """
    correct, membership = np.asarray(correct, dtype=bool), np.asarray(membership, dtype=bool)
    if correct.ndim != 2 or correct.shape != membership.shape:
        raise ValueError(f"correct {correct.shape} and membership {membership.shape} must be 2-D, of one shape")
    n_points = correct.shape[1]
    points = np.arange(n_points) if points is None else as_index_array(points, n_points, "points")
    c, m = correct[:, points], membership[:, points]
    n_in = m.sum(axis=0)
    x_in = (c & m).sum(axis=0)
    return _score_frame(points, x_in, n_in, c.sum(axis=0) - x_in, len(m) - n_in)


MEM_STATES = ("memorized", "uncertain", "not_memorized")


def flag_memorized(scores: pd.DataFrame, threshold: float = 0.25) -> pd.Series:
    """Memorized: mem >= threshold (Feldman & Zhang's 25%) and the interval excludes 0, so few-model noise is
    not flagged; NaN scores are never flagged."""
    return ((scores["mem"] >= threshold) & (scores["mem_low"] > 0)).rename("memorized")


def memorization_states(scores: pd.DataFrame, threshold: float = 0.25) -> pd.Series:
    """Each scored point's state (None where mem is NaN): 'memorized' (flag_memorized: the best single guess is at or
    above the threshold and the point is memorized at all), 'not_memorized' (the whole 95% interval is below the
    threshold) or 'uncertain' (neither: the interval reaches the threshold from below, or too few models to exclude
    0). More models move uncertain points to one of the other two."""
    memorized = flag_memorized(scores, threshold).to_numpy()
    below = (scores["mem_high"] < threshold).to_numpy()
    state = np.where(memorized, "memorized", np.where(below, "not_memorized", "uncertain")).astype(object)
    state[scores["mem"].isna().to_numpy()] = None
    return pd.Series(state, index=scores.index, name="mem_state")


def two_proportion_p(x_in: np.ndarray, n_in: np.ndarray, x_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the pooled two-proportion z-test of x_in/n_in = x_out/n_out (1 where the pooled rate
    is 0 or 1: nothing varies, nothing to test)."""
    from scipy.special import erfc

    pooled = (x_in + x_out) / (n_in + n_out)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_in + 1 / n_out))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(x_in / n_in - x_out / n_out) / se
    return np.where(se > 0, erfc(z / np.sqrt(2)), 1.0)


def _influence_block(m: np.ndarray, t: np.ndarray, total: np.ndarray, n_in: np.ndarray, min_abs_score: float,
                     top_k: int | None, max_p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, test column, x_in) of the pairs kept for one block of candidates (columns of the float32 m)."""
    x_in = m.T @ t  # models holding the candidate that get the test point right; float32 counts are exact
    n_out = len(m) - n_in
    score = x_in / n_in[:, None] - (total - x_in) / n_out[:, None]
    cols = np.broadcast_to(np.arange(t.shape[1]), score.shape)
    if top_k is not None and top_k < t.shape[1]:
        cols = np.argpartition(-np.abs(score), top_k - 1, axis=1)[:, :top_k]
        score = np.take_along_axis(score, cols, axis=1)
    keep = np.abs(score) >= min_abs_score
    if max_p < 1:
        x = np.take_along_axis(x_in, cols, axis=1)
        keep &= two_proportion_p(x, n_in[:, None], total[cols] - x, n_out[:, None]) <= max_p
    rows, k = np.nonzero(keep)
    test = cols[rows, k]
    return rows, test, x_in[rows, test]


def influence_tests(test_correct: np.ndarray, membership: np.ndarray, candidates: np.ndarray | list[int],
                    min_count: int = 2) -> int:
    """How many (candidate, test point) pairs cross_influence tests: candidates with >= min_count models on each
    side, times test points whose correctness varies across models (the others cannot be influenced)."""
    membership = np.asarray(membership, dtype=bool)
    candidates = as_index_array(candidates, membership.shape[1], "candidates")
    n_in = membership[:, candidates].sum(axis=0)
    usable = int(((n_in >= min_count) & (len(membership) - n_in >= min_count)).sum())
    correct = np.asarray(test_correct, dtype=bool)
    varies = int((correct.any(axis=0) & ~correct.all(axis=0)).sum())
    return usable * varies


def cross_influence(test_correct: np.ndarray, membership: np.ndarray, candidates: np.ndarray | list[int],
                    min_abs_score: float = 0.1, top_k_per_train: int | None = 20,
                    min_count: int = 2, max_p: float = 1.0) -> pd.DataFrame:
    """Influence of training candidate i on test point j, P[correct on j | i in] - P[correct on j | i out], for
    all pairs at once as matrix products; keeps |score| >= min_abs_score and p_value <= max_p, at most
    top_k_per_train pairs per candidate (largest |score|), and only candidates with >= min_count models on each
    side. Sorted by train_index, then |score| descending; low/high are Newcombe 95% intervals, p_value the pooled
    two-proportion z-test's (for a multiple-comparison control over all `influence_tests` pairs)."""
    test_correct, membership = np.asarray(test_correct, dtype=bool), np.asarray(membership, dtype=bool)
    if test_correct.ndim != 2 or membership.ndim != 2 or len(test_correct) != len(membership):
        raise ValueError(f"test_correct {test_correct.shape} and membership {membership.shape} must be 2-D "
                         "with one row per model")
    if top_k_per_train is not None and top_k_per_train < 1:
        raise ValueError(f"top_k_per_train must be >= 1 or None, got {top_k_per_train}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    candidates = as_index_array(candidates, membership.shape[1], "candidates")
    n_models = len(membership)
    n_in_all = membership[:, candidates].sum(axis=0)
    usable = candidates[(n_in_all >= min_count) & (n_models - n_in_all >= min_count)]
    m = membership[:, usable].astype(np.float32)
    t = test_correct.astype(np.float32)
    total = t.sum(axis=0)
    n_in = m.sum(axis=0).astype(np.float64)
    step = max(_BLOCK_CELLS // max(t.shape[1], 1), 1)
    # At least one (possibly empty) block, so the concatenations below always have an input and keep dtypes.
    starts = range(0, max(len(usable), 1), step)
    blocks = [_influence_block(m[:, start:start + step], t, total, n_in[start:start + step], min_abs_score,
                               top_k_per_train, max_p) for start in starts]
    rows = np.concatenate([block[0] + start for block, start in zip(blocks, starts)])
    test = np.concatenate([block[1] for block in blocks])
    x_in = np.concatenate([block[2] for block in blocks]).astype(np.float64)
    pair_n_in = n_in[rows]
    pair_n_out = n_models - pair_n_in
    x_out = total[test].astype(np.float64) - x_in
    low, high = newcombe_interval(x_in, pair_n_in, x_out, pair_n_out)
    out = pd.DataFrame({"train_index": usable[rows], "test_index": test.astype(np.int64),
                        "score": x_in / pair_n_in - x_out / pair_n_out, "n_in": pair_n_in.astype(np.int64),
                        "n_out": pair_n_out.astype(np.int64), "low": low, "high": high,
                        "p_value": two_proportion_p(x_in, pair_n_in, x_out, pair_n_out)})
    order = np.lexsort((out["test_index"], -out["score"].abs(), out["train_index"]))
    return out.iloc[order].reset_index(drop=True)[INFLUENCE_COLUMNS]


def loo_scores(correct: np.ndarray, design: ShardDesign) -> pd.DataFrame:
    """Exact leave-one-out memorization of each of design.candidates: mean correctness of the shared models
    trained on all data minus that of the point's own leave-it-out models, with the memorization_scores columns."""
    if design.method != "loo" or design.groups is None:
        raise ValueError(f"loo_scores needs a loo design with groups, got method {design.method!r}")
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != design.membership.shape:
        raise ValueError(f"correct {correct.shape} must match the design's membership {design.membership.shape}")
    points, groups = design.candidates, design.groups
    shared = groups == -1
    rows = np.flatnonzero(~shared)
    own = groups[rows]
    x_out = np.bincount(own, weights=correct[rows, points[own]], minlength=len(points))
    n_out = np.bincount(own, minlength=len(points))
    return _score_frame(points, correct[shared][:, points].sum(axis=0), np.full(len(points), shared.sum()),
                        x_out, n_out)
