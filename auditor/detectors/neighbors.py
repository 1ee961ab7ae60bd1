"""One cosine kNN graph over the embeddings, shared by every detector (cleanlab Datalab's design): faiss
inner-product search on L2-normalised copies, exact below `exact_below` vectors, on a GPU when faiss has one.

Above it, IVF-Flat (the default): 4 sqrt(n) lists, at most 1,024, trained on a seeded sample of 64 rows per list,
searched in nprobe = 16 lists; deterministic and GPU-capable. Measured (docs/scaling.md, benchmarks/index_recall.py)
on clustered, L2-normalised 1,280-d mixtures (3,000 clusters of uneven size and spread) with 1,000 queries:
recall@10 0.9999 at 200,000 vectors (1,024 lists; 0.9991 with 1,789) and 1.0000 at 1,000,000. HNSW (M 32,
efSearch 128; CPU only) measured 0.9994 at 20,000 but 0.950 at 200,000, with a build 1.7x IVF's. On unclustered
random vectors both are poor (docs/benchmarks.md), so recall is only as good as the embeddings are clustered;
`set_search` widens the search.

`NeighborIndex.from_chunks` builds the same index from a base streamed in chunks (e.g. read from DuckDB), so only the
index and one chunk are resident, and `search_chunks` searches streamed queries the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import pandas as pd

NEIGHBOR_COLUMNS = ["sample_id", "rank", "neighbor_id", "similarity"]
# Queries are normalised and searched this many rows at a time, so memory stays bounded on large audits.
_QUERY_CHUNK = 1 << 14
_HNSW_M = 32
# IVF training sample: faiss wants >= 39 points per list and gains little past 256.
_IVF_TRAIN_PER_LIST = 64
# IVF lists: 4 sqrt(n), at most this many (k-means training grows as lists squared; docs/scaling.md).
_IVF_MAX_LISTS = 1024
_SEED = 0


@dataclass(frozen=True)
class KnnGraph:
    """indices[q, r] is the r-th nearest base row of query q (-1 where fewer were found, with NaN similarity);
    similarities are cosines, best first."""

    indices: np.ndarray
    similarities: np.ndarray
    exact: bool
    index_kind: str


def normalise(vectors: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous copy with unit-norm rows (all-zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _gpu_resources(use_gpu: bool | None, exact: bool, index: str) -> faiss.StandardGpuResources | None:
    """faiss GPU resources when asked for (None: whenever faiss sees a GPU) and the index has a GPU version (HNSW
    has none); None, with a warning when asked for, on CPU-only faiss."""
    if use_gpu is False or not (exact or index == "ivf"):
        if use_gpu:
            warnings.warn("faiss has no GPU HNSW; searching on the CPU", stacklevel=3)
        return None
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    if use_gpu:
        warnings.warn("use_gpu=True but this faiss build sees no GPU; searching on the CPU", stacklevel=3)
    return None


def _take(chunks: Iterable[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The given rows (sorted) of the chunks stacked in order."""
    parts, start = [], 0
    for chunk in chunks:
        lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
        parts.append(chunk[rows[lo:hi] - start])
        start += len(chunk)
    return np.concatenate(parts)


