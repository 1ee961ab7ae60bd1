"""Which training points the memorization stage scores, and what that says about those it does not score.

The lowest-ApB shortlist is scored in full; the rest of the training set is cut into ApB bands and a stratified random
audit sample of each band is scored too. The audit sample estimates each band's memorized rate, the shortlist is
extended band by band while that rate stays above a floor, and the bands never extended are accounted for by their
sample: the total of memorized images in the whole training set comes with a 95% interval, and so does the recall of
the flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.intervals import jeffreys_interval

SHORTLIST = -1  # band of the lowest-ApB shortlist (every point scored)
BAND_COLUMNS = ["band", "apb_low", "apb_high", "n_points", "n_audit", "audit_memorized", "rate", "rate_low",
                "rate_high", "role", "n_scored", "memorized", "noise_var", "est_memorized", "est_low", "est_high"]


def apb_bands(apb: np.ndarray, shortlist: np.ndarray, n_bands: int) -> np.ndarray:
    """Band of each training point: SHORTLIST for the shortlist, else 0..n_bands-1 by ApB rank among the others
    (equal counts, lowest ApB first; ties broken by index so the cut is deterministic)."""
    apb = np.asarray(apb, dtype=np.float64)
    if n_bands < 1:
        raise ValueError(f"n_bands must be >= 1, got {n_bands}")
    bands = np.full(len(apb), SHORTLIST, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(apb)), shortlist)
    ranked = rest[np.lexsort((rest, apb[rest]))]
    bands[ranked] = np.arange(len(ranked)) * n_bands // max(len(ranked), 1)
    return bands


def audit_sample(bands: np.ndarray, fraction: float, min_per_band: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified simple random sample: ceil(fraction * size) points of every band (at least
    min_per_band, at most the band), none of the shortlist. Chosen by the seed alone, never by an outcome."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"audit fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for band in np.unique(bands[bands != SHORTLIST]):
        members = np.flatnonzero(bands == band)
        take = min(len(members), max(math.ceil(fraction * len(members) - 1e-9), min_per_band))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def bands_to_extend(rates: np.ndarray, floor: float) -> int:
    """How many leading bands (lowest ApB first) join the shortlist: band by band while the band's estimated
    memorized rate is at least `floor`; the first band below it stops the extension."""
    count = 0
    for rate in np.asarray(rates, dtype=np.float64):
        if not rate >= floor:  # NaN (an empty sample) stops it too
            break
        count += 1
    return count


@dataclass(frozen=True)
class TotalEstimate:
    """Estimated memorized images in the whole training set (95% interval) and the recall of `flagged` in it."""

    total: float
    low: float
    high: float
    flagged: int
    recall: float
    recall_low: float
    recall_high: float


def estimate_total(bands: pd.DataFrame, flagged: int, level: float = 0.95) -> TotalEstimate:
    """The total from per-band counts: a band scored in full (n_scored == n_points) adds its memorized count; any
    other adds its scored memorized plus its unscored points times the audit rate (the stratified estimator, unbiased).
    The interval is normal with the stratified variance sum N^2 (1 - n/N) p(1 - p) / n (Cochran 1977, 5.8), where
    p = (x + 1/2) / (n + 1), so a band with no hit in its sample still leaves room above zero; it never goes below
    the memorized points actually scored nor above all points that could be.

    `bands` needs band, n_points, n_scored, memorized (among the scored points), n_audit and audit_memorized; an
    optional noise_var (band_table) adds the uncertainty of each scored point being above the threshold or not,
    and then the scored count bounds the interval neither from below nor from above."""
    from scipy import stats

    point = certain = most = variance = 0.0
    noisy = "noise_var" in bands.columns and bands["noise_var"].sum() > 0
    for band in bands.itertuples():
        variance += band.noise_var if noisy else 0.0
        unscored = int(band.n_points - band.n_scored)
        point += band.memorized
        certain += band.memorized
        most += band.n_points if noisy else band.memorized + unscored
        if unscored <= 0:
            continue
        if band.n_audit <= 0:
            raise ValueError(f"band {band.band} has {unscored} unscored points and no audit sample to estimate them")
        point += unscored * band.audit_memorized / band.n_audit
        rate = (band.audit_memorized + 0.5) / (band.n_audit + 1)
        variance += band.n_points ** 2 * (1 - band.n_audit / band.n_points) * rate * (1 - rate) / band.n_audit
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    low, high = max(point - half, 0.0 if noisy else certain), min(point + half, most)
    recall = flagged / point if point > 0 else float("nan")
    return TotalEstimate(point, low, high, flagged, recall,
                         flagged / high if high > 0 else float("nan"),
                         min(flagged / low, 1.0) if low > 0 else float("nan"))


def classification_noise(mem: np.ndarray, low: np.ndarray, high: np.ndarray, threshold: float) -> np.ndarray:
    """p(1 - p) per point, p = the chance its true mem is at or above the threshold given its estimate and 95%
    interval (normal approximation): the variance of counting it as memorized or not (0 where not scored)."""
    from scipy import stats

    se = (np.asarray(high) - np.asarray(low)) / (2 * stats.norm.ppf(0.975))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.norm.cdf((np.asarray(mem) - threshold) / se)
    p = np.where(se > 0, p, np.asarray(mem) >= threshold)
    return np.nan_to_num(p * (1 - p))


def band_table(apb: np.ndarray, bands: np.ndarray, audit: np.ndarray, scored: np.ndarray, memorized: np.ndarray,
               extended: int, noise: np.ndarray | None = None) -> pd.DataFrame:
    """One row per band (the shortlist first) with its ApB range, audit-sample rate (Jeffreys 95% interval), role
    ('shortlist', 'extended', 'audited') and scored and memorized counts; est_* are filled by `band_estimates`.

    scored and memorized are bool per training point; audit the audit sample's indices; noise (optional) each point's
    classification_noise, summed per band with the band's weight squared (noise_var) into the count's variance."""
    in_audit = np.zeros(len(apb), bool)
    in_audit[audit] = True
    rows = []
    for band in np.unique(bands):
        members = bands == band
        n_audit = int((members & in_audit).sum())
        hits = int((members & in_audit & memorized).sum())
        role = ("shortlist" if band == SHORTLIST else "extended" if band < extended
                else "audited" if n_audit else "scored")
        n_scored = int((members & scored).sum())
        weight = 1.0 if n_scored == members.sum() or not n_audit else members.sum() / n_audit
        rows.append({"band": int(band), "apb_low": float(apb[members].min()), "apb_high": float(apb[members].max()),
                     "n_points": int(members.sum()), "n_audit": n_audit, "audit_memorized": hits,
                     "rate": hits / n_audit if n_audit else float("nan"), "role": role, "n_scored": n_scored,
                     "memorized": int((members & memorized).sum()),
                     "noise_var": 0.0 if noise is None else float(weight ** 2 * noise[members & scored].sum())})
    frame = pd.DataFrame(rows)
    frame["rate_low"], frame["rate_high"] = jeffreys_interval(frame["audit_memorized"], frame["n_audit"])
    return band_estimates(frame)


def band_estimates(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Add each band's estimated memorized count and its interval (`estimate_total` of that band alone)."""
    out = frame.copy()
    estimates = [estimate_total(frame.iloc[[k]], flagged=0, level=level) for k in range(len(frame))]
    out["est_memorized"] = [e.total for e in estimates]
    out["est_low"] = [e.low for e in estimates]
    out["est_high"] = [e.high for e in estimates]
    return out[BAND_COLUMNS]


def stratified_pick(values: np.ndarray, n: int, n_strata: int, seed: int) -> np.ndarray:
    """Sorted indices of about n points drawn at random from n_strata equal-count strata of `values` (NaN never
    drawn), the same number from each: a validation sample that covers the range and is never chosen by an outcome."""
    usable = np.flatnonzero(~np.isnan(np.asarray(values, dtype=np.float64)))
    if n <= 0 or not len(usable):
        return np.zeros(0, dtype=np.int64)
    ranked = usable[np.lexsort((usable, np.asarray(values)[usable]))]
    strata = np.array_split(ranked, min(n_strata, len(ranked)))
    rng = np.random.default_rng(seed)
    per, extra = divmod(min(n, len(ranked)), len(strata))
    picks = [rng.choice(s, size=min(len(s), per + (k < extra)), replace=False) for k, s in enumerate(strata)]
    return np.sort(np.concatenate(picks))
