"""Progress of long stages in the `jobs` table (models done / total, ETA), which the dashboard shows."""

from __future__ import annotations

import os
import time

from auditor.store.job_queries import finish_job, record_progress, start_job
from auditor.store.database import Store
from pipelines.runs import now

# The environment variable holding a launched job's token: the proof that a process is that job (see launcher.cancel).
TOKEN_ENV = "MEMAUDIT_JOB_TOKEN"


class Job:
    """One long-running unit of work; each update is its own short transaction. Its row records this process's pid
    and, inside a launched job, that job's token."""

    def __init__(self, store: Store, job_id: str, kind: str, run_id: str, total: int, unit: str):
        self.store, self.job_id, self.total = store, job_id, total
        self._t0, self._done_at_start = time.monotonic(), None
        start_job(store, job_id, kind, run_id, total, unit, now(), os.getpid(), os.environ.get(TOKEN_ENV))

    @classmethod
    def attach(cls, store: Store, job_id: str, total: int = 0) -> Job:
        """A handle on an existing row (to report on, cancel or fail it), without registering it again: the row keeps
        what its launcher recorded (pid, command, log)."""
        job = cls.__new__(cls)
        job.store, job.job_id, job.total = store, job_id, total
        job._t0, job._done_at_start = time.monotonic(), None
        return job

    def update(self, done: int, message: str | None = None) -> None:
        """Record progress; the ETA extrapolates the rate of the work done in this process (resumed work is free)."""
        if self._done_at_start is None:
            self._done_at_start = done
        fresh = done - self._done_at_start
        elapsed = time.monotonic() - self._t0
        eta = elapsed / fresh * (self.total - done) if fresh > 0 else None
        record_progress(self.store, self.job_id, done, eta, message, now())

    def finish(self, status: str = "done", message: str | None = None) -> None:
        """Mark the job finished (done or failed)."""
        finish_job(self.store, self.job_id, status, message, now())
