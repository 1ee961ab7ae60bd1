"""Review decisions (keep / remove / relabel) as an append-only log in `reviews`: a new decision or an undo is a new
row, never an update, so the history of every sample stays readable; `current_reviews` holds the one that counts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import pandas as pd

from auditor.store.database import Store

ACTIONS: tuple[str, ...] = ("keep", "remove", "relabel")
DECISION_COLUMNS = ["sample_id", "split", "label", "action", "new_label", "note", "reviewer", "decided_at", "path"]
CONFLICT_COLUMNS = ["sample_id", "reviewer", "action", "new_label", "note", "decided_at", "counts"]
HISTORY_COLUMNS = ["decision_id", "sample_id", "action", "new_label", "note", "reviewer", "decided_at", "undoes"]
# How many unknown ids an error message names before it abbreviates.
_SHOWN_IDS = 10


def _has_reviews(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the file has the `reviews` table (files written before review decisions existed lack it)."""
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'").fetchone()
    return bool(found[0])


def _read(store: Store, sql: str, params: list, empty: pd.DataFrame) -> pd.DataFrame:
    """One parameterised read over the review tables in one connection; `empty` for a file without them."""
    with store.connect(read_only=True) as con:
        return con.execute(sql, params).df() if _has_reviews(con) else empty


def _check_reviewer(reviewer: str) -> None:
    if not reviewer or not reviewer.strip():
        raise ValueError("a decision needs a reviewer name")


def _check_decision(action: str, new_label: str | None, reviewer: str) -> None:
    """Reject what no database state can make valid: unknown actions, labels on non-relabel actions, no reviewer."""
    if action not in ACTIONS:
        raise ValueError(f"unknown review action {action!r}; use one of: {', '.join(ACTIONS)}")
    if action == "relabel" and not new_label:
        raise ValueError("a relabel decision needs the new label")
    if action != "relabel" and new_label is not None:
        raise ValueError(f"only relabel decisions take a new label, not {action!r}")
    _check_reviewer(reviewer)


def _insert_decisions(store: Store, rows: pd.DataFrame, new_label: str | None) -> bool:
    """Check the samples and the new label, then insert the decisions not stored yet, in one connection (the file
    lock keeps other processes out until the insert is done); False, writing nothing, when `reviews` is missing."""
    with store.connect() as con:
        if not _has_reviews(con):
            return False
        unknown = [r[0] for r in con.execute("SELECT unnest(?::VARCHAR[]) AS id EXCEPT SELECT sample_id FROM samples "
                                             "ORDER BY id", [rows["sample_id"].tolist()]).fetchall()]
        if unknown:
            more = f" and {len(unknown) - _SHOWN_IDS} more" if len(unknown) > _SHOWN_IDS else ""
            raise ValueError(f"unknown sample id(s): {', '.join(unknown[:_SHOWN_IDS])}{more}")
        if new_label is not None:
            classes = [r[0] for r in con.execute("SELECT label FROM classes ORDER BY label_index").fetchall()]
            if new_label not in classes:
                raise ValueError(f"{new_label!r} is not a class of this dataset; use one of: {', '.join(classes)}")
        con.register("_decisions", rows)
        columns = ", ".join(HISTORY_COLUMNS)
        con.execute(f"INSERT INTO reviews ({columns}) SELECT {columns} FROM _decisions d "
                    "WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.decision_id = d.decision_id)")
    return True


