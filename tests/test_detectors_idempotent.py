"""The detectors run is identified by its inputs: a re-run on the same database and config replaces its own rows and
adds none to any table (`runs` and `thresholds` included)."""

from __future__ import annotations

import json
import shutil

from conftest import SMALL_OVERRIDES

from auditor.config import load_config
from auditor.store.database import Store
from pipelines.detectors_stage import detectors_stage


def row_counts(store: Store) -> dict[str, int]:
    """The number of rows of every table."""
    tables = store.query("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'")
    return {t: store.scalar(f'SELECT count(*) FROM "{t}"') for t in tables["table_name"]}


def test_a_detectors_rerun_adds_no_rows(small_db, tmp_path):
    """small_db's pipeline ran the detectors with this config already: one more run is the re-run."""
    store = Store(tmp_path / "audit.duckdb")
    shutil.copy(small_db, store.path)
    cfg = load_config(profile="quick", overrides=SMALL_OVERRIDES)
    counts = row_counts(store)
    runs = store.query("SELECT run_id FROM runs WHERE kind = 'detectors'")["run_id"].tolist()
    first = json.loads(store.scalar("SELECT message FROM runs WHERE kind = 'detectors'"))  # its flags per kind
    second = detectors_stage(store, cfg)
    assert row_counts(store) == counts
    assert store.query("SELECT run_id FROM runs WHERE kind = 'detectors'")["run_id"].tolist() == runs
    assert second.facts["flags"] == first and counts["thresholds"] > 0
