"""Embed every image once per embedder, streaming chunks into `embeddings`, plus a 2-D map for the dashboard."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.config import AuditConfig
from auditor.training.embedding_rows import (  # noqa: F401 (stream_embeddings re-exported)
    embedded_ids, load_embeddings, save_embedder, save_embedding_map, stream_embeddings, unembedded_samples)
from auditor.training.embeddings import build_embedder, embed_paths, pca_2d
from auditor.store.run_rows import audit_seed_run
from auditor.store.database import Store
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import artifact_path, finish_run, now, record_problems, start_run
from pipelines.stages import StageReport


def _audit_model_checkpoint(store: Store) -> Path | None:
    """Checkpoint of the lowest-seed training run behind the current scores, if it was saved."""
    run_id = audit_seed_run(store)
    path = artifact_path(store, run_id) if run_id else None
    return path if path is not None and path.exists() else None


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
    save_embedder(store, {
        "embedder_id": info.embedder_id, "kind": info.kind, "model_name": info.model_name, "weights": info.weights,
        "dim": info.dim, "input_size": info.input_size, "fallback_reason": info.fallback_reason, "run_id": run_id,
        "created_at": now()})
    todo = unembedded_samples(store, info.embedder_id)
    ids = todo["sample_id"].to_numpy()

    def commit(start: int, vectors: np.ndarray) -> None:
        ok = ~np.isnan(vectors).any(axis=1)
        chunk = pd.DataFrame({"embedder_id": info.embedder_id, "sample_id": ids[start:start + len(vectors)][ok],
                              "vector": list(vectors[ok].astype(np.float32))})
        store.append("embeddings", chunk)

    bar = progress(f"embed ({info.embedder_id})", len(ids), "img")
    failures = embed_paths(embedder, todo["path"].tolist(), batch_size=ec.batch_size, chunk_size=ec.chunk_size,
                           workers=cfg.data.workers, on_chunk=commit, progress=bar.update,
                           pixel_hashes=todo["pixel_hash"].tolist())
    bar.close()
    if failures:
        record_problems(store, pd.DataFrame([
            {"source": todo["path"].iloc[i], "sample_id": ids[i], "reason": reason, "code": "unreadable",
             "severity": "error", "action": "skipped", "stage": "embeddings"} for i, reason in failures.items()]))
    all_ids = embedded_ids(store, info.embedder_id)
    save_embedding_map(store, info.embedder_id, all_ids, pca_2d(load_embeddings(store, info.embedder_id, all_ids),
                                                                seed=cfg.seed))
    seconds = time.perf_counter() - t0
    note = f"; {info.fallback_reason}" if info.fallback_reason else ""
    finish_run(store, run_id, seconds=seconds, message=f"{len(ids)} embedded now, {len(all_ids)} in all{note}")
    return StageReport("embeddings", seconds, {"embedder": info.embedder_id, "dim": info.dim, "embedded": len(ids),
                                               "total": len(all_ids), "fallback": info.fallback_reason})
