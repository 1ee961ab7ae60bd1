"""A natural-memorization sweep (Natural Memorization, sections 4.2-4.4): the same audit for several architectures,
widths and training lengths, compared by the *sets* of points each memorizes and by train-test gap vs. count.

Pure functions: the variants of a sweep, set differences between memorized sets, transient memorization across
training lengths, and the Pearson correlation of train-test gap with memorized count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ("apb", "ploo_improved")
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
    """The variants of a sweep and how each one's memorized set is decided ('apb' or 'ploo_improved')."""

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
    """Pearson r (and two-sided p) of train-test gap vs. memorized count over n variants; r is None with a reason
    when it cannot be computed."""

    r: float | None
    p: float | None
    n: int
    reason: str | None = None


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


def gap_correlation(frame: pd.DataFrame) -> GapCorrelation:
    """Pearson correlation between `gap` (train minus test accuracy) and `n_memorized` over the variants that have
    both (the paper reports 0.99); needs 3 variants and neither column constant."""
    both = frame[["gap", "n_memorized"]].dropna().astype(float)
    n = len(both)
    if n < 3:
        return GapCorrelation(None, None, n, f"needs at least 3 variants with a train-test gap, got {n}")
    for column, what in (("gap", "train-test gap"), ("n_memorized", "memorized count")):
        if np.ptp(both[column].to_numpy()) == 0:
            return GapCorrelation(None, None, n, f"the {what} is the same for every variant")
    result = stats.pearsonr(both["gap"], both["n_memorized"])
    return GapCorrelation(float(result.statistic), float(result.pvalue), n)