def record_decisions(store: Store, sample_ids: Sequence[str], action: str, *, reviewer: str,
                     new_label: str | None = None, note: str | None = None,
                     decision_ids: Sequence[str] | None = None) -> list[str]:
    """Append one decision per sample in one statement (all or none). Decision ids already stored are skipped, so
    retrying a call with the same `decision_ids` after an ambiguous failure never stores a decision twice."""
    _check_decision(action, new_label, reviewer)
    ids = list(sample_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("the selection names a sample more than once")
    decision_ids = [uuid.uuid4().hex for _ in ids] if decision_ids is None else list(decision_ids)
    if len(decision_ids) != len(ids) or len(set(decision_ids)) != len(decision_ids):
        raise ValueError("decision_ids must give one distinct id per sample id")
    if not ids:
        return []
    rows = pd.DataFrame({"decision_id": decision_ids, "sample_id": ids, "action": action, "new_label": new_label,
                         "note": note, "reviewer": reviewer, "decided_at": datetime.now(UTC).replace(tzinfo=None),
                         "undoes": None}, columns=HISTORY_COLUMNS)
    if not _insert_decisions(store, rows, new_label):
        store.init()  # a file from before review decisions: add the table and view once
        _insert_decisions(store, rows, new_label)
    return decision_ids


def undo(store: Store, sample_ids: Sequence[str], *, reviewer: str) -> int:
    """Append an 'undo' row for the current decision of each sample that has one, so its previous decision counts
    again; returns how many decisions were undone."""
    _check_reviewer(reviewer)
    ids = list(sample_ids)
    if not ids:
        return 0
    with store.connect() as con:
        if not _has_reviews(con):
            return 0
        undone = con.execute(
            "INSERT INTO reviews (decision_id, sample_id, action, reviewer, decided_at, undoes) "
            "SELECT replace(uuid()::VARCHAR, '-', ''), sample_id, 'undo', ?, ?, decision_id FROM current_reviews "
            "WHERE list_contains(?::VARCHAR[], sample_id) RETURNING decision_id",
            [reviewer, datetime.now(UTC).replace(tzinfo=None), ids]).fetchall()
    return len(undone)


def current_decisions(store: Store, sample_ids: Sequence[str] | None = None, *, limit: int | None = None,
                      offset: int = 0, reviewer: str | None = None) -> pd.DataFrame:
    """The decision that counts for each decided sample (of `sample_ids`, else all; made by `reviewer`, else by
    anyone), newest first, one page of `limit` rows from `offset` (all when `limit` is None)."""
    return _read(store, "SELECT c.sample_id, s.split, s.label, c.action, c.new_label, c.note, c.reviewer, "
                        "c.decided_at, s.path FROM current_reviews c JOIN samples s USING (sample_id) "
                        "WHERE (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], c.sample_id)) "
                        "AND (?::VARCHAR IS NULL OR c.reviewer = ?) "
                        "ORDER BY c.decided_at DESC, c.decision_id DESC LIMIT ? OFFSET ?",
                 [ids := None if sample_ids is None else list(sample_ids), ids, reviewer, reviewer, limit, offset],
                 pd.DataFrame(columns=DECISION_COLUMNS))


def removed_ids(store: Store) -> pd.Series:
    """The samples whose decision that counts is 'remove'."""
    return store.query("SELECT sample_id FROM current_reviews WHERE action = 'remove'")["sample_id"]


def reviewers(store: Store) -> list[str]:
    """Everyone who has recorded a decision or an undo, by name."""
    return _read(store, "SELECT DISTINCT reviewer FROM reviews ORDER BY reviewer", [],
                 pd.DataFrame(columns=["reviewer"]))["reviewer"].tolist()


def conflicts(store: Store) -> pd.DataFrame:
    """The samples on which reviewers disagree: each reviewer's latest standing decision (undone ones left out) on
    every sample where two or more reviewers' differ in action or new label, one row per reviewer, newest first;
    `counts` marks the decision that is current."""
    return _read(store, "WITH live AS (SELECT * FROM reviews WHERE action <> 'undo' AND decision_id NOT IN "
                        "      (SELECT undoes FROM reviews WHERE undoes IS NOT NULL)), "
                        "latest AS (SELECT * FROM live QUALIFY row_number() OVER (PARTITION BY sample_id, reviewer "
                        "      ORDER BY decided_at DESC, decision_id DESC) = 1), "
                        "split AS (SELECT sample_id FROM latest GROUP BY sample_id "
                        "      HAVING count(DISTINCT action || '/' || coalesce(new_label, '')) > 1) "
                        "SELECT l.sample_id, l.reviewer, l.action, l.new_label, l.note, l.decided_at, "
                        "       l.decision_id = c.decision_id AS counts "
                        "FROM latest l JOIN split USING (sample_id) JOIN current_reviews c USING (sample_id) "
                        "ORDER BY max(l.decided_at) OVER (PARTITION BY l.sample_id) DESC, l.sample_id, "
                        "         l.decided_at DESC", [], pd.DataFrame(columns=CONFLICT_COLUMNS))


def decision_history(store: Store, sample_id: str) -> pd.DataFrame:
    """Every decision and undo recorded for one sample, oldest first."""
    return _read(store, f"SELECT {', '.join(HISTORY_COLUMNS)} FROM reviews WHERE sample_id = ? "
                        "ORDER BY decided_at, decision_id", [sample_id], pd.DataFrame(columns=HISTORY_COLUMNS))


def decision_counts(store: Store, reviewer: str | None = None) -> pd.DataFrame:
    """Samples per current action (action, samples) of `reviewer`'s decisions (else everyone's), every action
    listed, in ACTIONS order."""
    return _read(store, "SELECT a.action, count(s.sample_id) AS samples FROM unnest(?::VARCHAR[]) AS a(action) "
                        "LEFT JOIN current_reviews c ON c.action = a.action AND (?::VARCHAR IS NULL OR c.reviewer = ?) "
                        "LEFT JOIN samples s USING (sample_id) "
                        "GROUP BY a.action ORDER BY list_position(?, a.action)",
                 [list(ACTIONS), reviewer, reviewer, list(ACTIONS)],
                 pd.DataFrame({"action": list(ACTIONS), "samples": 0}))


def judge_pair(store: Store, one: str, other: str, is_duplicate: bool, *, reviewer: str) -> None:
    """Record a reviewer's answer on one detected pair, named in either order (a real duplicate / leak or not), in
    `pair_judgements`; the next detectors run calibrates that pair kind's threshold on the latest answers."""
    _check_reviewer(reviewer)
    with store.connect() as con:
        found = con.execute("SELECT a_id, b_id FROM pairs WHERE (a_id = ? AND b_id = ?) OR (a_id = ? AND b_id = ?) "
                            "LIMIT 1", [one, other, other, one]).fetchone()
        if found is None:
            raise ValueError(f"no detected pair {one} / {other}: judge pairs the detectors found")
        con.execute("INSERT INTO pair_judgements VALUES (?, ?, ?, ?, ?)",
                    [*found, bool(is_duplicate), reviewer, datetime.now(UTC).replace(tzinfo=None)])


def pair_judgement(store: Store, one: str, other: str) -> bool | None:
    """The latest answer on a pair named in either order (True: a real duplicate), None when nobody judged it."""
    return store.scalar("SELECT is_duplicate FROM pair_judgements WHERE (a_id = ? AND b_id = ?) "
                        "OR (a_id = ? AND b_id = ?) ORDER BY decided_at DESC LIMIT 1", [one, other, other, one])
