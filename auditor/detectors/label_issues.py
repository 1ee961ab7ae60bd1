"""Label issues: confident learning on out-of-sample predicted probabilities (Northcutt et al. 2021, prune by
noise rate), a similarity-weighted kNN vote on the shared graph, and their combination into 'mislabeled' flags,
adjusted by memorization when influence estimates exist.

Confident learning: t_j = mean p_j over points labelled j; a point's confident label is its most probable class
among those with p_j >= t_j. The confident joint C[given][confident] is calibrated to the label counts, and in
each off-diagonal cell (i, j) the round(n * Q[i][j]) points labelled i with the largest margin p_j - p_i are
issues, unless the model's argmax is the given label (cleanlab's default, prune_by_noise_rate).

Combination: a flag needs confident learning's issue and a neighbourhood that agrees (similarity-weighted kNN
disagreement >= 0.6; confident learning alone where a point has no neighbours). On synthetic Gaussians this
keeps CL's recall and lifts its precision, most when the model's view of the data is noisier than the
embedding's. Influence (the survey's separation): a memorized point (self-influence >= 0.25) whose mean
cross-influence on the test points it affects is negative hurts similar test points, so reads as mislabeled:
its score moves halfway to 1 and CL's issue alone flags it; positive reads as rare but useful: its score halves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditor.flags import FLAG_COLUMNS
from auditor.neighbors import KnnGraph

CL_COLUMNS = ["index", "given", "suggested", "self_confidence", "in_off_diagonal", "is_issue", "rank_score"]
KNN_COLUMNS = ["index", "disagreement", "knn_label", "n_disagreeing", "n_neighbors"]
# cleanlab's slack on the per-class thresholds, so a probability equal to the threshold counts as above it.
_THRESHOLD_SLACK = 1e-6


def _round_preserving_sum(x: np.ndarray) -> np.ndarray:
    """Integers per row of x that sum to the row's rounded total (largest remainders round up)."""
    floor = np.floor(x).astype(np.int64)
    missing = np.round(x.sum(axis=1)).astype(np.int64) - floor.sum(axis=1)
    order = np.argsort(-(x - floor), axis=1, kind="stable")
    bump = np.zeros_like(floor)
    np.put_along_axis(bump, order, (np.arange(x.shape[1]) < missing[:, None]).astype(np.int64), axis=1)
    return floor + bump


