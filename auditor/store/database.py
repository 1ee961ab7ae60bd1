"""The DuckDB file that is memaudit's single source of truth: schema, short-lived connections, batched writes.

DuckDB lets only one process hold a file read-write, and then nobody else may open it at all. Every caller
therefore opens a connection for one short unit of work (`Store.connect`), retrying with backoff while another
process holds the lock, and never keeps it open across a long computation.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd

from auditor.store.store_errors import CORRUPT_MARKERS, LOCK_MARKERS, StoreBusy, StoreCorrupt
from auditor.store.store_gate import gate_for
from auditor.store.store_views import (  # noqa: F401 (FLAG_TALLIES_LIVE, SAMPLE_FLAGS_LIVE re-exported)
    FLAG_TALLIES_LIVE, SAMPLE_FLAGS_LIVE, SUMMARY_KEY, SUMMARY_SOURCE, SUMMARY_SOURCES, VIEWS, refresh_summaries)
from auditor.store.write_errors import StoreUnwritable, explain_write_failure

SCHEMA_VERSION = 2

# The public contract (documented in docs/schema.md). Later issues add tables and columns; never drop or rename one.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS samples(
    sample_id VARCHAR PRIMARY KEY, split VARCHAR NOT NULL, label VARCHAR NOT NULL, path VARCHAR NOT NULL,
    width INTEGER, height INTEGER, mode VARCHAR, file_hash VARCHAR, pixel_hash VARCHAR,
    label_index INTEGER, source VARCHAR);
CREATE TABLE IF NOT EXISTS classes(label_index INTEGER PRIMARY KEY, label VARCHAR NOT NULL, n_train INTEGER);
CREATE TABLE IF NOT EXISTS problems(
    source VARCHAR, sample_id VARCHAR, reason VARCHAR, code VARCHAR, severity VARCHAR, action VARCHAR,
    stage VARCHAR);
CREATE TABLE IF NOT EXISTS runs(
    run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, parent_run_id VARCHAR, seed BIGINT, config_json VARCHAR,
    versions_json VARCHAR, code_version VARCHAR, device VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, message VARCHAR, converged BOOLEAN, train_acc DOUBLE, test_acc DOUBLE, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS run_inputs(run_id VARCHAR, input_run_id VARCHAR, role VARCHAR);
CREATE TABLE IF NOT EXISTS epochs(
    run_id VARCHAR, epoch INTEGER, train_acc DOUBLE, test_acc DOUBLE, train_loss DOUBLE, test_loss DOUBLE,
    seconds DOUBLE);
CREATE TABLE IF NOT EXISTS dynamics(
    run_id VARCHAR, sample_id VARCHAR, step INTEGER, epoch INTEGER, phase VARCHAR, correct BOOLEAN,
    loss REAL, p_label REAL, el2n REAL);
CREATE TABLE IF NOT EXISTS predictions(
    run_id VARCHAR, sample_id VARCHAR, split VARCHAR, pred_index INTEGER, pred_label VARCHAR,
    p_label REAL, p_pred REAL);
CREATE TABLE IF NOT EXISTS scores(
    sample_id VARCHAR PRIMARY KEY, run_id VARCHAR, apb DOUBLE, first_learned DOUBLE, forgetting_events DOUBLE,
    confidence DOUBLE, variability DOUBLE, el2n DOUBLE, n_records INTEGER, n_seeds INTEGER, converged BOOLEAN);
CREATE TABLE IF NOT EXISTS flags(sample_id VARCHAR, kind VARCHAR, score DOUBLE, detail VARCHAR, run_id VARCHAR);
CREATE TABLE IF NOT EXISTS jobs(
    job_id VARCHAR PRIMARY KEY, kind VARCHAR, run_id VARCHAR, status VARCHAR, done INTEGER, total INTEGER,
    unit VARCHAR, eta_s DOUBLE, started_at TIMESTAMP, updated_at TIMESTAMP, finished_at TIMESTAMP, message VARCHAR,
    pid INTEGER);
CREATE TABLE IF NOT EXISTS shadow_designs(
    design_id VARCHAR PRIMARY KEY, run_id VARCHAR, method VARCHAR, n_models INTEGER, n_points INTEGER,
    n_candidates INTEGER, fraction DOUBLE, shard_seed BIGINT, config_json VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS design_points(design_id VARCHAR, point INTEGER, sample_id VARCHAR, candidate BOOLEAN,
    loo_group INTEGER);
CREATE TABLE IF NOT EXISTS memberships(design_id VARCHAR, model_index INTEGER, n_in INTEGER, bits BLOB);
CREATE TABLE IF NOT EXISTS shadow_models(
    model_id VARCHAR PRIMARY KEY, design_id VARCHAR, method VARCHAR, model_index INTEGER, shard_seed BIGINT,
    seed BIGINT, block INTEGER, n_in INTEGER, epochs_run INTEGER, shard_train_acc DOUBLE, test_acc DOUBLE,
    batched BOOLEAN, seconds DOUBLE, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS shadow_predictions(
    model_id VARCHAR, sample_id VARCHAR, split VARCHAR, pred SMALLINT, p_label REAL, correct BOOLEAN,
    in_shard BOOLEAN, probs FLOAT[]);
CREATE TABLE IF NOT EXISTS influence(
    train_id VARCHAR, test_id VARCHAR, score DOUBLE, n_in INTEGER, n_out INTEGER, low DOUBLE, high DOUBLE,
    run_id VARCHAR);
CREATE TABLE IF NOT EXISTS loo_scores(
    sample_id VARCHAR, mem DOUBLE, mem_low DOUBLE, mem_high DOUBLE, mem_n_in INTEGER, mem_n_out INTEGER,
    run_id VARCHAR);
CREATE TABLE IF NOT EXISTS embedders(
    embedder_id VARCHAR PRIMARY KEY, kind VARCHAR, model_name VARCHAR, weights VARCHAR, dim INTEGER,
    input_size INTEGER, fallback_reason VARCHAR, run_id VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS embeddings(embedder_id VARCHAR, sample_id VARCHAR, vector FLOAT[]);
CREATE TABLE IF NOT EXISTS embedding_map(embedder_id VARCHAR, sample_id VARCHAR, x REAL, y REAL);
CREATE TABLE IF NOT EXISTS neighbors(
    embedder_id VARCHAR, sample_id VARCHAR, rank INTEGER, neighbor_id VARCHAR, similarity REAL);
CREATE TABLE IF NOT EXISTS pairs(
    a_id VARCHAR, b_id VARCHAR, kind VARCHAR, similarity DOUBLE, conflicting BOOLEAN, embedder_id VARCHAR,
    run_id VARCHAR);
CREATE TABLE IF NOT EXISTS thresholds(
    run_id VARCHAR, kind VARCHAR, embedder_id VARCHAR, value DOUBLE, method VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS pair_judgements(
    a_id VARCHAR, b_id VARCHAR, is_duplicate BOOLEAN, reviewer VARCHAR, decided_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS clusters(
    sample_id VARCHAR, embedder_id VARCHAR, label VARCHAR, cluster INTEGER, cluster_size INTEGER, density REAL);
CREATE TABLE IF NOT EXISTS subpopulations(subpop_id INTEGER, sample_id VARCHAR, source VARCHAR, run_id VARCHAR);
CREATE TABLE IF NOT EXISTS oof_probs(sample_id VARCHAR, probs FLOAT[], source VARCHAR, run_id VARCHAR);
CREATE TABLE IF NOT EXISTS reviews(
    decision_id VARCHAR PRIMARY KEY, sample_id VARCHAR NOT NULL, action VARCHAR NOT NULL, new_label VARCHAR,
    note VARCHAR, reviewer VARCHAR, decided_at TIMESTAMP, undoes VARCHAR);
CREATE TABLE IF NOT EXISTS experiments(
    experiment_id VARCHAR PRIMARY KEY, spec_json VARCHAR, status VARCHAR, created_at TIMESTAMP,
    finished_at TIMESTAMP, run_id VARCHAR, test_ids VARCHAR[]);
CREATE TABLE IF NOT EXISTS experiment_arms(
    experiment_id VARCHAR, position INTEGER, arm VARCHAR, source VARCHAR, control_of VARCHAR, n_removed INTEGER,
    removed_ids VARCHAR[], subpop_test_ids VARCHAR[], leaked_test_ids VARCHAR[]);
CREATE TABLE IF NOT EXISTS experiment_models(
    experiment_id VARCHAR, arm VARCHAR, model_index INTEGER, seed BIGINT, test_acc DOUBLE, subpop_acc DOUBLE,
    leaked_acc DOUBLE, rest_acc DOUBLE, epochs_run INTEGER, converged BOOLEAN, test_curve DOUBLE[],
    test_correct BOOLEAN[], seconds DOUBLE, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS experiment_reaudit(
    experiment_id VARCHAR, arm VARCHAR, sample_id VARCHAR, apb DOUBLE, newly_flagged BOOLEAN);
CREATE TABLE IF NOT EXISTS sweeps(
    sweep_id VARCHAR PRIMARY KEY, spec_json VARCHAR, status VARCHAR, created_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS sweep_variants(
    sweep_id VARCHAR, variant VARCHAR, arch VARCHAR, width INTEGER, epochs INTEGER, train_acc DOUBLE,
    test_acc DOUBLE, gap DOUBLE, n_memorized INTEGER, method VARCHAR, run_id VARCHAR, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS sweep_members(
    sweep_id VARCHAR, variant VARCHAR, sample_id VARCHAR, apb DOUBLE, mem DOUBLE, memorized BOOLEAN);
CREATE TABLE IF NOT EXISTS sweep_checkpoints(
    sweep_id VARCHAR, variant VARCHAR, epoch INTEGER, shadow_test_acc DOUBLE, n_memorized INTEGER,
    n_memorized_low DOUBLE, n_memorized_high DOUBLE, memorized_ids VARCHAR[]);
CREATE TABLE IF NOT EXISTS memorization_estimates(
    run_id VARCHAR, method VARCHAR, threshold DOUBLE, n_train INTEGER, n_scored INTEGER, n_memorized INTEGER,
    n_memorized_certain INTEGER, n_uncertain INTEGER, n_not_memorized INTEGER, n_not_scored INTEGER,
    est_total DOUBLE, est_low DOUBLE, est_high DOUBLE, recall DOUBLE, recall_low DOUBLE, recall_high DOUBLE,
    n_shortlist INTEGER, n_audit INTEGER, n_extension INTEGER, bands_extended INTEGER, n_bands INTEGER,
    audit_fraction DOUBLE, rate_floor DOUBLE, n_models INTEGER, target_half_width DOUBLE,
    expected_half_width DOUBLE, plan VARCHAR, created_at TIMESTAMP, influence_q DOUBLE, influence_tested BIGINT,
    influence_pairs INTEGER, influence_note VARCHAR);
CREATE TABLE IF NOT EXISTS memorization_bands(
    run_id VARCHAR, band INTEGER, apb_low DOUBLE, apb_high DOUBLE, n_points INTEGER, n_audit INTEGER,
    audit_memorized INTEGER, rate DOUBLE, rate_low DOUBLE, rate_high DOUBLE, role VARCHAR, n_scored INTEGER,
    memorized INTEGER, noise_var DOUBLE, est_memorized DOUBLE, est_low DOUBLE, est_high DOUBLE);
CREATE TABLE IF NOT EXISTS proxy_calibration(
    run_id VARCHAR, proxy VARCHAR, n_scored INTEGER, pearson DOUBLE, pearson_low DOUBLE, pearson_high DOUBLE,
    spearman DOUBLE, spearman_low DOUBLE, spearman_high DOUBLE, top_k INTEGER, top_k_overlap DOUBLE,
    top_k_overlap_low DOUBLE, top_k_overlap_high DOUBLE);
CREATE INDEX IF NOT EXISTS dynamics_sample ON dynamics(sample_id);
CREATE TABLE IF NOT EXISTS flag_tallies(
    kind VARCHAR, split VARCHAR, label VARCHAR, label_index INTEGER, flags BIGINT, samples BIGINT);
CREATE TABLE IF NOT EXISTS sample_flags(
    sample_id VARCHAR, kinds VARCHAR[], top_flag VARCHAR, triage VARCHAR, in_samples BOOLEAN);
"""

