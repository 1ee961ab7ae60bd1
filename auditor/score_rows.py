"""The `dynamics` log as the scores stage reads it, and the `scores` it writes with the foundation's flags."""

from __future__ import annotations

import pandas as pd

from auditor.store import Store


def dynamics_log(store: Store, phase: str, run_ids: list[str]) -> pd.DataFrame:
    """The `phase` records (run_id, sample_id, step, epoch, correct, p_label, el2n) of the runs `run_ids`."""
    marks = ", ".join("?" * len(run_ids))
    return store.query("SELECT run_id, sample_id, step, epoch, correct, p_label, el2n FROM dynamics "
                       f"WHERE phase = ? AND run_id IN ({marks})", [phase, *run_ids])


def save_scores(store: Store, scores: pd.DataFrame, flags: pd.DataFrame) -> None:
    """Replace `scores` and the foundation's flags (memorized_candidate, unreadable) in one transaction."""
    store.write([("scores", scores), ("flags", flags)],
                deletes=[("DELETE FROM scores", []),
                         ("DELETE FROM flags WHERE kind IN ('memorized_candidate', 'unreadable')", [])])
