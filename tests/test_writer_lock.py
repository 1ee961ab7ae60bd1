"""One writer per database: two `memaudit run` started at once on one database (one exits 2 naming the other, the
tables equal one run's), every writing command refused while another process holds the lock, the lock released when
its holder is killed, and the Jobs page's launcher refusing a second job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.store.database import Store
from pipelines import launcher
from pipelines.cli import main
from pipelines.writer_lock import WriterBusy, holder, lock_path, writer_lock
from tests.conftest import SMALL_OVERRIDES, memaudit

TABLES = ("samples", "runs", "epochs", "dynamics", "predictions", "scores")
# Rows that one run writes once: a duplicate of any key means two writers interleaved.
KEYS = {"epochs": "run_id, epoch", "dynamics": "run_id, sample_id, step, phase", "predictions": "run_id, sample_id",
        "scores": "sample_id", "samples": "sample_id"}
OVERLAP_PER_CLASS = 100
HOLDER = """
import sys, time
from pipelines.writer_lock import writer_lock
with writer_lock(sys.argv[1], "memaudit run --data elsewhere"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """The tests' small training recipe (SMALL_OVERRIDES) as a --config file, on 100 images per class and split: a
    run that lasts long enough for two started at once to overlap."""
    overrides = {**SMALL_OVERRIDES, "data": {"limit_per_class": OVERLAP_PER_CLASS}}
    lines = []
    for section, values in overrides.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def held(tmp_path) -> tuple[Path, subprocess.Popen]:
    """A database whose writer lock another process holds (until the test ends or kills it)."""
    db = tmp_path / "audit.duckdb"
    Store(db).init()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield db, proc
    proc.kill()
    proc.wait()


def _counts(db: Path) -> dict[str, int]:
    store = Store(db)
    return {table: int(store.scalar(f"SELECT count(*) FROM {table}")) for table in TABLES}


def _duplicates(db: Path) -> dict[str, int]:
    store = Store(db)
    return {table: int(store.scalar(f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL "
                                    "HAVING count(*) > 1)")) for table, key in KEYS.items()}


def _run_args(data: Path, db: Path, config: Path) -> list:
    return ["run", "--data", data, "--db", db, "--profile", "quick", "--config", config,
            "--stages", "ingest,train,scores"]


def test_two_runs_at_once_one_writes_the_other_exits_2(default_manifest, small_config, tmp_path):
    db = tmp_path / "contested.duckdb"
    procs = [memaudit(*_run_args(default_manifest, db, small_config), background=True) for _ in range(2)]
    errors = [proc.communicate(timeout=600)[1].decode() for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 2], errors
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    lines = errors[loser].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memaudit: error: {db} is being written by another memaudit "
                                                   f"process (pid {procs[winner].pid}, `memaudit run --data ")
    assert "started 20" in lines[0] and "wait for it to finish" in lines[0]
    solo = tmp_path / "solo.duckdb"
    done = memaudit(*_run_args(default_manifest, solo, small_config))
    assert done.returncode == 0, done.stderr
    assert _counts(db) == _counts(solo) and _counts(db)["dynamics"] > 0
    assert _duplicates(db) == dict.fromkeys(KEYS, 0)
    assert holder(db) is None


@pytest.mark.parametrize("command", [["run", "--stages", "ingest", "--data", "default"],
                                     ["experiment", "--models", "2"], ["sweep"]])
def test_every_writing_command_names_the_holder(held, capsys, command):
    db, proc = held
    assert main([command[0], "--db", str(db), *command[1:], "--profile", "quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"is being written by another memaudit process (pid {proc.pid}, `memaudit run --data elsewhere`" in err
    assert Store(db).scalar("SELECT count(*) FROM runs") == 0


def test_the_lock_dies_with_its_holder(held):
    db, proc = held
    assert holder(db)["pid"] == proc.pid and lock_path(db).is_file()
    proc.kill()
    proc.wait()
    assert holder(db) is None
    with writer_lock(db, "memaudit run"):
        assert holder(db)["command"] == "memaudit run"
        with pytest.raises(WriterBusy, match=r"memaudit process \(pid \d+, `memaudit run`"), writer_lock(db, "x"):
            pass
    assert holder(db) is None


def test_launcher_refuses_a_second_job(held, tmp_path):
    db, proc = held
    with pytest.raises(WriterBusy, match=f"pid {proc.pid}, `memaudit run --data elsewhere`"):
        launcher.launch(db, ["ingest"], data="default", profile="quick")
    with pytest.raises(WriterBusy, match=f"pid {proc.pid}"):
        launcher.launch_experiment(db, ["memorized"], models=2, profile="quick")
    assert Store(db).scalar("SELECT count(*) FROM jobs") == 0


def test_two_launches_at_once_leave_one_run(default_manifest, small_config, tmp_path):
    db = tmp_path / "jobs.duckdb"
    stages = ["ingest", "train", "scores"]
    first = launcher.launch(db, stages, data=str(default_manifest), profile="quick", config=small_config)
    try:
        second = launcher.launch(db, stages, data=str(default_manifest), profile="quick", config=small_config)
    except WriterBusy as exc:  # the first job locked the database already: refused before starting
        second, refusal = None, str(exc)
    store = Store(db)
    deadline = time.monotonic() + 600
    while not store.query("SELECT * FROM jobs WHERE status = 'running'").empty and time.monotonic() < deadline:
        time.sleep(0.5)
    jobs = store.query("SELECT job_id, status, message FROM jobs ORDER BY status")
    if second is None:
        assert jobs[["job_id", "status"]].values.tolist() == [[first, "done"]], jobs
    else:  # both started: the one that locked second failed, naming the other
        assert jobs["status"].tolist() == ["done", "failed"], jobs
        winner, refusal = jobs["job_id"].iloc[0], jobs["message"].iloc[1]
        assert f"--job-id {winner}" in refusal
    assert "is being written by another memaudit process" in refusal
    assert _duplicates(db) == dict.fromkeys(KEYS, 0)
