"""The outlier cut: Benjamini-Hochberg at a false discovery rate over every training image's tail p-value, with the
recall it buys on synthetic outliers made from this dataset, which decides whether the embedder separates outliers.

The null is every training point's mean cosine distance to its k nearest other training points: exchangeable with
a fresh in-distribution image's distance to the training set. The p-values model its upper tail as exponential,
fitted from q75 to q95 (scale (q95 - q75) / ln 5, p = 0.25 exp(-(d - q75) / scale)): lighter than the old fit from
the median and q75, yet still heavier than every in-distribution tail measured beyond q95 (docs/methods.md), so
conservative there; real outliers above 5 % of the points raise q95 and only make it more conservative. The old
per-image cut (false-positive rate alpha on the median-q75 fit, q50 + scale * ln(0.5 / alpha), exponential_tail_cut
as the copy matcher's) is kept as a reference: what one uncorrected test per image flags, and its recall; its
p-values were too large for a step-up (none of three planted far images passed BH at 5 % on 243 images at 128 px).

The synthetic outliers are made in the embedding space from the training embeddings (SYNTHETIC): they keep the
data's scale and marginals and destroy its structure. CALIBRATION types decide whether the cut separates outliers
at all (`separable`); the others are held out and show how far that recall generalises.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from auditor.intervals import jeffreys_interval
from auditor.detectors.thresholds import Threshold, exponential_tail_cut
from auditor.multiple_testing import benjamini_hochberg
from auditor.detectors.neighbors import KnnGraph, knn

# How each synthetic outlier is made from the training embeddings x (rows), by name:
#   shuffled  one row with its coordinates permuted: its values kept, what they encode gone (a pixel-shuffled image)
#   columns   each coordinate drawn from a different random row: every feature's marginal kept, their joint
#             structure gone (the permutation null of independent features)
#   noised    one row plus isotropic Gaussian noise of twice its norm (an image drowned in noise: cosine ~ 0.45 to it)
#   blend     the normalised mean of two rows of different classes (a blend of two classes' images)
SYNTHETIC = ("shuffled", "noised", "columns", "blend")
CALIBRATION = ("shuffled", "noised")
# Recall on the calibration types below this: the cut does not separate outliers on this embedder.
MIN_RECALL = 0.5


def synthetic_outliers(x: np.ndarray, labels: np.ndarray, *, per_type: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, type names): per_type synthetic outliers of each SYNTHETIC type made from the rows of x."""
    x = np.asarray(x, dtype=np.float32)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) < 2 or len(labels) != len(x):
        raise ValueError(f"need >= 2 embeddings (rows) with one label each, got shape {x.shape}, {len(labels)} labels")
    rng = np.random.default_rng(seed)
    n, d = x.shape
    rows = rng.integers(0, n, per_type)
    shuffled = np.take_along_axis(x[rows], rng.permuted(np.tile(np.arange(d), (per_type, 1)), axis=1), axis=1)
    columns = x[rng.integers(0, n, (per_type, d)), np.arange(d)]
    noise = rng.standard_normal((per_type, d)).astype(np.float32)
    norms = np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    scale = 2 * np.linalg.norm(x[rows], axis=1, keepdims=True) / norms
    made = {"shuffled": shuffled, "columns": columns, "noised": x[rows] + noise * scale,
            "blend": _blends(x, labels, per_type, rng)}
    return (np.concatenate([made[name] for name in SYNTHETIC]).astype(np.float32),
            np.repeat(np.asarray(SYNTHETIC), per_type))


