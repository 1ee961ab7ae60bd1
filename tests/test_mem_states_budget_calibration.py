"""The three memorization states, the model count from a precision target, and the weighting of the proxy-calibration
report (a stratified sample weighted by its inverse inclusion chance estimates the whole population's statistics)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from auditor.memorization.estimates import memorization_scores, memorization_states
from auditor.memorization.proxy_calibration import proxy_calibration, weighted_pearson, weighted_ranks, weighted_spearman
from auditor.memorization.shadow_budget import DesignPlan, half_width, models_for_half_width
from auditor.memorization.sharding import balanced_membership


def test_states_split_on_the_interval_and_the_threshold():
    scores = pd.DataFrame({"mem": [0.6, 0.3, 0.3, 0.2, 0.05, np.nan],
                           "mem_low": [0.4, 0.1, -0.1, 0.05, -0.2, np.nan],
                           "mem_high": [0.8, 0.5, 0.7, 0.35, 0.2, np.nan]})
    states = memorization_states(scores, threshold=0.25).tolist()
    assert states[:5] == ["memorized", "memorized", "uncertain", "uncertain", "not_memorized"]
    assert pd.isna(states[5])  # not scored: no state


def test_more_models_turn_uncertain_points_into_decided_ones():
    """Points with true mem 0.45 and 0.05: with few models many are uncertain, with many almost none."""
    rng = np.random.default_rng(0)
    true_in, true_out = np.r_[[0.95] * 50, [0.9] * 50], np.r_[[0.5] * 50, [0.85] * 50]

    def uncertain_share(n_models: int) -> float:
        membership = balanced_membership(n_models, 100, 0.5, rng)
        correct = rng.random((n_models, 100)) < np.where(membership, true_in, true_out)
        return (memorization_states(memorization_scores(correct, membership)) == "uncertain").mean()

    assert uncertain_share(8) > 0.3
    assert uncertain_share(600) < 0.1


def test_model_count_meets_the_target_half_width_and_the_minimum_counts():
    k = models_for_half_width(0.15, 0.5, min_in=10, min_out=10)
    assert k == 171 and half_width(k, 0.5) <= 0.15 < half_width(k - 1, 0.5)
    assert models_for_half_width(0.9, 0.5, min_in=10, min_out=10) == 20  # the minimum counts win
    assert models_for_half_width(0.9, 0.7, min_in=3, min_out=12) == 40  # 12 out of 30% -> 40 models
    k7 = models_for_half_width(0.15, 0.7, 1, 1)
    assert half_width(k7, 0.7) <= 0.15 and k7 > k  # an unbalanced split needs more models
    with pytest.raises(ValueError):
        models_for_half_width(0.0, 0.5, 1, 1)


def test_plan_describes_models_points_half_width_and_time():
    text = DesignPlan("phase 1", 171, 580, 0.5, 0.15, half_width(171, 0.5), 0.6).describe()
    assert "171 shadow models" in text and "580 points" in text and "0.150" in text and "1.7 min" in text
    assert "unknown" in DesignPlan("phase 1", 6, 10, 0.5, 0.8, 0.7, None).describe()
    assert "min" not in DesignPlan("phase 1", 171, 580, 0.5, 0.15, 0.15, 0.6).describe(timed=False)  # as recorded


def test_weighted_statistics_equal_the_plain_ones_with_equal_weights():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=300), rng.normal(size=300)
    y = y + x
    w = np.full(300, 2.5)
    assert weighted_pearson(x, y, w) == pytest.approx(stats.pearsonr(x, y)[0])
    assert weighted_spearman(x, y, w) == pytest.approx(stats.spearmanr(x, y)[0])
    ties = np.array([3.0, 1.0, 1.0, 2.0])
    assert weighted_ranks(ties, np.ones(4)).tolist() == [3.5, 1.0, 1.0, 2.5]  # mid-ranks in weight units


def _population(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A training set whose proxy tracks mem only at low ApB: a low-ApB shortlist alone would overstate it."""
    apb = rng.random(n)
    mem = np.where(apb < 0.2, 0.9 - 3 * apb, 0.1 * rng.random(n)) + rng.normal(0, 0.05, n)
    return pd.DataFrame({"apb": apb, "el2n": rng.random(n), "mem": mem})


def test_calibration_weights_make_a_stratified_sample_stand_for_the_whole_set():
    rng = np.random.default_rng(2)
    pop = _population(4000, rng)
    everything = proxy_calibration(pop, pop["mem"].to_numpy(), np.ones(4000), pop["mem"].to_numpy() >= 0.25,
                                   k=int((pop["mem"] >= 0.25).sum()), resamples=20).set_index("proxy")
    # Score the lowest 20% ApB in full and a 10% random sample of the rest.
    low = pop["apb"].to_numpy() < 0.2
    audit = ~low & (rng.random(4000) < 0.1)
    weight = np.where(low, 1.0, np.where(audit, (~low).sum() / audit.sum(), 0.0))
    mem = np.where(weight > 0, pop["mem"], np.nan)
    memorized = np.nan_to_num(mem, nan=-1) >= 0.25
    k = int(round(weight[memorized].sum()))
    sampled = proxy_calibration(pop, np.nan_to_num(mem), weight, memorized, k=k, resamples=100).set_index("proxy")
    unweighted = weighted_spearman(pop["apb"].to_numpy()[weight > 0], mem[weight > 0], np.ones((weight > 0).sum()))
    truth = everything.loc["apb", "spearman"]
    assert abs(sampled.loc["apb", "spearman"] - truth) < 0.05
    assert sampled.loc["apb", "spearman_low"] <= truth <= sampled.loc["apb", "spearman_high"]
    assert abs(unweighted - truth) > 0.15  # the unweighted scored points would mislead
    assert abs(sampled.loc["apb", "top_k_overlap"] - everything.loc["apb", "top_k_overlap"]) < 0.1
    assert abs(sampled.loc["el2n", "spearman"]) < 0.1  # a proxy unrelated to mem stays near 0
    assert set(sampled.index) == {"apb", "el2n"}


def test_calibration_null_shuffled_mem_gives_no_correlation():
    """Null test: with mem shuffled across the scored points no proxy correlates. Over 20 shuffles x 2 proxies about
    5% of the 95% intervals exclude 0 (at most 5 of 40: P = 0.014 under the null) and no estimate is past 4 standard
    errors."""
    rng = np.random.default_rng(3)
    pop = _population(1500, rng)
    excluded, estimates = 0, []
    for _ in range(20):
        mem = rng.permutation(pop["mem"].to_numpy())
        report = proxy_calibration(pop, mem, np.ones(1500), mem >= 0.25, k=int((mem >= 0.25).sum()),
                                   seed=int(rng.integers(1 << 30)))
        excluded += int(((report["spearman_low"] > 0) | (report["spearman_high"] < 0)).sum())
        estimates.extend(report["spearman"].tolist())
    assert excluded <= 5
    assert np.abs(estimates).max() < 4 / np.sqrt(1499)


def test_never_learned_forgetting_events_rank_highest_without_breaking_pearson():
    pop = pd.DataFrame({"forgetting_events": [0.0, 1.0, 2.0, math.inf]})
    mem = np.array([0.0, 0.1, 0.2, 0.9])
    report = proxy_calibration(pop, mem, np.ones(4), mem >= 0.25, k=1, resamples=10).iloc[0]
    assert report["spearman"] == pytest.approx(1.0) and np.isfinite(report["pearson"])
    assert report["top_k_overlap"] == 1.0
