"""Pipeline runs started from the dashboard: a detached `memaudit run` per job, its `jobs` row, its log, cancel.

The child process owns its row while it runs (it marks it done or failed, see `tracked`); the dashboard only starts
it, cancels it, and marks it failed when its process is gone without a word (`refresh`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from auditor import queries
from auditor.config import load_config
from auditor.store import Store
from pipelines.jobs import Job
from pipelines.progress import Bar, ProgressFactory, terminal
from pipelines.stage_names import STAGES, parse_arms
from pipelines.runs import artifact_path, now
from pipelines.writer_lock import check_free

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KIND = "pipeline"
CANCEL_GRACE_S = 5.0
# A process that started this long after its job row cannot be the job's process (its pid was reused).
START_SLACK = timedelta(seconds=5)


def logs_dir(db: str | Path) -> Path:
    """The folder of the launched jobs' logs, `<db>.artifacts/logs`: the only place `read_log` reads."""
    return artifact_path(Store(db), "logs", "")


def launch(db: str | Path, stages: Sequence[str], *, data: str | None = None, profile: str | None = None,
           config: Path | None = None) -> str:
    """Start `memaudit run` on `db` for `stages` as a detached process and return its job id without waiting.

    Without `data`, an ingest re-reads the source of the last finished ingest. Raises ValueError (or ConfigError)
    before starting anything when the stages, data, profile or config are unusable, WriterBusy (a ValueError) when
    another process writes `db`."""
    unknown = sorted(set(stages) - set(STAGES))
    if not stages or unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; use: {', '.join(STAGES)}" if unknown else
                         f"no stages chosen; use some of: {', '.join(STAGES)}")
    ordered = [s for s in STAGES if s in stages]
    load_config(config, profile)  # a bad profile or config file fails here, not in the background
    store = Store(Path(db).resolve())
    check_free(store.path)  # a second writer would only fail in the background: refuse it here, naming the first
    store.init()
    argv = [sys.executable, "-m", "pipelines.cli", "run", "--db", str(store.path), "--stages", ",".join(ordered)]
    if "ingest" in ordered:
        argv += ["--data", _data_source(store, data)]
    if profile:
        argv += ["--profile", profile]
    if config:
        argv += ["--config", str(Path(config).resolve())]
    return _spawn(store, argv, KIND, len(ordered), "stages")


def launch_experiment(db: str | Path, arms: Sequence[str], *, models: int, profile: str | None = None,
                      reaudit: bool = False) -> str:
    """Start `memaudit experiment` on `db` with `arms` as a detached process and return its job id without waiting;
    ValueError before starting anything when the arms or the profile are unusable."""
    parse_arms(",".join(arms))
    if models < 2:
        raise ValueError(f"an experiment needs at least 2 models per arm, got {models}")
    load_config(None, profile)
    store = Store(Path(db).resolve())
    check_free(store.path)
    store.init()
    argv = [sys.executable, "-m", "pipelines.cli", "experiment", "--db", str(store.path), "--arms", ",".join(arms),
            "--models", str(models), *(["--profile", profile] if profile else []), *(["--reaudit"] if reaudit else [])]
    return _spawn(store, argv, "experiment", 1, "experiment")


def _spawn(store: Store, argv: list[str], kind: str, total: int, unit: str) -> str:
    """Register a running `jobs` row, start `argv --job-id ID` detached with its output in the job's log, and
    return the job id (the child ends its row: done or failed)."""
    job_id = f"{kind}-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    argv = [*argv, "--job-id", job_id]
    log_path = logs_dir(store.path) / f"{job_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job = Job(store, job_id, kind, None, total, unit)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=PROJECT_ROOT, start_new_session=True)
    except OSError as exc:
        job.finish("failed", f"could not start: {exc}")
        raise
    store.execute("UPDATE jobs SET pid = ?, command = ?, log_path = ?, message = coalesce(message, ?) "
                  "WHERE job_id = ?", [proc.pid, shlex.join(argv), str(log_path), "starting", job_id])
    return job_id


