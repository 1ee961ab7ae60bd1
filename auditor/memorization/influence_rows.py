"""The `influence` table as the detectors and experiments read it: which test points each training point helps."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


def influence(store: Store) -> pd.DataFrame:
    """Every influence estimate (train_id, test_id, score)."""
    return store.query("SELECT train_id, test_id, score FROM influence")


def mean_influence(store: Store) -> pd.Series:
    """Each training point's mean influence on the test points, indexed by train_id."""
    return store.query("SELECT train_id, avg(score) AS s FROM influence GROUP BY train_id").set_index("train_id")["s"]
