"""The outlier cut, calibrated like the copy matcher's (copies.calibrate_copies): set for a false-positive rate alpha
on the null of in-distribution kNN distances, with the recall it buys on synthetic outliers made from this dataset.

The null is every training point's mean cosine distance to its k nearest other training points: exchangeable with
a fresh in-distribution image's distance to the training set. Its upper tail is modelled as exponential, scale (q75 -
q50) / ln 2, and the cut is q50 + scale * ln(0.5 / alpha), in distance units. Read from the median and upper
quartile, it is not raised by real outliers (up to ~20 % of the points). An exponential tail on the distance is
heavier than the in-distribution tails measured (docs/methods.md), so the rate at the cut is at most ~alpha; on the
log distance it would be a Pareto tail, whose cut runs past every possible distance once the log spread is wide.

The synthetic outliers are made in the embedding space from the training embeddings (SYNTHETIC): they keep the
data's scale and marginals and destroy its structure. CALIBRATION types decide whether the cut separates outliers
at all (`separable`); the others are held out and show how far that recall generalises.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from auditor.audit_sample import jeffreys_interval
from auditor.detectors.thresholds import Threshold, exponential_tail_cut
from auditor.neighbors import KnnGraph, knn

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


def tail_p_value(distance: np.ndarray, median: float, scale: float) -> np.ndarray:
    """The exponential tail model's probability of an in-distribution distance at least this large (1 below q50)."""
    return np.minimum(0.5 * np.exp(-(np.asarray(distance, dtype=np.float64) - median) / scale), 1.0)


def calibrate_outliers(x: np.ndarray, labels: np.ndarray, null: np.ndarray, k: int, *, alpha: float = 0.005,
                       per_type: int = 200, seed: int = 0, exact_below: int = 200_000,
                       index: Literal["hnsw", "ivf"] = "ivf") -> Threshold:
    """The distance cut for a false-positive rate alpha on `null` (the training points' mean kNN distances), with the
    recall per SYNTHETIC type (95 % Jeffreys intervals) of outliers made from x and searched against it (k
    neighbours, searched as the shared graph is), and the null's own rate at the cut (real outliers included, so an
    upper bound)."""
    if not 0 < alpha < 0.5 or per_type < 1 or k < 1:
        raise ValueError(f"need 0 < alpha < 0.5 (detectors.outlier_alpha), per_type >= 1 and k >= 1, got "
                         f"alpha={alpha}, per_type={per_type}, k={k}")
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if len(null) < 2:
        raise ValueError(f"need at least 2 finite kNN distances, got {len(null)}")
    median, q75, scale, value = exponential_tail_cut(null, alpha)
    vectors, types = synthetic_outliers(x, labels, per_type=per_type, seed=seed)
    distance = knn_distance(knn(np.asarray(x, dtype=np.float32), min(k, len(x)), query=vectors, exclude_self=False,
                                exact_below=exact_below, index=index))
    recall = {}
    for name in SYNTHETIC:
        mine = types == name
        hits = int(np.sum(distance[mine] > value))
        low, high = jeffreys_interval(hits, int(mine.sum()))
        recall[name] = {"n": int(mine.sum()), "found": hits, "recall": hits / int(mine.sum()),
                        "interval": [float(low), float(high)], "held_out": name not in CALIBRATION,
                        "median_distance": float(np.median(distance[mine]))}
    above = int(np.sum(null > value))
    fp_low, fp_high = jeffreys_interval(above, len(null))
    separable = min(recall[name]["recall"] for name in CALIBRATION) >= MIN_RECALL
    summary = (f"cut {value:.3f} (in-distribution median {median:.3f}); synthetic outliers found: "
               + ", ".join(f"{n} {r['recall']:.0%}" for n, r in recall.items()))
    if not separable:
        summary += (f"; the cut does not separate synthetic outliers (recall < {MIN_RECALL:.0%}): this embedder "
                    "cannot show outliers, so no flags here does not mean no outliers")
    return Threshold(value=value, method="synthetic_outliers", detail={
        "alpha": alpha, "k": k, "seed": seed, "per_type": per_type, "calibration_types": list(CALIBRATION),
        "null_n": len(null), "null_median": float(median), "null_q75": float(q75), "tail_scale": scale,
        "null_above": above, "null_rate": above / len(null), "null_rate_interval": [float(fp_low), float(fp_high)],
        "recall": recall, "separable": separable, "summary": summary})
