"""What the Point detail page reads about one sample beyond its header: its training dynamics, the test points it
influences, its exact leave-one-out score, and sample ids for the search box."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


def sample_dynamics(store: Store, sample_id: str) -> pd.DataFrame:
    """The training dynamics of one sample in the seed runs behind `scores` (seed, step, epoch, correct, p_label,
    loss), in step order: how early and how steadily the model learned it."""
    # The sample's rows first, alone (an index lookup on dynamics(sample_id)), then the joins: joined first, DuckDB
    # scans every dynamics row (0.4 s at a million samples against 8 ms).
    return store.query(
        "WITH d AS MATERIALIZED (SELECT run_id, step, epoch, phase, correct, p_label, loss FROM dynamics "
        "                        WHERE sample_id = ?) "
        "SELECT r.seed, d.step, d.epoch, d.phase, d.correct, d.p_label, d.loss "
        "FROM d JOIN runs r ON r.run_id = d.run_id "
        "JOIN run_inputs i ON i.input_run_id = d.run_id AND i.run_id = (SELECT min(run_id) FROM scores) "
        "ORDER BY r.seed, d.step", [sample_id])


def influenced_tests(store: Store, sample_id: str, limit: int = 8) -> pd.DataFrame:
    """The test points `sample_id` influences most (cross-influence from the shadow models: accuracy on the test
    point with the training point in minus out), strongest first, with their images."""
    return store.query(
        "SELECT i.test_id, i.score, i.low, i.high, i.n_in, i.n_out, s.label, s.path, s.file_hash "
        "FROM influence i LEFT JOIN samples s ON s.sample_id = i.test_id "
        "WHERE i.train_id = ? ORDER BY abs(i.score) DESC, i.test_id LIMIT ?", [sample_id, limit])


def sample_loo(store: Store, sample_id: str) -> dict | None:
    """The exact leave-one-out score of `sample_id` (mem, interval, models in / out, run), if one was computed."""
    frame = store.query("SELECT mem, mem_low, mem_high, mem_n_in, mem_n_out, run_id FROM loo_scores "
                        "WHERE sample_id = ? ORDER BY run_id DESC LIMIT 1", [sample_id])
    return None if frame.empty else frame.iloc[0].to_dict()


def sample_ids_like(store: Store, text: str, limit: int = 20) -> list[str]:
    """Sample ids starting with `text` (a parameter, never SQL), for the Point detail page's search box."""
    return store.query("SELECT sample_id FROM samples WHERE starts_with(sample_id, ?) ORDER BY sample_id LIMIT ?",
                       [text, limit])["sample_id"].tolist()