# Columns added to tables of an earlier schema version (ALTER ... IF NOT EXISTS keeps old files usable).
MIGRATIONS = """
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_low DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_high DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_n_in INTEGER;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_n_out INTEGER;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_method VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_note VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_run_id VARCHAR;
ALTER TABLE influence ADD COLUMN IF NOT EXISTS p_value DOUBLE;
ALTER TABLE memorization_bands ADD COLUMN IF NOT EXISTS noise_var DOUBLE;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS influence_q DOUBLE;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS influence_tested BIGINT;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS influence_pairs INTEGER;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS influence_note VARCHAR;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS max_models INTEGER;
ALTER TABLE memorization_estimates ADD COLUMN IF NOT EXISTS models_wanted INTEGER;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_state VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_sampled VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS apb_band INTEGER;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS mem_weight DOUBLE;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS command VARCHAR;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS gap_low DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS gap_high DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_seeds INTEGER;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS converged_share DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS check_gain DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS check_low DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS check_high DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS trained_to_max BOOLEAN;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_memorized_low DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_memorized_high DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_null INTEGER;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_null_high DOUBLE;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS n_models INTEGER;
ALTER TABLE sweep_variants ADD COLUMN IF NOT EXISTS mem_fraction DOUBLE;
ALTER TABLE sweep_members ADD COLUMN IF NOT EXISTS mem_low DOUBLE;
ALTER TABLE sweep_members ADD COLUMN IF NOT EXISTS mem_high DOUBLE;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS log_path VARCHAR;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS token VARCHAR;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS est_memorized DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS est_memorized_low DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS est_memorized_high DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS check_gain DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS check_low DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS check_high DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS check_p DOUBLE;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS trained_to_max BOOLEAN;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS epochs INTEGER;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS per_model_control BOOLEAN;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS n_memorized_removed INTEGER;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS mem_share DOUBLE;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS mem_share_low DOUBLE;
ALTER TABLE experiment_arms ADD COLUMN IF NOT EXISTS mem_share_high DOUBLE;
ALTER TABLE experiment_models ADD COLUMN IF NOT EXISTS sgd_steps BIGINT;
ALTER TABLE experiment_models ADD COLUMN IF NOT EXISTS removed_ids VARCHAR[];
"""

