"""Pipeline runs started from the dashboard: a detached `memaudit run` per job, its `jobs` row, its log, cancel.

The child process owns its row while it runs (it marks it done or failed, see `tracked`); the dashboard only starts
it, cancels it, and marks it failed when its process is gone without a word (`refresh`). The row records a random token
that only the job's process carries (in its environment), so no row can make Cancel signal a process it did not start.
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

from auditor.store import job_queries
from auditor.config import load_config
from auditor.store.database import Store
from pipelines.jobs import TOKEN_ENV, Job
from pipelines.progress import Bar, ProgressFactory, terminal
from pipelines.stage_names import STAGES, parse_arms
from pipelines.runs import artifact_path, now
from pipelines.writer_lock import check_free

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KIND = "pipeline"
CANCEL_GRACE_S = 5.0
# A process that started this long after its job row cannot be the job's process (its pid was reused).
START_SLACK = timedelta(seconds=5)
# The config of a job launched with allow_outside_root (e.g. re-auditing an exported manifest, whose paths are
# absolute).
OUTSIDE_ROOT_CONFIG = "[data]\nallow_outside_root = true\n"


def logs_dir(db: str | Path) -> Path:
    """The folder of the launched jobs' logs, `<db>.artifacts/logs`: the only place `read_log` reads."""
    return artifact_path(Store(db), "logs", "")


def launch(db: str | Path, stages: Sequence[str], *, data: str | None = None, profile: str | None = None,
           config: Path | None = None, allow_outside_root: bool = False) -> str:
    """Start `memaudit run` on `db` for `stages` as a detached process and return its job id without waiting.

    Without `data`, an ingest re-reads the source of the last finished ingest. `allow_outside_root` runs the job with
    a config file of its own (next to its log) setting `data.allow_outside_root = true`, so an exported manifest can
    be audited again. Raises ValueError (or ConfigError) before starting anything when the stages, data, profile or
    config are unusable, WriterBusy (a ValueError) when another process writes `db`."""
    unknown = sorted(set(stages) - set(STAGES))
    if not stages or unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; use: {', '.join(STAGES)}" if unknown else
                         f"no stages chosen; use some of: {', '.join(STAGES)}")
    if allow_outside_root and config:
        raise ValueError(f"allow_outside_root with a config file: set data.allow_outside_root = true in {config}")
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
    return _spawn(store, argv, KIND, len(ordered), "stages", OUTSIDE_ROOT_CONFIG if allow_outside_root else None)


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


def _spawn(store: Store, argv: list[str], kind: str, total: int, unit: str, config_text: str | None = None) -> str:
    """Mark stale running jobs failed, register a running `jobs` row, start `argv --job-id ID` detached with its
    output in the job's log and the row's token in its environment, and return the job id (the child ends its row).
    With `config_text`, the job also gets `--config` of a file holding it, next to its log."""
    refresh(store)
    job_id = f"{kind}-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    argv = [*argv, "--job-id", job_id]
    log_path = logs_dir(store.path) / f"{job_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        config_path = log_path.with_suffix(".toml")
        config_path.write_text(config_text)
        argv += ["--config", str(config_path)]
    job = Job(store, job_id, kind, None, total, unit)
    token = secrets.token_hex(16)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{TOKEN_ENV: token})
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=PROJECT_ROOT, start_new_session=True)
    except OSError as exc:
        job.finish("failed", f"could not start: {exc}")
        raise
    job_queries.record_launch(store, job_id, proc.pid, token, shlex.join(argv), str(log_path))
    return job_id


def _data_source(store: Store, data: str | None) -> str:
    """`data` as an absolute path ('default' as it is), else the source of the last ingest recorded in `store`."""
    if data:
        return data if data == "default" else str(Path(data).expanduser().resolve())
    recorded = job_queries.last_ingest_source(store)
    if recorded is None:
        raise ValueError(f"no data given and {store.path} records no earlier ingest; give the data to ingest "
                         "(default, a folder or a manifest)")
    if not Path(recorded).exists():
        raise ValueError(f"the last ingest read {recorded}, which does not exist here; give the data to ingest")
    return recorded


@contextlib.contextmanager
def tracked(store: Store, job_id: str | None, total: int) -> Iterator[ProgressFactory]:
    """Progress bars for a launched command (`memaudit run`, `memaudit experiment`), after marking stale running jobs
    failed; with its job id also the `jobs` row its launcher registered: the current step as its message, then done,
    or failed with the error (which propagates)."""
    if store.path.exists():
        refresh(store)
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


def _carries_token(pid: int, token: str) -> bool:
    """Whether process `pid` was started with `token` as its job token (False where /proc cannot tell)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_ENV}={token}".encode() in environ.split(b"\0")


def _disproof(pid: int | None, started_at: datetime | None, token: str | None) -> str | None:
    """Why `pid` is not the process of a job started at `started_at` with `token` (gone, a reused pid, or without
    the token); None when nothing disproves it, which for a row without a token proves nothing."""
    if not is_alive(pid, started_at):
        return "process vanished (see its log, if any)"
    if not pd.isna(token) and not _carries_token(int(pid), token):
        return f"process {int(pid)} is not this job (it does not carry the job's token)"
    return None


def refresh(store: Store) -> int:
    """Mark 'failed' every running job whose process is gone (killed, crashed, machine restarted) or is not the job
    (a reused pid, a database from another machine); returns how many."""
    stale = [(job.job_id, reason) for job in job_queries.running_jobs(store).itertuples()
             if (reason := _disproof(job.pid, job.started_at, job.token)) is not None]
    for job_id, reason in stale:
        Job.attach(store, job_id).finish("failed", reason)
    return len(stale)


def cancel(store: Store, job_id: str) -> bool:
    """Stop a running job whose process proves to be it (alive and carrying the job's token): SIGTERM to its process
    group, SIGKILL after a grace period, then mark it (and the other running jobs of that process) 'cancelled'.
    A job whose process cannot prove it is marked 'failed' with the reason and nothing is signalled. False when the
    job is not running."""
    running = job_queries.running_jobs(store)
    rows = running[running["job_id"].eq(job_id)]
    if rows.empty:
        return False
    job = rows.iloc[0]
    pid = None if pd.isna(job.pid) else int(job.pid)
    reason = _disproof(pid, job.started_at, job.token)
    if reason is None and pd.isna(job.token):
        reason = (f"process {pid} was not started from the dashboard (the job has no token), so nothing proves it is "
                  "this job; stop it where it runs")
    if reason is not None:
        Job.attach(store, job_id).finish("failed", f"not signalled: {reason}")
        return True
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + CANCEL_GRACE_S
    while _disproof(pid, job.started_at, job.token) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if _disproof(pid, job.started_at, job.token) is None:
        _signal(pid, signal.SIGKILL)
    for other in running.loc[running["pid"].eq(pid) & running["token"].eq(job.token), "job_id"]:
        Job.attach(store, other).finish("cancelled", "cancelled")
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads (a launched job and its workers), else to `pid` alone."""
    if pid == os.getpid():
        return  # never this process, whatever a row says
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
