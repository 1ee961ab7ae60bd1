"""One writer per audit database: an exclusive `flock` on `<db>.lock`, which the kernel releases when the holder's
process ends in any way (exit, exception, SIGKILL), so a crash never leaves a stale lock behind.

The holder writes its pid, command and start time into the lock file; a second writer reads them to say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# How long a refused writer waits for the holder's record to appear (the holder writes it just after locking).
RECORD_WAIT_S = 2.0


class WriterBusy(ValueError):
    """Another process is writing the database; the message names it (pid, command, start time) and the fix.
    A ValueError, so the CLI and the dashboard's launch forms report it as their other one-line refusals."""


def lock_path(db: str | Path) -> Path:
    """The lock file of the database `db`: `<db>.lock` beside it (the same file for every spelling of the path)."""
    db = Path(db).expanduser().resolve()
    return db.with_name(f"{db.name}.lock")


def _record(fd: int) -> dict:
    """The holder's record in the open lock file; {} while it has not written it yet."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(ValueError):
            record = json.loads(os.read(fd, 65536).decode("utf-8", errors="replace"))
            if isinstance(record, dict):
                return record
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def busy_message(db: str | Path, record: dict) -> str:
    """The one line a refused writer prints: who holds the database and what to do."""
    who = (f"pid {record.get('pid', '?')}, `{record.get('command', '?')}`, started {record.get('started', '?')} UTC"
           if record else "a process that has not said who it is yet")
    return (f"{Path(db)} is being written by another memaudit process ({who}); wait for it to finish or stop it, "
            "then run this again")


def holder(db: str | Path) -> dict | None:
    """The record of the process holding the writer lock of `db`, or None when nobody holds it."""
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _record(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_free(db: str | Path) -> None:
    """Raise WriterBusy naming the holder when some process holds the writer lock of `db`."""
    record = holder(db)
    if record is not None:
        raise WriterBusy(busy_message(db, record))


@contextlib.contextmanager
def writer_lock(db: str | Path, command: str) -> Iterator[None]:
    """Hold the exclusive writer lock of `db` for the block, recording this process as `command`; WriterBusy at once
    (no waiting) when another process holds it."""
    path = lock_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WriterBusy(busy_message(db, _record(fd))) from None
        record = {"pid": os.getpid(), "command": command, "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
