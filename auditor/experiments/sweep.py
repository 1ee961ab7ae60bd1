"""A natural-memorization sweep (Natural Memorization, sections 4.2-4.4): the same audit for several architectures,
widths and training lengths, compared by the *sets* of points each memorizes and by train-test gap vs. count.

Pure functions: the variants of a sweep, set differences between memorized sets, transient memorization across
training lengths or checkpoints, memorized counts with intervals and their shuffled-membership null, the
train-test gap over seeds, and the Pearson correlation of gap with memorized count with a bootstrap interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from auditor.memorization.audit_sample import classification_noise, estimate_total
from auditor.experiments.marginal_utility import arm_summary
from auditor.memorization.estimates import flag_memorized, memorization_scores

# apb: the cheap proxy (ApB below a cut-off, learned late); ploo_improved: mem of each variant's ApB candidates;
# ploo: mem of every training point from plain pLOO shadow models (what the paper measures).
METHODS = ("apb", "ploo_improved", "ploo")
SET_COLUMNS = ["a", "b", "n_a", "n_b", "n_both", "only_a", "only_b", "jaccard"]
TRANSIENT_COLUMNS = ["sample_id", "memorized_at", "dropped_at", "memorized_at_end"]


@dataclass(frozen=True)
class Variant:
    """One model of a sweep: architecture, width (config units) and training length in epochs."""

    arch: str
    width: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.arch}-w{self.width}-e{self.epochs}"


@dataclass(frozen=True)
class SweepSpec:
    """The variants of a sweep and how each one's memorized set is decided (one of METHODS)."""

    variants: tuple[Variant, ...]
    method: str

    @classmethod
    def grid(cls, archs: list[str], widths: list[int], epochs: list[int], method: str) -> SweepSpec:
        """Every arch x width x epochs combination, in that nesting order (duplicates dropped)."""
        if method not in METHODS:
            raise ValueError(f"sweep method {method!r} is not known; use one of: {', '.join(METHODS)}")
        variants = tuple(dict.fromkeys(Variant(a, w, e) for a, w, e in itertools.product(archs, widths, epochs)))
        if not variants:
            raise ValueError("a sweep needs at least one architecture, one width and one training length")
        return cls(variants, method)


@dataclass(frozen=True)
class GapCorrelation:
    """Pearson r (and two-sided p) of train-test gap vs. memorized count over n variants, with its 95% bootstrap
    interval (low, high; None without the variants' intervals); r is None with a reason when it cannot be computed."""

    r: float | None
    p: float | None
    n: int
    reason: str | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class CountInterval:
    """Points marked memorized by `flag_memorized` and the 95% interval of that count."""

    count: int
    low: float
    high: float


def checkpoint_epochs(epochs: int, n: int = 4) -> tuple[int, ...]:
    """n evenly spaced epochs of a run of `epochs` (the last one included; fewer when the run is shorter)."""
    return tuple(sorted({max(1, round(epochs * k / n)) for k in range(1, n + 1)}))


def memorized_count(correct: np.ndarray, membership: np.ndarray, threshold: float) -> CountInterval:
    """How many points these shadow models mark memorized (`flag_memorized`), with the memorization stage's 95%
    interval of a fully scored set (`estimate_total`: each point's chance of its true mem lying across the threshold)."""
    scores = memorization_scores(correct, membership)
    flagged = int(flag_memorized(scores, threshold).sum())
    noise = classification_noise(scores["mem"], scores["mem_low"], scores["mem_high"], threshold).sum()
    band = pd.DataFrame([{"band": 0, "n_points": len(scores), "n_scored": len(scores), "memorized": flagged,
                          "n_audit": 0, "audit_memorized": 0, "noise_var": noise}])
    total = estimate_total(band, flagged)
    return CountInterval(flagged, total.low, total.high)


def shuffled_memberships(membership: np.ndarray, seed: int) -> np.ndarray:
    """Each point's memberships permuted across the models (its number of models kept): membership then carries no
    information about correctness, the null under which mem is 0 for every point."""
    return np.random.default_rng(seed).permuted(np.asarray(membership, dtype=bool), axis=0)


