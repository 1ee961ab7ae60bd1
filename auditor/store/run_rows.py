"""The `runs` and `problems` tables: every stage writes a `runs` row with its config, seed, code and library versions,
and records the problems it finds after ingest."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from auditor.config import AuditConfig
from auditor.store.provenance import code_version, library_versions
from auditor.store.database import Store

# Tables whose rows belong to one run_id and are replaced when that run is re-done.
RUN_OWNED_TABLES = ("epochs", "dynamics", "predictions")


def record_problems(store: Store, problems: pd.DataFrame) -> None:
    """Store problems found by a stage after ingest, replacing that stage's earlier rows for the same samples, so a
    re-run (or a resume after a kill) never lists a file twice."""
    stage_ids = problems[["stage", "sample_id"]].drop_duplicates()
    store.write([("problems", problems)], frames={"_seen": stage_ids}, deletes=[
        ("DELETE FROM problems p USING _seen s WHERE p.stage = s.stage AND p.sample_id = s.sample_id", [])])


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def run_status(store: Store, run_id: str) -> str | None:
    """Status of a run ('running', 'done', 'failed') or None when it was never started."""
    return store.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id])


def start_run(store: Store, run_id: str, kind: str, cfg: AuditConfig, *, seed: int | None = None,
              parent_run_id: str | None = None, device: str | None = None) -> None:
    """(Re)start a run: clear whatever an interrupted attempt left behind, then record it as running."""
    with store.connect() as con:
        con.execute("BEGIN TRANSACTION")
        for table in RUN_OWNED_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute(
            "INSERT INTO runs (run_id, kind, parent_run_id, seed, config_json, versions_json, code_version, device,"
            " started_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
            [run_id, kind, parent_run_id, seed, json.dumps(cfg.to_dict(), sort_keys=True),
             json.dumps(library_versions(), sort_keys=True), code_version(), device, now()])
        con.execute("COMMIT")


def finish_run(store: Store, run_id: str, *, status: str = "done", message: str | None = None,
               converged: bool | None = None, train_acc: float | None = None, test_acc: float | None = None,
               seconds: float | None = None) -> None:
    """Record how a run ended."""
    store.execute(
        "UPDATE runs SET finished_at = ?, status = ?, message = ?, converged = ?, train_acc = ?, test_acc = ?,"
        " seconds = ? WHERE run_id = ?",
        [now(), status, message, converged, train_acc, test_acc, seconds, run_id])


def audit_seed_run(store: Store) -> str | None:
    """The lowest-seed training run behind the current scores; None before any scores."""
    return store.scalar("SELECT r.run_id FROM run_inputs i JOIN runs r ON r.run_id = i.input_run_id "
                        "WHERE i.run_id = (SELECT min(run_id) FROM scores) ORDER BY r.seed LIMIT 1")


def save_run_inputs(store: Store, run_id: str, input_run_ids: list[str], role: str) -> None:
    """Record the runs `run_id` is built on (replacing what it recorded before)."""
    store.write([("run_inputs", pd.DataFrame({"run_id": run_id, "input_run_id": input_run_ids, "role": role}))],
                deletes=[("DELETE FROM run_inputs WHERE run_id = ?", [run_id])])


def run_results(store: Store, run_ids: list[str]) -> pd.DataFrame:
    """run_id, converged, train_acc and test_acc of `run_ids`, in seed order."""
    return store.query("SELECT run_id, converged, train_acc, test_acc FROM runs WHERE run_id IN "
                       f"({', '.join('?' * len(run_ids))}) ORDER BY seed", run_ids)


def problem_reasons(store: Store) -> pd.DataFrame:
    """Every recorded problem's sample_id, reason and code."""
    return store.query("SELECT sample_id, reason, code FROM problems")


def done_runs(store: Store, kind: str) -> pd.DataFrame:
    """Every column of the finished runs of `kind`."""
    return store.query("SELECT * FROM runs WHERE kind = ? AND status = 'done'", [kind])


def restore_run(store: Store, run_id: str, rows: pd.DataFrame) -> None:
    """Put back the `runs` row of `run_id` as `rows` holds it (undoing a restart of that run)."""
    store.write([("runs", rows)], deletes=[("DELETE FROM runs WHERE run_id = ?", [run_id])])
