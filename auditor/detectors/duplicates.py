"""Exact duplicates (same pixels or file), near duplicates and train-test leaks (on the shared kNN graph and the copy
matcher's, cut by Benjamini-Hochberg in copies.py, or at a configured or reviewer-judged cosine), as pairs and as one
flag per sample naming its closest twin."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from auditor.detectors.copies import DISCOVERY_METHODS, copy_scores, cosine_cuts, match_name, query_q_values
from auditor.detectors.pair_kinds import DUPLICATE_KINDS, LEAK_KINDS
from auditor.detectors.thresholds import Threshold
from auditor.detectors.flags import FLAG_COLUMNS
from auditor.detectors.neighbors import KnnGraph

PAIR_COLUMNS = ["a_id", "b_id", "kind", "similarity", "conflicting"]
EXACT_COLUMNS = ["a_id", "b_id", "kind", "similarity", "same_file", "conflicting"]
_EXACT_KINDS = ("exact_duplicate", "exact_leak")
# Per-pair evidence carried into the flags' detail, not columns of the `pairs` table (embedding pairs: no match).
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


def _graph_pairs(graph: KnnGraph, threshold: Threshold) -> pd.DataFrame:
    """Every graph edge at or above the threshold: query row `b`, base row `a`, similarity, the cosine this query's
    edge needed (`cut`) and the query's q-value (`q_value`, NaN for a configured or reviewer-judged cut). A cut set
    by Benjamini-Hochberg (copies.py) is on the edge's copy score, any other on its similarity."""
    discovered = threshold.method in DISCOVERY_METHODS
    rows, ranks = np.nonzero(((copy_scores(graph) if discovered else graph.similarities) >= threshold.value)
                             & (graph.indices >= 0))
    return pd.DataFrame({
        "a": graph.indices[rows, ranks], "b": rows, "rank": ranks,
        "similarity": graph.similarities[rows, ranks].astype(np.float64),
        "cut": cosine_cuts(graph, threshold.value)[rows] if discovered else np.full(len(rows), threshold.value),
        "q_value": query_q_values(graph, threshold)[rows] if discovered else np.full(len(rows), np.nan)})


def near_duplicate_pairs(graph_self: KnnGraph, ids: np.ndarray, labels: np.ndarray, threshold: Threshold,
                         kind: str = "near_duplicate") -> pd.DataFrame:
    """Each unordered pair of the self-graph at or above the threshold once (a_id the earlier row), with its
    evidence (COPY_EVIDENCE less the match)."""
    return _pairs(_graph_pairs(graph_self, threshold), ids, labels, kind, ["cut", "q_value"], self_graph=True)


def leak_pairs(graph_test_to_train: KnnGraph, test_ids: np.ndarray, train_ids: np.ndarray,
               test_labels: np.ndarray, train_labels: np.ndarray, threshold: Threshold,
               kind: str = "leak") -> pd.DataFrame:
    """Every (training, test) edge of the test-to-train graph at or above the threshold (a_id the training side),
    with its evidence (COPY_EVIDENCE less the match)."""
    return _pairs(_graph_pairs(graph_test_to_train, threshold), train_ids, train_labels, kind, ["cut", "q_value"],
                  query_ids=test_ids, query_labels=test_labels)


def copy_pairs(graph: KnnGraph, matches: np.ndarray, base_ids: np.ndarray, base_labels: np.ndarray,
               threshold: Threshold, kind: str, *, query_ids: np.ndarray | None = None,
               query_labels: np.ndarray | None = None) -> pd.DataFrame:
    """Pairs of the copy matcher (copies.py) at or above the threshold, a_id the base side, with COPY_EVIDENCE: how
    the copy matched, the cosine this query's edge needed and the query's q-value; without query ids the graph is
    the base's self-graph, and each unordered pair is kept once, under its better match."""
    edges = _graph_pairs(graph, threshold)
    edges["match"] = [match_name(m) for m in matches[edges["b"].to_numpy(), edges["rank"].to_numpy()]]
    return _pairs(edges, base_ids, base_labels, kind, COPY_EVIDENCE, query_ids=query_ids, query_labels=query_labels,
                  self_graph=query_ids is None)


def _pairs(edges: pd.DataFrame, base_ids: np.ndarray, base_labels: np.ndarray, kind: str, evidence: list[str], *,
           query_ids: np.ndarray | None = None, query_labels: np.ndarray | None = None,
           self_graph: bool = False) -> pd.DataFrame:
    """Graph edges as pairs (a_id the base side; on a self-graph the earlier row, each unordered pair once under its
    most similar edge) with the `evidence` columns."""
    if self_graph:
        query_ids, query_labels = base_ids, base_labels
        edges[["a", "b"]] = np.sort(edges[["a", "b"]].to_numpy(), axis=1)
        edges = edges.sort_values(["a", "b", "similarity"], ascending=[True, True, False]).drop_duplicates(["a", "b"])
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    return pd.DataFrame({"a_id": np.asarray(base_ids)[a], "b_id": np.asarray(query_ids)[b], "kind": kind,
                         "similarity": edges["similarity"].to_numpy(),
                         "conflicting": np.asarray(base_labels)[a] != np.asarray(query_labels)[b],
                         **{column: edges[column].to_numpy() for column in evidence}},
                        columns=[*PAIR_COLUMNS, *evidence])


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
    """What the false discovery rate of a flag's cut means for the flags of its kind, with the flag's own q-value
    where its pair has one (the copy matcher's); empty for a cut without one (configured or reviewer-judged)."""
    if threshold is None or "fdr" not in threshold.detail:
        return {}
    detail = threshold.detail
    chance = (f"FDR {detail['fdr'] * 100:g} %: of the {detail['discoveries']} images with a copy found, about "
              f"{detail['expected_false']:g} may have none (Benjamini-Hochberg over {detail['tested']:,} images tested)")
    if not np.isfinite(q_value):
        return {"fdr": detail["fdr"], "chance": chance}
    return {"q_value": float(f"{q_value:.3g}"), "fdr": detail["fdr"], "chance": f"q-value {q_value:.2g}; {chance}"}


def duplicate_flags(pairs: pd.DataFrame, thresholds: Thresholds = None) -> pd.DataFrame:
    """A 'duplicate' flag on both sides of every exact, near or pixel duplicate pair (thresholds: one for all
    similarity-based pairs, or one per pair kind)."""
    return _twin_flags(pairs, DUPLICATE_KINDS, "duplicate", thresholds, None)


def leak_flags(pairs: pd.DataFrame, thresholds: Thresholds = None) -> pd.DataFrame:
    """A 'leaked' flag on both the training and the test side of every exact, embedding or pixel train-test pair."""
    return _twin_flags(pairs, LEAK_KINDS, "leaked", thresholds, ("train", "test"))