def seed_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed values with its Student-t interval (NaN bounds for fewer than two seeds)."""
    summary = arm_summary(values)
    if summary.n < 2:
        return summary.mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return summary.mean, summary.mean - half, summary.mean + half


def memorized_sets_compare(sets: Mapping[Hashable, set]) -> pd.DataFrame:
    """For every ordered pair (a, b) of variants: |A|, |B|, |A & B|, |A - B|, |B - A| and Jaccard |A & B| / |A | B|
    (NaN when both are empty), from the sets themselves, so a point swapped for another counts on both sides."""
    rows = []
    for a, b in itertools.permutations(sets, 2):
        sa, sb = set(sets[a]), set(sets[b])
        union = len(sa | sb)
        rows.append({"a": a, "b": b, "n_a": len(sa), "n_b": len(sb), "n_both": len(sa & sb),
                     "only_a": len(sa - sb), "only_b": len(sb - sa),
                     "jaccard": len(sa & sb) / union if union else math.nan})
    return pd.DataFrame(rows, columns=SET_COLUMNS)


def transient(sets_by_epoch: Mapping[int, set]) -> pd.DataFrame:
    """Temporal transient memorization: the points memorized at some training length and not at a later one. Per
    point: the first length it is memorized at, the first later length it is not, and whether it is at the last."""
    epochs = sorted(sets_by_epoch)
    rows = []
    for point in sorted(set().union(*sets_by_epoch.values()) if epochs else set()):
        inside = [point in sets_by_epoch[e] for e in epochs]
        first = inside.index(True)
        dropped = next((epochs[i] for i in range(first + 1, len(epochs)) if not inside[i]), None)
        if dropped is not None:
            rows.append({"sample_id": point, "memorized_at": epochs[first], "dropped_at": dropped,
                         "memorized_at_end": inside[-1]})
    return pd.DataFrame(rows, columns=TRANSIENT_COLUMNS)


INTERVAL_COLUMNS = ["gap_low", "gap_high", "n_memorized_low", "n_memorized_high"]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x and y (NaN where a row is constant)."""
    x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def gap_correlation_interval(frame: pd.DataFrame, reps: int = 4000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of r(gap, n_memorized) from a bootstrap over the variants (drawn with replacement)
    that also draws each drawn variant's gap and count from normals matching their own 95% intervals; replicates
    with a constant column are dropped (measurement noise pulls r towards 0, so the interval can end just below a
    near-perfect r). None without the INTERVAL_COLUMNS, 3 variants with them, or half the replicates left."""
    if not set(INTERVAL_COLUMNS) <= set(frame.columns):
        return None
    both = frame[["gap", "n_memorized", *INTERVAL_COLUMNS]].astype(float).dropna()
    if len(both) < 3:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(both), (reps, len(both)))
    draws = []
    for centre, low, high in (("gap", "gap_low", "gap_high"), ("n_memorized", "n_memorized_low", "n_memorized_high")):
        sd = ((both[high] - both[low]) / (2 * 1.959964)).to_numpy()
        draws.append(both[centre].to_numpy()[pick] + rng.standard_normal(pick.shape) * sd[pick])
    r = _pearson_rows(*draws)
    r = r[np.isfinite(r)]
    if len(r) < reps / 2:
        return None
    low, high = np.percentile(r, [2.5, 97.5])
    return float(low), float(high)


def gap_correlation(frame: pd.DataFrame) -> GapCorrelation:
    """Pearson correlation between `gap` (train minus test accuracy) and `n_memorized` over the variants that have
    both (the paper reports 0.99), with `gap_correlation_interval`; needs 3 variants and neither column constant."""
    both = frame[["gap", "n_memorized"]].dropna().astype(float)
    n = len(both)
    if n < 3:
        return GapCorrelation(None, None, n, f"needs at least 3 variants with a train-test gap, got {n}")
    for column, what in (("gap", "train-test gap"), ("n_memorized", "memorized count")):
        if np.ptp(both[column].to_numpy()) == 0:
            return GapCorrelation(None, None, n, f"the {what} is the same for every variant")
    result = stats.pearsonr(both["gap"], both["n_memorized"])
    interval = gap_correlation_interval(frame) or (None, None)
    return GapCorrelation(float(result.statistic), float(result.pvalue), n, None, *interval)
