"""Load on the real dashboard (benchmarks/load.py, bounded small): 20 concurrent sessions, a reviewer each, review and
decide (on the Review grid and on Point detail) while a background `memaudit run` job writes to the same database;
every decision the page confirmed is stored exactly once, no session fails, the job gets on, p95 is reported.

The sessions speak streamlit's websocket protocol (benchmarks/st_client.py) to the real server: 20 chromium contexts
would spend CI's two cores rendering (some 5.5 CPU-seconds per context for a first page, against the server's 1),
which real users' own machines do. tests/test_browser.py drives the same pages in chromium."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from auditor.store.database import Store
from conftest import CHROMIUM

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"
SESSIONS = 20
DECISIONS = 2  # per session: Overview, its name, Review and a grid decision, Point detail and a decision, Decisions,
#                Overview: every page a reviewer uses
STEP_TIMEOUT_S = 180.0  # generous: the sessions share CI's two cores with the server and the job
DURATION_S = 600.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/load.py as a module."""
    spec = importlib.util.spec_from_file_location("load_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_twenty_sessions_decide_while_a_job_writes(bench: ModuleType, small_db: Path, tmp_path: Path) -> None:
    """The table is printed (pytest -s or -rP shows it); a failed session leaves its page's texts in tmp_path."""
    result = bench.run_load(small_db, tmp_path, sessions=SESSIONS, decisions=DECISIONS, duration_s=DURATION_S,
                            step_timeout_s=STEP_TIMEOUT_S, client="protocol")
    table = bench.format_table(result)
    print(table)
    assert not result.errors, table
    assert [d.status for d in result.decisions] == ["stored"] * SESSIONS * DECISIONS, table
    assert result.check.exact and result.check.stored_once == SESSIONS * DECISIONS, table
    # the job wrote meanwhile: it got on, and a writer job ran while the sessions' decisions were being stored
    assert result.models_written > 0 and result.jobs, table
    store = Store(tmp_path / "db" / small_db.name)  # run_load's copy
    first, last = store.query("SELECT min(decided_at), max(decided_at) FROM reviews WHERE list_contains(?, reviewer)",
                              [sorted({d.reviewer for d in result.decisions})]).iloc[0]
    overlapping = store.scalar("SELECT count(*) FROM jobs WHERE list_contains(?, job_id) AND started_at <= ? AND "
                               "coalesce(finished_at, updated_at) >= ?", [list(result.jobs), last, first])
    assert overlapping >= 1, f"no writer job ran between the first ({first}) and last ({last}) decision\n{table}"
    assert len(result.page_loads) == 5 * SESSIONS  # Overview twice, Review, Point detail, Decisions
    assert math.isfinite(result.p95) and result.p95 > 0


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make browser`)")
def test_browser_sessions_of_the_benchmark_decide(bench: ModuleType, small_db: Path, tmp_path: Path) -> None:
    """The benchmark's chromium client (its default, for a machine with cores to spare) on two short sessions."""
    result = bench.run_load(small_db, tmp_path, sessions=2, decisions=1, step_timeout_s=STEP_TIMEOUT_S,
                            writer_models=None, first_page="Review")
    table = bench.format_table(result)
    assert not result.errors and result.check.exact and result.check.stored_once == 2, table
    assert len(result.times["Review (first load)"]) == 2 and len(result.times["Decisions"]) == 2, table
