"""The views and summary tables of the audit database: `current_reviews`, `audit` (one row per sample with its
scores, flags and triage) and the flag summaries `Store.write` rebuilds with every write to `flags` or `samples`."""

from __future__ import annotations

import duckdb

from auditor.detectors.flag_kinds import FLAG_PRIORITY, triage_sql

# The table users query first: one row per sample with its scores, the list of its flags and its triage.
VIEWS = """
CREATE OR REPLACE VIEW current_reviews AS
SELECT sample_id, action, new_label, note, reviewer, decided_at, decision_id
FROM reviews r
WHERE action <> 'undo' AND decision_id NOT IN (SELECT undoes FROM reviews WHERE undoes IS NOT NULL)
QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY decided_at DESC, decision_id DESC) = 1;
CREATE OR REPLACE VIEW audit AS
WITH f AS (SELECT sample_id, list(DISTINCT kind ORDER BY kind) AS flags FROM flags GROUP BY sample_id)
SELECT s.*, sc.* EXCLUDE (sample_id), coalesce(f.flags, []) AS flags, {triage} AS triage
FROM samples s
LEFT JOIN scores sc USING (sample_id)
LEFT JOIN f USING (sample_id);
""".format(triage=triage_sql("f.flags"))

# Summaries of `flags` (and `samples`) that the dashboard reads instead of aggregating a million rows per page:
# `flag_tallies` (flags and distinct samples per kind, split and class) and `sample_flags` (per flagged sample: its
# kinds, its most important one, its triage, whether it is in `samples`). `Store.write` rebuilds them in the
# transaction of every write to `flags` or `samples`, and records in `meta` the state of `flags` and `samples` they
# were built from (SUMMARY_SOURCE); readers use them only while that state is unchanged (a file edited by hand falls
# back to the live tables).
SUMMARY_SOURCES = frozenset({"flags", "samples"})
SUMMARY_KEY = "flag_summary_of"
SUMMARY_SOURCE = ("(SELECT count(*) || ':' || coalesce(sum(hash(sample_id, kind, score)), 0) FROM flags) || '/' || "
                  "(SELECT count(*) || ':' || coalesce(sum(hash(sample_id, split, label)), 0) FROM samples)")
_PRIORITY_LIST = "[" + ", ".join(f"'{kind}'" for kind in FLAG_PRIORITY) + "]"
# Per flagged sample (also what `queries` aggregates live when the summary is stale).
SAMPLE_FLAGS_LIVE = (
    "SELECT sample_id, list(DISTINCT kind ORDER BY kind) AS kinds, "
    f"       min_by(kind, coalesce(list_position({_PRIORITY_LIST}, kind), 1000)) AS top_flag, "
    f"       {triage_sql('list(DISTINCT kind ORDER BY kind)')} AS triage, "
    "       sample_id IN (SELECT sample_id FROM samples) AS in_samples "
    "FROM flags GROUP BY sample_id")
FLAG_TALLIES_LIVE = ("SELECT f.kind, s.split, s.label, s.label_index, count(*) AS flags, "
                     "       count(DISTINCT f.sample_id) AS samples "
                     "FROM flags f LEFT JOIN samples s USING (sample_id) GROUP BY ALL")
REFRESH_SUMMARIES = [
    "DELETE FROM flag_tallies", f"INSERT INTO flag_tallies {FLAG_TALLIES_LIVE}",
    "DELETE FROM sample_flags", f"INSERT INTO sample_flags {SAMPLE_FLAGS_LIVE}",
    f"INSERT OR REPLACE INTO meta VALUES ('{SUMMARY_KEY}', {SUMMARY_SOURCE})"]


def refresh_summaries(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild `flag_tallies` and `sample_flags` and record what they were built from (inside the caller's
    transaction)."""
    for statement in REFRESH_SUMMARIES:
        con.execute(statement)
