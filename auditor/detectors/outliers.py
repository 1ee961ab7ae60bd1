"""Outliers (Datalab's outlier issue): training images far from everything in the embedding space. The score is the
mean cosine distance to the k nearest neighbours of any class on the shared kNN graph; the cut is set for a false-
positive rate `detectors.outlier_alpha` on this dataset's own distances, with its recall measured on synthetic
outliers made from its embeddings (outlier_calibration.calibrate_outliers), never a global constant."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd

from auditor.detectors.contract import DetectorContext, DetectorResult
from auditor.detectors.outlier_calibration import calibrate_outliers, knn_distance, tail_p_value
from auditor.detectors.thresholds import Threshold
from auditor.flags import FLAG_COLUMNS
from auditor.neighbors import KnnGraph

KIND = "outlier"


def outlier_flags(graph: KnnGraph, embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray, *,
                  alpha: float = 0.005, seed: int = 0, exact_below: int = 200_000,
                  index: Literal["hnsw", "ivf"] = "ivf") -> tuple[pd.DataFrame, Threshold]:
    """An 'outlier' flag on each point whose mean kNN distance d lies above the calibrated cut (a distance); score (d
    - cut) / (d - median): 0 at the cut, towards 1 far beyond it. Detail holds p, d's tail probability on the null."""
    distance = knn_distance(graph)
    k = graph.similarities.shape[1]
    threshold = calibrate_outliers(embeddings, labels, distance, k, alpha=alpha, seed=seed, exact_below=exact_below,
                                   index=index)
    detail = threshold.detail
    p = tail_p_value(distance, detail["null_median"], detail["tail_scale"])
    rows = np.flatnonzero(np.isfinite(distance) & (distance > threshold.value))
    typical = np.nanquantile(distance, [0.05, 0.5, 0.95])
    by_chance = alpha * detail["null_n"]  # one test per image, no multiple-comparison control: say what that costs
    details = [json.dumps({
        "distance": round(float(distance[i]), 6), "k": k, "p_value": float(f"{p[i]:.3g}"),
        "cut": round(threshold.value, 6), "median": round(float(typical[1]), 6), "alpha": alpha,
        "expected_by_chance": round(by_chance, 1), "flagged": len(rows),
        "summary": f"mean cosine distance {distance[i]:.3f} to its {k} nearest neighbours; typical "
                   f"{typical[1]:.3f} (5–95%: {typical[0]:.3f}–{typical[2]:.3f}), cut {threshold.value:.3f} "
                   f"(false-positive rate {alpha:g} per image: about {by_chance:.0f} of {detail['null_n']:,} "
                   f"ordinary images pass it by chance; {len(rows)} flagged)"})
        for i in rows]
    score = (distance[rows] - threshold.value) / (distance[rows] - detail["null_median"])
    flags = pd.DataFrame({"sample_id": np.asarray(ids)[rows], "kind": KIND, "score": score, "detail": details},
                         columns=FLAG_COLUMNS)
    return flags, threshold


def detect(context: DetectorContext) -> DetectorResult:
    """The contract's entry point: outliers of the training points on the shared graph."""
    dc = context.config
    flags, threshold = outlier_flags(context.graph, context.embeddings, context.labels, context.train_ids,
                                     alpha=dc.outlier_alpha, seed=context.seed, exact_below=dc.exact_below,
                                     index=dc.index)
    return DetectorResult(flags, {KIND: threshold})
