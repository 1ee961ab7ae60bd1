"""Shared fixtures: an isolated data home, the materialised default dataset and a small audited database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_OVERRIDES = {"data": {"limit_per_class": 24}, "train": {"epochs": 3, "width": 8},
                   "dynamics": {"el2n_epoch": 1}, "convergence": {"window": 1}}


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """MEMAUDIT_HOME for the whole session, so tests never touch the user's data directory."""
    home = tmp_path_factory.mktemp("memaudit-home")
    os.environ["MEMAUDIT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def default_manifest(data_home) -> Path:
    from auditor.data.default_dataset import materialise_default

    return materialise_default()


@pytest.fixture(scope="session")
def small_db(tmp_path_factory, default_manifest) -> Path:
    """A fully audited database on 24 images per class and split of the default dataset (seconds to build)."""
    from auditor.config import load_config
    from auditor.store.database import Store
    from pipelines.runner import run_pipeline

    path = tmp_path_factory.mktemp("small-db") / "audit.duckdb"
    cfg = load_config(profile="quick", overrides=SMALL_OVERRIDES)
    run_pipeline(Store(path), str(default_manifest), cfg)
    return path


@pytest.fixture(scope="session")
def planted_source(tmp_path_factory, default_manifest) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The planted-copies database (tests/planted.py), audited once for the session; never written: a test that
    writes works on `copy_audit` of it. Returns it and the planted pairs {plant: (source id, copy id)}."""
    from planted import build_planted_db

    return build_planted_db(default_manifest, tmp_path_factory.mktemp("planted-db"))


def copy_audit(db: Path, folder: Path) -> Path:
    """A copy of an audit database (its file, WAL if any and model files) in `folder`; returns the copy's path."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for source in db.parent.iterdir():
        if source.name.startswith(db.name):
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / source.name)
    return folder / db.name


def memaudit(*args: str, background: bool = False):
    """Run `python -m pipelines.cli ARGS` offline: completed (text output, 10 min limit), or started in the
    background (stderr piped) to be killed by a resume test."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "pipelines.cli", *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if background:
        return subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def kill_when(proc, ready) -> None:
    """SIGKILL a background `memaudit` process as soon as `ready(its progress output so far)` holds (stderr bytes)."""
    import signal

    seen = b""
    while proc.poll() is None and not ready(seen):
        seen += proc.stderr.read1(4096)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_when_progress(proc, pattern: bytes) -> None:
    """SIGKILL a background `memaudit` process as soon as its progress output (stderr) matches `pattern`."""
    import re

    wanted = re.compile(pattern)
    kill_when(proc, lambda seen: wanted.search(seen) is not None)


def kill_at_fraction(proc, bar: bytes, fraction: float) -> None:
    """SIGKILL a background `memaudit` process once the progress bar whose description matches `bar` (a regex) shows
    at least `fraction` of its total done (set TQDM_MININTERVAL=0 for the process to print every tick)."""
    import re

    counts = re.compile(bar + rb"[^\r\n]*\| *(\d+)/(\d+) \[")
    # A read adds at most 4096 bytes, so the last 8192 hold every status line whole at least once.
    kill_when(proc, lambda seen: any(int(n) >= fraction * int(total)
                                     for n, total in counts.findall(seen, max(0, len(seen) - 8192))))


# ----------------------------------------------------------------- the dashboard in a real browser (shared helpers)

CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium, driven by Playwright (never `playwright install`): headless, no sandbox, no background traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The app's script run is over (the app root's data-test-script-state).
IDLE = "document.querySelector(\"[data-testid='stApp']\")?.dataset.testScriptState === 'notRunning'"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server, log: Path, timeout_s: float = 30.0) -> None:
    """Poll streamlit's health endpoint until it answers 200, failing early (with its `log`) if the server died."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout_s:.0f}s")


@contextmanager
def dashboard(db: Path, log: Path, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve the dashboard for `db` (`memaudit app`'s streamlit command) on a free loopback port, its output in
    `log`; yields its URL once healthy, and stops it on exit."""
    import subprocess

    from pipelines.cli import app_command

    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(app_command(db, "127.0.0.1", port), cwd=Path(__file__).resolve().parent.parent,
                                  stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log, timeout_s)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
