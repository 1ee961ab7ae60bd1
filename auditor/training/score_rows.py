"""The `dynamics` log as the scores stage reads it, the `scores` it writes with the foundation's flags, and the
scores and flags later stages read."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.store.database import Store


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


def mem_run_id(store: Store) -> str | None:
    """The memorization run behind `scores.mem` (the latest); None before one."""
    return store.scalar("SELECT max(mem_run_id) FROM scores")


def mem_scores(store: Store) -> pd.Series:
    """mem of every scored training point, indexed by sample_id."""
    return store.query("SELECT sample_id, mem FROM scores WHERE mem IS NOT NULL").set_index("sample_id")["mem"]


def flagged_ids(store: Store, kind: str) -> np.ndarray:
    """The sample ids flagged `kind`."""
    return store.query("SELECT sample_id FROM flags WHERE kind = ?", [kind])["sample_id"].to_numpy()


def audit_memorized(store: Store) -> np.ndarray:
    """The audit's memorized set: training points the memorization stage put in state 'memorized'."""
    if "mem_state" not in set(store.query("SELECT * FROM scores LIMIT 0").columns):
        return np.array([], dtype=str)
    return store.query("SELECT sample_id FROM scores WHERE mem_state = 'memorized' ORDER BY sample_id")[
        "sample_id"].to_numpy().astype(str)


def candidates_by_apb(store: Store) -> pd.Series:
    """The sample ids flagged `memorized_candidate`, lowest ApB first."""
    return store.query("SELECT f.sample_id FROM flags f JOIN scores s USING (sample_id) "
                       "WHERE f.kind = 'memorized_candidate' ORDER BY s.apb, f.sample_id")["sample_id"]


def proxy_scores(store: Store) -> pd.DataFrame:
    """Every scored point's sample_id and training-dynamics proxies (apb, el2n, forgetting_events, confidence,
    variability)."""
    return store.query("SELECT sample_id, apb, el2n, forgetting_events, confidence, variability FROM scores")
