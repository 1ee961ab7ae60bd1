"""Pipeline stages launched in the background (real `memaudit run` processes on a tiny dataset), followed, cancelled
and cleaned up, and the Jobs page driving them (Streamlit AppTest)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from test_app import run_page

from auditor.store import job_queries
from auditor.store.database import Store
from pipelines import launcher
from pipelines.jobs import Job
from pipelines.runs import now

JOBS_PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "jobs.py")
DEADLINE_S = 90


@pytest.fixture(scope="module")
def tiny_manifest(default_manifest, tmp_path_factory) -> Path:
    """Two images per class and split of the default dataset, by absolute path (40 images)."""
    with default_manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept, seen = [], {}
    for row in rows:
        key = (row["label"], row["split"])
        if seen.setdefault(key, 0) < 2:
            seen[key] += 1
            kept.append({**row, "path": str(default_manifest.parent / row["path"])})
    path = tmp_path_factory.mktemp("tiny") / "tiny.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    return path


@pytest.fixture(scope="module")
def launched(tiny_manifest, tmp_path_factory):
    """Three real jobs started together so that they run side by side: an ingest ('ok'), an ingest of a missing
    manifest ('bad'), and an ingest then a training far too long to finish ('long'); none outlives the module."""
    root = tmp_path_factory.mktemp("launched")
    # The tiny manifest names the default dataset's files by absolute path, outside its own folder.
    trusted = root / "trusted.toml"
    trusted.write_text("[data]\nallow_outside_root = true\n")
    long_config = root / "long.toml"
    long_config.write_text("[data]\nallow_outside_root = true\n[train]\nepochs = 100000\n")
    plans = {"ok": (["ingest"], str(tiny_manifest), trusted), "bad": (["ingest"], str(root / "missing.csv"), None),
             "long": (["train", "ingest"], str(tiny_manifest), long_config)}
    started = {}
    for name, (stages, data, config) in plans.items():
        db = root / f"{name}.duckdb"
        started[name] = (Store(db), launcher.launch(db, stages, data=data, profile="quick", config=config))
    yield started
    for store, job_id in started.values():
        launcher.cancel(store, job_id)


def wait_for(store: Store, job_id: str, until: Callable[[dict], bool] = lambda job: job["status"] != "running",
             deadline_s: float = DEADLINE_S) -> dict:
    """The job's row once `until` holds for it (polled), failing the test after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        job = job_queries.job(store, job_id)
        if until(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} still {job_queries.job(store, job_id)} after {deadline_s}s")


def job_row(store: Store, job_id: str) -> dict:
    frame = job_queries.jobs(store)
    return frame[frame["job_id"] == job_id].iloc[0].to_dict()


def gone(pid: int, deadline_s: float = 10) -> bool:
    """Whether `pid` has exited within `deadline_s` (a job marks its row a moment before its process ends)."""
    deadline = time.monotonic() + deadline_s
    while launcher.is_alive(pid, None):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_launch_returns_at_once_and_the_job_ends_done(launched, tiny_manifest):
    store, job_id = launched["ok"]
    job = wait_for(store, job_id)
    assert job["status"] == "done", job
    row = job_row(store, job_id)
    assert (row["kind"], row["done"], row["total"], row["unit"]) == ("pipeline", 1, 1, "stages")
    assert f"--data {tiny_manifest}" in row["command"] and f"--job-id {job_id}" in row["command"]
    assert Path(row["log_path"]) == launcher.logs_dir(store.path) / f"{job_id}.log"
    assert "40 images (test 20, train 20)" in launcher.read_log(store, row["log_path"])
    assert store.scalar("SELECT count(*) FROM samples") == 40
    assert gone(int(row["pid"])) and not launcher.cancel(store, job_id)  # a finished job cannot be cancelled


def test_a_failing_job_ends_failed_with_its_error(launched):
    store, job_id = launched["bad"]
    job = wait_for(store, job_id)
    assert job["status"] == "failed" and "ManifestError" in job["message"] and "missing.csv" in job["message"]
    log = launcher.read_log(store, job_row(store, job_id)["log_path"])
    assert "memaudit: error:" in log and "missing.csv" in log


