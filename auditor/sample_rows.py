"""The `samples` and `classes` tables as the stages read and replace them (ingest writes them; training and the
detectors read them)."""

from __future__ import annotations

import pandas as pd

from auditor.store import Store


def decodable_samples(store: Store) -> pd.DataFrame:
    """Every sample with what decoding it for training needs (sample_id, split, label_index, path, mode,
    pixel_hash), in sample_id order."""
    return store.query("SELECT sample_id, split, label_index, path, mode, pixel_hash FROM samples "
                       "ORDER BY sample_id")
