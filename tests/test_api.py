"""The Python API (auditor.api): docs/api.md's example runs against a database the real pipeline wrote, the facade
returns what the tables hold, and bad paths or kinds end in one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from auditor.memorization import memorization_queries
from auditor.api import Audit, open_audit
from auditor.store.database import Store

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def documented_example() -> str:
    """The first python block of docs/api.md."""
    found = re.search(r"```python\n(.*?)```", API_DOC.read_text(), re.S)
    assert found, "docs/api.md has no python example"
    return found.group(1)


def test_the_documented_example_runs(small_db, capsys):
    code = documented_example()
    assert '"audit.duckdb"' in code
    exec(compile(code.replace('"audit.duckdb"', repr(str(small_db))), str(API_DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert "memorized" in printed and "about " in printed and "flags recall" in printed


def test_the_facade_returns_what_the_tables_hold(small_db):
    audit, store = open_audit(small_db), Store(small_db)
    flags = audit.flags()
    assert len(flags) == store.scalar("SELECT count(*) FROM flags") > 0
    assert flags["label"].notna().all()
    memorized = audit.flags("memorized")
    assert len(memorized) == store.scalar("SELECT count(*) FROM flags WHERE kind = 'memorized'")
    assert set(memorized["kind"]) <= {"memorized"}
    scores = audit.scores()
    assert len(scores) == store.scalar("SELECT count(*) FROM samples WHERE split = 'train'") == len(audit.samples("train"))
    assert {"apb", "mem", "mem_low", "mem_high", "mem_state", "label"} <= set(scores.columns)
    assert len(audit.pairs()) == store.scalar("SELECT count(*) FROM pairs")
    assert audit.estimate() == memorization_queries.estimate(store) is not None
    assert len(audit.calibration()) == store.scalar("SELECT count(*) FROM proxy_calibration") > 0
    first = scores["sample_id"].iloc[0]
    neighbors = audit.neighbors(first, limit=3)
    assert len(neighbors) == 3 and list(neighbors["rank"]) == [1, 2, 3]
    assert audit.decisions().empty


def test_bad_paths_and_kinds_end_in_one_clear_error(small_db, tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + ".*memaudit run"):
        Audit(missing)
    foreign = tmp_path / "foreign.duckdb"
    duckdb.connect(str(foreign)).close()
    with pytest.raises(ValueError, match="not an audit database"):
        Audit(foreign)
    with pytest.raises(ValueError, match="unknown flag kind 'memorised'.*memorized"):
        open_audit(small_db).flags("memorised")
