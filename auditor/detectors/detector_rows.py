"""The detectors' tables: the out-of-sample probabilities they read (shadow models' or K-fold `oof_probs`), the
reviewers' `pair_judgements`, and the flags, pairs, thresholds, clusters, neighbours and sub-populations they write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditor.store.database import Store


def shadow_out_of_shard_probs(store: Store) -> pd.DataFrame:
    """sample_id and probs of every out-of-shard training prediction of the current memorization run's models."""
    return store.query("SELECT p.sample_id, p.probs FROM shadow_predictions p JOIN shadow_models m USING (model_id) "
                       "JOIN shadow_designs d USING (design_id) WHERE p.split = 'train' AND NOT p.in_shard "
                       "AND p.probs IS NOT NULL AND d.run_id = (SELECT max(mem_run_id) FROM scores)")


def oof_probs(store: Store, run_id: str) -> pd.DataFrame:
    """sample_id and probs of the K-fold out-of-sample probabilities stored by `run_id`."""
    return store.query("SELECT sample_id, probs FROM oof_probs WHERE run_id = ?", [run_id])


OOF_CHUNK_CELLS = 2 ** 22  # floats per oof_probs insert (16 MiB of float32)
OOF_MEMORY_MIB = 256  # DuckDB's buffer memory during the oof_probs write (at least); it spills the rows beyond this
DUCKDB_VECTOR_ROWS = 2048  # DuckDB commits a transaction's rows in vectors of this many: one must fit the limit


def save_oof_probs(store: Store, run_id: str, sample_ids: np.ndarray, probs: np.ndarray, source: str) -> None:
    """Replace `run_id`'s out-of-sample probabilities, one row of `probs` per sample id, in one transaction of inserts
    of at most OOF_CHUNK_CELLS floats each (views of `probs`) under a DuckDB memory limit of OOF_MEMORY_MIB or two
    commit vectors of rows, whichever is larger, so the write's memory does not grow with the number of points."""
    rows = max(1, OOF_CHUNK_CELLS // max(1, probs.shape[1]))
    vector_mib = min(len(probs), DUCKDB_VECTOR_ROWS) * probs.shape[1] * probs.itemsize / 2 ** 20
    memory_mib = max(OOF_MEMORY_MIB, int(2 * vector_mib) + 1)
    store.write([("oof_probs", pd.DataFrame({"sample_id": sample_ids[i:i + rows], "probs": list(probs[i:i + rows]),
                                             "source": source, "run_id": run_id}))
                 for i in range(0, len(sample_ids), rows)],
                deletes=[("DELETE FROM oof_probs WHERE run_id = ?", [run_id])], memory_limit_mib=memory_mib)


def judged_pairs(store: Store, pair_kind: str) -> pd.DataFrame:
    """similarity and is_duplicate of every `pair_kind` pair a reviewer judged (their latest judgement)."""
    return store.query("SELECT p.similarity, j.is_duplicate FROM pair_judgements j JOIN pairs p "
                       "ON p.a_id = j.a_id AND p.b_id = j.b_id AND p.kind = ? "
                       "QUALIFY row_number() OVER (PARTITION BY j.a_id, j.b_id ORDER BY j.decided_at DESC) = 1",
                       [pair_kind])


def pair_judgements(store: Store) -> pd.DataFrame:
    """Every pair judgement (a_id, b_id, is_duplicate, decided_at), oldest first."""
    return store.query("SELECT a_id, b_id, is_duplicate, decided_at FROM pair_judgements "
                       "ORDER BY decided_at, a_id, b_id")


def save_detections(store: Store, run_id: str, embedder_id: str, kinds: Sequence[str],
                    tables: dict[str, pd.DataFrame]) -> None:
    """In one transaction, replace the flags of `kinds`, `run_id`'s thresholds, the pairs, clusters, sub-populations
    and `embedder_id`'s neighbours with `tables` (flags, pairs, thresholds, clusters, neighbors, subpopulations)."""
    marks = ", ".join("?" * len(kinds))
    store.write(list(tables.items()),
                deletes=[(f"DELETE FROM flags WHERE kind IN ({marks})", list(kinds)),
                         ("DELETE FROM thresholds WHERE run_id = ?", [run_id]),
                         ("DELETE FROM pairs", []), ("DELETE FROM clusters", []), ("DELETE FROM subpopulations", []),
                         ("DELETE FROM neighbors WHERE embedder_id = ?", [embedder_id])])


def pair_ids(store: Store) -> pd.DataFrame:
    """Every pair's a_id, b_id and kind."""
    return store.query("SELECT a_id, b_id, kind FROM pairs")


def cluster_sizes(store: Store) -> pd.DataFrame:
    """Every clustered training point's sample_id and cluster_size."""
    return store.query("SELECT sample_id, cluster_size FROM clusters")
