"""The dashboard benchmark's synthetic database stays in step with the schema: built small, every page renders on it
without an exception or an error (no timing is asserted here; benchmarks/dashboard.py measures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from auditor.memorization import memorization_queries
from auditor.review import queries
from auditor.store.database import Store

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "dashboard.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        spec = importlib.util.spec_from_file_location("dashboard_benchmark", BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    return module


@pytest.fixture(scope="module")
def synthetic(bench, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "audit.duckdb"
    bench.build_synthetic(path, n=2000, seed=0)
    return path


def test_the_synthetic_database_has_every_signal(synthetic):
    store = Store(synthetic)
    assert store.scalar("SELECT count(*) FROM samples") == 2000
    kinds = set(queries.flag_kinds(store))
    assert kinds == set(queries.FLAG_PRIORITY)
    assert queries.score_run(store)["n_scored"] == 1600
    assert memorization_queries.memorization_run(store)["threshold"] == 0.25
    assert not queries.accuracy_curves(store).empty
    assert store.scalar(f"SELECT count(*) FROM predictions WHERE run_id = {queries._PREDICTION_RUN}") == 2000
    assert store.scalar("SELECT count(*) FROM reviews WHERE action = 'undo'") > 0


@pytest.mark.parametrize("scenario", ["Overview", "Review", "Review flag=mislabeled", "Review page 100",
                                      "Point detail", "Decisions", "Export"])
def test_every_page_renders_on_the_synthetic_database(bench, synthetic, scenario, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_DB", str(synthetic))
    page, state, _ = bench.SCENARIOS[scenario]
    point = bench.point_sample(Store(synthetic))
    at = bench.render(page, {k: (point if k == "point" else v) for k, v in state.items()}, timeout=60)
    assert not bench.page_errors(at)
    if page == "review":
        assert any(c.key and c.key.startswith("pick_") for c in at.checkbox)
    if page == "point":
        assert any("Training dynamics" in m.value for m in at.markdown)
