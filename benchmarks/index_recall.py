"""Index recall (issue 18): recall@10 of the approximate kNN index used above `detectors.exact_below`, on clustered,
real-like embeddings, against exact search, with build time, query time and memory.

The embeddings (`Mixture`): `clusters` Gaussian clusters of uneven size (log-normal weights) and uneven spread
(log-uniform 0.5-1.5), whose centres are themselves grouped around 100 class centres; each point is its cluster's
centre plus noise that lies mostly in a shared 64-d subspace (real embeddings have a low intrinsic dimension) plus an
isotropic part, L2-normalised, `dim` = 1,280 (the default embedder's, EfficientNet-Lite0). Rows are generated chunk by
chunk from seeded generators and streamed into the index (`NeighborIndex.from_chunks`), so only the index is resident.

Queries: `queries` new points, each drawn from the cluster of a random base row r (`Mixture.query`) and searched for
its k nearest base rows with r left out (as the self-graph leaves a point out); exact neighbours come from a streamed
brute-force pass over the same chunks. Every index is searched at each of the
`--search` breadths (nprobe for IVF, efSearch for HNSW) without rebuilding.

Usage: python benchmarks/index_recall.py --n 200000 --index ivf [--search 8 16 32 64] [--nlist 0] [--dim 1280]
       python benchmarks/index_recall.py --n 200000 --index hnsw --search 128 256 512
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table

from auditor.detectors.neighbors import NeighborIndex, normalise

CLASSES = 100
SUBSPACE = 64


def _rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class Mixture:
    """Deterministic clustered unit vectors (module docstring), generated `chunk` rows at a time."""

    def __init__(self, n: int, dim: int, clusters: int, seed: int, chunk: int = 32_768) -> None:
        rng = np.random.default_rng([seed, 0])
        classes = rng.standard_normal((CLASSES, dim)).astype(np.float32)
        self.centres = normalise(classes[rng.integers(0, CLASSES, clusters)]
                                 + 0.8 * rng.standard_normal((clusters, dim)).astype(np.float32))
        self.spread = np.exp(rng.uniform(np.log(0.5), np.log(1.5), clusters)).astype(np.float32)
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.cluster_of = rng.choice(clusters, n, p=weights / weights.sum())
        self.basis = rng.standard_normal((SUBSPACE, dim)).astype(np.float32) / np.float32(np.sqrt(SUBSPACE * dim))
        self.n, self.dim, self.seed, self.chunk = n, dim, seed, chunk

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop (float32, unit norm); the same rows on every call."""
        rng = np.random.default_rng([self.seed, 1, start])
        m = stop - start
        low_rank = rng.standard_normal((m, SUBSPACE), dtype=np.float32) @ self.basis
        iso = rng.standard_normal((m, self.dim), dtype=np.float32) / np.float32(np.sqrt(self.dim))
        cluster = self.cluster_of[start:stop]
        return normalise(self.centres[cluster] + self.spread[cluster, None] * (0.8 * low_rank + 0.6 * iso))

    def query(self, rows: np.ndarray) -> np.ndarray:
        """A new point from the cluster of each given row (not the row itself: rows(r, r + 1) draws afresh)."""
        return np.concatenate([self.rows(r, r + 1) for r in rows])

    def chunks(self) -> Iterator[np.ndarray]:
        """Every row, in order, `chunk` rows at a time."""
        for start in range(0, self.n, self.chunk):
            yield self.rows(start, min(start + self.chunk, self.n))


def exact_neighbours(data: Mixture, rows: np.ndarray, k: int) -> np.ndarray:
    """The k most similar base rows to data.query(rows), each with its own row left out, by brute force over the
    streamed chunks."""
    query = data.query(rows)
    best_i = np.full((len(rows), 0), -1, dtype=np.int64)
    best_s = np.full((len(rows), 0), -np.inf, dtype=np.float32)
    start = 0
    for chunk in data.chunks():
        sims = query @ chunk.T
        ids = np.arange(start, start + len(chunk))
        sims[ids[None, :] == rows[:, None]] = -np.inf
        cand_s, cand_i = np.concatenate([best_s, sims], axis=1), np.concatenate(
            [best_i, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, axis=1), np.take_along_axis(cand_i, top, axis=1)
        start += len(chunk)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """The fraction of true neighbours found, over all queries."""
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


def run(n: int, index: str, search: list[int], dim: int = 1280, clusters: int = 3000, nlist: int | None = None,
        k: int = 10, queries: int = 1000, seed: int = 0) -> dict:
    """Build the index over the mixture once and measure recall@k, query time and memory at each search breadth."""
    data = Mixture(n, dim, clusters, seed)
    rows = np.sort(np.random.default_rng([seed, 2]).choice(n, queries, replace=False))
    t0 = time.perf_counter()
    truth = exact_neighbours(data, rows, k)
    exact_s = time.perf_counter() - t0
    query = data.query(rows)
    rss0 = _rss()
    t0 = time.perf_counter()
    built = NeighborIndex.from_chunks(data.chunks, (n, dim), k, exact_below=0, index=index, nlist=nlist)
    build_s = time.perf_counter() - t0
    memory = _rss() - rss0
    results = []
    for breadth in search:
        built.set_search(breadth)
        t0 = time.perf_counter()
        graph = built.search(query, k, own_rows=rows)
        seconds = time.perf_counter() - t0
        results.append({"kind": built.kind, "recall": recall_at_k(graph.indices, truth),
                        "query_ms": 1000 * seconds / queries})
    return {"n": n, "dim": dim, "clusters": clusters, "k": k, "queries": queries, "seed": seed,
            "build_s": build_s, "index_gb": memory / 1024 ** 3, "exact_s": exact_s, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--index", choices=("ivf", "hnsw"), default="ivf")
    parser.add_argument("--search", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="nprobe (ivf) or efSearch (hnsw) values to measure")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the library's 4 sqrt(n))")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    r = run(args.n, args.index, args.search, args.dim, args.clusters, args.nlist or None, queries=args.queries,
            seed=args.seed)
    table(f"Index recall@{r['k']}: {r['n']:,} clustered unit vectors ({r['clusters']:,} clusters, {r['dim']}-d), "
          f"{r['queries']:,} new points (one base row left out each) vs exact search; {os.cpu_count()} cores; "
          f"build {r['build_s']:.1f} s, index {r['index_gb']:.2f} GB (RSS growth), exact search of the queries "
          f"{r['exact_s']:.1f} s",
          ["index", "recall@10", "query ms (per query)", "all n rows as queries (extrapolated s)"],
          [[x["kind"], f"{x['recall']:.4f}", f"{x['query_ms']:.2f}", f"{x['query_ms'] * r['n'] / 1000:.0f}"]
           for x in r["results"]])


if __name__ == "__main__":
    main()
