"""Marginal-utility experiments (Feldman & Zhang 2020, revisited in "memorization is not necessary"): which points,
removed from the training set, cost test accuracy? Pure functions: arms, the paper's buckets, statistics, table.

An arm is a set of training points removed before retraining. The paper splits the memorized points into a
leakage bucket (a near or exact copy in the test set), a sub-population bucket (memorized points that help the same
test points, or that sit in a tiny cluster) and the remainder, and compares each arm's test accuracy with the
full-data models; a class-matched random removal of the same size, drawn afresh for every model, separates "these
points" from "this many points". A second full-data arm trained on a 2x longer schedule checks that the recipe reaches
its maximum test accuracy (the paper's convergence error).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from auditor.training.convergence import has_plateaued
from auditor.store.provenance import fingerprint

FULL = "full"
# The full-data arm trained SCHEDULE_FACTOR x longer: the convergence check of the recipe.
SCHEDULE_FACTOR = 2
FULL_LONGER = f"full:{SCHEDULE_FACTOR}x_schedule"
# Pair kinds joining a training point (a_id) to a test point (b_id): the data-leakage signals.
LEAK_PAIR_KINDS = ("exact_leak", "leak", "pixel_leak")
# An arm is reported as not converged when fewer than this share of its models reached a test-accuracy plateau.
CONVERGED_SHARE = 0.5


@dataclass(frozen=True)
class Arm:
    """One experimental condition: the training points removed (sorted, unique) and where they came from."""

    name: str
    source: str
    ids: tuple[str, ...]
    control_of: str | None = None   # the arm a random control matches; its ids are drawn per model (`model_control`)
    schedule: int = 1               # epochs of the recipe times this


def arm_from_ids(name: str, ids: Iterable[str], source: str, control_of: str | None = None,
                 schedule: int = 1) -> Arm:
    """An arm removing `ids` (duplicates dropped, sorted so that equal sets give equal arms)."""
    return Arm(name, source, tuple(sorted({str(i) for i in ids})), control_of, schedule)


def control_name(arm: str) -> str:
    """Name of the class-matched random control of `arm`."""
    return f"{arm}:random"


def random_control(ids_to_match: Sequence[str], train_ids: np.ndarray, train_labels: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Random training ids, disjoint from `ids_to_match`, with exactly its number of points in every class: removing
    them changes the class balance as the arm does, so a difference between the two is about *which* points."""
    train_ids, train_labels = np.asarray(train_ids), np.asarray(train_labels)
    matched = np.isin(train_ids, np.asarray(ids_to_match))
    chosen = []
    for label, need in zip(*np.unique(train_labels[matched], return_counts=True)):
        pool = np.sort(train_ids[~matched & (train_labels == label)])
        if len(pool) < need:
            raise ValueError(f"class {label} has {len(pool)} points outside the arm, too few for a random control "
                             f"of {need}; remove fewer points of that class")
        chosen.append(rng.choice(pool, need, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=train_ids.dtype)


def model_control(ids_to_match: Sequence[str], train_ids: np.ndarray, train_labels: np.ndarray, seed: int,
                  arm: str, index: int) -> np.ndarray:
    """The class-matched random control of model `index` of `arm`'s control: a fresh draw per model (seeded by the
    experiment's seed, the arm and the index), so the control arm's spread includes the draw of the points."""
    rng = np.random.default_rng(int(fingerprint(seed, control_name(arm), index), 16))
    return random_control(ids_to_match, train_ids, train_labels, rng)


def leaked_test_points(train_ids: Iterable[str], pairs: pd.DataFrame) -> np.ndarray:
    """Test ids with a leak pair (copy or near copy) to one of `train_ids`."""
    leaks = pairs[pairs["kind"].isin(LEAK_PAIR_KINDS) & pairs["a_id"].isin(list(train_ids))]
    return np.unique(leaks["b_id"].to_numpy().astype(str))


def influenced_test_points(train_ids: Iterable[str], influence: pd.DataFrame) -> np.ndarray:
    """Test ids that one of `train_ids` helps (positive cross-influence): the test points its removal may cost."""
    helped = influence[influence["train_id"].isin(list(train_ids)) & (influence["score"] > 0)]
    return np.unique(helped["test_id"].to_numpy().astype(str))


def leakage_bucket(memorized_ids: Iterable[str], pairs: pd.DataFrame) -> np.ndarray:
    """Memorized training points with a copy or near copy in the test set (the paper's data-leakage error)."""
    memorized = list(memorized_ids)
    leaks = pairs[pairs["kind"].isin(LEAK_PAIR_KINDS) & pairs["a_id"].isin(memorized)]
    return np.unique(leaks["a_id"].to_numpy().astype(str))


def subpopulation_bucket(memorized_ids: Iterable[str], influence: pd.DataFrame, clusters: pd.DataFrame,
                         small_cluster_size: int) -> np.ndarray:
    """Memorized points of a sub-population: two or more of them help (positive influence) one test point, or the
    point sits in an embedding cluster of at most `small_cluster_size` points (removing it empties the group)."""
    memorized = list(memorized_ids)
    helped = influence[influence["train_id"].isin(memorized) & (influence["score"] > 0)]
    helpers = helped.groupby("test_id")["train_id"].transform("nunique")
    shared = helped.loc[helpers >= 2, "train_id"]
    small = clusters.loc[clusters["sample_id"].isin(memorized) & (clusters["cluster_size"] <= small_cluster_size),
                         "sample_id"]
    return np.unique(np.concatenate([shared.to_numpy(), small.to_numpy()]).astype(str))


def memorized_remainder(memorized_ids: Iterable[str], leakage: Iterable[str],
                        subpopulation: Iterable[str]) -> np.ndarray:
    """The memorized points in neither bucket: the paper's "Memorized bucket", whose removal tests memorization."""
    return np.setdiff1d(np.asarray(list(memorized_ids), dtype=str),
                        np.union1d(np.asarray(list(leakage), dtype=str), np.asarray(list(subpopulation), dtype=str)))


@dataclass(frozen=True)
class ArmSummary:
    mean: float
    std: float      # sample standard deviation (ddof 1); NaN for fewer than two models
    n: int


def arm_summary(accs: Sequence[float]) -> ArmSummary:
    """Mean, sample standard deviation and count of one arm's model accuracies (NaNs ignored)."""
    values = np.asarray(accs, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return ArmSummary(float("nan"), float("nan"), 0)
    return ArmSummary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                      len(values))


@dataclass(frozen=True)
class Difference:
    """Accuracy drop of an arm against the full-data models: positive = removing the arm cost accuracy."""

    drop: float
    low: float      # 95% confidence interval (Welch-Satterthwaite degrees of freedom)
    high: float
    p_value: float  # Welch's two-sided t-test; NaN when it cannot be computed (too few models, no variance)
    df: float


def difference(full: Sequence[float], arm: Sequence[float], confidence: float = 0.95) -> Difference:
    """mean(full) - mean(arm) with its Welch confidence interval and p-value: the two arms' models are independent
    and their variances may differ (a removal can make training less stable)."""
    a, b = arm_summary(full), arm_summary(arm)
    drop = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(drop, float("nan"), float("nan"), float("nan"), float("nan"))
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = np.sqrt(va + vb)
    if se == 0:
        return Difference(drop, drop, drop, float("nan"), float("nan"))
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = stats.ttest_ind(np.asarray(full, float), np.asarray(arm, float), equal_var=False, nan_policy="omit").pvalue
    return Difference(float(drop), float(drop - half), float(drop + half), float(p), float(df))


def versus_control(control: Sequence[float], arm: Sequence[float], confidence: float = 0.95) -> Difference:
    """Extra drop of an arm over its per-model random control, mean(control) - mean(arm), tested against the spread
    of random removals: the arm is one draw of points, so beyond both means' seed noise its interval carries the
    variance between draws, estimated as the control's variance minus the arm's (seeds only). NaN: < 2 models."""
    a, c = arm_summary(arm), arm_summary(control)
    drop = c.mean - a.mean
    if a.n < 2 or c.n < 2:
        return Difference(drop, float("nan"), float("nan"), float("nan"), float("nan"))
    if c.std <= a.std:                  # no spread between draws beyond the seeds': Welch
        return difference(control, arm, confidence)
    # var = s_c^2 (1 + 1/n_c) - s_a^2 (1 - 1/n_a), its degrees of freedom by Welch-Satterthwaite
    terms = (c.std ** 2 * (1 + 1 / c.n), a.std ** 2 * (1 - 1 / a.n))
    se = np.sqrt(terms[0] - terms[1])
    df = se ** 4 / (terms[0] ** 2 / (c.n - 1) + terms[1] ** 2 / (a.n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(drop) / se, df)
    return Difference(float(drop), float(drop - half), float(drop + half), float(p), float(df))


def model_converged(epoch_test_acc: Sequence[float], window: int, tolerance: float) -> bool:
    """Whether one model's per-epoch test accuracy reached a plateau (epochs it did not train are NaN, dropped)."""
    curve = [v for v in epoch_test_acc if not np.isnan(v)]
    return has_plateaued(curve, window, tolerance)


@dataclass(frozen=True)
class ScheduleCheck:
    """Test accuracy gained by training the full arm SCHEDULE_FACTOR x longer, with its 95% Welch CI. The recipe is
    `trained_to_max` unless the gain is above `tolerance` and significant (CI above 0); None: too few models."""

    gain: float
    low: float
    high: float
    p_value: float
    trained_to_max: bool | None


def schedule_check(full: Sequence[float], longer: Sequence[float], tolerance: float) -> ScheduleCheck:
    """Does a longer schedule beat the full arm's test accuracy? (the paper's "trained to maximum test accuracy")"""
    d = difference(longer, full)
    if np.isnan(d.low):
        return ScheduleCheck(d.drop, d.low, d.high, d.p_value, None)
    return ScheduleCheck(d.drop, d.low, d.high, d.p_value, not (d.low > 0 and d.drop > tolerance))


def memorized_share(n_memorized: int, est_total: float | None, est_low: float | None,
                    est_high: float | None) -> tuple[float, float, float]:
    """Share of the estimated memorized total that `n_memorized` removed points are, with the interval from the
    estimate's (low, high) (capped at 1); NaNs without an estimate."""
    if est_total is None or not est_total > 0 or est_low is None or est_high is None:
        return float("nan"), float("nan"), float("nan")
    return (min(1.0, n_memorized / est_total), min(1.0, n_memorized / est_high),
            min(1.0, n_memorized / est_low) if est_low > 0 else 1.0)


def subset_accuracy(correct: np.ndarray, test_ids: np.ndarray, subset: Iterable[str]) -> np.ndarray:
    """Per-model accuracy (NaN when the subset is empty) on the test points `subset`, from (models, n_test)
    correctness with columns in `test_ids` order."""
    mask = np.isin(test_ids, np.asarray(list(subset), dtype=str))
    if not mask.any():
        return np.full(len(correct), np.nan)
    return correct[:, mask].mean(axis=1)


def summarize(arms: pd.DataFrame, models: pd.DataFrame, test_ids: np.ndarray) -> pd.DataFrame:
    """The results table, one row per arm (full first): models, mean ± std test accuracy, drop vs full with its 95%
    CI and p-value, the extra drop over the arm's random control (`versus_control`; NaN without one), and mean
    accuracy with drop on the arm's influenced ("subpop"), leaked and remaining test points,
    full-data models measured on the same points. `arms`: arm, source, n_removed, control_of, subpop_test_ids,
    leaked_test_ids; `models`: arm, test_acc, converged, test_correct (bool list in `test_ids` order)."""
    rows = []
    correct = {arm: np.stack(group["test_correct"].map(np.asarray).to_list()).astype(bool)
               for arm, group in models.groupby("arm")}
    full = correct.get(FULL, np.zeros((0, len(test_ids)), bool))
    for arm in arms.itertuples(index=False):
        mine = models[models["arm"] == arm.arm]
        summary = arm_summary(mine["test_acc"])
        row = {"arm": arm.arm, "source": arm.source, "n_removed": int(arm.n_removed), "models": summary.n,
               "test_acc": summary.mean, "test_std": summary.std}
        diff = (Difference(0.0, *[float("nan")] * 4) if arm.arm == FULL
                else difference(models.loc[models["arm"] == FULL, "test_acc"], mine["test_acc"]))
        row.update(drop=diff.drop, drop_low=diff.low, drop_high=diff.high, p_value=diff.p_value)
        control = models.loc[models["arm"] == control_name(arm.arm), "test_acc"]
        extra = versus_control(control, mine["test_acc"])
        row.update(vs_control=extra.drop, vs_control_low=extra.low, vs_control_high=extra.high,
                   vs_control_p=extra.p_value)
        subsets = {"subpop": arm.subpop_test_ids, "leaked": arm.leaked_test_ids}
        subsets["rest"] = np.setdiff1d(test_ids, np.union1d(np.asarray(arm.subpop_test_ids, dtype=str),
                                                            np.asarray(arm.leaked_test_ids, dtype=str)))
        for key, subset in subsets.items():
            ours = subset_accuracy(correct.get(arm.arm, full[:0]), test_ids, subset)
            theirs = subset_accuracy(full, test_ids, subset)
            row[f"n_{key}_test"] = int(np.isin(test_ids, np.asarray(subset, dtype=str)).sum())
            row[f"{key}_acc"] = arm_summary(ours).mean
            row[f"{key}_drop"] = arm_summary(theirs).mean - row[f"{key}_acc"]
        row["converged_share"] = float(mine["converged"].mean()) if len(mine) else float("nan")
        row["not_converged"] = bool(len(mine)) and row["converged_share"] < CONVERGED_SHARE
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2%}"


def format_results(table: pd.DataFrame) -> str:
    """The results table as text, in the paper's format: arm, #removed, test accuracy mean ± std, drop ± 95% CI."""
    lines = [f"{'arm':<28} {'removed':>7} {'models':>6}  {'test acc (mean ± std)':<22} "
             f"{'drop vs full [95% CI]':<30} {'p':>7}  {'subpop drop':>11} {'leaked drop':>11} {'rest drop':>10}"]
    for r in table.itertuples(index=False):
        acc = f"{_pct(r.test_acc)} ± {_pct(r.test_std)}"
        if r.arm == FULL:
            drop, p = "(reference)", ""
        else:
            drop = f"{_pct(r.drop)} [{_pct(r.drop_low)}, {_pct(r.drop_high)}]"
            p = "-" if np.isnan(r.p_value) else f"{r.p_value:.3f}"
        note = "  NOT CONVERGED" if r.not_converged else ""
        lines.append(f"{r.arm:<28} {r.n_removed:>7} {r.models:>6}  {acc:<22} {drop:<30} {p:>7}  "
                     f"{_pct(r.subpop_drop):>11} {_pct(r.leaked_drop):>11} {_pct(r.rest_drop):>10}{note}")
    return "\n".join(lines)
