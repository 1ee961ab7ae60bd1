"""Decisions recorded one by one while another process keeps writing to the same DuckDB file: every decision is
stored exactly once, none is lost, and no lock error reaches the reviewer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from auditor.review.reviews import record_decisions
from auditor.store.database import Store

N_DECISIONS = 60
TURN_EVERY = 15  # after this many decisions, wait for the writer's next commit: the turns are proven, not hoped for
# The other process, paced like a busy stage: a short transaction on `problems` every ~10 ms until the stop file
# appears (or 60 s pass, should the test die); it says "wrote" after its first commit.
WRITER = """
import sys, time
from pathlib import Path
import pandas as pd
from auditor.store.database import Store
store, stop = Store(sys.argv[1]), Path(sys.argv[2])
row = pd.DataFrame([{"source": "writer", "reason": "concurrency test", "code": "test", "severity": "warning",
                     "action": "none", "stage": "concurrency"}])
store.append("problems", row)
print("wrote", flush=True)
deadline = time.monotonic() + 60
while not stop.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
    store.append("problems", row)
"""


def _writes(store: Store) -> int:
    return int(store.scalar("SELECT count(*) FROM problems WHERE stage = 'concurrency'"))


def _wait_for_write(store: Store, above: int, timeout_s: float = 30.0) -> int:
    """The writer's commit count once it exceeds `above`; fails if the writer got no turn in `timeout_s` (starved)."""
    deadline = time.monotonic() + timeout_s
    while (writes := _writes(store)) <= above:
        assert time.monotonic() < deadline, f"the other writer got no turn on the file in {timeout_s:.0f} s"
        time.sleep(0.05)
    return writes


def test_decisions_survive_a_concurrent_writer(small_db, tmp_path):
    store = Store(tmp_path / "audit.duckdb")
    shutil.copy(small_db, store.path)
    ids = store.query("SELECT sample_id FROM samples ORDER BY sample_id LIMIT ?", [N_DECISIONS])["sample_id"]
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert writer.stdout.readline() == "wrote\n", writer.stderr.read()  # it holds the file in turns from now on
        writes_before = _writes(store)
        recorded, seen = [], writes_before
        for i, sample in enumerate(ids):
            recorded.append(record_decisions(store, [sample], "keep", reviewer="ana", note=f"#{i}")[0])
            if (i + 1) % TURN_EVERY == 0:
                seen = _wait_for_write(store, seen)
        writes_during = _writes(store) - writes_before
    finally:
        stop.touch()
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert writes_during >= N_DECISIONS // TURN_EVERY  # the two processes really took turns on the file
    stored = store.query("SELECT decision_id, sample_id, note FROM reviews ORDER BY note")
    assert len(stored) == N_DECISIONS
    assert sorted(stored["decision_id"]) == sorted(recorded)
    assert sorted(stored["sample_id"]) == sorted(ids)
