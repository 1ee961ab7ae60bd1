"""Every read the dashboard makes, as small typed functions over a `Store`; user values only ever travel as `?`
parameters, and pages of rows are cut in DuckDB (LIMIT/OFFSET), never in pandas."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from auditor.detectors.flag_kinds import FLAG_PRIORITY, pair_kinds
from auditor.store.database import FLAG_TALLIES_LIVE, SAMPLE_FLAGS_LIVE, Store

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


# Pair kinds behind each twin flag ('leaked' pairs have the training image as a_id and the test image as b_id).
PAIR_KINDS: dict[str, tuple[str, ...]] = pair_kinds()
# Rank of a flag kind in FLAG_PRIORITY (unknown kinds last); the list always travels as a parameter.
_PRIORITY = "coalesce(list_position(?, {kind}), 1000)"
# Tables and the view the detector sections read, absent from files written before the detectors existed.
_DETECTOR_RELATIONS = ["embedders", "embedding_map", "neighbors", "pairs", "thresholds", "clusters", "audit"]
# The latest detectors run with thresholds: it writes flags, pairs, clusters, neighbors and thresholds together.
_DETECTOR_RUN = """(SELECT t.run_id FROM thresholds t LEFT JOIN runs r USING (run_id)
                    ORDER BY r.started_at DESC NULLS LAST, t.run_id DESC LIMIT 1)"""
# The embedder of that run (else the most recent embedder): the one behind `neighbors` and `clusters`.
_DETECTOR_EMBEDDER = f"""coalesce((SELECT any_value(embedder_id) FROM thresholds WHERE run_id = {_DETECTOR_RUN}),
                                  (SELECT embedder_id FROM embedders ORDER BY created_at DESC NULLS LAST LIMIT 1))"""


def has_detector_schema(store: Store) -> bool:
    """Whether the file has the embedding and detector tables and the `audit` view (written by a newer memaudit)."""
    return int(store.scalar("SELECT count(DISTINCT table_name) FROM information_schema.tables "
                            "WHERE list_contains(?, table_name)", [_DETECTOR_RELATIONS])) == len(_DETECTOR_RELATIONS)


def _summary(store: Store, table: str) -> str:
    """The relation to read `table` ('flag_tallies' or 'sample_flags') from: the table while fresh, else its live
    aggregation of `flags` (the same definition)."""
    live = {"flag_tallies": FLAG_TALLIES_LIVE, "sample_flags": SAMPLE_FLAGS_LIVE}[table]
    return table if store.summaries_fresh() else f"({live})"


def flag_kinds(store: Store) -> list[str]:
    """The flag kinds present in `flags`, most important first (FLAG_PRIORITY order, then others by name)."""
    return store.query(f"SELECT DISTINCT kind FROM {_summary(store, 'flag_tallies')} "
                       f"ORDER BY {_PRIORITY.format(kind='kind')}, kind", [list(FLAG_PRIORITY)])["kind"].tolist()


def flag_counts(store: Store) -> pd.DataFrame:
    """Flags per kind, most important first (kind, flags, samples, train, test: distinct samples per split; a sample
    has one split, so the distinct counts per split and class add up)."""
    return store.query(
        "SELECT kind, sum(flags)::BIGINT AS flags, sum(samples)::BIGINT AS samples, "
        "       coalesce(sum(samples) FILTER (WHERE split = 'train'), 0)::BIGINT AS train, "
        "       coalesce(sum(samples) FILTER (WHERE split = 'test'), 0)::BIGINT AS test "
        f"FROM {_summary(store, 'flag_tallies')} "
        f"GROUP BY kind ORDER BY {_PRIORITY.format(kind='kind')}, kind", [list(FLAG_PRIORITY)])


def triage_counts(store: Store) -> pd.DataFrame:
    """Samples per `triage` reading of the `audit` view, most frequent first, unflagged ones left out."""
    return store.query(f"SELECT triage, count(*) AS samples FROM {_summary(store, 'sample_flags')} "
                       "WHERE in_samples AND triage IS NOT NULL GROUP BY triage ORDER BY samples DESC, triage")


def detector_thresholds(store: Store) -> pd.DataFrame:
    """The thresholds of the latest detectors run (kind, value, method, detail, embedder_id, run_id)."""
    return store.query("SELECT kind, value, method, detail, embedder_id, run_id FROM thresholds "
                       f"WHERE run_id = {_DETECTOR_RUN} ORDER BY kind")


def map_embedder(store: Store) -> dict | None:
    """The most recent embedder with a 2-D map, with its points counted (n_points); None when there is no map."""
    frame = store.query(
        "SELECT e.embedder_id, e.kind, e.model_name, e.weights, e.dim, e.input_size, e.fallback_reason, e.created_at, "
        "       m.n_points "
        "FROM embedders e JOIN (SELECT embedder_id, count(*) AS n_points FROM embedding_map GROUP BY embedder_id) m "
        "USING (embedder_id) ORDER BY e.created_at DESC NULLS LAST, e.embedder_id LIMIT 1")
    return None if frame.empty else {k: None if pd.isna(v) else v for k, v in frame.iloc[0].items()}


def embedding_map(store: Store, embedder_id: str, unflagged_limit: int = 5000,
                  flagged_limit: int = 20_000) -> pd.DataFrame:
    """Map points of `embedder_id` with their top flag, drawn last: up to `flagged_limit` flagged ones (the most
    important kinds first) and up to `unflagged_limit` unflagged ones; beyond a limit, a fixed pseudo-random sample
    (a chart of a million points would help nobody)."""
    priority = _PRIORITY.format(kind="top_flag")
    return store.query(
        f"WITH f AS (SELECT sample_id, top_flag, array_to_string(kinds, ', ') AS kinds "
        f"           FROM {_summary(store, 'sample_flags')}), "
        "m AS (SELECT sample_id, x, y FROM embedding_map WHERE embedder_id = ?), "
        "pts AS ((SELECT m.*, f.top_flag, f.kinds FROM m JOIN f USING (sample_id) "
        f"         ORDER BY {priority}, hash(m.sample_id), m.sample_id LIMIT ?) "
        "        UNION ALL "
        "        (SELECT m.*, NULL, NULL FROM m ANTI JOIN f USING (sample_id) "
        "         ORDER BY hash(m.sample_id), m.sample_id LIMIT ?)) "
        "SELECT p.sample_id, p.x, p.y, s.split, s.label, coalesce(p.top_flag, 'none') AS flag, "
        "       coalesce(p.kinds, '') AS flags "
        "FROM pts p LEFT JOIN samples s USING (sample_id) "
        f"ORDER BY p.top_flag IS NOT NULL, {_PRIORITY.format(kind='p.top_flag')} DESC, p.sample_id",
        [embedder_id, list(FLAG_PRIORITY), flagged_limit, unflagged_limit, list(FLAG_PRIORITY)])


def twins(store: Store, sample_id: str, kind: str, limit: int = 6) -> pd.DataFrame:
    """The twins of `sample_id` behind its 'duplicate' or 'leaked' flag, exact first, then the most similar."""
    if kind not in PAIR_KINDS:
        raise ValueError(f"no pairs behind flag kind {kind!r}; use one of {', '.join(PAIR_KINDS)}")
    return store.query(
        "SELECT t.twin_id, t.kind AS pair_kind, t.kind LIKE 'exact%' AS exact, t.similarity, t.conflicting, "
        "       s.split, s.label, s.path, s.file_hash "
        "FROM (SELECT CASE WHEN a_id = ? THEN b_id ELSE a_id END AS twin_id, kind, similarity, conflicting "
        "      FROM pairs WHERE (a_id = ? OR b_id = ?) AND list_contains(?, kind)) t "
        "LEFT JOIN samples s ON s.sample_id = t.twin_id "
        "QUALIFY row_number() OVER (PARTITION BY t.twin_id ORDER BY exact DESC, t.similarity DESC) = 1 "
        "ORDER BY exact DESC, t.similarity DESC NULLS LAST, t.twin_id LIMIT ?",
        [sample_id, sample_id, sample_id, list(PAIR_KINDS[kind]), limit])


def cluster_members(store: Store, sample_id: str, limit: int = 8) -> pd.DataFrame:
    """Other members of the cluster of `sample_id` in its class (same embedder, class, cluster id), densest first."""
    return store.query(
        "WITH me AS (SELECT embedder_id, label, cluster FROM clusters WHERE sample_id = ? "
        f"           ORDER BY embedder_id = {_DETECTOR_EMBEDDER} DESC LIMIT 1) "
        "SELECT c.sample_id, c.label, c.cluster, c.cluster_size, c.density, s.path, s.file_hash "
        "FROM clusters c JOIN me USING (embedder_id, label, cluster) LEFT JOIN samples s USING (sample_id) "
        "WHERE c.sample_id <> ? ORDER BY c.density DESC NULLS LAST, c.sample_id LIMIT ?",
        [sample_id, sample_id, limit])


def sample_neighbors(store: Store, sample_id: str, limit: int = 10) -> pd.DataFrame:
    """Nearest training images of `sample_id` (detectors' embedder), closest first, `disagrees` when labelled else."""
    return store.query(
        "SELECT n.rank, n.neighbor_id, n.similarity, s.label, s.label <> me.label AS disagrees, s.path, s.file_hash "
        "FROM neighbors n LEFT JOIN samples s ON s.sample_id = n.neighbor_id "
        "LEFT JOIN (SELECT label FROM samples WHERE sample_id = ?) me ON true "
        f"WHERE n.sample_id = ? AND n.embedder_id = {_DETECTOR_EMBEDDER} ORDER BY n.rank LIMIT ?",
        [sample_id, sample_id, limit])


# Scores the review grid can sort and range-filter by: key -> column of the rows CTE `r`.
REVIEW_SCORES: dict[str, str] = {"apb": "r.apb", "mem": "r.mem", "score": "r.flag_score",
                                 "first_learned": "r.first_learned", "forgetting": "r.forgetting_events",
                                 "el2n": "r.el2n", "confidence": "r.confidence"}
# The only orderings the review grid offers: key ('<score>_asc' / '<score>_desc') -> ORDER BY text. User input only
# ever selects a key.
REVIEW_SORTS: dict[str, str] = {
    f"{key}_{way}": f"{column} {way.upper()} NULLS LAST, r.apb ASC NULLS LAST, r.sample_id"
    for key, column in REVIEW_SCORES.items() for way in ("asc", "desc")}
# Review states of the filter: key -> condition on the current decision `d` (constant text).
REVIEW_STATES: dict[str, str] = {"any": "true", "undecided": "d.action IS NULL", "decided": "d.action IS NOT NULL",
                                 "keep": "d.action = 'keep'", "remove": "d.action = 'remove'",
                                 "relabel": "d.action = 'relabel'"}
# Rows of the grid (CTE `r`): every scored training image, or every sample carrying the chosen flag kind (test images
# too, e.g. the test side of a leak, whose ApB and mem are NULL; the one parameter is the kind), or every sample
# with any flag but `memorized_candidate` (flag 'any').
_REVIEW_COLUMNS = ("s.split, s.label, s.path, s.file_hash, sc.apb, sc.first_learned, sc.forgetting_events, sc.el2n, "
                   "sc.confidence, sc.mem, sc.mem_low, sc.mem_high, sc.mem_n_in, sc.mem_n_out, sc.mem_method, "
                   "sc.mem_note")
_REVIEW_SCORED = (f"r AS (SELECT sc.sample_id, {_REVIEW_COLUMNS}, NULL::DOUBLE AS flag_score "
                  "FROM scores sc JOIN samples s ON s.sample_id = sc.sample_id WHERE s.split = 'train')")
_REVIEW_FLAGGED = (f"r AS (SELECT f.sample_id, {_REVIEW_COLUMNS}, f.flag_score "
                   "FROM (SELECT sample_id, max(score) AS flag_score FROM flags "
                   "      WHERE kind = ? OR (? = 'any' AND kind <> 'memorized_candidate') GROUP BY sample_id) f "
                   "LEFT JOIN samples s ON s.sample_id = f.sample_id "
                   "LEFT JOIN scores sc ON sc.sample_id = f.sample_id)")
# The current decision of each sample (CTE `d`), or no rows in a file written before `reviews` existed.
_DECISIONS = "d AS (SELECT sample_id, action, new_label, reviewer, decided_at FROM current_reviews)"
_NO_DECISIONS = ("d AS (SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS action, NULL::VARCHAR AS new_label, "
                 "NULL::VARCHAR AS reviewer, NULL::TIMESTAMP AS decided_at WHERE false)")


# The out-of-sample prediction of each image of the page `pg` (CTE `o`): the class with the highest mean probability
# over the current memorization run's shadow models that were trained without it (their out-of-shard `probs`), that
# mean probability, and how many models it averages.
_OUT_OF_SAMPLE = (
    "oo AS (SELECT sp.sample_id, sp.model_id, unnest(generate_series(0, len(sp.probs) - 1)) AS k, "
    "              unnest(sp.probs) AS prob "
    "       FROM shadow_predictions sp JOIN shadow_models m USING (model_id) JOIN shadow_designs sd USING (design_id) "
    "       WHERE NOT sp.in_shard AND sp.probs IS NOT NULL AND sp.sample_id IN (SELECT sample_id FROM pg) "
    "         AND sd.run_id = (SELECT max(mem_run_id) FROM scores)), "
    "ok AS (SELECT sample_id, k, avg(prob) AS prob, count(DISTINCT model_id) AS models FROM oo GROUP BY sample_id, k), "
    "o AS (SELECT ok.sample_id, c.label AS oos_label, ok.prob AS oos_p, ok.models AS oos_models FROM ok "
    "      LEFT JOIN classes c ON c.label_index = ok.k "
    "      QUALIFY row_number() OVER (PARTITION BY ok.sample_id ORDER BY ok.prob DESC, ok.k) = 1)")


@dataclass(frozen=True)
class ReviewFilter:
    """What the review grid shows: class, flag kind (None: scored training images, 'any': any flag but candidates),
    split, a [low, high] range of one REVIEW_SCORES score, the review state and an explicit selection of ids."""

    label: str | None = None
    flag: str | None = None
    split: str | None = None
    score: str | None = None
    low: float | None = None
    high: float | None = None
    state: str = "any"
    sample_ids: tuple[str, ...] | None = None


def has_reviews(store: Store) -> bool:
    """Whether the file has the `reviews` table and `current_reviews` view (written by memaudit with decisions)."""
    return int(store.scalar("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name IN ('reviews', 'current_reviews')")) == 2


def _review_rows(store: Store, f: ReviewFilter) -> tuple[str, list, str, list]:
    """The rows and decisions CTEs and the WHERE clause (constant text), each with its parameters, for `f`."""
    if f.score is not None and f.score not in REVIEW_SCORES:
        raise ValueError(f"unknown review score {f.score!r}; use one of {', '.join(REVIEW_SCORES)}")
    if f.state not in REVIEW_STATES:
        raise ValueError(f"unknown review state {f.state!r}; use one of {', '.join(REVIEW_STATES)}")
    rows, row_params = (_REVIEW_SCORED, []) if f.flag is None else (_REVIEW_FLAGGED, [f.flag, f.flag])
    decisions = _DECISIONS if has_reviews(store) else _NO_DECISIONS
    where, params = [REVIEW_STATES[f.state]], []
    for condition, value in (("r.label = ?", f.label), ("r.split = ?", f.split)):
        if value is not None:
            where.append(condition)
            params.append(value)
    if f.score is not None:
        for op, bound in ((">=", f.low), ("<=", f.high)):
            if bound is not None:
                where.append(f"{REVIEW_SCORES[f.score]} {op} ?")
                params.append(float(bound))
    if f.sample_ids is not None:
        where.append("list_contains(?, r.sample_id)")
        params.append(list(f.sample_ids))
    return f"WITH {rows}, {decisions} ", row_params, " AND ".join(where), params


def review_count(store: Store, label: str | None = None, flag: str | None = None, *,
                 where: ReviewFilter | None = None) -> int:
    """Number of images passing the filters (`where`, else class and flag only)."""
    f = where or ReviewFilter(label=label, flag=flag)
    ctes, row_params, condition, params = _review_rows(store, f)
    return int(store.scalar(f"{ctes}SELECT count(*) FROM r LEFT JOIN d ON d.sample_id = r.sample_id "
                            f"WHERE {condition}", [*row_params, *params]))


def review_score_range(store: Store, score: str, flag: str | None = None) -> tuple[float, float] | None:
    """The smallest and largest value of a REVIEW_SCORES score among the rows of `flag` (None when none has one)."""
    ctes, row_params, _, _ = _review_rows(store, ReviewFilter(flag=flag, score=score))
    row = store.query(f"{ctes}SELECT min({REVIEW_SCORES[score]}) AS lo, max({REVIEW_SCORES[score]}) AS hi FROM r",
                      row_params).iloc[0]
    return None if pd.isna(row["lo"]) else (float(row["lo"]), float(row["hi"]))


def review_page(store: Store, label: str | None = None, flag: str | None = None, sort: str = "apb_asc",
                limit: int = 24, offset: int = 0, *, where: ReviewFilter | None = None) -> pd.DataFrame:
    """One page of the review grid in `sort` order (a REVIEW_SORTS key) with every flag and the current decision
    of each image, its out-of-sample prediction (oos_label, oos_p, oos_models: NULL where no shadow model left it
    out) and the path and recorded file_hash of its image (filters: `where`, else class and flag only)."""
    if sort not in REVIEW_SORTS:
        raise ValueError(f"unknown review sort {sort!r}; use one of {', '.join(REVIEW_SORTS)}")
    f = where or ReviewFilter(label=label, flag=flag)
    ctes, row_params, condition, params = _review_rows(store, f)
    # The page is cut first (`pg`: rows, decision, filter, order, LIMIT/OFFSET); only its rows then get their flags
    # and prediction, instead of aggregating the flags of every flagged sample and joining every row.
    return store.query(
        f"{ctes}, "
        "pg AS (SELECT r.*, d.action AS decision, d.new_label AS decision_label, d.reviewer AS decided_by "
        "       FROM r LEFT JOIN d ON d.sample_id = r.sample_id "
        f"      WHERE {condition} ORDER BY {REVIEW_SORTS[sort]} LIMIT ? OFFSET ?), "
        "fl AS (SELECT sample_id, list({'kind': kind, 'score': score, 'detail': detail} "
        f"                              ORDER BY {_PRIORITY.format(kind='kind')}, kind, score DESC) AS flags, "
        "              bool_or(kind = 'memorized_candidate') AS memorized_candidate, "
        "              bool_or(kind = 'memorized') AS memorized "
        "       FROM flags WHERE sample_id IN (SELECT sample_id FROM pg) GROUP BY sample_id), "
        "p AS (SELECT sample_id, pred_label, p_pred FROM predictions "
        f"      WHERE run_id = {_PREDICTION_RUN} AND sample_id IN (SELECT sample_id FROM pg)), "
        f"{_OUT_OF_SAMPLE} "
        "SELECT r.sample_id, r.split, r.label, p.pred_label, p.p_pred, o.oos_label, o.oos_p, o.oos_models, r.apb, "
        "       r.first_learned, r.forgetting_events, "
        "       r.el2n, r.confidence, r.mem, r.mem_low, r.mem_high, r.mem_n_in, r.mem_n_out, r.mem_method, "
        "       r.mem_note, r.path, r.file_hash, r.flag_score, "
        "       coalesce(fl.memorized_candidate, false) AS memorized_candidate, "
        "       coalesce(fl.memorized, false) AS memorized, coalesce(fl.flags, []) AS flags, "
        "       r.decision, r.decision_label, r.decided_by "
        "FROM pg r LEFT JOIN fl ON fl.sample_id = r.sample_id LEFT JOIN p ON p.sample_id = r.sample_id "
        "LEFT JOIN o ON o.sample_id = r.sample_id "
        f"ORDER BY {REVIEW_SORTS[sort]}",
        [*row_params, *params, limit, offset, list(FLAG_PRIORITY)])


def sample_detail(store: Store, sample_id: str) -> dict | None:
    """Everything the Point detail page shows in its header for one sample: split, label, path, every score with its
    interval and runs, the prediction of the score run, its flags and its current decision; None if unknown."""
    decisions = _DECISIONS if has_reviews(store) else _NO_DECISIONS
    # Every part is filtered to the one sample before it is joined (no correlated subquery over `flags`).
    frame = store.query(
        f"WITH {decisions}, "
        "fl AS (SELECT list({'kind': kind, 'score': score, 'detail': detail} "
        f"                  ORDER BY {_PRIORITY.format(kind='kind')}, kind, score DESC) AS flags "
        "       FROM flags WHERE sample_id = ?) "
        "SELECT s.sample_id, s.split, s.label, s.path, s.file_hash, s.width, s.height, s.mode, s.source, sc.run_id, "
        "       sc.apb, "
        "       sc.first_learned, sc.forgetting_events, sc.confidence, sc.variability, sc.el2n, sc.n_seeds, "
        "       sc.converged, sc.mem, sc.mem_low, sc.mem_high, sc.mem_n_in, sc.mem_n_out, sc.mem_method, sc.mem_note, "
        "       sc.mem_run_id, p.pred_label, p.p_pred, p.p_label, (SELECT flags FROM fl) AS flags, "
        "       d.action AS decision, d.new_label AS decision_label, d.reviewer AS decided_by, "
        "       d.decided_at "
        "FROM (SELECT * FROM samples WHERE sample_id = ?) s "
        "LEFT JOIN (SELECT * FROM scores WHERE sample_id = ?) sc USING (sample_id) "
        "LEFT JOIN (SELECT * FROM d WHERE sample_id = ?) d USING (sample_id) "
        "LEFT JOIN (SELECT sample_id, pred_label, p_pred, p_label FROM predictions "
        f"          WHERE sample_id = ? AND run_id = {_PREDICTION_RUN}) p ON p.sample_id = s.sample_id",
        [list(FLAG_PRIORITY), sample_id, sample_id, sample_id, sample_id, sample_id])
    if frame.empty:
        return None
    row = frame.iloc[0].to_dict()
    row["flags"] = [] if row["flags"] is None or not len(row["flags"]) else list(row["flags"])
    return {k: (None if not isinstance(v, list | dict) and pd.isna(v) else v) for k, v in row.items()}


def flag_class_counts(store: Store) -> pd.DataFrame:
    """Distinct flagged samples per flag kind and class (kind, label, samples), most important kind first."""
    return store.query(
        "SELECT kind, coalesce(label, '–') AS label, sum(samples)::BIGINT AS samples "
        f"FROM {_summary(store, 'flag_tallies')} GROUP BY kind, label, label_index "
        f"ORDER BY {_PRIORITY.format(kind='kind')}, kind, label_index", [list(FLAG_PRIORITY)])


def recorded_file_hash(store: Store, path: str) -> str | None:
    """The `file_hash` ingest recorded for the image at `path`; None when no sample has that path."""
    return store.scalar("SELECT any_value(file_hash) FROM samples WHERE path = ?", [path])
