"""The `embedders`, `embeddings` and `embedding_map` tables: which embedder ran, its vectors (streamed in bounded
chunks) and its 2-D map."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from auditor.store.database import Store


def save_embedder(store: Store, row: dict) -> None:
    """Record an embedder (replacing an earlier row of its embedder_id)."""
    store.write([("embedders", pd.DataFrame([row]))],
                deletes=[("DELETE FROM embedders WHERE embedder_id = ?", [row["embedder_id"]])])


def latest_embedder(store: Store) -> str | None:
    """The most recently recorded embedder's id; None before the embeddings stage ran."""
    return store.scalar("SELECT embedder_id FROM embedders ORDER BY created_at DESC LIMIT 1")


def unembedded_samples(store: Store, embedder_id: str) -> pd.DataFrame:
    """The samples (sample_id, path, pixel_hash) that `embedder_id` has no vector for yet, in sample_id order."""
    return store.query("SELECT sample_id, path, pixel_hash FROM samples WHERE sample_id NOT IN "
                       "(SELECT sample_id FROM embeddings WHERE embedder_id = ?) ORDER BY sample_id", [embedder_id])


def embedded_ids(store: Store, embedder_id: str) -> np.ndarray:
    """The sample ids that `embedder_id` has a vector for, in sample_id order."""
    return store.query("SELECT sample_id FROM embeddings WHERE embedder_id = ? ORDER BY sample_id",
                       [embedder_id])["sample_id"].to_numpy()


def save_embedding_map(store: Store, embedder_id: str, sample_ids: np.ndarray, xy: np.ndarray) -> None:
    """Replace `embedder_id`'s 2-D map with the points `xy` of `sample_ids`."""
    store.write([("embedding_map", pd.DataFrame({"embedder_id": embedder_id, "sample_id": sample_ids,
                                                 "x": xy[:, 0].astype(np.float32),
                                                 "y": xy[:, 1].astype(np.float32)}))],
                deletes=[("DELETE FROM embedding_map WHERE embedder_id = ?", [embedder_id])])


def stream_embeddings(store: Store, embedder_id: str, chunk: int = 65_536,
                      memory_limit: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample ids, float32 vectors) of `embedder_id`'s stored embeddings, about `chunk` rows at a time in storage
    order, read as Arrow batches: memory stays bounded by a chunk (plus DuckDB's buffer cache, `memory_limit`)."""
    with store.connect(read_only=True) as con:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        reader = con.sql("SELECT sample_id, vector FROM embeddings WHERE embedder_id = ?",
                         params=[embedder_id]).to_arrow_reader(chunk)
        for batch in reader:
            ids = batch.column("sample_id").to_numpy(zero_copy_only=False)
            values = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
            if len(ids) and len(values) % len(ids):
                raise RuntimeError(f"embedder {embedder_id} has stored vectors of different lengths; delete its rows "
                                   f"from `embeddings` and run the embeddings stage again")
            yield ids, values.reshape(len(ids), -1).astype(np.float32, copy=False)


def load_embeddings(store: Store, embedder_id: str, sample_ids: np.ndarray) -> np.ndarray:
    """The stored vectors of `sample_ids`, in that order, as one float32 matrix, filled chunk by chunk (one copy of
    the vectors in memory, not a frame of per-row arrays: about 2 GB at a million 512-d vectors)."""
    position = pd.Index(sample_ids)
    out: np.ndarray | None = None
    found = np.zeros(len(sample_ids), dtype=bool)
    for ids, vectors in stream_embeddings(store, embedder_id):
        if out is None:
            out = np.empty((len(sample_ids), vectors.shape[1]), dtype=np.float32)
        rows = position.get_indexer(ids)
        mine = rows >= 0
        out[rows[mine]], found[rows[mine]] = vectors[mine], True
    if not found.all():
        missing = sample_ids[~found][:3]
        raise RuntimeError(f"embedder {embedder_id} has no vectors for {list(missing)}...; run the embeddings stage")
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
