"""Outliers (Datalab's outlier issue): training images far from everything in the embedding space. The score is the
mean cosine distance to the k nearest neighbours of any class on the shared kNN graph; each image is one test, its
p-value read from this dataset's own distances, and Benjamini-Hochberg over all of them flags at a false discovery
rate `detectors.outlier_fdr`, with the recall measured on synthetic outliers made from its embeddings
(outlier_calibration.calibrate_outliers), never a global constant."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd

from auditor.detectors.contract import DetectorContext, DetectorResult
from auditor.detectors.outlier_calibration import calibrate_outliers, knn_distance, tail_p_value
from auditor.detectors.thresholds import Threshold
from auditor.detectors.flags import FLAG_COLUMNS
from auditor.multiple_testing import bh_adjusted
from auditor.detectors.neighbors import KnnGraph

KIND = "outlier"


def outlier_flags(graph: KnnGraph, embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray, *,
                  alpha: float = 0.005, fdr: float = 0.05, seed: int = 0, exact_below: int = 200_000,
                  index: Literal["hnsw", "ivf"] = "ivf") -> tuple[pd.DataFrame, Threshold]:
    """An 'outlier' flag on each point whose mean kNN distance d is a Benjamini-Hochberg discovery at FDR `fdr`
    (d above the cut, a distance); score (d - cut) / (d - median): 0 at the cut, towards 1 far beyond it. Detail
    holds p, d's tail probability on the null, and q, its adjusted p-value."""
    distance = knn_distance(graph)
    k = graph.similarities.shape[1]
    threshold = calibrate_outliers(embeddings, labels, distance, k, alpha=alpha, fdr=fdr, seed=seed,
                                   exact_below=exact_below, index=index)
    detail = threshold.detail
    tested = np.isfinite(distance)
    p = tail_p_value(distance, detail["p_q75"], detail["p_tail_scale"])
    q_value = np.full(len(distance), np.nan)
    q_value[tested] = bh_adjusted(p[tested], detail["tested"])
    rows = np.flatnonzero(tested & (p <= detail["p_cut"]))
    typical = np.nanquantile(distance, [0.05, 0.5, 0.95])
    expected = fdr * len(rows)
    about = f"{expected:.2g}" if expected < 10 else f"{expected:.0f}"
    chance = (f"FDR {fdr * 100:g} %: of {len(rows)} flagged, about {about} may be ordinary images "
              f"(Benjamini-Hochberg over {detail['tested']:,} images tested)")
    details = [json.dumps({
        "distance": round(float(distance[i]), 6), "k": k, "p_value": float(f"{p[i]:.3g}"),
        "q_value": float(f"{q_value[i]:.3g}"), "cut": round(threshold.value, 6), "median": round(float(typical[1]), 6),
        "fdr": fdr, "tested": detail["tested"], "flagged": len(rows), "expected_false": round(expected, 2),
        "summary": f"mean cosine distance {distance[i]:.3f} to its {k} nearest neighbours; typical "
                   f"{typical[1]:.3f} (5–95%: {typical[0]:.3f}–{typical[2]:.3f}), cut {threshold.value:.3f}, "
                   f"q-value {q_value[i]:.2g}. {chance}"})
        for i in rows]
    score = (distance[rows] - threshold.value) / (distance[rows] - detail["null_median"])
    flags = pd.DataFrame({"sample_id": np.asarray(ids)[rows], "kind": KIND, "score": score, "detail": details},
                         columns=FLAG_COLUMNS)
    return flags, threshold


def detect(context: DetectorContext) -> DetectorResult:
    """The contract's entry point: outliers of the training points on the shared graph."""
    dc = context.config
    flags, threshold = outlier_flags(context.graph, context.embeddings, context.labels, context.train_ids,
                                     alpha=dc.outlier_alpha, fdr=dc.outlier_fdr, seed=context.seed,
                                     exact_below=dc.exact_below, index=dc.index)
    return DetectorResult(flags, {KIND: threshold})
