"""Outliers (Datalab's outlier issue): training images far from everything in the embedding space. The score is the
mean cosine distance to the k nearest neighbours of any class on the shared kNN graph; the cut is calibrated on this
dataset's own distances (robust upper tail of their log, thresholds.calibrate_tail), never a global constant."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from auditor.detectors.contract import DetectorContext, DetectorResult
from auditor.detectors.thresholds import Threshold, calibrate_tail
from auditor.flags import FLAG_COLUMNS
from auditor.neighbors import KnnGraph

KIND = "outlier"
# Distances below this are identical embeddings; their log is clipped here.
_MIN_DISTANCE = 1e-6


def knn_distance(graph: KnnGraph) -> np.ndarray:
    """Mean cosine distance (1 - similarity) of each point to its found nearest neighbours (NaN without any)."""
    sims = graph.similarities.astype(np.float64)
    found = np.isfinite(sims)
    counts = found.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, 1.0 - np.where(found, sims, 0.0).sum(axis=1) / counts, np.nan)


def outlier_flags(graph: KnnGraph, ids: np.ndarray, *, c: float = 4.0,
                  floor_quantile: float = 0.99) -> tuple[pd.DataFrame, Threshold]:
    """An 'outlier' flag on each point whose log kNN distance lies above the robust upper-tail cut; score 1 -
    exp(-z / c) from its robust z (at least 1 - 1/e once the MAD rule binds). The threshold is in distance units."""
    distance = knn_distance(graph)
    log_d = np.log(np.maximum(distance, _MIN_DISTANCE))
    cut = calibrate_tail(log_d, "upper", c=c, floor_quantile=floor_quantile)
    scale = cut.detail["tail_sd"]
    z = (log_d - cut.detail["median"]) / scale if scale > 0 else np.where(log_d > cut.value, np.inf, 0.0)
    rows = np.flatnonzero(np.isfinite(log_d) & (log_d > cut.value))
    typical = np.exp(np.nanquantile(log_d, [0.05, 0.5, 0.95]))
    k = graph.similarities.shape[1]
    details = [json.dumps({
        "distance": round(float(distance[i]), 6), "k": k, "robust_z": round(float(z[i]), 3) if np.isfinite(z[i]) else None,
        "cut": round(float(np.exp(cut.value)), 6), "median": round(float(typical[1]), 6),
        "summary": f"mean cosine distance {distance[i]:.3f} to its {k} nearest neighbours; typical "
                   f"{typical[1]:.3f} (5–95%: {typical[0]:.3f}–{typical[2]:.3f}), cut {np.exp(cut.value):.3f}"})
        for i in rows]
    flags = pd.DataFrame({"sample_id": np.asarray(ids)[rows], "kind": KIND,
                          "score": 1.0 - np.exp(-np.minimum(z[rows], 1e6) / c), "detail": details},
                         columns=FLAG_COLUMNS)
    threshold = Threshold(float(np.exp(cut.value)), cut.method, {**cut.detail, "scale": "log distance"})
    return flags, threshold


def detect(context: DetectorContext) -> DetectorResult:
    """The contract's entry point: outliers of the training points on the shared graph."""
    flags, threshold = outlier_flags(context.graph, context.train_ids, c=context.config.outlier_c)
    return DetectorResult(flags, {KIND: threshold})
