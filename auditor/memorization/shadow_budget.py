"""How many shadow models a memorization design needs: from a target half-width of the 95% mem interval, not from a
fixed ratio, so the number of memorized images found depends on the data rather than on the model count."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964


def half_width(n_models: int, fraction: float, p_in: float = 0.5, p_out: float = 0.5) -> float:
    """Normal-approximation 95% half-width of mem = p_in - p_out with fraction * n_models models holding the point
    and the rest without it; p = 0.5 on both sides is the worst case."""
    n_in = fraction * n_models
    n_out = n_models - n_in
    if n_in <= 0 or n_out <= 0:
        return float("inf")
    return Z95 * math.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)


def models_for_half_width(target: float, fraction: float, min_in: int, min_out: int, floor: int = 2) -> int:
    """The fewest models whose worst-case half-width is at most `target`, with at least min_in models holding each
    scored point and min_out without it (and at least `floor`)."""
    if target <= 0 or not 0 < fraction < 1:
        raise ValueError(f"need target > 0 and 0 < fraction < 1, got {target}, {fraction}")
    k = math.ceil(Z95 ** 2 * (0.25 / fraction + 0.25 / (1 - fraction)) / target ** 2 - 1e-9)
    k = max(k, models_for_counts(fraction, min_in, min_out), floor)
    while half_width(k, fraction) > target:  # rounding of the shard sizes
        k += 1
    return k


def models_for_counts(fraction: float, min_in: int, min_out: int) -> int:
    """The fewest models that give every sharded point at least min_in models with it and min_out without."""
    return max(math.ceil(min_in / fraction - 1e-9), math.ceil(min_out / (1 - fraction) - 1e-9), 2)


def capped_models(wanted: int, cap: int, fraction: float, min_in: int, min_out: int) -> int:
    """`wanted` models, at most `cap` (0: no cap), but never fewer than min_in with and min_out without each point:
    a budget widens the intervals, it never lets a point be decided on fewer models than those."""
    if not cap or wanted <= cap:
        return wanted
    return max(cap, models_for_counts(fraction, min_in, min_out))


@dataclass(frozen=True)
class DesignPlan:
    """What one phase of the memorization stage will train, said before it trains."""

    phase: str
    n_models: int
    n_sharded: int
    fraction: float
    target_half_width: float
    expected_half_width: float
    seconds_per_model: float | None
    wanted: int = 0  # models the target half-width and the floors asked for, before memorization.max_models

    def describe(self, timed: bool = True) -> str:
        """One line for the terminal (timed) and the run's record (not timed: a record depends only on its inputs)."""
        line = (f"{self.phase}: {self.n_models} shadow models, {self.n_sharded} points sharded at r = "
                f"{self.fraction:g}; expected 95% half-width of mem <= {self.expected_half_width:.3f} "
                f"(target {self.target_half_width:g})")
        if self.wanted > self.n_models:
            line += (f"; capped by memorization.max_models: the target and floors asked for {self.wanted} models "
                     f"(half-width <= {half_width(self.wanted, self.fraction):.3f})")
        if not timed:
            return line
        eta = ("unknown (no shadow model timed on this database yet)" if self.seconds_per_model is None
               else f"~{self.n_models * self.seconds_per_model / 60:.1f} min at "
                    f"{60 / self.seconds_per_model:.0f} models/min measured here")
        return f"{line}; time {eta}"
