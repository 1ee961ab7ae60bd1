"""The audited candidate set: ApB bands, the stratified audit sample, the band-extension rule and the estimated total
of memorized images, whose interval is checked against simulations with known memorized rates."""

import numpy as np
import pandas as pd
import pytest

from auditor.memorization.audit_sample import (SHORTLIST, apb_bands, audit_sample, band_table, bands_to_extend,
                                  classification_noise, estimate_total, stratified_pick)
from auditor.intervals import jeffreys_interval


def test_bands_cut_the_rest_by_apb_rank_into_equal_counts():
    apb = np.array([0.0, 0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    bands = apb_bands(apb, shortlist=np.array([0]), n_bands=5)
    assert bands[0] == SHORTLIST
    assert np.bincount(bands[bands >= 0]).tolist() == [2, 2, 2, 2, 2]
    # Bands follow ApB: every point of band b has a lower ApB than every point of band b + 1.
    for b in range(4):
        assert apb[bands == b].max() < apb[bands == b + 1].min()


def test_audit_sample_is_stratified_random_and_never_takes_the_shortlist():
    bands = np.repeat([SHORTLIST, 0, 1, 2], [50, 100, 100, 30])
    sample = audit_sample(bands, fraction=0.1, min_per_band=5, seed=3)
    assert not np.isin(sample, np.flatnonzero(bands == SHORTLIST)).any()
    assert np.bincount(bands[sample][bands[sample] >= 0]).tolist() == [10, 10, 5]  # ceil(10%), floor of 5
    assert sample.tolist() == audit_sample(bands, 0.1, 5, seed=3).tolist()  # seeded: same sample
    assert sample.tolist() != audit_sample(bands, 0.1, 5, seed=4).tolist()


def test_extension_goes_band_by_band_and_stops_at_the_first_band_below_the_floor():
    assert bands_to_extend(np.array([0.5, 0.3, 0.12, 0.05, 0.4]), floor=0.1) == 3  # the late 0.4 is not reached
    assert bands_to_extend(np.array([0.05, 0.5]), floor=0.1) == 0
    assert bands_to_extend(np.array([0.2, np.nan, 0.3]), floor=0.1) == 1  # an empty sample stops it
    assert bands_to_extend(np.array([0.1, 0.1]), floor=0.1) == 2  # at the floor still extends


def test_jeffreys_interval_bounds():
    low, high = jeffreys_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert low[0] == 0.0 and high[2] == 1.0
    assert 0.2 < low[1] < 0.5 < high[1] < 0.8


def _bands(n_points, n_scored, memorized, n_audit, audit_memorized):
    return pd.DataFrame({"band": range(len(n_points)), "n_points": n_points, "n_scored": n_scored,
                         "memorized": memorized, "n_audit": n_audit, "audit_memorized": audit_memorized})


def test_total_counts_fully_scored_bands_and_scales_the_audited_ones():
    bands = _bands([100, 400], [100, 40], [30, 4], [0, 40], [0, 4])
    est = estimate_total(bands, flagged=30)
    assert est.total == pytest.approx(30 + 400 * 4 / 40)
    assert est.low <= est.total <= est.high and est.low >= 34  # the scored memorized are certain
    assert est.recall == pytest.approx(30 / 70)
    assert est.recall_low == pytest.approx(30 / est.high) and est.recall_high == pytest.approx(30 / est.low)
    exact = estimate_total(_bands([100], [100], [30], [0], [0]), flagged=30)
    assert (exact.total, exact.low, exact.high, exact.recall) == (30, 30, 30, 1.0)


def test_a_band_with_no_hit_in_its_audit_still_leaves_room_above_zero():
    est = estimate_total(_bands([1000], [20], [0], [20], [0]), flagged=0)
    assert est.total == 0 and est.low == 0 and est.high > 20  # 0 of 20 does not prove 0 of 1,000


def test_total_without_an_audit_sample_for_unscored_points_is_an_error():
    with pytest.raises(ValueError, match="no audit sample"):
        estimate_total(_bands([100], [10], [1], [0], [0]), flagged=1)


def test_total_interval_covers_the_true_count_in_simulation():
    """Plant memorized points with known rates per band, draw the audit sample, estimate: the 95% interval must cover
    the planted total in about 95% of the repetitions (and the point estimate be unbiased)."""
    rng = np.random.default_rng(0)
    sizes = np.array([200, 380, 380, 380, 380, 380, 380, 380, 380, 380, 380])
    rates = np.array([0.9, 0.4, 0.25, 0.12, 0.06, 0.03, 0.02, 0.01, 0.0, 0.0, 0.0])
    covered, errors = 0, []
    repeats = 1000
    for rep in range(repeats):
        truth = [rng.random(n) < r for n, r in zip(sizes, rates)]
        rows = []
        for b, members in enumerate(truth):
            if b == 0:  # the shortlist: scored in full
                rows.append((len(members), len(members), members.sum(), 0, 0))
                continue
            audit = rng.choice(len(members), size=38, replace=False)
            hits = members[audit].sum()
            rows.append((len(members), 38, hits, 38, hits))
        bands = _bands(*map(list, zip(*rows)))
        est = estimate_total(bands, flagged=0)
        total = sum(m.sum() for m in truth)
        covered += est.low <= total <= est.high
        errors.append(est.total - total)
    assert 0.93 <= covered / repeats <= 0.99  # nominal 0.95; the binomial sd of 1,000 repeats is 0.007
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(repeats) + 1


def test_band_table_roles_and_counts():
    apb = np.linspace(0, 1, 40)
    bands = apb_bands(apb, shortlist=np.arange(4), n_bands=3)
    audit = audit_sample(bands, 0.25, 2, seed=0)
    scored = np.zeros(40, bool)
    scored[:4] = True
    scored[audit] = True
    scored[bands == 0] = True  # band 0 extended: scored in full
    memorized = np.zeros(40, bool)
    memorized[:3] = True
    memorized[bands == 0] = True
    table = band_table(apb, bands, audit, scored, memorized, extended=1).set_index("band")
    assert table.loc[SHORTLIST, "role"] == "shortlist" and table.loc[0, "role"] == "extended"
    assert table.loc[1, "role"] == "audited" and table.loc[2, "role"] == "audited"
    assert table.loc[SHORTLIST, "memorized"] == 3 and table.loc[0, "memorized"] == 12
    assert table.loc[1, "est_memorized"] == 0 and table.loc[1, "est_high"] > 0
    assert table.loc[0, "est_low"] == table.loc[0, "est_high"] == 12  # scored in full: exact


def test_stratified_pick_covers_every_stratum_and_skips_nan():
    values = np.r_[np.arange(100, dtype=float), [np.nan] * 10]
    picked = stratified_pick(values, n=30, n_strata=5, seed=1)
    assert len(picked) == 30 and not np.isnan(values[picked]).any()
    assert np.bincount((values[picked] // 20).astype(int)).tolist() == [6, 6, 6, 6, 6]
    assert picked.tolist() == stratified_pick(values, 30, 5, seed=1).tolist()


def test_classification_noise_is_largest_at_the_threshold():
    noise = classification_noise(np.array([0.25, 0.6, -0.2, 0.3, np.nan]), np.array([0.05, 0.4, -0.4, 0.3, np.nan]),
                                 np.array([0.45, 0.8, 0.0, 0.3, np.nan]), threshold=0.25)
    assert noise[0] == pytest.approx(0.25)  # on the threshold: a coin flip
    assert noise[1] < 1e-3 and noise[2] < 1e-3  # far from it: certain
    assert noise[3] == 0 and noise[4] == 0  # no width (certain) and not scored


def test_noise_widens_the_interval_and_lifts_the_floor():
    bands = _bands([100], [100], [30], [0], [0])
    exact = estimate_total(bands, flagged=30)
    noisy = estimate_total(bands.assign(noise_var=9.0), flagged=30)
    assert (exact.low, exact.high) == (30, 30)
    assert noisy.total == 30 and noisy.low == pytest.approx(30 - 1.96 * 3, abs=0.01)
    assert noisy.high == pytest.approx(30 + 1.96 * 3, abs=0.01)