def test_cancel_stops_a_long_job(launched):
    store, job_id = launched["long"]
    job = wait_for(store, job_id, lambda job: job["status"] != "running" or str(job["message"]).startswith("train"))
    assert job["status"] == "running", job  # it got past ingest and into training
    assert launcher.cancel(store, job_id)
    job = job_queries.job(store, job_id)
    assert (job["status"], job["message"]) == ("cancelled", "cancelled") and gone(int(job["pid"]))
    assert store.scalar("SELECT count(*) FROM samples") == 40  # ingest ran first, whatever the order given


def test_launch_without_data_reingests_the_last_source(launched, tiny_manifest, tmp_path):
    store, first = launched["ok"]
    wait_for(store, first)
    job_id = launcher.launch(store.path, ["ingest"])
    assert f"--data {tiny_manifest}" in job_row(store, job_id)["command"]
    pid = int(job_queries.job(store, job_id)["pid"])
    assert launcher.cancel(store, job_id) and gone(pid)
    assert job_queries.job(store, job_id)["status"] == "cancelled"
    with pytest.raises(ValueError, match="no data given"):
        launcher.launch(tmp_path / "fresh.duckdb", ["ingest"])


@pytest.mark.parametrize("stages, options, error", [
    ([], {}, "no stages chosen"), (["ingest", "report"], {}, "unknown stage"),
    (["train"], {"profile": "turbo"}, "unknown profile")])
def test_launch_refuses_bad_requests_before_starting(tmp_path, stages, options, error):
    with pytest.raises(ValueError, match=error):
        launcher.launch(tmp_path / "audit.duckdb", stages, **options)
    assert not (tmp_path / "audit.duckdb").exists()


def running_job(store: Store, job_id: str, pid: int, started_ago: timedelta = timedelta(0)) -> None:
    """A `jobs` row that claims `pid` runs it, started `started_ago`."""
    Job(store, job_id, "pipeline", None, 2, "stages")
    store.execute("UPDATE jobs SET pid = ?, started_at = ? WHERE job_id = ?", [pid, now() - started_ago, job_id])


@pytest.fixture()
def store(tmp_path) -> Store:
    """A database with every contract table and no rows."""
    store = Store(tmp_path / "audit.duckdb")
    store.init()
    return store


