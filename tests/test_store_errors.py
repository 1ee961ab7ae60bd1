"""A corrupt, truncated or foreign database file ends in one clear error (CLI, library and dashboard), never a
traceback, and is never modified."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from auditor.store.database import Store, StoreCorrupt

OVERVIEW = str(Path(__file__).resolve().parent.parent / "app" / "views" / "overview.py")


@pytest.fixture(params=["garbage", "truncated"])
def broken_db(request, small_db, tmp_path) -> Path:
    path = tmp_path / "broken.duckdb"
    if request.param == "garbage":
        path.write_bytes(b"this is not a database " * 500)
    else:
        shutil.copy(small_db, path)
        with path.open("r+b") as fh:
            fh.truncate(os.path.getsize(small_db) // 3)  # a half-written copy
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_library_raises_store_corrupt_naming_the_file_and_the_fix(broken_db):
    before = _digest(broken_db)
    store = Store(broken_db)
    with pytest.raises(StoreCorrupt, match="not a readable audit database") as err:
        for table in store.tables():  # a truncated file fails on the first read past its end
            store.query(f"SELECT * FROM {table}")
    assert str(broken_db) in str(err.value) and "re-create it" in str(err.value)
    assert _digest(broken_db) == before


def test_the_cli_exits_2_with_one_line(broken_db):
    """`status` reads runs and scores: a truncated file fails there, a foreign one at open."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "status", "--db", str(broken_db)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not a readable audit database" in proc.stderr


def test_the_dashboard_shows_an_error(broken_db, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_DB", str(broken_db))
    at = AppTest.from_file(OVERVIEW).run(timeout=60)
    assert not at.exception
    assert any("not a readable audit database" in e.value for e in at.error)


def test_reads_in_a_burst_share_one_connection_and_writes_still_work(small_db, tmp_path, monkeypatch):
    import duckdb

    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    store = Store(path)
    opened = []
    real = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(k.get("read_only")) or real(*a, **k))
    with store.reading():
        n = store.scalar("SELECT count(*) FROM samples")
        store.query("SELECT * FROM classes")
        store.execute("INSERT INTO meta VALUES ('burst', '1')")  # a write closes the shared connection first
        assert store.scalar("SELECT value FROM meta WHERE key = 'burst'") == "1"
        assert store.scalar("SELECT count(*) FROM samples") == n
    assert opened == [True, False, True]
    other = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr  # nothing is held once the burst ends


def test_a_write_through_another_store_closes_this_threads_shared_reader(small_db, tmp_path):
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    page, launcher = Store(path, timeout_s=5), Store(path, timeout_s=5)
    with page.reading():
        n = page.scalar("SELECT count(*) FROM samples")  # the render's shared read-only connection is open
        launcher.execute("INSERT INTO meta VALUES ('launch', '1')")  # a job launch from the same thread
        assert page.scalar("SELECT value FROM meta WHERE key = 'launch'") == "1"  # the page reads on, reopened
        assert page.scalar("SELECT count(*) FROM samples") == n
    assert launcher.scalar("SELECT value FROM meta WHERE key = 'launch'") == "1"


def test_a_capped_write_gives_other_writers_their_memory_limit_back(small_db, tmp_path):
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    store = Store(path, timeout_s=5)
    limit = "SELECT current_setting('memory_limit')"
    with store.connect() as other:  # another writer of this process, open across the capped write
        before = other.execute(limit).fetchone()[0]
        store.write([("meta", pd.DataFrame([{"key": "capped", "value": "1"}]))], memory_limit_mib=64)
        assert other.execute(limit).fetchone()[0] == before != "64.0 MiB"
    assert store.scalar("SELECT value FROM meta WHERE key = 'capped'") == "1"
