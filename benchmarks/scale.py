"""Scale (issue 7): 1,000,000 samples of metadata and 512-d embeddings, in bounded memory: build the kNN index,
compute leak and near-duplicate pairs, and time the dashboard's queries.

Phases, each timed with its peak RSS (VmRSS sampled every 20 ms by a thread):
1. fixture: the dashboard benchmark's synthetic audit (samples split 5:1 train/test, scores, dynamics, predictions,
   flags, decisions, ...), without the tables the detectors write; built in a child process, since it stands in for
   the training stages, so its memory is reported apart;
2. embeddings: clustered unit vectors (a few thousand Gaussian centres, each owned by one class, plus noise), with
   planted copies of training images, some exact, in the training set (near duplicates) and the test set (leaks);
   generated and committed to `embeddings` chunk by chunk, as the embeddings stage commits them;
3. index: IVF-Flat over the training embeddings streamed back out of DuckDB (`NeighborIndex.from_chunks`); 2,048
   lists by default (the library's 4 sqrt(n), 3,651 lists at 833k, trains ~3x longer) and nprobe 4 (enough on
   clustered vectors: phase 5 measures it);
4. graph: the k nearest training images of every sample, searched chunk by chunk (`search_chunks`);
5. recall: recall@k of 1,000 random samples against an exact index over the same stream;
6. pairs: thresholds, near-duplicate and leak pairs and their flags with the detectors stage's functions, scored
   against the planted copies;
7. write: neighbours, pairs, flags and thresholds into the database;
8. queries: each query of the Overview, Review, Point detail (a random training image, plus the twins of a leaked
   and a duplicated one) and Decisions pages, inside one read-only connection as a page render, median and max of
   --repeats runs against the 200 ms target.

Usage: python benchmarks/scale.py [--n 1000000] [--dim 512] [--k 10] [--chunk 65536] [--nlist 2048] [--nprobe 4]
       [--out-db PATH]
       python benchmarks/scale.py --queries-of AUDIT.duckdb [--repeats 3]   (phase 8 only, on an existing audit)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard import DETECT_RUN, EMBEDDER, page_queries
from pipeline_stages import _table

from auditor.review import queries
from auditor.detectors.duplicates import duplicate_flags, leak_flags, leak_pairs, near_duplicate_pairs
from auditor.config import load_config
from auditor.detectors.copies import calibrate_neighbours
from auditor.detectors.neighbors import KnnGraph, NeighborIndex, graph_frame
from auditor.store.database import SUMMARY_KEY, Store
from pipelines.detectors_stage import THRESHOLD_KINDS
from pipelines.embeddings_stage import stream_embeddings

TRAIN_FRACTION = 5 / 6
POINTS_PER_CENTRE = 500
EXACT_FRACTION = 0.2          # planted copies that are exact; the others are the original plus noise of norm
NOISE = (0.02, 0.35)          # uniform in this range (cosine 0.94 to 0.9998)
QUERY_TARGET_MS = 200.0
MEMORY_TARGET_GB = 8.0
RECALL_QUERIES = 1000
DUCKDB_MEMORY = "1GB"         # DuckDB's buffer cache while streaming the embeddings back
# The dashboard benchmark's scenarios timed here (their queries: dashboard.page_queries).
# The queries that read the flag summaries (`flag_tallies`, `sample_flags`) while they are fresh.
SUMMARY_QUERIES = ("flag_kinds", "flag_counts", "flag_class_counts", "triage_counts", "embedding_map")
PAGES = ("Overview", "Review", "Review flag=mislabeled", "Review page 100", "Point detail", "Decisions")


def _rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class Phases:
    """Wall time and peak RSS of each named phase; a thread samples VmRSS every 20 ms."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int]] = []
        self._peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss())

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._peak = _rss()
        t0 = time.perf_counter()
        yield
        self.rows.append((name, time.perf_counter() - t0, max(self._peak, _rss())))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Planted:
    """Planted copies: row b is a copy of training row a (noise 0: exact); leak: b is a test row."""

    a: np.ndarray
    b: np.ndarray
    noise: np.ndarray
    leak: np.ndarray


