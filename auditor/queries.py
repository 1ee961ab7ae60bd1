"""Every read the dashboard makes, as small typed functions over a `Store`; user values only ever travel as `?`
parameters, and pages of rows are cut in DuckDB (LIMIT/OFFSET), never in pandas."""

from __future__ import annotations

import pandas as pd

from auditor.store import Store

# The first seed run of the 'apb' run that produced `scores`: its predictions are the ones shown next to ApB.
_PREDICTION_RUN = """(SELECT r.run_id FROM run_inputs i JOIN runs r ON r.run_id = i.input_run_id
                      WHERE i.run_id = (SELECT min(run_id) FROM scores) ORDER BY r.seed, r.run_id LIMIT 1)"""


def dataset_counts(store: Store) -> pd.DataFrame:
    """Number of images per split and class (columns split, label_index, label, n)."""
    return store.query("SELECT split, label_index, label, count(*) AS n FROM samples "
                       "GROUP BY split, label_index, label ORDER BY label_index, label, split")


def problem_count(store: Store) -> int:
    """Number of rows in `problems`."""
    return int(store.scalar("SELECT count(*) FROM problems"))


def problems(store: Store, limit: int = 500) -> pd.DataFrame:
    """The first `limit` problems found while reading or training on the data, errors first."""
    return store.query("SELECT source, sample_id, reason, code, severity, action, stage FROM problems "
                       "ORDER BY severity = 'error' DESC, stage, source, sample_id LIMIT ?", [limit])


def accuracy_curves(store: Store) -> pd.DataFrame:
    """Train and test accuracy per epoch of the seed runs behind `scores`, long format
    (run_id, seed, epoch, split, accuracy)."""
    return store.query(
        "SELECT e.run_id, r.seed, e.epoch, u.split, u.accuracy "
        "FROM epochs e JOIN runs r ON r.run_id = e.run_id "
        "JOIN run_inputs i ON i.input_run_id = e.run_id AND i.run_id = (SELECT min(run_id) FROM scores), "
        "LATERAL (VALUES ('train', e.train_acc), ('test', e.test_acc)) AS u(split, accuracy) "
        "WHERE u.accuracy IS NOT NULL ORDER BY r.started_at, e.run_id, u.split, e.epoch")


def apb_histogram(store: Store, bins: int = 20) -> pd.DataFrame:
    """ApB of the scored points counted in `bins` equal bins over [0, 1] (columns start, end, n)."""
    return store.query(
        "SELECT b / ? AS start, (b + 1) / ? AS end, count(*) AS n "
        "FROM (SELECT least(floor(apb * ?), ? - 1)::DOUBLE AS b FROM scores WHERE apb IS NOT NULL) "
        "GROUP BY b ORDER BY b", [bins, bins, bins, bins])


def score_run(store: Store) -> dict | None:
    """The run that produced `scores` with its config summary and convergence, or None when nothing is scored."""
    frame = store.query(
        "WITH s AS (SELECT min(run_id) AS run_id, count(*) AS n_scored, bool_and(converged) AS scores_converged "
        "           FROM scores HAVING count(*) > 0) "
        "SELECT s.run_id, s.n_scored, coalesce(s.scores_converged, r.converged, false) "
        "       AND coalesce(r.converged, true) AS converged, "
        "       r.status, r.device, r.code_version, r.started_at, r.finished_at, r.train_acc, r.test_acc, "
        "       r.config_json->>'$.profile' AS profile, r.config_json->>'$.train.arch' AS arch, "
        "       TRY_CAST(r.config_json->>'$.train.epochs' AS INTEGER) AS epochs, "
        "       TRY_CAST(r.config_json->>'$.train.seeds' AS INTEGER) AS seeds "
        "FROM s LEFT JOIN runs r ON r.run_id = s.run_id")
    return None if frame.empty else {k: None if pd.isna(v) else v for k, v in frame.iloc[0].items()}


def class_labels(store: Store) -> list[str]:
    """Class labels in label-index order."""
    return store.query("SELECT label FROM classes ORDER BY label_index")["label"].tolist()


def _review_filter(label: str | None, only_candidates: bool) -> tuple[str, list]:
    """WHERE clause (constant text) and its parameters for the review grid's filters."""
    where, params = ["s.split = 'train'"], []
    if label is not None:
        where.append("s.label = ?")
        params.append(label)
    if only_candidates:
        where.append("sc.sample_id IN (SELECT sample_id FROM flags WHERE kind = 'memorized_candidate')")
    return " AND ".join(where), params


def review_count(store: Store, label: str | None = None, only_candidates: bool = False) -> int:
    """Number of scored training images that pass the review filters."""
    where, params = _review_filter(label, only_candidates)
    return int(store.scalar(f"SELECT count(*) FROM scores sc JOIN samples s USING (sample_id) WHERE {where}",
                            params))


def review_page(store: Store, label: str | None = None, only_candidates: bool = False, limit: int = 24,
                offset: int = 0) -> pd.DataFrame:
    """One page of scored training images, lowest ApB first, with label, predicted label and image path."""
    where, params = _review_filter(label, only_candidates)
    return store.query(
        "SELECT sc.sample_id, s.label, p.pred_label, p.p_pred, sc.apb, sc.first_learned, sc.forgetting_events, "
        "       s.path, sc.sample_id IN (SELECT sample_id FROM flags WHERE kind = 'memorized_candidate') "
        "       AS memorized_candidate "
        "FROM scores sc JOIN samples s USING (sample_id) "
        f"LEFT JOIN predictions p ON p.sample_id = sc.sample_id AND p.run_id = {_PREDICTION_RUN} "
        f"WHERE {where} ORDER BY sc.apb, sc.sample_id LIMIT ? OFFSET ?", [*params, limit, offset])
