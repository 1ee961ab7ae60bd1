"""Data-driven similarity cut-offs for duplicates and leaks: no single cosine threshold fits two datasets (or two
embedding models), so each audit calibrates its own, from the nearest-neighbour similarities or from pairs a
reviewer confirmed or rejected.

The distribution rule (copies.discovery_threshold) tests each image for a copy on its kNN graph and sets the cut by
Benjamini-Hochberg; the null's tail is modelled by exponential_tail_cut below.

calibrate_tail applies a robust one-sided cut to any score (an image's brightness, contrast or sharpness): median
+/- c * the tail-side MAD, never flagging more than 1 - floor_quantile of the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# 1 - cosine below this is numerical noise: the two embeddings are identical (an exact duplicate).
IDENTICAL_GAP = 1e-6
# Scales a MAD to a normal standard deviation.
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Threshold:
    """Pairs with similarity >= value are duplicates; `method` and `detail` say how value was chosen."""

    value: float
    method: str
    detail: dict = field(default_factory=dict)


def calibrate_tail(values: np.ndarray, side: Literal["upper", "lower"], *, c: float = 4.0,
                   floor_quantile: float = 0.99) -> Threshold:
    """The robust one-sided cut on `values`: median + c * sd for the upper tail (median - c * sd for the lower), sd
    = 1.4826 * the median distance to the median of the tail-side values, pushed out to the floor_quantile quantile
    (the 1 - floor_quantile quantile for the lower tail) so at most 1 - floor_quantile of the values lie beyond."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if side not in ("upper", "lower") or not 0.5 <= floor_quantile <= 1.0 or c <= 0:
        raise ValueError(f"need side 'upper' or 'lower', c > 0 and 0.5 <= floor_quantile <= 1, got side={side!r}, "
                         f"c={c}, floor_quantile={floor_quantile}")
    if len(v) < 2:
        raise ValueError(f"need at least 2 finite values, got {len(v)}")
    sign = 1.0 if side == "upper" else -1.0
    centre = float(np.median(v))
    gaps = sign * (v - centre)
    scale = _MAD_TO_SD * float(np.median(gaps[gaps >= 0]))
    mad_cut = centre + sign * c * scale
    floor = float(np.quantile(v, floor_quantile if side == "upper" else 1.0 - floor_quantile))
    value = max(mad_cut, floor) if side == "upper" else min(mad_cut, floor)
    n_beyond = int(np.sum(sign * (v - value) > 0))
    return Threshold(value=value, method=f"robust_{side}_tail", detail={
        "c": c, "floor_quantile": floor_quantile, "median": centre, "tail_sd": scale, "mad_cut": mad_cut,
        "floor": floor, "binding": "mad" if sign * (mad_cut - floor) >= 0 else "floor", "n": len(v),
        "n_beyond": n_beyond, "fraction_beyond": n_beyond / len(v)})


def calibrate_from_labels(similarities: np.ndarray, is_duplicate: np.ndarray, *,
                          criterion: Literal["f1", "balanced_accuracy"] = "f1") -> Threshold:
    """The cut maximising F1 (or balanced accuracy) of `similarity >= cut` over reviewed pairs, halfway between
    the lowest similarity called duplicate and the next one below; ties go to the higher cut."""
    if criterion not in ("f1", "balanced_accuracy"):
        raise ValueError(f"criterion must be 'f1' or 'balanced_accuracy', got {criterion!r}")
    s = np.asarray(similarities, dtype=np.float64).ravel()
    y = np.asarray(is_duplicate, dtype=bool).ravel()
    if len(s) != len(y) or not np.all(np.isfinite(s)):
        raise ValueError(f"need one finite similarity per judgement, got {len(s)} similarities, {len(y)} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need at least one confirmed and one rejected pair, got {n_pos} and {n_neg}")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Candidate cuts call the top m pairs duplicates, for every m at which the similarity changes (or all pairs).
    m = np.append(np.flatnonzero(np.diff(s) < 0) + 1, len(s))
    tp = np.cumsum(y)[m - 1]
    fp = m - tp
    fn, tn = n_pos - tp, n_neg - fp
    f1 = 2 * tp / (2 * tp + fp + fn)
    balanced = (tp / n_pos + tn / n_neg) / 2
    best = int(np.argmax(f1 if criterion == "f1" else balanced))
    top = m[best]
    value = float(s[top - 1] if top == len(s) else (s[top - 1] + s[top]) / 2)
    return Threshold(value=value, method=f"labels_{criterion}", detail={
        "n_confirmed": n_pos, "n_rejected": n_neg, "tp": int(tp[best]), "fp": int(fp[best]),
        "fn": int(fn[best]), "tn": int(tn[best]), "precision": float(tp[best] / top),
        "recall": float(tp[best] / n_pos), "f1": float(f1[best]), "balanced_accuracy": float(balanced[best])})


def exponential_tail_cut(null: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """(median, q75, scale, cut) of a null whose upper tail is modelled as exponential, scale (q75 - q50) / ln 2, cut
    at q50 + scale * ln(0.5 / alpha) for a false-positive rate alpha: read from quartiles, so real positives in the
    null (up to ~20 %) do not raise it. The copy matcher and the outlier detector calibrate with it."""
    median, q75 = np.quantile(null, [0.5, 0.75])
    scale = max(float(q75 - median), 1e-9) / np.log(2.0)
    return float(median), float(q75), scale, float(median + scale * np.log(0.5 / alpha))
