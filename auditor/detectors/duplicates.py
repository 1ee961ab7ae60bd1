"""Exact duplicates (same pixels or file), near duplicates (cosine >= a calibrated threshold on the shared kNN
graph) and train-test leaks, as pairs and as one flag per sample naming its closest twin."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from auditor.detectors.copies import copy_scores, cosine_cuts, match_name, query_q_values
from auditor.detectors.pair_kinds import DUPLICATE_KINDS, LEAK_KINDS
from auditor.detectors.thresholds import Threshold
from auditor.detectors.flags import FLAG_COLUMNS
from auditor.detectors.neighbors import KnnGraph

PAIR_COLUMNS = ["a_id", "b_id", "kind", "similarity", "conflicting"]
EXACT_COLUMNS = ["a_id", "b_id", "kind", "similarity", "same_file", "conflicting"]
_EXACT_KINDS = ("exact_duplicate", "exact_leak")
ISOLATION_RATIO = 0.25
# Per-pair evidence of the copy matcher, carried into its flags' detail (not columns of the `pairs` table).
COPY_EVIDENCE = ["match", "cut", "q_value"]


def exact_duplicate_pairs(ids: np.ndarray, splits: np.ndarray, labels: np.ndarray, file_hash: np.ndarray,
                          pixel_hash: np.ndarray, *, train_split: str = "train") -> pd.DataFrame:
    """Pairs of samples with one pixel hash (else one file hash): 'exact_leak' (a_id the training side) across the
    train/held-out line, else 'exact_duplicate'."""
    # A group of n gives at most 2n - 3 pairs, not n(n - 1) / 2: each member is paired with the group's first
    # training member (else its first member), and each other training member with the first held-out one, so
    # every copy on either side of a leak is in a leak pair.
    file = pd.Series(np.asarray(file_hash, dtype=object))
    pixel = pd.Series(np.asarray(pixel_hash, dtype=object))
    key = ("pixel:" + pixel.astype(str)).where(pixel.notna(), ("file:" + file.astype(str)).where(file.notna()))
    frame = pd.DataFrame({"id": np.asarray(ids), "train": np.asarray(splits) == train_split,
                          "label": np.asarray(labels), "file": file, "key": key})
    frame = frame[frame["key"].notna()].sort_values(["key", "train"], ascending=[True, False], kind="stable")
    first = frame.drop_duplicates("key")
    rest = frame.drop(index=first.index)
    first_held_out = frame[~frame["train"]].drop_duplicates("key")
    pairs = pd.concat([rest.merge(first, on="key", suffixes=("_b", "_a")),
                       rest[rest["train"]].merge(first_held_out, on="key", suffixes=("_a", "_b"))],
                      ignore_index=True)
    return pd.DataFrame({"a_id": pairs["id_a"], "b_id": pairs["id_b"],
                         "kind": np.where(pairs["train_a"] != pairs["train_b"], "exact_leak", "exact_duplicate"),
                         "similarity": 1.0, "same_file": (pairs["file_a"] == pairs["file_b"]).to_numpy(),
                         "conflicting": (pairs["label_a"] != pairs["label_b"]).to_numpy()}, columns=EXACT_COLUMNS)


def _graph_pairs(graph: KnnGraph, threshold: Threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, base row, similarity) of every graph edge at or above the threshold (_hit_edges)."""
    rows, ranks = _hit_edges(graph, threshold)
    return rows, graph.indices[rows, ranks], graph.similarities[rows, ranks].astype(np.float64)


def _hit_edges(graph: KnnGraph, threshold: Threshold) -> tuple[np.ndarray, np.ndarray]:
    """(query row, rank) of every graph edge at or above the threshold: its copy score (copies.py) for a threshold
    calibrated on synthetic copies, else its similarity.

    With a distribution-calibrated threshold, a nearest neighbour also counts when it is above the distribution's
    isolation floor (its 90th percentile) and ISOLATION_RATIO times closer (in cosine distance) than the second
    neighbour: a lightly edited copy stands apart from everything else even where the global tail cut is strict and
    copies are more common than the tail cut allows (Lowe's ratio test)."""
    sims = graph.similarities
    hit = (copy_scores(graph) if threshold.method == "synthetic_copies" else sims) >= threshold.value
    floor = threshold.detail.get("isolation_floor") if threshold.method == "nn_distribution" else None
    if floor is not None and sims.shape[1] >= 2:
        gap1, gap2 = 1.0 - sims[:, 0], 1.0 - sims[:, 1]
        hit[:, 0] |= (sims[:, 0] >= floor) & (gap1 <= ISOLATION_RATIO * np.nan_to_num(gap2, nan=1.0))
    return np.nonzero(hit & (graph.indices >= 0))


