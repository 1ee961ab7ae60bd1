"""The long tail: per-class k-means sub-populations with tiny clusters, low local density on the shared kNN graph,
and sub-populations of memorized points that influence the same test points (Feldman & Zhang 2020; the
memorization-necessary paper, section 5.1)."""

from __future__ import annotations

import json
import math
from typing import Literal

import faiss
import numpy as np
import pandas as pd

from auditor.detectors.flags import FLAG_COLUMNS
from auditor.detectors.neighbors import KnnGraph, normalise

CLUSTER_COLUMNS = ["index", "label", "cluster", "cluster_size"]
SUBPOP_COLUMNS = ["subpop_id", "sample_id", "source"]


def _cluster_class(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """Spherical k-means cluster of each (unit) row, renumbered largest cluster first (ties: lower centroid)."""
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(x)
    assign = km.index.search(x, 1)[1][:, 0]
    sizes = np.bincount(assign, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((np.arange(k), -sizes))] = np.arange(k)
    return rank[assign]


def class_clusters(vectors: np.ndarray, labels: np.ndarray, *, k_per_class: int | Literal["auto"] = "auto",
                   seed: int = 0, min_cluster: int = 5, max_k: int = 50, niter: int = 25) -> pd.DataFrame:
    """Cosine (spherical) k-means within each class: k = round(sqrt(n_class / 2)) when "auto", at most max_k and
    n_class // min_cluster (so clusters average >= min_cluster points), at least 1; seeded, so deterministic."""
    vectors, labels = normalise(vectors), np.asarray(labels)
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} vectors but {len(labels)} labels")
    clusters = np.zeros(len(labels), dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # grouped once: no pass over every point per class
    for rows in np.split(order, np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1):
        n = len(rows)
        k = round(math.sqrt(n / 2)) if k_per_class == "auto" else int(k_per_class)
        k = max(1, min(k, max_k, n // min_cluster))
        clusters[rows] = _cluster_class(vectors[rows], k, seed, niter)
    frame = pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "cluster": clusters})
    frame["cluster_size"] = frame.groupby(["label", "cluster"])["index"].transform("size").astype(np.int64)
    return frame[CLUSTER_COLUMNS]


def local_density(graph_self: KnnGraph) -> np.ndarray:
    """Mean cosine similarity of each point to its k nearest neighbours of any class (NaN without neighbours):
    any class, so a mislabeled point does not look rare merely because its neighbours carry other labels."""
    sims = graph_self.similarities.astype(np.float64)
    found = np.isfinite(sims)
    counts = found.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, np.where(found, sims, 0.0).sum(axis=1) / counts, np.nan)


def long_tail_flags(clusters: pd.DataFrame, density: np.ndarray, ids: np.ndarray, *, tiny_size: int = 3,
                    tiny_fraction: float = 0.01, density_quantile: float = 0.05) -> pd.DataFrame:
    """A 'long_tail' flag on points of a tiny cluster (size <= max(tiny_size, tiny_fraction * class size)) or with
    local density in their class's bottom density_quantile; both rules firing scores above 0.5, one at most 0.5."""
    frame = clusters.copy()
    frame["density"] = np.asarray(density, dtype=np.float64)[frame["index"].to_numpy()]
    by_class = frame.groupby("label")
    frame["class_size"] = by_class["index"].transform("size")
    frame["percentile"] = ((by_class["density"].rank(method="min") - 1)
                           / by_class["density"].transform("count"))
    cut = np.maximum(tiny_size, tiny_fraction * frame["class_size"])
    frame["tiny_cluster"] = frame["cluster_size"] <= cut
    frame["low_density"] = frame["percentile"] < density_quantile
    # Score: the mean of the two rules' strengths, each 1 at the extreme, near 0 at its cut-off, 0 if it is silent.
    frame["score"] = 0.5 * np.add(np.where(frame["tiny_cluster"], 1 - (frame["cluster_size"] - 1) / cut, 0.0),
                                np.where(frame["low_density"], 1 - frame["percentile"] / density_quantile, 0.0))
    flagged = frame[frame["tiny_cluster"] | frame["low_density"]]
    details = [json.dumps({"reasons": [name for name in ("tiny_cluster", "low_density") if getattr(row, name)],
                           "cluster": int(row.cluster), "cluster_size": int(row.cluster_size),
                           "class_size": int(row.class_size),
                           "density": None if np.isnan(row.density) else round(row.density, 6),
                           "density_percentile": None if np.isnan(row.percentile) else round(row.percentile, 4)})
               for row in flagged.itertuples(index=False)]
    return pd.DataFrame({"sample_id": np.asarray(ids)[flagged["index"].to_numpy()], "kind": "long_tail",
                         "score": flagged["score"].to_numpy(), "detail": details}, columns=FLAG_COLUMNS)


def subpopulations_from_influence(influence: pd.DataFrame, memorized_ids: np.ndarray,
                                  min_score: float = 0.25) -> pd.DataFrame:
    """Sub-populations (Feldman & Zhang): a memorized point supports the test point it influences most strongly
    (positive influence >= min_score); memorized points that support the same test point form one sub-population,
    even alone. No chaining: a point belongs to one group, so two unrelated points never merge through a third.
    Rows: the members (source 'influence') and their common test point ('influenced_test'); largest groups first."""
    edges = influence[influence["train_id"].isin(np.asarray(memorized_ids)) & (influence["score"] >= min_score)]
    anchors = (edges.assign(strength=-edges["score"]).sort_values(["train_id", "strength", "test_id"])
               .drop_duplicates("train_id")[["train_id", "test_id"]])
    groups = anchors.groupby("test_id")["train_id"].agg(["size", "min"]).reset_index()
    groups = groups.sort_values(["size", "min"], ascending=[False, True]).reset_index(drop=True)
    number = pd.Series(np.arange(len(groups)), index=groups["test_id"])
    members = pd.DataFrame({"subpop_id": number[anchors["test_id"]].to_numpy(), "sample_id": anchors["train_id"],
                            "source": "influence"}).sort_values(["subpop_id", "sample_id"])
    tests = pd.DataFrame({"subpop_id": np.arange(len(groups)), "sample_id": groups["test_id"],
                          "source": "influenced_test"})
    out = pd.concat([members, tests], ignore_index=True).sort_values("subpop_id", kind="stable")
    return out[SUBPOP_COLUMNS].reset_index(drop=True)