def test_refresh_fails_jobs_whose_process_vanished(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stranger = subprocess.Popen(["sleep", "30"])  # alive, but started long after the job it is said to run
    try:
        running_job(store, "dead", dead.pid)
        running_job(store, "reused", stranger.pid, started_ago=timedelta(hours=1))
        running_job(store, "alive", os.getpid())
        assert launcher.refresh(store) == 2
        status = job_queries.jobs(store).set_index("job_id")[["status", "message"]]
        assert status.loc["dead"].tolist() == status.loc["reused"].tolist() == \
            ["failed", "process vanished (see its log, if any)"]
        assert status.loc["alive", "status"] == "running" and launcher.refresh(store) == 0
    finally:
        stranger.kill()
        stranger.wait()


def test_read_log_reads_only_job_logs(tmp_path):
    store = Store(tmp_path / "audit.duckdb")
    logs = launcher.logs_dir(store.path)
    logs.mkdir(parents=True)
    (logs / "job.log").write_text("first\nstep 1\rstep 2\rstep 3\nlast line\n")
    assert launcher.read_log(store, logs / "job.log") == "first\nstep 3\nlast line\n"
    assert launcher.read_log(store, logs / "job.log", max_bytes=12) == "last line\n"
    assert launcher.read_log(store, logs / "not-yet.log") == ""
    secret = tmp_path / "secret.log"
    secret.write_text("secret")
    (logs / "link.log").symlink_to(secret)
    for path in (secret, logs / ".." / "secret.log", logs / "link.log", "/etc/passwd", logs / "job.txt"):
        with pytest.raises(ValueError, match="not a job log"):
            launcher.read_log(store, path)


def test_jobs_page_lists_jobs_with_progress_and_cancel(store, monkeypatch):
    job = Job(store, "job-mem", "ploo_improved", "mem-run", 8, "models")
    job.update(8)
    job.finish()
    at = run_page(JOBS_PAGE, monkeypatch, store.path)
    assert not at.exception and not at.error and "Jobs" in [h.value for h in at.subheader]
    table = at.dataframe[0].value
    assert table.loc[0, ["job", "kind", "status", "done / total"]].tolist() == ["job-mem", "pLOO-improved", "done",
                                                                               "8 / 8 models"]
    assert not at.get("progress") and [b.label for b in at.button] == ["Start"]  # nothing running to cancel
    assert not at.expander  # no job started from the page, so no log
    store.execute("UPDATE jobs SET status = 'running', done = 1, eta_s = 120, finished_at = NULL, pid = ?",
                  [os.getpid()])
    at = run_page(JOBS_PAGE, monkeypatch, store.path)
    progress = at.get("progress")
    assert not at.exception and len(progress) == 1 and progress[0].proto.value == int(100 / 8)
    assert "1 of 8 models, ETA 2 min" in progress[0].proto.text
    assert at.dataframe[0].value.loc[0, "ETA"] == "2 min" and at.button(key="cancel-job-mem").label == "Cancel"


def test_start_launches_without_waiting_and_cancel_stops_it(store, tiny_manifest, monkeypatch):
    at = run_page(JOBS_PAGE, monkeypatch, store.path)
    assert not at.exception and any("No jobs yet" in i.value for i in at.info)
    at.button[0].click().run(timeout=60)  # Start with no stage chosen
    assert any("Choose at least one stage" in w.value for w in at.warning) and job_queries.jobs(store).empty
    at.multiselect[0].set_value(["ingest"])
    at.text_input[0].input(str(tiny_manifest))
    at.text_input[1].input("quick")
    at.button[0].click().run(timeout=60)
    assert job_queries.jobs(store).empty and any(m.value == "- ingest" for m in at.markdown)  # the plan only
    t0 = time.monotonic()
    at.button(key="jobs_pending-confirm").click().run(timeout=60)
    assert time.monotonic() - t0 < 5, "Confirm waited for the job"
    assert not at.exception and not at.error
    job_id = job_queries.jobs(store).loc[0, "job_id"]
    assert any(job_id in s.value for s in at.success)
    job = job_queries.job(store, job_id)
    assert job["status"] == "running" and len(at.get("progress")) == 1
    assert "--profile quick" in at.expander[0].caption[0].value
    at.button(key=f"cancel-{job_id}").click().run(timeout=60)
    assert not at.exception and job_queries.job(store, job_id)["status"] == "cancelled"
    assert gone(int(job["pid"])) and not at.get("progress")


def test_start_can_read_files_outside_the_root(store, tiny_manifest, monkeypatch):
    # The tiny manifest names its files by absolute path, as an exported manifest does: outside its folder.
    at = run_page(JOBS_PAGE, monkeypatch, store.path)
    at.multiselect[0].set_value(["ingest"])
    at.text_input[0].input(str(tiny_manifest))
    at.checkbox[0].check()
    at.button[0].click().run(timeout=60)
    at.button(key="jobs_pending-confirm").click().run(timeout=60)
    assert not at.exception and not at.error, [e.value for e in at.error]
    job_id = job_queries.jobs(store).loc[0, "job_id"]
    assert wait_for(store, job_id)["status"] == "done", launcher.read_log(store, job_row(store, job_id)["log_path"])
    config = launcher.logs_dir(store.path) / f"{job_id}.toml"
    assert f"--config {config}" in job_row(store, job_id)["command"]
    assert config.read_text() == "[data]\nallow_outside_root = true\n"
    assert store.scalar("SELECT count(*) FROM samples") == 40
    assert not store.scalar("SELECT count(*) FROM problems WHERE code = 'outside_root'")
    with pytest.raises(ValueError, match="set data.allow_outside_root = true in"):
        launcher.launch(store.path, ["ingest"], data=str(tiny_manifest), config=config, allow_outside_root=True)