def _blends(x: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Normalised means of `count` pairs of rows with different labels (any two rows if there is one label)."""
    first = rng.integers(0, len(x), count)
    second = rng.integers(0, len(x), count)
    for _ in range(32):
        same = labels[first] == labels[second]
        if not same.any() or len(np.unique(labels)) < 2:
            break
        second[same] = rng.integers(0, len(x), int(same.sum()))
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (unit[first] + unit[second]) / 2


def knn_distance(graph: KnnGraph) -> np.ndarray:
    """Mean cosine distance (1 - similarity) of each query to its found nearest neighbours (NaN without any)."""
    sims = graph.similarities.astype(np.float64)
    found = np.isfinite(sims)
    counts = found.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, 1.0 - np.where(found, sims, 0.0).sum(axis=1) / counts, np.nan)


def upper_tail(null: np.ndarray) -> tuple[float, float]:
    """(q75, scale) of the exponential fitted to the null's band from q75 to q95, which tail_p_value reads."""
    q75, q95 = np.quantile(null, [0.75, 0.95])
    return float(q75), max(float(q95 - q75), 1e-9) / np.log(5.0)


def tail_p_value(distance: np.ndarray, q75: float, scale: float) -> np.ndarray:
    """The upper-band exponential's probability of an in-distribution distance at least this large (capped at 1)."""
    return np.minimum(0.25 * np.exp(-(np.asarray(distance, dtype=np.float64) - q75) / scale), 1.0)


def _found(distance: np.ndarray, cut: float) -> dict:
    """How many of `distance` lie beyond `cut`, as a share with its 95 % Jeffreys interval."""
    hits = int(np.sum(distance > cut))
    low, high = jeffreys_interval(hits, len(distance))
    return {"n": len(distance), "found": hits, "recall": hits / len(distance), "interval": [float(low), float(high)]}


def calibrate_outliers(x: np.ndarray, labels: np.ndarray, null: np.ndarray, k: int, *, alpha: float = 0.005,
                       fdr: float = 0.05, per_type: int = 200, seed: int = 0, exact_below: int = 200_000,
                       index: Literal["hnsw", "ivf"] = "ivf") -> Threshold:
    """The flag cut (a distance): Benjamini-Hochberg at `fdr` over the tail p-values of `null` (the training points'
    mean kNN distances, one test each). Detail: the calibration cut for a false-positive rate alpha with the recall
    per SYNTHETIC type (95 % Jeffreys intervals) of outliers made from x, searched against it as the shared graph is
    (k neighbours), at that cut and at the flag cut, and the null's own rate at the calibration cut."""
    if not 0 < alpha < 0.5 or not 0 < fdr < 1 or per_type < 1 or k < 1:
        raise ValueError(f"need 0 < alpha < 0.5 (detectors.outlier_alpha), 0 < fdr < 1 (detectors.outlier_fdr), "
                         f"per_type >= 1 and k >= 1, got alpha={alpha}, fdr={fdr}, per_type={per_type}, k={k}")
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if len(null) < 2:
        raise ValueError(f"need at least 2 finite kNN distances, got {len(null)}")
    median, q75, scale, alpha_cut = exponential_tail_cut(null, alpha)
    p_q75, p_scale = upper_tail(null)
    flagged = int(benjamini_hochberg(tail_p_value(null, p_q75, p_scale), len(null), fdr).sum())
    p_cut = fdr * max(flagged, 1) / len(null)  # flagged: p <= p_cut; with none flagged, the cut the first needed
    value = p_q75 + p_scale * float(np.log(0.25 / p_cut))
    vectors, types = synthetic_outliers(x, labels, per_type=per_type, seed=seed)
    distance = knn_distance(knn(np.asarray(x, dtype=np.float32), min(k, len(x)), query=vectors, exclude_self=False,
                                exact_below=exact_below, index=index))
    above = int(np.sum(null > alpha_cut))
    fp_low, fp_high = jeffreys_interval(above, len(null))
    recall = {}
    for name in SYNTHETIC:
        mine = distance[types == name]
        at_flag_cut = _found(mine, value)
        recall[name] = {**_found(mine, alpha_cut), "held_out": name not in CALIBRATION,
                        "median_distance": float(np.median(mine)),
                        "at_flag_cut": {key: at_flag_cut[key] for key in ("found", "recall", "interval")}}
    separable = min(recall[name]["at_flag_cut"]["recall"] for name in CALIBRATION) >= MIN_RECALL
    summary = (f"cut {value:.3f}: Benjamini-Hochberg at FDR {fdr:.0%} over {len(null):,} images (p <= {p_cut:.2g}), "
               f"{flagged} flagged, about {fdr * flagged:.1f} of them may be ordinary images (in-distribution median "
               f"{median:.3f}); synthetic outliers found at it: "
               + ", ".join(f"{n} {r['at_flag_cut']['recall']:.0%}" for n, r in recall.items())
               + f" (at the per-image cut {alpha_cut:.3f}, false-positive rate {alpha:g} with no multiple-comparison "
               f"control, {above} flagged: "
               + ", ".join(f"{n} {r['recall']:.0%}" for n, r in recall.items()) + ")")
    if not separable:
        summary += (f"; the cut does not separate synthetic outliers (recall < {MIN_RECALL:.0%}): this embedder "
                    "cannot show outliers, so no flags here does not mean no outliers")
    return Threshold(value=value, method="synthetic_outliers", detail={
        "alpha": alpha, "alpha_cut": alpha_cut, "fdr": fdr, "tested": len(null), "flagged": flagged, "p_cut": p_cut,
        "p_q75": p_q75, "p_tail_scale": p_scale, "k": k, "seed": seed, "per_type": per_type,
        "calibration_types": list(CALIBRATION),
        "null_n": len(null), "null_median": float(median), "null_q75": float(q75), "tail_scale": scale,
        "null_above": above, "null_rate": above / len(null), "null_rate_interval": [float(fp_low), float(fp_high)],
        "recall": recall, "separable": separable, "summary": summary})
