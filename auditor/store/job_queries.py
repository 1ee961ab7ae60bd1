"""The `jobs` table: what the Jobs page, the Overview and the launcher read about background jobs (and the data last
ingested), and the writes of a job's progress and of its launch."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


# The columns of `jobs` the dashboard shows.
JOB_COLUMNS = ["job_id", "kind", "status", "done", "total", "unit", "eta_s", "started_at", "updated_at", "finished_at",
               "message", "run_id", "pid", "command", "log_path"]


def jobs(store: Store, limit: int = 20) -> pd.DataFrame:
    """The `limit` most recent long-running jobs, running ones first (JOB_COLUMNS; `command` and `log_path`, absent
    from files written before jobs could be launched from the dashboard, are then empty)."""
    return store.query("SELECT * FROM jobs ORDER BY status = 'running' DESC, updated_at DESC NULLS LAST, job_id "
                       "LIMIT ?", [limit]).reindex(columns=JOB_COLUMNS)


def job(store: Store, job_id: str) -> dict | None:
    """One job's state (job_id, kind, status, pid, started_at, message), None when there is no such job."""
    frame = store.query("SELECT job_id, kind, status, pid, started_at, message FROM jobs WHERE job_id = ?", [job_id])
    return None if frame.empty else {k: None if pd.isna(v) else v for k, v in frame.iloc[0].items()}


def running_jobs(store: Store) -> pd.DataFrame:
    """Every job recorded as running, oldest first (job_id, pid, started_at, token; no token in older files)."""
    return store.query("SELECT * FROM jobs WHERE status = 'running' ORDER BY started_at, job_id").reindex(
        columns=["job_id", "pid", "started_at", "token"])


def last_ingest_source(store: Store) -> str | None:
    """The data source of the latest ingest (`meta.data_source`; in older files its run message, '... problems from
    SOURCE'); None when nothing was ingested."""
    source = store.scalar(
        "SELECT coalesce((SELECT value FROM meta WHERE key = 'data_source'), "
        "                (SELECT regexp_extract(message, ' problems from (.+)$', 1) FROM runs WHERE kind = 'ingest' "
        "                 AND status = 'done' ORDER BY finished_at DESC NULLS LAST LIMIT 1))")
    return source or None


def start_job(store: Store, job_id: str, kind: str, run_id: str | None, total: int, unit: str, at: str, pid: int,
              token: str | None) -> None:
    """Record a job as running with nothing done yet (replacing an earlier row of that id), by process `pid`."""
    store.execute("INSERT OR REPLACE INTO jobs (job_id, kind, run_id, status, done, total, unit, started_at,"
                  " updated_at, pid, token) VALUES (?, ?, ?, 'running', 0, ?, ?, ?, ?, ?, ?)",
                  [job_id, kind, run_id, total, unit, at, at, pid, token])


def record_progress(store: Store, job_id: str, done: int, eta_s: float | None, message: str | None, at: str) -> None:
    """Record how much of a job is done and its ETA (a None message keeps the last one)."""
    store.execute("UPDATE jobs SET done = ?, eta_s = ?, updated_at = ?, message = coalesce(?, message) "
                  "WHERE job_id = ?", [done, eta_s, at, message, job_id])


def finish_job(store: Store, job_id: str, status: str, message: str | None, at: str) -> None:
    """Mark a job finished with `status` (done, failed, cancelled); a None message keeps the last one."""
    store.execute("UPDATE jobs SET status = ?, eta_s = 0, finished_at = ?, updated_at = ?, "
                  "message = coalesce(?, message) WHERE job_id = ?", [status, at, at, message, job_id])


def record_launch(store: Store, job_id: str, pid: int, token: str, command: str, log_path: str) -> None:
    """Record the process a launched job runs in: its pid and token, command line and log file."""
    store.execute("UPDATE jobs SET pid = ?, token = ?, command = ?, log_path = ?, message = coalesce(message, ?) "
                  "WHERE job_id = ?", [pid, token, command, log_path, "starting", job_id])
