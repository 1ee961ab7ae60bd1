"""Embed every image once per embedder, streaming chunks into `embeddings`, plus a 2-D map for the dashboard."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.config import AuditConfig
from auditor.embeddings import build_embedder, embed_paths, pca_2d
from auditor.store import Store
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import artifact_path, finish_run, now, record_problems, start_run
from pipelines.stages import StageReport


def _audit_model_checkpoint(store: Store) -> Path | None:
    """Checkpoint of the lowest-seed training run behind the current scores, if it was saved."""
    run_id = store.scalar("SELECT r.run_id FROM run_inputs i JOIN runs r ON r.run_id = i.input_run_id "
                          "WHERE i.run_id = (SELECT min(run_id) FROM scores) ORDER BY r.seed LIMIT 1")
    path = artifact_path(store, run_id) if run_id else None
    return path if path is not None and path.exists() else None


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


def embeddings_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Embed the samples not yet embedded by this embedder (resumable), then store its PCA map."""
    t0 = time.perf_counter()
    ec = cfg.embeddings
    embedder = build_embedder(ec.kind, device=cfg.device, clip_model=ec.clip_model,
                              clip_pretrained=ec.clip_pretrained, clip_checkpoint=ec.clip_checkpoint or None,
                              model_checkpoint=_audit_model_checkpoint(store), imagenet_size=ec.imagenet_size)
    info = embedder.info
    run_id = f"embed-{info.embedder_id}"
    start_run(store, run_id, "embeddings", cfg, seed=cfg.seed)
    store.write([("embedders", pd.DataFrame([{
        "embedder_id": info.embedder_id, "kind": info.kind, "model_name": info.model_name, "weights": info.weights,
        "dim": info.dim, "input_size": info.input_size, "fallback_reason": info.fallback_reason, "run_id": run_id,
        "created_at": now()}]))], deletes=[("DELETE FROM embedders WHERE embedder_id = ?", [info.embedder_id])])
    todo = store.query("SELECT sample_id, path FROM samples WHERE sample_id NOT IN "
                       "(SELECT sample_id FROM embeddings WHERE embedder_id = ?) ORDER BY sample_id",
                       [info.embedder_id])
    ids = todo["sample_id"].to_numpy()

    def commit(start: int, vectors: np.ndarray) -> None:
        ok = ~np.isnan(vectors).any(axis=1)
        chunk = pd.DataFrame({"embedder_id": info.embedder_id, "sample_id": ids[start:start + len(vectors)][ok],
                              "vector": list(vectors[ok].astype(np.float32))})
        store.append("embeddings", chunk)

    bar = progress(f"embed ({info.embedder_id})", len(ids), "img")
    failures = embed_paths(embedder, todo["path"].tolist(), batch_size=ec.batch_size, chunk_size=ec.chunk_size,
                           workers=cfg.data.workers, on_chunk=commit, progress=bar.update)
    bar.close()
    if failures:
        record_problems(store, pd.DataFrame([
            {"source": todo["path"].iloc[i], "sample_id": ids[i], "reason": reason, "code": "unreadable",
             "severity": "error", "action": "skipped", "stage": "embeddings"} for i, reason in failures.items()]))
    all_ids = store.query("SELECT sample_id FROM embeddings WHERE embedder_id = ? ORDER BY sample_id",
                          [info.embedder_id])["sample_id"].to_numpy()
    xy = pca_2d(load_embeddings(store, info.embedder_id, all_ids), seed=cfg.seed)
    store.write([("embedding_map", pd.DataFrame({"embedder_id": info.embedder_id, "sample_id": all_ids,
                                                 "x": xy[:, 0].astype(np.float32),
                                                 "y": xy[:, 1].astype(np.float32)}))],
                deletes=[("DELETE FROM embedding_map WHERE embedder_id = ?", [info.embedder_id])])
    seconds = time.perf_counter() - t0
    note = f"; {info.fallback_reason}" if info.fallback_reason else ""
    finish_run(store, run_id, seconds=seconds, message=f"{len(ids)} embedded now, {len(all_ids)} in all{note}")
    return StageReport("embeddings", seconds, {"embedder": info.embedder_id, "dim": info.dim, "embedded": len(ids),
                                               "total": len(all_ids), "fallback": info.fallback_reason})
