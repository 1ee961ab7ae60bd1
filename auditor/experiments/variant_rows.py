"""The sweep tables as the sweep stage writes them: the `sweeps` row, and each variant's `sweep_variants` row,
`sweep_members` and `sweep_checkpoints` (with the `run_inputs` of its run), saved or copied in one transaction."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from auditor.store.database import Store

# The tables holding one sweep variant's rows, keyed by (sweep_id, variant).
VARIANT_TABLES = ("sweep_variants", "sweep_members", "sweep_checkpoints")


def save_variant(store: Store, sweep_id: str, variant: str, run_id: str, row: pd.DataFrame, members: pd.DataFrame,
                 checkpoints: pd.DataFrame, inputs: pd.DataFrame) -> None:
    """Replace one variant's row, members and checkpoints, and its run's inputs, in one transaction."""
    store.write([("sweep_variants", row), ("sweep_members", members), ("sweep_checkpoints", checkpoints),
                 ("run_inputs", inputs)],
                deletes=[*((f"DELETE FROM {t} WHERE sweep_id = ? AND variant = ?", [sweep_id, variant])
                           for t in VARIANT_TABLES), ("DELETE FROM run_inputs WHERE run_id = ?", [run_id])])


def variant_of_run(store: Store, run_id: str, sweep_id: str) -> pd.DataFrame:
    """The (sweep_id, variant) of a variant of another sweep than `sweep_id` made by run `run_id` (at most one row)."""
    return store.query("SELECT sweep_id, variant FROM sweep_variants WHERE run_id = ? AND sweep_id <> ? LIMIT 1",
                       [run_id, sweep_id])


def copy_variant(store: Store, source_sweep: str, variant: str, sweep_id: str) -> None:
    """Copy `variant`'s rows of `source_sweep` into `sweep_id` (replacing that variant's rows there)."""
    key = [source_sweep, variant]
    frames = [(t, store.query(f"SELECT * FROM {t} WHERE sweep_id = ? AND variant = ?", key).assign(sweep_id=sweep_id))
              for t in VARIANT_TABLES]
    store.write(frames, deletes=[(f"DELETE FROM {t} WHERE sweep_id = ? AND variant = ?", [sweep_id, variant])
                                 for t in VARIANT_TABLES])


def start_sweep(store: Store, sweep_id: str, spec_json: str, at: datetime) -> None:
    """Record the sweep as running (created at `at` the first time)."""
    store.execute("INSERT INTO sweeps VALUES (?, ?, 'running', ?, NULL) ON CONFLICT (sweep_id) "
                  "DO UPDATE SET status = 'running', finished_at = NULL", [sweep_id, spec_json, at])


def variant_runs(store: Store, sweep_id: str) -> pd.DataFrame:
    """The variant and run_id of every variant stored for the sweep."""
    return store.query("SELECT variant, run_id FROM sweep_variants WHERE sweep_id = ?", [sweep_id])


def fail_sweep(store: Store, sweep_id: str) -> None:
    """Record that the sweep failed."""
    store.execute("UPDATE sweeps SET status = 'failed' WHERE sweep_id = ?", [sweep_id])


def finish_sweep(store: Store, sweep_id: str, at: datetime) -> None:
    """Record the sweep done at `at`."""
    store.execute("UPDATE sweeps SET status = 'done', finished_at = ? WHERE sweep_id = ?", [at, sweep_id])