def _data_source(store: Store, data: str | None) -> str:
    """`data` as an absolute path ('default' as it is), else the source of the last ingest recorded in `store`."""
    if data:
        return data if data == "default" else str(Path(data).expanduser().resolve())
    recorded = queries.last_ingest_source(store)
    if recorded is None:
        raise ValueError(f"no data given and {store.path} records no earlier ingest; give the data to ingest "
                         "(default, a folder or a manifest)")
    if not Path(recorded).exists():
        raise ValueError(f"the last ingest read {recorded}, which does not exist here; give the data to ingest")
    return recorded


@contextlib.contextmanager
def tracked(store: Store, job_id: str | None, total: int) -> Iterator[ProgressFactory]:
    """Progress bars for a launched command (`memaudit run`, `memaudit experiment`); with its job id also the `jobs`
    row its launcher registered: the current step as its message, then done, or failed with the error (which
    propagates)."""
    if job_id is None:
        yield terminal
        return
    job = Job.attach(store, job_id, total)

    def progress(desc: str, n: int, unit: str = "it") -> Bar:
        job.update(0, desc)
        return terminal(desc, n, unit)

    try:
        yield progress
    except BaseException as exc:
        job.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    job.update(total)
    job.finish("done", "finished")


def _proc_stat(pid: int) -> tuple[str, datetime] | None:
    """State letter and start time (naive UTC) of `pid` from /proc; None where /proc cannot tell (no such file)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name before ')' may hold spaces
    started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0], datetime.fromtimestamp(started, UTC).replace(tzinfo=None)


def is_alive(pid: int | None, started_at: datetime | None) -> bool:
    """Whether `pid` still runs and is the process of a job started at `started_at` (not a reused pid, no zombie)."""
    if pid is None or pd.isna(pid) or pid <= 0:
        return False
    pid = int(pid)  # a numpy integer or float from a DataFrame
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own finished child, or it lingers as a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc to tell a reused pid or a zombie apart
    state, process_start = stat
    return state not in ("Z", "X") and (started_at is None or pd.isna(started_at)
                                        or process_start <= started_at + START_SLACK)


def refresh(store: Store) -> int:
    """Mark 'failed' every running job whose process is gone (killed, crashed, machine restarted); returns how many."""
    stale = [job.job_id for job in queries.running_jobs(store).itertuples() if not is_alive(job.pid, job.started_at)]
    for job_id in stale:
        Job.attach(store, job_id).finish("failed", "process vanished (see its log, if any)")
    return len(stale)


def cancel(store: Store, job_id: str) -> bool:
    """Stop a running job: SIGTERM to its process group, SIGKILL after a grace period, then mark it (and the other
    running jobs of the same process) 'cancelled'. False when the job is not running."""
    row = queries.job(store, job_id)
    if row is None or row["status"] != "running":
        return False
    pid, started_at = None if row["pid"] is None else int(row["pid"]), row["started_at"]
    if is_alive(pid, started_at):
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while is_alive(pid, started_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_alive(pid, started_at):
            _signal(pid, signal.SIGKILL)
    same_process = queries.running_jobs(store)
    for other in same_process.loc[same_process["pid"].eq(pid) | same_process["job_id"].eq(job_id), "job_id"]:
        Job.attach(store, other).finish("cancelled", "cancelled")
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads (a launched job and its workers), else to `pid` alone."""
    if pid == os.getpid():
        return  # the row of a job being launched still holds the launcher's own pid
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def read_log(store: Store, path: str | Path, max_bytes: int = 20_000) -> str:
    """The last `max_bytes` of a job's log, progress-bar redraws collapsed; only logs in `logs_dir` can be read."""
    target = Path(path).resolve()
    if target.suffix != ".log" or not target.is_relative_to(logs_dir(store.path).resolve()):
        raise ValueError(f"{path} is not a job log of {store.path}")
    try:
        with target.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(size - max_bytes, 0))
            tail = log.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = tail.split("\n")[1:] if size > max_bytes else tail.split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)