def plant(is_train: np.ndarray, n_pairs: int, seed: int) -> Planted:
    """n_pairs near-duplicate (train, train) and n_pairs leak (train, test) copies on disjoint rows."""
    rng = np.random.default_rng([seed, 1])
    train = rng.permutation(np.flatnonzero(is_train))
    test = rng.choice(np.flatnonzero(~is_train), n_pairs, replace=False)
    noise = np.where(rng.random(2 * n_pairs) < EXACT_FRACTION, 0.0, rng.uniform(*NOISE, 2 * n_pairs))
    return Planted(a=train[:2 * n_pairs], b=np.concatenate([train[2 * n_pairs:3 * n_pairs], test]),
                   noise=noise.astype(np.float32), leak=np.arange(2 * n_pairs) >= n_pairs)


class Embeddings:
    """Deterministic clustered unit vectors, row by row: row r = its centre (one of its class's) plus noise, except
    planted rows, which hold a pair's original or its copy."""

    def __init__(self, label_index: np.ndarray, planted: Planted, dim: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 2])
        n, n_classes = len(label_index), int(label_index.max()) + 1
        per_class = max(1, len(label_index) // POINTS_PER_CENTRE // n_classes)
        self.centres = _unit(rng.standard_normal((n_classes * per_class, dim), dtype=np.float32))
        self.spread = rng.uniform(0.6, 1.0, len(self.centres)).astype(np.float32)
        self.centre_of = label_index + n_classes * rng.integers(0, per_class, n)
        self.dim, self.seed = dim, seed
        originals = self._points(self.centre_of[planted.a], rng)
        copies = np.where(planted.noise[:, None] > 0,
                          _unit(originals + planted.noise[:, None] * _noise(rng, len(originals), dim)), originals)
        self.planted = np.concatenate([originals, copies])
        self.planted_row = np.full(n, -1, dtype=np.int64)
        self.planted_row[planted.a] = np.arange(len(planted.a))
        self.planted_row[planted.b] = len(planted.a) + np.arange(len(planted.b))

    def _points(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _unit(self.centres[centres] + self.spread[centres, None] * _noise(rng, len(centres), self.dim))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The vectors of rows start..stop (float32, unit norm)."""
        out = self._points(self.centre_of[start:stop], np.random.default_rng([self.seed, 3, start]))
        mine = self.planted_row[start:stop]
        out[mine >= 0] = self.planted[mine[mine >= 0]]
        return out


def _noise(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Gaussian rows of expected norm 1."""
    return rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_embeddings(store: Store, ids: np.ndarray, embeddings: Embeddings, chunk: int) -> None:
    """Generate and commit the embeddings `chunk` rows at a time (one transaction each, as the embeddings stage)."""
    for start in range(0, len(ids), chunk):
        stop = min(start + chunk, len(ids))
        store.append("embeddings", pd.DataFrame({"embedder_id": EMBEDDER, "sample_id": ids[start:stop],
                                                 "vector": list(embeddings.rows(start, stop))}))


def stored_vectors(store: Store, ids: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, vectors) of the stored embeddings streamed in sample order, about `chunk` rows at a time, checked
    against `ids`."""
    start = 0
    for got, vectors in stream_embeddings(store, EMBEDDER, chunk, memory_limit=DUCKDB_MEMORY):
        if not np.array_equal(got, ids[start:start + len(got)]):
            raise RuntimeError(f"embeddings out of sample order at row {start}")
        yield start, vectors
        start += len(got)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())




def _rows(result: object) -> int:
    """Rows a query returned (1 for a record or a scalar, 0 for None)."""
    return 0 if result is None else len(result) if isinstance(result, pd.DataFrame | list) else 1


def time_queries(store: Store, scenarios: dict[str, list[tuple[str, Callable[[], object]]]],
                 repeats: int) -> list[dict]:
    """Each query of each scenario `repeats` times inside one read-only connection (as a page render shares one):
    rows returned, median and max milliseconds."""
    results = []
    for scenario, calls in scenarios.items():
        with store.reading():
            store.scalar("SELECT 1")  # the render's connection, opened before the timings
            for name, fn in calls:
                times, rows = [], 0
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    rows = _rows(fn())
                    times.append(1000 * (time.perf_counter() - t0))
                results.append({"page": scenario, "query": name, "rows": rows,
                                "median_ms": statistics.median(times), "max_ms": max(times)})
    return results


def time_live(store: Store, scenarios: dict[str, list[tuple[str, Callable[[], object]]]],
              repeats: int) -> dict[tuple[str, str], float]:
    """The queries that read the flag summaries (SUMMARY_QUERIES), timed again reading `flags` live, the baseline the
    summaries replace (their stamp in `meta` hidden, then rebuilt): median ms by (page, query)."""
    picked = {page: [(name, fn) for name, fn in calls if name in SUMMARY_QUERIES] for page, calls in scenarios.items()}
    store.execute("DELETE FROM meta WHERE key = ?", [SUMMARY_KEY])
    try:
        rows = time_queries(store, {page: calls for page, calls in picked.items() if calls}, repeats)
    finally:
        store.refresh_summaries()
    return {(row["page"], row["query"]): row["median_ms"] for row in rows}


def time_database(db: Path, repeats: int = 3, seed: int = 0) -> dict:
    """Phase 8 alone, on an existing audit database (a random training image for Point detail; no planted twins)."""
    store = Store(db)
    point = store.scalar("SELECT sample_id FROM samples WHERE split = 'train' "
                         "ORDER BY hash(sample_id, ?), sample_id LIMIT 1", [seed])
    scenarios = {name: calls for name, calls in page_queries(store, point).items() if name in PAGES}
    return {"queries": time_queries(store, scenarios, repeats), "live": time_live(store, scenarios, repeats)}


def run(out_db: Path, n: int = 1_000_000, dim: int = 512, k: int = 10, chunk: int = 65_536, nlist: int | None = 2048,
        nprobe: int = 4, pair_fraction: float = 0.005, repeats: int = 3, seed: int = 0) -> dict:
    """Every phase of the module docstring on a fresh database at out_db; returns what print_report prints."""
    phases = Phases()
    with phases("1. fixture (dashboard builder, child process)"):
        # A fresh interpreter (not a multiprocessing child, which would re-import the caller's __main__).
        code = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                f"from dashboard import build_synthetic; build_synthetic(Path({str(out_db)!r}), {n}, {seed}, "
                f"train_fraction={TRAIN_FRACTION!r}, skip=('neighbors', 'pairs', 'thresholds'))")
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    fixture_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    store = Store(out_db)
    samples = store.query("SELECT sample_id, split, label_index FROM samples ORDER BY sample_id")
    ids, labels = samples["sample_id"].to_numpy(), samples["label_index"].to_numpy()
    is_train = (samples["split"] == "train").to_numpy()
    planted = plant(is_train, max(1, round(pair_fraction * n)), seed)
    n_train = int(is_train.sum())

    with phases("2. embeddings: generate + commit"):
        write_embeddings(store, ids, Embeddings(labels, planted, dim, seed), chunk)
    train_chunks = lambda: (v[is_train[s:s + len(v)]] for s, v in stored_vectors(store, ids, chunk))
    own_rows = np.where(is_train, np.cumsum(is_train) - 1, -1)
    with phases("3. index: IVF train + add (streamed)"):
        index = NeighborIndex.from_chunks(train_chunks, (n_train, dim), k, exact_below=0, index="ivf", nlist=nlist,
                                          nprobe=nprobe)
    with phases("4. graph: all samples x k (streamed)"):
        graph = index.search_chunks(((v, own_rows[s:s + len(v)]) for s, v in stored_vectors(store, ids, chunk)), k)
    del index
    with phases(f"5. recall: exact search of {RECALL_QUERIES:,} samples"):
        sample = np.sort(np.random.default_rng([seed, 4]).choice(n, min(RECALL_QUERIES, n), replace=False))
        picked = store.query("SELECT sample_id, vector FROM embeddings WHERE embedder_id = ? "
                             "AND sample_id IN (SELECT unnest(?::VARCHAR[]))", [EMBEDDER, list(ids[sample])])
        query = np.stack(picked.set_index("sample_id").loc[ids[sample], "vector"].to_numpy())
        exact = NeighborIndex.from_chunks(train_chunks, (n_train, dim), k, exact_below=n_train + 1)
        recall = _recall(graph.indices[sample], exact.search(query, k, own_rows=own_rows[sample]).indices)
        del exact

    with phases("6. pairs: thresholds, pairs, flags"):
        train_ids, test_ids = ids[is_train], ids[~is_train]
        y_train, y_test = labels[is_train], labels[~is_train]
        graphs = {split: KnnGraph(graph.indices[rows], graph.similarities[rows], graph.exact, graph.index_kind)
                  for split, rows in (("train", is_train), ("test", ~is_train))}
        thresholds = {kind: calibrate_neighbours(g, load_config().detectors.copy_fdr)
                      for kind, g in (("near_duplicate", graphs["train"]), ("leak", graphs["test"]))}
        pairs = pd.concat([near_duplicate_pairs(graphs["train"], train_ids, y_train, thresholds["near_duplicate"]),
                           leak_pairs(graphs["test"], test_ids, train_ids, y_test, y_train, thresholds["leak"])],
                          ignore_index=True)
        flags = pd.concat([duplicate_flags(pairs, thresholds), leak_flags(pairs, thresholds)], ignore_index=True)
    with phases("7. write: neighbors, pairs, flags, thresholds"):
        neighbors = pd.concat([graph_frame(graphs["train"], train_ids, train_ids),
                               graph_frame(graphs["test"], test_ids, train_ids)], ignore_index=True)
        threshold_rows = pd.DataFrame([{"run_id": DETECT_RUN, "kind": THRESHOLD_KINDS[kind], "embedder_id": EMBEDDER,
                                        "value": t.value, "method": t.method,
                                        "detail": json.dumps(t.detail, default=float)}
                                       for kind, t in thresholds.items()])
        store.write([("neighbors", neighbors.assign(embedder_id=EMBEDDER)),
                     ("pairs", pairs.drop(columns=["cut", "q_value"]).assign(embedder_id=EMBEDDER, run_id=DETECT_RUN)),
                     ("flags", flags.assign(run_id=DETECT_RUN)), ("thresholds", threshold_rows)],
                    deletes=[("DELETE FROM flags WHERE kind IN ('duplicate', 'leaked')", []),
                             ("UPDATE embedders SET dim = ? WHERE embedder_id = ?", [dim, EMBEDDER])])
        del neighbors

    leak_b = ids[planted.b[planted.leak]]
    truth = {"near_duplicate": {(ids[min(a, b)], ids[max(a, b)]) for a, b in zip(planted.a[~planted.leak],
                                                                                planted.b[~planted.leak])},
             "leak": set(zip(ids[planted.a[planted.leak]], leak_b))}
    found = {kind: set(zip(pairs.loc[pairs["kind"] == kind, "a_id"], pairs.loc[pairs["kind"] == kind, "b_id"]))
             for kind in truth}
    with phases("8. dashboard queries"):
        point = str(np.random.default_rng([seed, 5]).choice(train_ids))
        scenarios = {name: calls for name, calls in page_queries(store, point).items() if name in PAGES}
        scenarios["Point detail (twins)"] = [
            ("twins (leaked)", lambda: queries.twins(store, leak_b[0], "leaked")),
            ("twins (duplicate)", lambda: queries.twins(store, ids[planted.a[0]], "duplicate"))]
        timings = time_queries(store, scenarios, repeats)
        live = time_live(store, scenarios, repeats)
    phases.close()
    return {"n": n, "n_train": n_train, "dim": dim, "k": k, "chunk": chunk, "index_kind": graph.index_kind,
            "phases": phases.rows, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "fixture_peak_rss": fixture_peak, "recall": recall, "thresholds": thresholds,
            "pairs": {kind: {"planted": len(truth[kind]), "found": len(found[kind]),
                             "hits": len(found[kind] & truth[kind])} for kind in truth},
            "queries": timings, "live": live, "db_bytes": out_db.stat().st_size}


def print_report(r: dict) -> None:
    gb = 1024 ** 3
    _table(f"Scale: {r['n']:,} samples ({r['n_train']:,} train), {r['dim']}-d, k = {r['k']}, chunks of "
           f"{r['chunk']:,}, {r['index_kind']}; {os.cpu_count()} cores; database {r['db_bytes'] / gb:.2f} GB",
           ["phase", "seconds", "peak RSS (GB)"],
           [[name, f"{s:.1f}", f"{peak / gb:.2f}"] for name, s, peak in r["phases"]]
           + [["total", f"{sum(s for _, s, _ in r['phases']):.1f}", ""]])
    peak, fixture = r["peak_rss"] / gb, r["fixture_peak_rss"] / gb
    _table("Peak memory (ru_maxrss)", ["process", "peak RSS (GB)", f"target < {MEMORY_TARGET_GB:g} GB"],
           [["benchmark (phases 2-8)", f"{peak:.2f}", "met" if peak < MEMORY_TARGET_GB else "MISSED"],
            ["fixture builder (child, phase 1)", f"{fixture:.2f}",
             "met" if fixture < MEMORY_TARGET_GB else "MISSED"]])
    _table(f"Index recall@{r['k']} on {RECALL_QUERIES:,} random samples vs exact search", ["index", "recall"],
           [[r["index_kind"], f"{r['recall']:.4f}"]])
    _table("Planted pairs found (pairs of the graph at or above the calibrated threshold)",
           ["kind", "threshold", "planted", "found", "hits", "precision", "recall"],
           [[kind, f"{r['thresholds'][kind].value:.4f} ({r['thresholds'][kind].detail['binding']})",
             f"{c['planted']:,}", f"{c['found']:,}", f"{c['hits']:,}", f"{c['hits'] / max(c['found'], 1):.4f}",
             f"{c['hits'] / c['planted']:.4f}"] for kind, c in r["pairs"].items()])
    print_queries(r)


def print_queries(r: dict) -> None:
    """The query timings, with the live-flags baseline of the queries that read the summaries."""
    def live(q: dict) -> list[str]:
        ms = r["live"].get((q["page"], q["query"]))
        return ["", ""] if ms is None else [f"{ms:.1f}", f"{ms / q['median_ms']:.1f}x"]

    _table(f"Dashboard queries (ms; one read-only connection per page, as a render; target < {QUERY_TARGET_MS:g} ms "
           "on the median; 'live': the same query reading `flags` instead of the summaries)",
           ["page", "query", "rows", "median", "max", "target", "live", "speed-up"],
           [[q["page"], q["query"], f"{q['rows']:,}", f"{q['median_ms']:.1f}", f"{q['max_ms']:.1f}",
             "met" if q["median_ms"] < QUERY_TARGET_MS else "MISSED", *live(q)] for q in r["queries"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=65_536, help="rows per embeddings chunk (written and read)")
    parser.add_argument("--nlist", type=int, default=2048, help="IVF lists (0: the library's 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=4)
    parser.add_argument("--pairs", type=float, default=0.005, help="planted pairs of each kind, per sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-db", type=Path, help="write the database here and keep it (default: a temp dir)")
    parser.add_argument("--queries-of", type=Path, help="only time the dashboard's queries on this audit database")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.queries_of:
        print_queries(time_database(args.queries_of, args.repeats, args.seed))
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.out_db or Path(tmp) / "scale.duckdb", args.n, args.dim, args.k, args.chunk,
                     args.nlist or None, args.nprobe, args.pairs, args.repeats, args.seed)
    print_report(report)


if __name__ == "__main__":
    main()
