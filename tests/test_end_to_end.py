"""`memaudit run --profile quick` through the real console command on a small subset, checking the DuckDB contract,
determinism, resume and the status report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from auditor.store.database import Store

pytestmark = pytest.mark.slow

MEMAUDIT = [sys.executable, "-m", "pipelines.cli"]
# The public contract from docs/schema.md: every table with (at least) these columns.
CONTRACT = {
    "samples": ["sample_id", "split", "label", "path", "width", "height", "mode", "file_hash", "pixel_hash"],
    "problems": ["source", "sample_id", "reason"],
    "runs": ["run_id", "kind", "config_json", "started_at", "finished_at", "status", "seed", "versions_json",
             "code_version", "converged"],
    "epochs": ["run_id", "epoch", "train_acc", "test_acc"],
    "dynamics": ["run_id", "sample_id", "step", "correct", "loss", "p_label"],
    "scores": ["sample_id", "apb", "first_learned", "forgetting_events", "confidence", "variability", "el2n"],
    "flags": ["sample_id", "kind", "score", "detail"],
}
PER_CLASS = 20


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.toml"
    path.write_text(f"[data]\nlimit_per_class = {PER_CLASS}\n[train]\nwidth = 8\n")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([*MEMAUDIT, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def quick_db(tmp_path_factory, default_manifest, small_config) -> tuple[Path, subprocess.CompletedProcess]:
    db = tmp_path_factory.mktemp("e2e") / "audit.duckdb"
    proc = _run("run", "--data", "default", "--db", str(db), "--profile", "quick", "--config", str(small_config))
    assert proc.returncode == 0, proc.stderr
    return db, proc


def test_contract_tables_and_counts(quick_db):
    db, proc = quick_db
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table, columns in CONTRACT.items():
            have = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
            assert set(columns) <= have, f"{table} lacks {set(columns) - have}"
        n_train = PER_CLASS * 10
        assert con.execute("SELECT count(*) FROM samples WHERE split = 'train'").fetchone()[0] == n_train
        assert con.execute("SELECT count(*) FROM samples WHERE split = 'test'").fetchone()[0] == n_train
        epochs = json.loads(con.execute("SELECT config_json FROM runs WHERE kind = 'train'").fetchone()[0])
        epochs = epochs["train"]["epochs"]
        assert con.execute("SELECT count(*) FROM dynamics").fetchone()[0] == n_train * epochs
        assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == epochs
        assert con.execute("SELECT count(*), min(apb) >= 0, max(apb) <= 1 FROM scores").fetchone() == (n_train, True,
                                                                                                        True)
        n_candidates = con.execute("SELECT count(*) FROM flags WHERE kind = 'memorized_candidate'").fetchone()[0]
        assert n_candidates == 10  # 5% of 200
        # candidates are exactly the lowest-ApB points
        worst = con.execute("SELECT max(s.apb) FROM flags f JOIN scores s USING (sample_id) "
                            "WHERE f.kind = 'memorized_candidate'").fetchone()[0]
        better = con.execute("SELECT min(apb) FROM scores WHERE sample_id NOT IN "
                             "(SELECT sample_id FROM flags WHERE kind = 'memorized_candidate')").fetchone()[0]
        assert worst <= better
        kinds = dict(con.execute("SELECT kind, count(*) FROM runs GROUP BY kind").fetchall())
        designs = con.execute("SELECT count(*) FROM shadow_designs").fetchone()[0]  # phase 1, and 2 if extended
        assert designs in (1, 2)
        assert kinds == {"ingest": 1, "train": 1, "apb": 1, "memorization": designs, "embeddings": 1, "detectors": 1}
        run = con.execute("SELECT status, config_json, versions_json, code_version, seed FROM runs "
                          "WHERE kind = 'apb'").fetchone()
        assert run[0] == "done" and json.loads(run[1])["profile"] == "quick"
        assert "torch" in json.loads(run[2]) and run[3].startswith("0.1.0") and run[4] == 0
        n_pred = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
        assert n_pred == 2 * n_train
    finally:
        con.close()
    assert "memaudit summary" in proc.stdout and "memorized candidates" in proc.stdout
    assert "train seed 1/1" in proc.stderr  # a progress bar per stage


def test_rerun_resumes_and_reproduces_scores(quick_db, small_config, tmp_path):
    db, _ = quick_db
    before = Store(db).query("SELECT * FROM scores ORDER BY sample_id")
    again = _run("run", "--data", "default", "--db", str(db), "--profile", "quick", "--config", str(small_config))
    assert again.returncode == 0, again.stderr
    assert "(1 reused)" in again.stdout
    # The compared columns are the scores stage's: a fresh database needs the stages up to it, no more (the full
    # run on a fresh database is the quick_db fixture's).
    fresh_db = tmp_path / "fresh.duckdb"
    fresh = _run("run", "--data", "default", "--db", str(fresh_db), "--profile", "quick", "--config",
                 str(small_config), "--stages", "ingest,train,scores")
    assert fresh.returncode == 0, fresh.stderr
    assert "(0 reused)" in fresh.stdout
    for other in (Store(db), Store(fresh_db)):
        after = other.query("SELECT * FROM scores ORDER BY sample_id")
        cols = ["sample_id", "apb", "first_learned", "forgetting_events", "confidence", "variability", "el2n"]
        assert after[cols].equals(before[cols])


def test_interrupted_seed_is_retrained_without_leftovers(quick_db, small_config):
    db, _ = quick_db
    store = Store(db)
    run_id, expected = store.query("SELECT r.run_id, count(*) AS n FROM runs r JOIN dynamics d USING (run_id) "
                                   "WHERE r.kind = 'train' GROUP BY r.run_id").iloc[0]
    # what a SIGKILL mid-training leaves: a 'running' row and a partial log
    store.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run_id])
    store.execute("INSERT INTO dynamics SELECT * FROM dynamics WHERE run_id = ? LIMIT 7", [run_id])
    proc = _run("run", "--data", "default", "--db", str(db), "--profile", "quick", "--config", str(small_config),
                "--stages", "train,scores")
    assert proc.returncode == 0, proc.stderr
    assert "(0 reused)" in proc.stdout  # the interrupted seed is trained again, not taken as done
    assert store.scalar("SELECT count(*) FROM dynamics WHERE run_id = ?", [run_id]) == expected
    assert store.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id]) == "done"


def test_status_reports_runs_and_config(quick_db):
    db, _ = quick_db
    proc = _run("status", "--db", str(db))
    assert proc.returncode == 0
    assert "profile=quick" in proc.stdout and "memorized_candidate 10" in proc.stdout


def test_clear_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label,split\na.png,x,train\n")
    proc = _run("run", "--data", str(bad), "--db", str(tmp_path / "x.duckdb"))
    assert proc.returncode == 2 and "missing the column 'path'" in proc.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = -1\n")
    proc = _run("run", "--data", "default", "--db", str(tmp_path / "x.duckdb"), "--config", str(cfg))
    assert proc.returncode == 2 and "'train.epochs' = -1 is too small" in proc.stderr
    proc = _run("app", "--db", str(tmp_path / "missing.duckdb"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_more_seeds_reuse_finished_ones_and_keep_predictions(quick_db, small_config, tmp_path):
    from auditor.review import queries

    db, _ = quick_db
    cfg = tmp_path / "two.toml"
    cfg.write_text(small_config.read_text() + "seeds = 2\n")
    proc = _run("run", "--data", "default", "--db", str(db), "--profile", "quick", "--config", str(cfg),
                "--stages", "train,scores")
    assert proc.returncode == 0, proc.stderr
    assert "2 seed(s)" in proc.stdout and "(1 reused)" in proc.stdout
    store = Store(db)
    inputs = store.query("SELECT i.input_run_id, r.seed FROM run_inputs i JOIN runs r ON r.run_id = i.input_run_id "
                         "WHERE i.run_id = (SELECT min(run_id) FROM scores) ORDER BY r.seed")
    assert list(inputs["seed"]) == [0, 1]
    assert set(store.query("SELECT n_seeds FROM scores")["n_seeds"]) == {2}
    page = queries.review_page(store, limit=5)
    assert page["pred_label"].notna().all()
    assert set(queries.accuracy_curves(store)["seed"]) == {0, 1}


def test_memorization_flags_carry_json_evidence(small_db):
    store = Store(small_db)
    flags = store.query("SELECT f.kind, f.detail, s.apb, s.mem FROM flags f JOIN scores s USING (sample_id) "
                        "WHERE f.kind IN ('memorized_candidate', 'memorized')")
    assert (flags["kind"] == "memorized_candidate").any()
    for row in flags.itertuples():
        detail = json.loads(row.detail)
        assert detail["summary"]
        if row.kind == "memorized_candidate":
            assert detail["apb"] == pytest.approx(row.apb, abs=1e-6) and 1 <= detail["rank"] <= detail["ranked"]
        else:
            assert detail["mem"] == pytest.approx(row.mem, abs=1e-6)
            assert detail["low"] <= detail["mem"] <= detail["high"]
