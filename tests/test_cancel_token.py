"""Cancel signals only a process that proves to be the job (it carries the job's token), and a running row whose
process is gone or is not the job is marked failed when a job starts, whatever pid the database names."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from auditor.store import job_queries
from auditor.store.database import Store
from pipelines import launcher
from pipelines.jobs import TOKEN_ENV, Job

DEADLINE_S = 90


@pytest.fixture()
def store(tmp_path) -> Store:
    """A database with every contract table and no rows."""
    store = Store(tmp_path / "audit.duckdb")
    store.init()
    return store


def sleeper(token: str | None = None) -> subprocess.Popen:
    """A `sleep 60` leading its own process group (as a launched job does), with `token` as its job token if given."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | ({TOKEN_ENV: token} if token else {})
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts, killed after it whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def running_row(store: Store, job_id: str, pid: int, token: str | None) -> None:
    """A `jobs` row saying `pid` runs job `job_id`, with `token`, started now (so the pid is no reused one)."""
    Job(store, job_id, "pipeline", None, 1, "stages")
    store.execute("UPDATE jobs SET pid = ?, token = ? WHERE job_id = ?", [pid, token, job_id])


def status(store: Store, job_id: str) -> tuple[str, str]:
    job = job_queries.job(store, job_id)
    return job["status"], job["message"]


@pytest.mark.parametrize("token, reason", [("copied-from-elsewhere", "does not carry the job's token"),
                                           (None, "has no token")])
def test_cancel_never_signals_a_process_that_is_not_the_job(store, processes, token, reason):
    stranger = sleeper()
    processes.append(stranger)
    running_row(store, "job", stranger.pid, token)
    assert launcher.cancel(store, "job")
    time.sleep(0.5)
    assert stranger.poll() is None, "cancel signalled a process it did not start"
    state, message = status(store, "job")
    assert state == "failed" and message.startswith("not signalled:") and reason in message


def test_cancel_stops_the_process_that_carries_the_token(store, processes):
    job = sleeper("t0ken")
    processes.append(job)
    running_row(store, "job", job.pid, "t0ken")
    assert launcher.cancel(store, "job")
    job.wait(timeout=5)  # it ended (cancel may have reaped it already: this test is its parent)
    assert status(store, "job") == ("cancelled", "cancelled")


def test_starting_a_job_fails_running_rows_that_are_not_their_process(store, processes):
    stranger, job = sleeper(), sleeper("t0ken")
    processes.extend([stranger, job])
    running_row(store, "stranger", stranger.pid, "t0ken")
    running_row(store, "job", job.pid, "t0ken")
    running_row(store, "dead", 2 ** 22 + 1, "t0ken")  # above pid_max: no such process
    with launcher.tracked(store, None, 1):
        pass
    assert status(store, "stranger") == ("failed", f"process {stranger.pid} is not this job (it does not carry the "
                                                   "job's token)")
    assert status(store, "dead") == ("failed", "process vanished (see its log, if any)")
    assert status(store, "job")[0] == "running" and stranger.poll() is None and job.poll() is None


def test_a_launch_fails_stale_running_rows_first(store, processes, tmp_path):
    stranger = sleeper()
    processes.append(stranger)
    running_row(store, "stale", stranger.pid, "t0ken")
    job_id = launcher.launch(store.path, ["ingest"], data=str(tmp_path / "missing.csv"))
    assert status(store, "stale")[0] == "failed" and stranger.poll() is None
    deadline = time.monotonic() + DEADLINE_S
    while job_queries.job(store, job_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status(store, job_id)[0] == "failed"  # the missing manifest, reported by the job itself
