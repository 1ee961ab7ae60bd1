"""What the Jobs page, the Overview and the launcher read about background jobs and the data last ingested."""

from __future__ import annotations

import pandas as pd

from auditor.store import Store


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
    """Every job recorded as running, oldest first (job_id, pid, started_at)."""
    return store.query("SELECT job_id, pid, started_at FROM jobs WHERE status = 'running' ORDER BY started_at, job_id")


def last_ingest_source(store: Store) -> str | None:
    """The data source of the latest ingest (`meta.data_source`; in older files its run message, '... problems from
    SOURCE'); None when nothing was ingested."""
    source = store.scalar(
        "SELECT coalesce((SELECT value FROM meta WHERE key = 'data_source'), "
        "                (SELECT regexp_extract(message, ' problems from (.+)$', 1) FROM runs WHERE kind = 'ingest' "
        "                 AND status = 'done' ORDER BY finished_at DESC NULLS LAST LIMIT 1))")
    return source or None
