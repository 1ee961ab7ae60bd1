"""The `samples` and `classes` tables as the stages read and replace them (ingest writes them; training and the
detectors read them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.store.database import Store

# The `meta` key holding the absolute path of the data the last ingest read (background jobs re-run it).
DATA_SOURCE_KEY = "data_source"


def decodable_samples(store: Store) -> pd.DataFrame:
    """Every sample with what decoding it for training needs (sample_id, split, label_index, path, mode,
    pixel_hash), in sample_id order."""
    return store.query("SELECT sample_id, split, label_index, path, mode, pixel_hash FROM samples "
                       "ORDER BY sample_id")


def save_ingest(store: Store, samples: pd.DataFrame, classes: pd.DataFrame, problems: pd.DataFrame,
                source: str) -> None:
    """Replace `samples`, `classes`, the ingest `problems` and the recorded data source in one transaction."""
    store.write([("samples", samples), ("classes", classes), ("problems", problems),
                 ("meta", pd.DataFrame({"key": [DATA_SOURCE_KEY], "value": [source]}))],
                deletes=[("DELETE FROM samples", []), ("DELETE FROM classes", []),
                         ("DELETE FROM problems WHERE stage = 'ingest'", []),
                         ("DELETE FROM meta WHERE key = ?", [DATA_SOURCE_KEY])])


def labelled_samples(store: Store) -> pd.DataFrame:
    """Every sample's sample_id, split, label, label_index, file_hash and pixel_hash, in sample_id order."""
    return store.query("SELECT sample_id, split, label, label_index, file_hash, pixel_hash FROM samples "
                       "ORDER BY sample_id")


def sample_ids(store: Store) -> np.ndarray:
    """Every sample's id."""
    return store.query("SELECT sample_id FROM samples")["sample_id"].to_numpy()


def train_samples(store: Store) -> pd.DataFrame:
    """The ingested training samples' sample_id and label_index, in sample_id order."""
    return store.query("SELECT sample_id, label_index FROM samples WHERE split = 'train' ORDER BY sample_id")