class Store:
    """Handle on one audit database file; cheap to create, holds no connection between calls."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._reading = False  # inside reading(): read-only work shares one connection
        self._shared: duckdb.DuckDBPyConnection | None = None
        self._fresh: bool | None = None  # summaries_fresh() of the shared connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Share one read-only connection among the reads of a short burst (one dashboard page render) instead of
        opening the file for each (25-60 ms apiece); closed at the end, so writers in other processes wait at most
        that long. A write from this thread, through any Store, closes it first (one process cannot hold both modes)."""
        self._reading = True
        try:
            yield
        finally:
            self._reading = False
            self._close_shared()

    def _close_shared(self) -> None:
        self._fresh = None
        if self._shared is not None:
            shared, self._shared = self._shared, None
            gate_for(self.path).unshare(self._close_shared)
            self._close(shared, read_only=True)

    def _close(self, con: duckdb.DuckDBPyConnection, read_only: bool) -> None:
        """Close a connection from `_open` and end its turn at the gate."""
        try:
            con.close()
        finally:
            gate_for(self.path).leave(read_only)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open a connection for one short unit of work, retrying with jittered backoff while the file is locked
        (inside reading(), read-only work reuses the burst's connection)."""
        if read_only and not self.path.exists():
            raise FileNotFoundError(
                f"audit database {self.path} does not exist; create it with `memaudit run --db {self.path}`")
        if read_only and self._reading:
            if self._shared is None:
                self._shared = self._open(read_only=True)
                gate_for(self.path).share(self._close_shared)  # a write from this thread closes it first
            try:
                yield self._shared
            except duckdb.Error as exc:
                self._raise_if_corrupt(exc)
                raise
            return
        self._close_shared()
        con = self._open(read_only)
        try:
            yield con
        except duckdb.Error as exc:
            self._raise_if_corrupt(exc, read_only)
            raise
        finally:
            self._close(con, read_only)

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A new connection (close it with `_close`): first this mode's turn among the connections of this process
        (`store_gate.Gate`), then the file, retrying with jittered backoff while another process holds it."""
        deadline = time.monotonic() + self.timeout_s
        gate = gate_for(self.path)
        if not gate.enter(read_only, deadline):
            raise StoreBusy(f"{self.path} stayed open {'read-write' if read_only else 'read-only'} in this process "
                            f"for {self.timeout_s:.0f}s; try again")
        delay = 0.02
        try:
            while True:
                try:
                    return duckdb.connect(str(self.path), read_only=read_only)
                except duckdb.Error as exc:
                    self._raise_if_corrupt(exc, read_only)
                    if not any(m in str(exc) for m in LOCK_MARKERS):
                        raise
                    if time.monotonic() > deadline:
                        raise StoreBusy(
                            f"{self.path} stayed locked by another process for {self.timeout_s:.0f}s; "
                            "wait for the running job to finish or stop it") from exc
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
        except BaseException:
            gate.leave(read_only)
            raise

    def _raise_if_corrupt(self, exc: duckdb.Error, read_only: bool = True) -> None:
        """Turn DuckDB's read errors on a damaged file (at open or at a later read) into one clear StoreCorrupt, and
        (writing) its words for a full disk or a read-only file (at open, write or commit) into StoreUnwritable."""
        unwritable = None if read_only else explain_write_failure(exc, self.path)
        if unwritable is not None:
            raise StoreUnwritable(unwritable) from exc
        if any(m in str(exc) for m in CORRUPT_MARKERS):
            raise StoreCorrupt(
                f"{self.path} is not a readable audit database ({str(exc).splitlines()[0]}); it may be corrupt or "
                "half-written: restore it from a copy, or move it aside and re-create it with "
                f"`memaudit run --db {self.path}`") from exc

    def init(self) -> None:
        """Create every contract table that does not exist yet (idempotent)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)
            con.execute(MIGRATIONS)
            con.execute(VIEWS)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def query(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        """Run one read-only, parameterised query and return it as a DataFrame."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def scalar(self, sql: str, params: list | tuple | None = None):
        """First column of the first row of a read-only query (None when empty)."""
        with self.connect(read_only=True) as con:
            row = con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        """Run one write statement in its own short transaction."""
        with self.connect() as con:
            con.execute(sql, params or [])

    def write(self, inserts: list[tuple[str, pd.DataFrame]], deletes: list[tuple[str, list]] = (),
              frames: dict[str, pd.DataFrame] | None = None, memory_limit_mib: int | None = None) -> None:
        """In one short transaction: run each (statement, params) of `deletes` (DELETE, or UPDATE ... FROM a frame
        registered under its name in `frames`), then insert each DataFrame into its table (columns by name), then
        rebuild the flag summaries when `flags` or `samples` is among the tables. A re-run thereby replaces its own
        earlier output. `memory_limit_mib` caps DuckDB's buffer memory for this write (it spills to disk beyond)."""
        with self.connect() as con:
            if memory_limit_mib is not None:  # the instance's setting, shared by this process's other writers
                con.execute(f"SET memory_limit = '{int(memory_limit_mib)}MiB'")
            for name, frame in (frames or {}).items():
                con.register(name, frame)
            con.execute("BEGIN TRANSACTION")
            try:
                for statement, params in deletes:
                    con.execute(statement, params)
                for table, frame in inserts:
                    if not len(frame):
                        continue
                    con.register("_incoming", frame)
                    cols = ", ".join(frame.columns)
                    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
                    con.unregister("_incoming")
                if SUMMARY_SOURCES & {table for table, _ in inserts}:
                    refresh_summaries(con)
                con.execute("COMMIT")
                if memory_limit_mib is not None:  # now: left to close, it took ~330 MiB more at 10^8 floats
                    con.execute("CHECKPOINT")
            except BaseException:
                with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT has ended it already
                    con.execute("ROLLBACK")
                raise
            finally:
                if memory_limit_mib is not None:  # give the other writers of this process their limit back
                    con.execute("RESET memory_limit")

    def summaries_fresh(self) -> bool:
        """Whether `flag_tallies` and `sample_flags` were built from the current `flags` and `samples` (see
        SUMMARY_SOURCE); inside reading() checked once per burst, since nobody writes the file while its read-only
        connection is open."""
        if self._fresh is not None and self._shared is not None:
            return self._fresh
        fresh = bool(self.scalar(f"SELECT coalesce((SELECT value FROM meta WHERE key = ?) = {SUMMARY_SOURCE}, false)",
                                 [SUMMARY_KEY]))
        if self._shared is not None:
            self._fresh = fresh
        return fresh

    def refresh_summaries(self) -> None:
        """Rebuild the flag summaries in one transaction (every `write` of flags or samples does; this is for a file
        whose tables were loaded in bulk by other means)."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            refresh_summaries(con)
            con.execute("COMMIT")

    def append(self, table: str, frame: pd.DataFrame) -> None:
        """Insert one DataFrame into `table` in its own transaction."""
        self.write([(table, frame)])

    def tables(self) -> set[str]:
        """Names of the tables present (empty when the file does not exist yet)."""
        if not self.path.exists():
            return set()
        return set(self.query("SELECT table_name FROM information_schema.tables")["table_name"])
