"""What the Experiments page and `memaudit experiment --show` read about marginal-utility experiments (no SQL in
pages)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.experiments import summarize
from auditor.store import Store


def experiment_results(store: Store, experiment_id: str) -> pd.DataFrame:
    """Per arm: n_removed, models, test accuracy mean ± std, drop vs full with 95% CI and p, accuracy and drop on the
    influenced / leaked / remaining test points, converged share (and `not_converged`), newly flagged on re-audit."""
    arms = store.query("SELECT * FROM experiment_arms WHERE experiment_id = ? ORDER BY position", [experiment_id])
    if arms.empty:
        known = store.query("SELECT experiment_id FROM experiments ORDER BY created_at")["experiment_id"].tolist()
        raise ValueError(f"no experiment {experiment_id!r} in {store.path}; known: {', '.join(known) or 'none'}")
    models = store.query("SELECT arm, test_acc, converged, test_correct FROM experiment_models "
                         "WHERE experiment_id = ?", [experiment_id])
    test_ids = np.asarray(store.scalar("SELECT test_ids FROM experiments WHERE experiment_id = ?", [experiment_id]))
    table = summarize(arms, models, test_ids)
    newly = store.query("SELECT arm, count(*) FILTER (WHERE newly_flagged) AS newly_flagged FROM experiment_reaudit "
                        "WHERE experiment_id = ? GROUP BY arm", [experiment_id])
    return table.merge(newly, on="arm", how="left")
