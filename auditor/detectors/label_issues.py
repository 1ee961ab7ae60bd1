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
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditor.detectors.flags import FLAG_COLUMNS
from auditor.detectors.neighbors import KnnGraph

CL_COLUMNS = ["index", "given", "suggested", "self_confidence", "in_off_diagonal", "is_issue", "rank_score"]
KNN_COLUMNS = ["index", "disagreement", "knn_label", "n_disagreeing", "n_neighbors"]
# cleanlab's slack on the per-class thresholds, so a probability equal to the threshold counts as above it.
_THRESHOLD_SLACK = 1e-6
# Cells (rows x classes) of probabilities read at once: bounds the temporaries whatever the class count.
_CHUNK_CELLS = 1 << 20


def _round_preserving_sum(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """Integers for the nonzero cells (`rows`, `values`: sorted by row, then column) of a sparse matrix that sum,
    per row, to the row's rounded total: the largest remainders round up, ties by column."""
    floor = np.floor(values).astype(np.int64)
    missing = (np.round(np.bincount(rows, weights=values, minlength=n_rows)).astype(np.int64)
               - np.bincount(rows, weights=floor, minlength=n_rows).astype(np.int64))
    order = np.lexsort((np.arange(len(values)), -(values - floor), rows))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - np.searchsorted(rows[order], rows[order])
    return floor + (rank < missing[rows])


def _confident_labels(probs: np.ndarray, rows: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confident label or -1, argmax) of probs[rows], read in row chunks so no (n x classes) temporary is built."""
    confident, argmax = np.empty(len(rows), dtype=np.int64), np.empty(len(rows), dtype=np.int64)
    step = _chunk(probs.shape[1])
    for start in range(0, len(rows), step):
        p = np.asarray(probs[rows[start:start + step]], dtype=np.float64)
        above = p >= thresholds - _THRESHOLD_SLACK
        confident[start:start + len(p)] = np.where(above.any(axis=1), np.argmax(np.where(above, p, -np.inf), axis=1),
                                                   -1)
        argmax[start:start + len(p)] = p.argmax(axis=1)
    return confident, argmax


def _chunk(n_classes: int) -> int:
    """Rows per chunk of a (rows x classes) pass: about _CHUNK_CELLS cells."""
    return max(1, _CHUNK_CELLS // max(n_classes, 1))


def confident_learning(pred_probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Confident learning (module docstring) per point with finite probabilities: suggested = the confident label,
    else the argmax; rank_score = 1 - self_confidence (p of the given label). Memory beyond `pred_probs` is
    O(points + classes): the confident joint is kept as its nonzero cells, never as a (classes x classes) matrix."""
    probs, labels = np.asarray(pred_probs), np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"pred_probs {probs.shape} must be (n, classes) with one label per row ({len(labels)})")
    n_classes, step = probs.shape[1], _chunk(probs.shape[1])
    rows = np.flatnonzero(np.concatenate([np.zeros(0, bool), *(np.isfinite(probs[start:start + step]).all(axis=1)
                                                               for start in range(0, len(probs), step))]))
    y = labels[rows].astype(np.int64)
    if np.any((y < 0) | (y >= n_classes)):
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    self_confidence = probs[rows, y].astype(np.float64)
    counts = np.bincount(y, minlength=n_classes)
    sums = np.bincount(y, weights=self_confidence, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / counts, np.inf)  # no point is confidently an unused class
    confident, argmax = _confident_labels(probs, rows, thresholds)
    has = confident >= 0
    cells, joint = np.unique(y[has] * n_classes + confident[has], return_counts=True)
    given, column = cells // n_classes, cells % n_classes
    calibrated = joint / np.bincount(given, weights=joint, minlength=n_classes)[given] * counts[given]
    prune = _round_preserving_sum(given, calibrated / max(math.fsum(calibrated), 1) * len(y), n_classes)
    by_class = np.argsort(y, kind="stable")
    first = np.searchsorted(y[by_class], np.arange(n_classes + 1))
    issue = np.zeros(len(y), dtype=bool)
    for i, j, count in zip(given, column, prune):
        if i == j or not count:
            continue
        members = by_class[first[i]:first[i + 1]]
        margin = probs[rows[members], j].astype(np.float64) - self_confidence[members]
        issue[members[np.argsort(-margin, kind="stable")[:count]]] = True  # stable: ties go by row
    issue &= argmax != y
    return pd.DataFrame({"index": rows, "given": y, "suggested": np.where(has, confident, argmax),
                         "self_confidence": self_confidence, "in_off_diagonal": has & (confident != y),
                         "is_issue": issue, "rank_score": 1.0 - self_confidence}, columns=CL_COLUMNS)


def knn_label_disagreement(graph_self: KnnGraph, labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Per point: the similarity-weighted share of its neighbours' votes for another label (negative
    similarities count 0; NaN without votes), the winning neighbour label (-1 without votes; ties: the lower label)
    and the counts. Votes are summed per (point, neighbour label) pair: O(points x k), whatever `num_classes`."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(f"labels must be class indices in [0, {num_classes})")
    found = graph_self.indices >= 0
    neighbor_labels = np.where(found, labels[np.where(found, graph_self.indices, 0)], -1)
    weights = np.where(found, np.clip(np.nan_to_num(graph_self.similarities.astype(np.float64)), 0, None), 0.0)
    point = np.broadcast_to(np.arange(len(labels))[:, None], found.shape)[found]
    cells, cell = np.unique(point * num_classes + neighbor_labels[found], return_inverse=True)
    votes = np.bincount(cell, weights=weights[found], minlength=len(cells))
    owner, voted = cells // num_classes, cells % num_classes
    total = np.bincount(owner, weights=votes, minlength=len(labels))
    own = np.zeros(len(labels))
    own[owner[voted == labels[owner]]] = votes[voted == labels[owner]]
    winner = np.full(len(labels), -1)
    best = np.lexsort((voted, -votes, owner))  # per point: the most votes first, ties by the lower label
    starts = np.flatnonzero(np.r_[True, owner[best][1:] != owner[best][:-1]]) if len(best) else best
    winner[owner[best[starts]]] = voted[best[starts]]
    with np.errstate(invalid="ignore", divide="ignore"):
        disagreement = 1.0 - own / total
    return pd.DataFrame({"index": np.arange(len(labels)), "disagreement": np.where(total > 0, disagreement, np.nan),
                         "knn_label": np.where(total > 0, winner, -1),
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