def _build(chunks: Callable[[], Iterable[np.ndarray]], n: int, d: int, exact: bool, index: str, nlist: int | None,
           gpu: faiss.StandardGpuResources | None) -> tuple[faiss.Index, str, faiss.ParameterSpace]:
    """The index filled from `chunks()` (the n normalised base rows in order; read twice when IVF first gathers its
    training sample), its description (faiss factory style) and its parameter space; `gpu` must outlive it."""
    if exact:
        cpu, kind = faiss.IndexFlatIP(d), "Flat"
    elif index == "ivf":
        nlist = nlist or max(1, min(round(4 * math.sqrt(n)), _IVF_MAX_LISTS, n // 39))
        cpu, kind = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT), f"IVF{nlist},Flat"
    else:
        cpu, kind = faiss.IndexHNSWFlat(d, _HNSW_M, faiss.METRIC_INNER_PRODUCT), f"HNSW{_HNSW_M},Flat"
    built, space = cpu, faiss.ParameterSpace()
    if gpu is not None:
        try:
            built, space, kind = faiss.index_cpu_to_gpu(gpu, 0, cpu), faiss.GpuParameterSpace(), f"GPU:{kind}"
        except (AttributeError, RuntimeError) as err:
            warnings.warn(f"faiss GPU transfer failed ({err}); searching on the CPU", stacklevel=3)
    if not built.is_trained:
        size = min(n, _IVF_TRAIN_PER_LIST * faiss.extract_index_ivf(cpu).nlist)
        built.train(_take(chunks(), np.sort(np.random.default_rng(_SEED).choice(n, size, replace=False))))
    for chunk in chunks():
        built.add(chunk)
    if built.ntotal != n:
        raise ValueError(f"the chunks held {built.ntotal} rows, not the {n} announced")
    return built, kind, space


def _drop_self(indices: np.ndarray, sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k results of each row after removing the row's own index (not just rank 0: exact duplicates tie
    with it); a row whose own index is missing loses its last result instead."""
    own = indices == rows[:, None]
    own[:, -1] |= ~own.any(axis=1)
    keep = np.argsort(own, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(indices, keep, axis=1), np.take_along_axis(sims, keep, axis=1)


class NeighborIndex:
    """A faiss index over the normalised base, built once and searched by any number of query batches: exact
    below exact_below base vectors, else the `index` approximation (module docstring)."""

    def __init__(self, base: np.ndarray, k: int, *, exact_below: int = 200_000,
                 index: Literal["hnsw", "ivf"] = "ivf", nlist: int | None = None, nprobe: int = 16,
                 use_gpu: bool | None = None) -> None:
        self.base: np.ndarray | None = normalise(base)
        self._fill(lambda: [self.base], *self.base.shape, k, exact_below, index, nlist, nprobe, use_gpu)

    @classmethod
    def from_chunks(cls, chunks: Callable[[], Iterable[np.ndarray]], shape: tuple[int, int], k: int, *,
                    exact_below: int = 200_000, index: Literal["hnsw", "ivf"] = "ivf", nlist: int | None = None,
                    nprobe: int = 16, use_gpu: bool | None = None) -> NeighborIndex:
        """The index __init__ builds over a base of `shape` whose rows each call of `chunks()` yields in order, a chunk
        at a time (called twice for IVF: its training sample, then the rows), never holding them all; `base` is None."""
        built = cls.__new__(cls)
        built.base = None
        built._fill(lambda: (normalise(chunk) for chunk in chunks()), *shape, k, exact_below, index, nlist, nprobe,
                    use_gpu)
        return built

    def _fill(self, chunks: Callable[[], Iterable[np.ndarray]], n: int, dim: int, k: int, exact_below: int,
              index: str, nlist: int | None, nprobe: int, use_gpu: bool | None) -> None:
        """Check the arguments and build the index from `chunks` (the normalised base)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if index not in ("hnsw", "ivf"):
            raise ValueError(f"index must be 'hnsw' or 'ivf', got {index!r}")
        self.n, self.dim = n, dim
        self.exact = n < exact_below
        self._gpu = _gpu_resources(use_gpu, self.exact, index)
        self._built, self._kind, self._space = _build(chunks, n, dim, self.exact, index, nlist, self._gpu)
        self.kind = self._kind
        if not self.exact:
            self.set_search(nprobe if index == "ivf" else max(128, 2 * (k + 1)))

    def set_search(self, breadth: int) -> None:
        """Search `breadth` lists (IVF's nprobe) or candidates (HNSW's efSearch) from now on; exact has neither."""
        if self.exact:
            raise ValueError("an exact index has no search breadth to set")
        name = "nprobe" if "IVF" in self._kind else "efSearch"
        self._space.set_index_parameter(self._built, name, int(breadth))
        self.kind = f"{self._kind},{name}={int(breadth)}"

    def search(self, query: np.ndarray, k: int, *, own_rows: np.ndarray | None = None) -> KnnGraph:
        """The k most cosine-similar base rows of each query row; own_rows[q] (a base row, -1 for none) is left out
        of row q."""
        if np.ndim(query) != 2 or np.shape(query)[1] != self.dim:
            raise ValueError(f"query {np.shape(query)} must be 2-D with base's {self.dim} columns")
        search_k = k + 1 if own_rows is not None else k
        indices = np.empty((len(query), k), dtype=np.int64)
        sims = np.empty((len(query), k), dtype=np.float32)
        for start in range(0, len(query), _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(query))
            s, i = self._built.search(normalise(query[start:stop]), search_k)
            if own_rows is not None:
                i, s = _drop_self(i, s, own_rows[start:stop], k)
            indices[start:stop], sims[start:stop] = i, s
        sims[indices < 0] = np.nan
        return KnnGraph(indices=indices, similarities=sims, exact=self.exact, index_kind=self.kind)

    def search_chunks(self, chunks: Iterable[tuple[np.ndarray, np.ndarray | None]], k: int) -> KnnGraph:
        """search() of each (query, own_rows) chunk, stacked into one graph, so streamed queries are never all
        resident."""
        parts = [self.search(query, k, own_rows=own_rows) for query, own_rows in chunks]
        return KnnGraph(indices=np.concatenate([p.indices for p in parts]),
                        similarities=np.concatenate([p.similarities for p in parts]), exact=self.exact,
                        index_kind=self.kind)


def knn(base: np.ndarray, k: int, *, query: np.ndarray | None = None, exclude_self: bool = True,
        exact_below: int = 200_000, index: Literal["hnsw", "ivf"] = "ivf", nlist: int | None = None,
        nprobe: int = 16, use_gpu: bool | None = None) -> KnnGraph:
    """The k most cosine-similar base rows of each query row (query=None: of each base row, itself excluded when
    exclude_self); exact below exact_below base vectors, else the `index` approximation (module docstring)."""
    built = NeighborIndex(base, k, exact_below=exact_below, index=index, nlist=nlist, nprobe=nprobe, use_gpu=use_gpu)
    if query is None:
        return built.search(built.base, k, own_rows=np.arange(len(built.base)) if exclude_self else None)
    return built.search(query, k)


def graph_frame(graph: KnnGraph, query_ids: np.ndarray, base_ids: np.ndarray) -> pd.DataFrame:
    """The graph as long rows (sample_id, rank from 1, neighbor_id, similarity), for the `neighbors` table;
    missing neighbours are left out."""
    query_ids, base_ids = np.asarray(query_ids), np.asarray(base_ids)
    if len(query_ids) != len(graph.indices):
        raise ValueError(f"{len(query_ids)} query ids for a graph of {len(graph.indices)} rows")
    rows, ranks = np.nonzero(graph.indices >= 0)
    return pd.DataFrame({"sample_id": query_ids[rows], "rank": (ranks + 1).astype(np.int64),
                         "neighbor_id": base_ids[graph.indices[rows, ranks]],
                         "similarity": graph.similarities[rows, ranks]}, columns=NEIGHBOR_COLUMNS)
