"""Shared fixtures: an isolated data home, the materialised default dataset and a small audited database."""

from __future__ import annotations

import os
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
    from auditor.default_dataset import materialise_default

    return materialise_default()


@pytest.fixture(scope="session")
def small_db(tmp_path_factory, default_manifest) -> Path:
    """A fully audited database on 24 images per class and split of the default dataset (seconds to build)."""
    from auditor.config import load_config
    from auditor.store import Store
    from pipelines.runner import run_pipeline

    path = tmp_path_factory.mktemp("small-db") / "audit.duckdb"
    cfg = load_config(profile="quick", overrides=SMALL_OVERRIDES)
    run_pipeline(Store(path), str(default_manifest), cfg)
    return path


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


def kill_when_progress(proc, pattern: bytes) -> None:
    """SIGKILL a background `memaudit` process as soon as its progress output (stderr) matches `pattern`."""
    import re
    import signal

    seen, wanted = b"", re.compile(pattern)
    while proc.poll() is None and not wanted.search(seen):
        seen += proc.stderr.read1(4096)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
