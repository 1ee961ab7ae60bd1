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


# Columns the memorization views read that files written before schema version 2 lack.
_MEMORIZATION_COLUMNS = [*(f"scores.{c}" for c in ("mem", "mem_low", "mem_high", "mem_n_in", "mem_n_out", "mem_method",
                                                   "mem_note", "mem_run_id")),
                         "jobs.status", "shadow_designs.n_models", "shadow_models.design_id"]


def has_memorization_schema(store: Store) -> bool:
    """Whether the file has the memorization columns and tables (schema version 2 or later)."""
    return int(store.scalar("SELECT count(*) FROM information_schema.columns "
                            "WHERE list_contains(?, table_name || '.' || column_name)",
                            [_MEMORIZATION_COLUMNS])) == len(_MEMORIZATION_COLUMNS)


def memorization_run(store: Store) -> dict | None:
    """The memorization run behind `scores.mem`: method, shadow models, points scored, memorized count and
    threshold; None when no memorization run has written scores yet."""
    frame = store.query(
        "WITH m AS (SELECT min(mem_run_id) AS run_id, min(mem_method) AS method, count(mem) AS n_scored "
        "           FROM scores HAVING min(mem_run_id) IS NOT NULL) "
        "SELECT m.run_id, coalesce(d.method, m.method) AS method, m.n_scored, d.design_id, d.n_models, d.n_points, "
        "       d.n_candidates, d.fraction, "
        "       (SELECT count(*) FROM shadow_models sm WHERE sm.design_id = d.design_id) AS n_trained, "
        "       (SELECT avg(sm.test_acc) FROM shadow_models sm WHERE sm.design_id = d.design_id) AS shadow_test_acc, "
        "       (SELECT count(DISTINCT sample_id) FROM flags WHERE kind = 'memorized') AS n_memorized, "
        "       TRY_CAST(r.config_json->>'$.memorization.threshold' AS DOUBLE) AS threshold, "
        "       r.status, r.finished_at, r.seconds "
        "FROM m LEFT JOIN runs r ON r.run_id = m.run_id LEFT JOIN shadow_designs d ON d.run_id = m.run_id "
        "ORDER BY d.created_at DESC NULLS LAST LIMIT 1")
    return None if frame.empty else {k: None if pd.isna(v) else v for k, v in frame.iloc[0].items()}


def mem_histogram(store: Store, bins: int = 20) -> pd.DataFrame:
    """mem of the scored points counted in `bins` equal bins over [-1, 1] (columns start, end, n)."""
    return store.query(
        "SELECT -1 + b * 2 / ? AS start, -1 + (b + 1) * 2 / ? AS end, count(*) AS n "
        "FROM (SELECT greatest(least(floor((mem + 1) / 2 * ?), ? - 1), 0)::DOUBLE AS b FROM scores "
        "      WHERE mem IS NOT NULL) "
        "GROUP BY b ORDER BY b", [bins, bins, bins, bins])


def mem_scatter(store: Store, limit: int = 5000) -> pd.DataFrame:
    """ApB and mem (with its interval) of up to `limit` scored points, memorized ones first, then a fixed
    pseudo-random sample (sample_id, label, apb, mem, mem_low, mem_high, interval, mem_n_in, mem_n_out, flag)."""
    return store.query(
        "SELECT sc.sample_id, s.label, sc.apb, sc.mem, sc.mem_low, sc.mem_high, "
        "       printf('[%.2f, %.2f]', sc.mem_low, sc.mem_high) AS interval, sc.mem_n_in, sc.mem_n_out, "
        "       CASE WHEN m.sample_id IS NULL THEN 'not flagged' ELSE 'memorized' END AS flag "
        "FROM scores sc JOIN samples s USING (sample_id) "
        "LEFT JOIN (SELECT DISTINCT sample_id FROM flags WHERE kind = 'memorized') m USING (sample_id) "
        "WHERE sc.mem IS NOT NULL "
        "ORDER BY m.sample_id IS NULL, hash(sc.sample_id), sc.sample_id LIMIT ?", [limit])


def jobs(store: Store, limit: int = 20) -> pd.DataFrame:
    """The `limit` most recent long-running jobs, running ones first (kind, status, done, total, unit, eta_s,
    started_at, updated_at, finished_at, message, run_id)."""
    return store.query("SELECT kind, status, done, total, unit, eta_s, started_at, updated_at, finished_at, message, "
                       "run_id FROM jobs ORDER BY status = 'running' DESC, updated_at DESC NULLS LAST, job_id "
                       "LIMIT ?", [limit])


# The only orderings the review grid offers: key -> ORDER BY text. User input only ever selects a key.
REVIEW_SORTS: dict[str, str] = {
    "apb_asc": "sc.apb ASC NULLS LAST, sc.sample_id",
    "mem_desc": "sc.mem DESC NULLS LAST, sc.apb ASC NULLS LAST, sc.sample_id",
}


def _review_filter(label: str | None, flag: str | None) -> tuple[str, list]:
    """WHERE clause (constant text) and its parameters for the review grid's filters."""
    where, params = ["s.split = 'train'"], []
    if label is not None:
        where.append("s.label = ?")
        params.append(label)
    if flag is not None:
        where.append("sc.sample_id IN (SELECT sample_id FROM flags WHERE kind = ?)")
        params.append(flag)
    return " AND ".join(where), params


def review_count(store: Store, label: str | None = None, flag: str | None = None) -> int:
    """Number of scored training images that pass the review filters (class, and a flag kind such as
    'memorized_candidate' or 'memorized')."""
    where, params = _review_filter(label, flag)
    return int(store.scalar(f"SELECT count(*) FROM scores sc JOIN samples s USING (sample_id) WHERE {where}",
                            params))


def review_page(store: Store, label: str | None = None, flag: str | None = None, sort: str = "apb_asc",
                limit: int = 24, offset: int = 0) -> pd.DataFrame:
    """One page of scored training images in the `sort` order (a REVIEW_SORTS key; ValueError otherwise), with
    label, predicted label, image path, ApB, mem with its interval and the candidate / memorized flags."""
    if sort not in REVIEW_SORTS:
        raise ValueError(f"unknown review sort {sort!r}; use one of {', '.join(REVIEW_SORTS)}")
    where, params = _review_filter(label, flag)
    return store.query(
        "SELECT sc.sample_id, s.label, p.pred_label, p.p_pred, sc.apb, sc.first_learned, sc.forgetting_events, "
        "       sc.mem, sc.mem_low, sc.mem_high, sc.mem_n_in, sc.mem_n_out, sc.mem_method, sc.mem_note, s.path, "
        "       sc.sample_id IN (SELECT sample_id FROM flags WHERE kind = 'memorized_candidate') "
        "       AS memorized_candidate, "
        "       sc.sample_id IN (SELECT sample_id FROM flags WHERE kind = 'memorized') AS memorized "
        "FROM scores sc JOIN samples s USING (sample_id) "
        f"LEFT JOIN predictions p ON p.sample_id = sc.sample_id AND p.run_id = {_PREDICTION_RUN} "
        f"WHERE {where} ORDER BY {REVIEW_SORTS[sort]} LIMIT ? OFFSET ?", [*params, limit, offset])
