"""What the experiment stage writes and re-reads while it runs: an experiment's status and check, its trained
`experiment_models` and its `experiment_reaudit` rows (the pages read them through auditor.experiments.experiment_queries)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from auditor.store.database import Store


def reopen(store: Store, experiment_id: str) -> bool:
    """Mark a recorded experiment running again; False (and nothing written) when it is not recorded yet."""
    if not store.scalar("SELECT count(*) FROM experiments WHERE experiment_id = ?", [experiment_id]):
        return False
    store.execute("UPDATE experiments SET status = 'running', finished_at = NULL WHERE experiment_id = ?",
                  [experiment_id])
    return True


def trained_models(store: Store, experiment_id: str) -> set[tuple[str, int]]:
    """The (arm, model_index) of every model of the experiment already committed."""
    return set(store.query("SELECT arm, model_index FROM experiment_models WHERE experiment_id = ?",
                           [experiment_id]).itertuples(index=False, name=None))


def save_models(store: Store, experiment_id: str, arm: str, models: list[int], rows: pd.DataFrame) -> None:
    """Replace the rows of models `models` of `arm` with `rows` in one transaction."""
    marks = ", ".join("?" * len(models))
    store.write([("experiment_models", rows)],
                deletes=[("DELETE FROM experiment_models WHERE experiment_id = ? AND arm = ? AND model_index "
                          f"IN ({marks})", [experiment_id, arm, *models])])


def reaudited_arms(store: Store, experiment_id: str) -> set[str]:
    """The arms of the experiment whose re-audit is stored."""
    return set(store.query("SELECT DISTINCT arm FROM experiment_reaudit WHERE experiment_id = ?",
                           [experiment_id])["arm"])


def save_reaudit(store: Store, experiment_id: str, arm: str, rows: pd.DataFrame) -> None:
    """Replace one arm's re-audit rows with `rows`."""
    store.write([("experiment_reaudit", rows)], deletes=[
        ("DELETE FROM experiment_reaudit WHERE experiment_id = ? AND arm = ?", [experiment_id, arm])])


def mark_failed(store: Store, experiment_id: str) -> None:
    """Record that the experiment failed."""
    store.execute("UPDATE experiments SET status = 'failed' WHERE experiment_id = ?", [experiment_id])


def arm_accuracies(store: Store, experiment_id: str, arms: list[str]) -> pd.DataFrame:
    """arm and test_acc of every trained model of `arms`."""
    marks = ", ".join("?" * len(arms))
    return store.query(f"SELECT arm, test_acc FROM experiment_models WHERE experiment_id = ? AND arm IN ({marks})",
                       [experiment_id, *arms])


def finish(store: Store, experiment_id: str, at: datetime, check: list[float | None],
           trained_to_max: bool | None) -> None:
    """Record the experiment done at `at` with its schedule check (gain, low, high, p) and verdict."""
    store.execute("UPDATE experiments SET status = 'done', finished_at = ?, check_gain = ?, check_low = ?, "
                  "check_high = ?, check_p = ?, trained_to_max = ? WHERE experiment_id = ?",
                  [at, *check, trained_to_max, experiment_id])
