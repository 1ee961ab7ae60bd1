"""`memaudit app` stops streamlit when it is told to stop: after SIGTERM nothing listens on its port and its streamlit
child is gone, so no dashboard is left orphaned."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from auditor.store.database import Store
from pipelines.launcher import is_alive

START_S = 180
STOP_S = 30


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def children(pid: int) -> list[int]:
    """The pids of the direct children of `pid`."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(condition, seconds: float) -> bool:
    """Whether `condition()` holds within `seconds` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_sigterm_stops_streamlit_and_frees_the_port(tmp_path):
    db = tmp_path / "audit.duckdb"
    Store(db).init()
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "app", "--db", str(db), "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
    streamlit: list[int] = []
    try:
        assert wait_until(lambda: listening(port) or app.poll() is not None, START_S) and app.poll() is None, \
            "the dashboard never served"
        streamlit = children(app.pid)
        assert streamlit, "no streamlit child"
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=STOP_S)
        assert wait_until(lambda: not listening(port) and not any(is_alive(p, None) for p in streamlit), STOP_S), \
            f"streamlit {streamlit} outlived `memaudit app` on port {port}"
    finally:
        for pid in [p for p in streamlit if is_alive(p, None)]:
            os.kill(pid, signal.SIGKILL)
        app.kill()
        app.wait()
