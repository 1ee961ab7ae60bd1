"""The scale benchmark end to end at a small size: the index recalls the exact neighbours, the planted near
duplicates and leaks are found, the detector tables are written, and every dashboard query it times runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from auditor.store.database import Store

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scale_benchmark_finds_the_planted_pairs_and_runs_every_query(scale, tmp_path):
    db = tmp_path / "scale.duckdb"
    report = scale.run(db, n=20_000, dim=64, k=10, chunk=4096, nlist=None, nprobe=16, repeats=1)
    assert report["n_train"] == round(20_000 * scale.TRAIN_FRACTION)
    assert report["recall"] >= 0.95
    for kind in ("near_duplicate", "leak"):
        counts = report["pairs"][kind]
        assert counts["planted"] == 100
        assert counts["hits"] >= 0.9 * counts["planted"] and counts["hits"] >= 0.9 * counts["found"], kind
    assert [name for name, _, _ in report["phases"]][0].startswith("1. fixture") and len(report["phases"]) == 8
    assert all(peak > 0 for _, _, peak in report["phases"]) and report["fixture_peak_rss"] > 0

    store = Store(db)
    assert store.scalar("SELECT count(*) FROM embeddings") == 20_000
    assert store.scalar("SELECT count(*) FROM neighbors") == 20_000 * 10
    assert store.scalar("SELECT count(*) FROM pairs") == sum(c["found"] for c in report["pairs"].values())
    assert store.scalar("SELECT count(*) FROM flags WHERE kind = 'leaked'") == 2 * report["pairs"]["leak"]["found"]

    timed = {}
    for q in report["queries"]:
        timed.setdefault(q["page"], []).append(q)
    expected = scale.page_queries(store, "syn_000000")
    assert list(timed) == [*scale.PAGES, "Point detail (twins)"]
    for page in scale.PAGES:
        assert [q["query"] for q in timed[page]] == [name for name, _ in expected[page]]
    assert all(q["median_ms"] > 0 for q in report["queries"])
    rows = {(q["page"], q["query"]): q["rows"] for q in report["queries"]}
    assert rows[("Review", "review_page")] == 24 and rows[("Review flag=mislabeled", "review_page")] == 24
    assert rows[("Point detail", "sample_neighbors")] == 10 and rows[("Point detail", "sample_detail")] == 1
    assert rows[("Point detail (twins)", "twins (leaked)")] >= 1
    assert rows[("Point detail (twins)", "twins (duplicate)")] >= 1