def confident_learning(pred_probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Confident learning (module docstring) per point with finite probabilities: suggested = the confident label,
    else the argmax; rank_score = 1 - self_confidence (p of the given label)."""
    probs = np.asarray(pred_probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"pred_probs {probs.shape} must be (n, classes) with one label per row ({len(labels)})")
    n_classes = probs.shape[1]
    rows = np.flatnonzero(np.isfinite(probs).all(axis=1))
    p, y = probs[rows], labels[rows].astype(np.int64)
    if np.any((y < 0) | (y >= n_classes)):
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    counts = np.bincount(y, minlength=n_classes)
    sums = np.bincount(y, weights=p[np.arange(len(y)), y], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / counts, np.inf)  # no point is confidently an unused class
    above = p >= thresholds - _THRESHOLD_SLACK
    confident = np.where(above.any(axis=1), np.argmax(np.where(above, p, -np.inf), axis=1), -1)
    has = confident >= 0
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (y[has], confident[has]), 1)
    row_totals = joint.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        calibrated = np.where(row_totals > 0, joint / row_totals * counts[:, None], 0.0)
    prune = _round_preserving_sum(calibrated / max(calibrated.sum(), 1) * len(y))
    argmax = p.argmax(axis=1)
    issue = np.zeros(len(y), dtype=bool)
    for i, j in zip(*np.nonzero(prune * (1 - np.eye(n_classes, dtype=np.int64)))):
        members = np.flatnonzero(y == i)
        margin = p[members, j] - p[members, i]
        issue[members[np.argsort(-margin, kind="stable")[:prune[i, j]]]] = True  # stable: ties go by row
    issue &= argmax != y
    self_confidence = p[np.arange(len(y)), y]
    return pd.DataFrame({"index": rows, "given": y, "suggested": np.where(has, confident, argmax),
                         "self_confidence": self_confidence, "in_off_diagonal": has & (confident != y),
                         "is_issue": issue, "rank_score": 1.0 - self_confidence}, columns=CL_COLUMNS)


def knn_label_disagreement(graph_self: KnnGraph, labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Per point: the similarity-weighted share of its neighbours' votes for another label (negative
    similarities count 0; NaN without votes), the winning neighbour label (-1 without votes) and the counts."""
    labels = np.asarray(labels, dtype=np.int64)
    found = graph_self.indices >= 0
    neighbor_labels = np.where(found, labels[np.where(found, graph_self.indices, 0)], -1)
    weights = np.where(found, np.clip(np.nan_to_num(graph_self.similarities.astype(np.float64)), 0, None), 0.0)
    votes = np.zeros((len(labels), num_classes))
    rows = np.broadcast_to(np.arange(len(labels))[:, None], found.shape)
    np.add.at(votes, (rows[found], neighbor_labels[found]), weights[found])
    total = votes.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        disagreement = 1.0 - votes[np.arange(len(labels)), labels] / total
    return pd.DataFrame({"index": np.arange(len(labels)), "disagreement": np.where(total > 0, disagreement, np.nan),
                         "knn_label": np.where(total > 0, votes.argmax(axis=1), -1),
                         "n_disagreeing": (found & (neighbor_labels != labels[:, None])).sum(axis=1),
                         "n_neighbors": found.sum(axis=1)}, columns=KNN_COLUMNS)


def label_issue_flags(cl_frame: pd.DataFrame, knn_frame: pd.DataFrame, ids: np.ndarray, *,
                      min_knn_disagreement: float = 0.6, class_names: Sequence[str] | None = None,
                      self_influence: pd.Series | None = None, cross_influence: pd.Series | None = None,
                      memorized_threshold: float = 0.25) -> pd.DataFrame:
    """'mislabeled' flags by the combined rule (module docstring), score = mean of 1 - self_confidence and the kNN
    disagreement; influence Series are by sample id; ids and knn_frame cover all rows, cl_frame's `index` picks."""
    frame = cl_frame.merge(knn_frame, on="index", how="left", validate="one_to_one")
    sample_ids = np.asarray(ids)[frame["index"].to_numpy()]
    knn_known = frame["disagreement"].notna()
    knn_agrees = ~knn_known | (frame["disagreement"] >= min_knn_disagreement)
    score = np.where(knn_known, (frame["rank_score"] + frame["disagreement"]) / 2, frame["rank_score"])
    mem = np.full(len(frame), np.nan) if self_influence is None else self_influence.reindex(sample_ids).to_numpy()
    cross = (np.full(len(frame), np.nan) if cross_influence is None
             else cross_influence.reindex(sample_ids).to_numpy())
    memorized = np.nan_to_num(mem, nan=-np.inf) >= memorized_threshold
    harmful, useful = memorized & (cross < 0), memorized & (cross > 0)
    score = np.where(harmful, (1 + score) / 2, np.where(useful, score / 2, score))
    flagged = (frame["is_issue"] & (knn_agrees | harmful)).to_numpy()

    def name(label: float) -> str | int:
        return class_names[int(label)] if class_names is not None else int(label)

    details = []
    for row, m, c, bad, good in zip(frame[flagged].itertuples(index=False), mem[flagged], cross[flagged],
                                    harmful[flagged], useful[flagged]):
        detail = {"given": name(row.given), "suggested": name(row.suggested),
                  "self_confidence": round(row.self_confidence, 4)}
        if not np.isnan(row.disagreement):
            detail |= {"knn_disagreement": round(row.disagreement, 4), "knn_label": name(row.knn_label),
                       "disagreeing_neighbors": int(row.n_disagreeing), "neighbors": int(row.n_neighbors)}
        if not np.isnan(m):
            detail |= {"memorization": round(m, 4), "cross_influence": None if np.isnan(c) else round(c, 4),
                       "influence_reading": "mislabeled" if bad else "rare_but_useful" if good else None}
        details.append(json.dumps(detail))
    return pd.DataFrame({"sample_id": sample_ids[flagged], "kind": "mislabeled", "score": score[flagged],
                         "detail": details}, columns=FLAG_COLUMNS)
