"""The index-recall benchmark at a small size: its streamed exact neighbours are the exact index's, and the recall it
reports grows with the search breadth up to the default's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from auditor.detectors.neighbors import NeighborIndex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import index_recall as bench  # noqa: E402 (the benchmark scripts are not a package)


def test_streamed_exact_neighbours_are_the_exact_index_s():
    data = bench.Mixture(3000, 32, 40, seed=1, chunk=700)
    rows = np.array([0, 5, 699, 700, 2999])
    base = np.concatenate(list(data.chunks()))
    assert np.array_equal(base, np.concatenate(list(data.chunks())))
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    query = data.query(rows)
    assert not np.isin(query, base).all(axis=1).any()
    exact = NeighborIndex(base, 10).search(query, 10, own_rows=rows).indices
    np.testing.assert_array_equal(bench.exact_neighbours(data, rows, 10), exact)
    assert (data.cluster_of[exact] == data.cluster_of[rows][:, None]).mean() > 0.5


def test_recall_grows_with_the_search_breadth():
    report = bench.run(4000, "ivf", [1, 16, 64], dim=32, clusters=50, queries=200, seed=2)
    recalls = [r["recall"] for r in report["results"]]
    assert [r["kind"] for r in report["results"]] == [f"IVF102,Flat,nprobe={p}" for p in (1, 16, 64)]
    assert recalls[0] < recalls[1] <= recalls[2] and recalls[2] >= 0.95
