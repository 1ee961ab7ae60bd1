"""Shift-tolerant pixel matching: the second signal for leaks and near duplicates, next to the embedding graph.

A test image that is a lightly edited copy of a training image (shifted a pixel or two, re-exposed, with mild noise)
is not reliably the nearest neighbour of its source in a semantic embedding (on MNIST upsampled for ImageNet
features, or in raw pixels, a 2 px shift drops the cosine to ~0.6 and the source to rank ~100). Under the best
alignment it is ~0.999 similar. So the similarity here is the maximum, over integer shifts |dy|, |dx| <= max_shift,
of the cosine between the mean-centred shifted query and the mean-centred base image: brightness scaling and
offsets cancel, shifts are searched exhaustively, and each shift is one exact (or indexed) faiss search.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from auditor.neighbors import KnnGraph, NeighborIndex

# Outlier multiplier for calibrate_from_distribution on aligned pixel similarities: a copy test, not a likeness
# score, so only a far outlier counts (on the default digits, distinct look-alike 1s reach 0.98 at c = 4, edited
# copies 0.999).
PIXEL_OUTLIER_C = 6.0


def centred_vectors(images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) or (N, H, W) as float32 rows with each image's mean removed (cosine then ignores
    brightness offsets and, after normalisation, contrast)."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return flat - flat.mean(axis=1, keepdims=True)


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The images moved dy rows down and dx columns right (negative: up / left); uncovered pixels repeat the edge."""
    images = np.asarray(images)
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return images
    widths = [(0, 0)] * (images.ndim - 2) + [(pad, pad), (pad, pad)]
    padded = np.pad(images, widths, mode="edge")
    h, w = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def _merge(parts: list[KnnGraph], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best distinct base rows per query over all shifts, each with its best similarity."""
    n = len(parts[0].indices)
    frame = pd.DataFrame({"q": np.concatenate([np.repeat(np.arange(n), p.indices.shape[1]) for p in parts]),
                          "b": np.concatenate([p.indices.ravel() for p in parts]),
                          "s": np.concatenate([p.similarities.ravel() for p in parts])})
    frame = frame[frame["b"].to_numpy() >= 0]
    frame = (frame.sort_values(["q", "s", "b"], ascending=[True, False, True], kind="stable")
             .drop_duplicates(["q", "b"]))
    rank = frame.groupby("q").cumcount().to_numpy()
    frame = frame[rank < k]
    rank = rank[rank < k]
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    indices[frame["q"].to_numpy(), rank] = frame["b"].to_numpy()
    sims[frame["q"].to_numpy(), rank] = frame["s"].to_numpy()
    return indices, sims


def shift_knn(base: np.ndarray, k: int, *, query: np.ndarray | None = None, max_shift: int = 2,
              exact_below: int = 200_000, index: Literal["hnsw", "ivf"] = "hnsw") -> KnnGraph:
    """The k base images most similar to each query image under the best shift (module docstring); query=None
    searches the base against itself, each image's own row excluded. Images are (N, C, H, W) or (N, H, W)."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    self_graph = query is None
    queries = np.asarray(base if self_graph else query)
    if queries.shape[1:] != np.shape(base)[1:]:
        raise ValueError(f"query images {queries.shape[1:]} must have the base images' shape {np.shape(base)[1:]}")
    built = NeighborIndex(centred_vectors(base), k, exact_below=exact_below, index=index)
    own = np.arange(len(queries)) if self_graph else None
    k = min(k, len(built.base) - (1 if self_graph else 0))
    steps = range(-max_shift, max_shift + 1)
    parts = [built.search(centred_vectors(shifted(queries, dy, dx)), k, own_rows=own)
             for dy in steps for dx in steps]
    indices, sims = _merge(parts, k)
    return KnnGraph(indices=indices, similarities=sims, exact=built.exact,
                    index_kind=f"{built.kind},shift<={max_shift}")