def near_duplicate_pairs(graph_self: KnnGraph, ids: np.ndarray, labels: np.ndarray, threshold: Threshold,
                         kind: str = "near_duplicate") -> pd.DataFrame:
    """Each unordered pair of the self-graph at or above the threshold once (a_id the earlier row)."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    rows, cols, sims = _graph_pairs(graph_self, threshold)
    edges = pd.DataFrame({"a": np.minimum(rows, cols), "b": np.maximum(rows, cols), "similarity": sims})
    edges = edges.sort_values(["a", "b", "similarity"], ascending=[True, True, False]).drop_duplicates(["a", "b"])
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    return pd.DataFrame({"a_id": ids[a], "b_id": ids[b], "kind": kind,
                         "similarity": edges["similarity"].to_numpy(), "conflicting": labels[a] != labels[b]},
                        columns=PAIR_COLUMNS)


def leak_pairs(graph_test_to_train: KnnGraph, test_ids: np.ndarray, train_ids: np.ndarray,
               test_labels: np.ndarray, train_labels: np.ndarray, threshold: Threshold,
               kind: str = "leak") -> pd.DataFrame:
    """Every (training, test) edge of the test-to-train graph at or above the threshold (a_id the training side)."""
    rows, cols, sims = _graph_pairs(graph_test_to_train, threshold)
    return pd.DataFrame({"a_id": np.asarray(train_ids)[cols], "b_id": np.asarray(test_ids)[rows], "kind": kind,
                         "similarity": sims,
                         "conflicting": np.asarray(train_labels)[cols] != np.asarray(test_labels)[rows]},
                        columns=PAIR_COLUMNS)


def copy_pairs(graph: KnnGraph, matches: np.ndarray, base_ids: np.ndarray, base_labels: np.ndarray,
               threshold: Threshold, kind: str, *, query_ids: np.ndarray | None = None,
               query_labels: np.ndarray | None = None) -> pd.DataFrame:
    """Pairs of the copy matcher (copies.py) at or above the threshold, a_id the base side, with how the copy
    matched (`match`), the cosine this query's edge needed (`cut`) and the query's q-value (`q_value`: its
    Benjamini-Hochberg adjusted p-value, NaN for a threshold from reviewers' judgements); without query ids the graph
    is the base's self-graph, and each unordered pair is kept once, under its better match."""
    rows, ranks = _hit_edges(graph, threshold)
    cols, sims = graph.indices[rows, ranks], graph.similarities[rows, ranks].astype(np.float64)
    calibrated = threshold.method == "synthetic_copies"
    cut = cosine_cuts(graph, threshold.value)[rows] if calibrated else np.full(len(rows), threshold.value)
    q_value = query_q_values(graph, threshold)[rows] if calibrated else np.full(len(rows), np.nan)
    frame = pd.DataFrame({"a": cols, "b": rows, "similarity": sims, "match": [match_name(m) for m in
                                                                              matches[rows, ranks]], "cut": cut,
                          "q_value": q_value})
    if query_ids is None:
        query_ids, query_labels = base_ids, base_labels
        frame[["a", "b"]] = np.sort(frame[["a", "b"]].to_numpy(), axis=1)
        frame = frame.sort_values(["a", "b", "similarity"], ascending=[True, True, False]).drop_duplicates(["a", "b"])
    a, b = frame["a"].to_numpy(), frame["b"].to_numpy()
    return pd.DataFrame({"a_id": np.asarray(base_ids)[a], "b_id": np.asarray(query_ids)[b], "kind": kind,
                         "similarity": frame["similarity"].to_numpy(),
                         "conflicting": np.asarray(base_labels)[a] != np.asarray(query_labels)[b],
                         "match": frame["match"].to_numpy(), "cut": frame["cut"].to_numpy(),
                         "q_value": frame["q_value"].to_numpy()},
                        columns=[*PAIR_COLUMNS, *COPY_EVIDENCE])


Thresholds = Threshold | Mapping[str, Threshold] | None


def _threshold_of(thresholds: Thresholds, pair_kind: str) -> Threshold | None:
    """The threshold behind a pair kind: one for all non-exact kinds, or one per pair kind."""
    if pair_kind in _EXACT_KINDS or thresholds is None:
        return None
    return thresholds.get(pair_kind) if isinstance(thresholds, Mapping) else thresholds


def _twin_flags(pairs: pd.DataFrame, kinds: tuple[str, ...], flag_kind: str, thresholds: Thresholds,
                roles: tuple[str, str] | None) -> pd.DataFrame:
    """One flag per sample in the `kinds` pairs: its best twin (exact first, then most similar), score = that
    similarity, with the pair kind (signal), its threshold (the pair's own cosine cut where it has one), how a copy
    matched, the number of twins and how many carry another label; roles name the a and b sides."""
    chosen = pairs[pairs["kind"].isin(kinds)]
    exact = chosen["kind"].isin(_EXACT_KINDS).to_numpy()
    sides = [pd.DataFrame({"sample_id": chosen[me].to_numpy(), "twin": chosen[other].to_numpy(),
                           "similarity": chosen["similarity"].to_numpy(dtype=np.float64), "exact": exact,
                           "pair_kind": chosen["kind"].to_numpy(),
                           "conflicting": chosen["conflicting"].to_numpy(dtype=bool), "role": role,
                           "match": chosen.get("match", pd.Series(None, index=chosen.index)).to_numpy(),
                           "cut": chosen.get("cut", pd.Series(np.nan, index=chosen.index)).to_numpy(dtype=float),
                           "q_value": chosen.get("q_value", pd.Series(np.nan, index=chosen.index)
                                                 ).to_numpy(dtype=float)})
             for me, other, role in zip(("a_id", "b_id"), ("b_id", "a_id"), roles or (None, None))]
    twins = (pd.concat(sides, ignore_index=True)
             .sort_values(["sample_id", "exact", "similarity", "twin"], ascending=[True, False, False, True])
             .drop_duplicates(["sample_id", "twin"]))
    counts = twins.groupby("sample_id").agg(twins=("twin", "size"), conflicting_twins=("conflicting", "sum"))
    best = twins.drop_duplicates("sample_id").join(counts, on="sample_id")
    details = []
    for row in best.itertuples(index=False):
        threshold = _threshold_of(thresholds, row.pair_kind)
        cut = None if threshold is None else row.cut if np.isfinite(row.cut) else threshold.value
        details.append(json.dumps({**({"role": row.role} if roles else {}), "twin": str(row.twin),
                                   "pair_kind": row.pair_kind, "similarity": round(row.similarity, 6),
                                   "exact": bool(row.exact), "conflicting": bool(row.conflicting),
                                   "twins": int(row.twins), "conflicting_twins": int(row.conflicting_twins),
                                   "threshold": None if cut is None else round(float(cut), 6),
                                   "threshold_method": None if threshold is None else threshold.method,
                                   **({"match": row.match} if isinstance(row.match, str) else {}),
                                   **_discovery_note(threshold, row.q_value)}))
    return pd.DataFrame({"sample_id": best["sample_id"].to_numpy(), "kind": flag_kind,
                         "score": best["similarity"].to_numpy(), "detail": details}, columns=FLAG_COLUMNS)


def _discovery_note(threshold: Threshold | None, q_value: float) -> dict:
    """A copy-matcher flag's q-value and what its false discovery rate means for the flags of its kind (empty for
    flags without one)."""
    if threshold is None or not np.isfinite(q_value) or "fdr" not in threshold.detail:
        return {}
    detail = threshold.detail
    return {"q_value": float(f"{q_value:.3g}"), "fdr": detail["fdr"],
            "chance": (f"q-value {q_value:.2g}; FDR {detail['fdr'] * 100:g} %: of the {detail['discoveries']} images "
                       f"with a copy found, about {detail['expected_false']:g} may have none (Benjamini-Hochberg over "
                       f"{detail['tested']:,} images tested)")}


def duplicate_flags(pairs: pd.DataFrame, thresholds: Thresholds = None) -> pd.DataFrame:
    """A 'duplicate' flag on both sides of every exact, near or pixel duplicate pair (thresholds: one for all
    similarity-based pairs, or one per pair kind)."""
    return _twin_flags(pairs, DUPLICATE_KINDS, "duplicate", thresholds, None)


def leak_flags(pairs: pd.DataFrame, thresholds: Thresholds = None) -> pd.DataFrame:
    """A 'leaked' flag on both the training and the test side of every exact, embedding or pixel train-test pair."""
    return _twin_flags(pairs, LEAK_KINDS, "leaked", thresholds, ("train", "test"))
