"""Run records: every stage writes a `runs` row with its config, seed, code and library versions (auditor.store.run_rows
owns the table; its functions are re-exported here for the stages), and keeps large files next to the database."""

from __future__ import annotations

from pathlib import Path

from auditor.store.run_rows import finish_run, now, record_problems, run_status, start_run  # noqa: F401 (re-exported)
from auditor.store.database import Store


def artifact_path(store: Store, run_id: str, suffix: str = ".pt") -> Path:
    """Where a run keeps a file too large for the database (model weights), next to the database file."""
    return store.path.with_name(store.path.name + ".artifacts") / f"{run_id}{suffix}"
