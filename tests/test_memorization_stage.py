"""The memorization stage end to end: new tables filled, candidates-only scores, and resume after SIGKILL giving the
same scores as an uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from auditor.sharding import unpack_rows
from auditor.store import Store
from conftest import kill_when_progress, memaudit

pytestmark = pytest.mark.slow

CONFIG = """
[data]
limit_per_class = 20
[train]
width = 4
[memorization]
models = {models}
block = 1
"""


def _cli(db: Path, cfg: Path, stages: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    return memaudit("run", "--data", "default", "--db", db, "--profile", "quick", "--config", cfg, "--stages",
                    stages, **kw)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, default_manifest):
    """A database with the foundation stages and one complete memorization run (12 models, one per block)."""
    root = tmp_path_factory.mktemp("mem")
    cfg = root / "c.toml"
    cfg.write_text(CONFIG.format(models=12))
    db = root / "base.duckdb"
    proc = _cli(db, cfg, "ingest,train,scores,memorization")
    assert proc.returncode == 0, proc.stderr
    return root, cfg, db, proc


def test_tables_are_filled_and_only_candidates_are_scored(audited):
    _, _, db, proc = audited
    store = Store(db)
    n_train, n_test = 200, 200
    design = store.query("SELECT * FROM shadow_designs").iloc[0]
    assert design["method"] == "ploo_improved" and design["n_models"] == 12 and design["n_candidates"] == 10
    members = store.query("SELECT bits FROM memberships ORDER BY model_index")["bits"].tolist()
    membership = unpack_rows([bytes(b) for b in members], n_train)
    candidate = store.query("SELECT candidate FROM design_points ORDER BY point")["candidate"].to_numpy()
    assert membership[:, ~candidate].all()                       # every non-candidate in every shard
    assert set(membership[:, candidate].sum(axis=0)) == {6}      # r = 0.5 of 12, exactly
    assert store.scalar("SELECT count(*) FROM shadow_models") == 12
    assert store.scalar("SELECT count(*) FROM shadow_predictions") == 12 * (n_train + n_test)
    in_shard = store.query("SELECT p.in_shard, d.candidate FROM shadow_predictions p JOIN design_points d "
                           "USING (sample_id) WHERE p.split = 'train'")
    assert in_shard.loc[~in_shard["candidate"], "in_shard"].all()
    scores = store.query("SELECT s.*, f.sample_id IS NOT NULL AS cand FROM scores s LEFT JOIN "
                         "(SELECT sample_id FROM flags WHERE kind = 'memorized_candidate') f USING (sample_id)")
    assert scores.loc[scores["cand"], "mem"].notna().all()
    assert (scores.loc[scores["cand"], ["mem_n_in", "mem_n_out"]] == 6).all().all()
    non = scores[~scores["cand"]]
    assert non["mem"].isna().all() and set(non["mem_note"]) == {"not a candidate (ApB above cut-off)"}
    assert ((scores["mem_low"] <= scores["mem"]) & (scores["mem"] <= scores["mem_high"]))[scores["cand"]].all()
    memorized = store.query("SELECT f.sample_id, s.mem, s.mem_low FROM flags f JOIN scores s USING (sample_id) "
                            "WHERE f.kind = 'memorized'")
    assert ((memorized["mem"] >= 0.25) & (memorized["mem_low"] > 0)).all()
    audit = store.query("SELECT * FROM audit WHERE list_contains(flags, 'memorized_candidate')")
    assert len(audit) == 10 and audit["mem"].notna().all()
    job = store.query("SELECT status, done, total FROM jobs WHERE kind = 'ploo_improved'").iloc[0]
    assert (job["status"], job["done"], job["total"]) == ("done", 12, 12)
    influence = store.query("SELECT * FROM influence")
    assert ((influence["low"] > 0) | (influence["high"] < 0)).all()
    assert "pLOO-improved: 12 shadow models" in proc.stdout


def test_sigkill_then_resume_gives_identical_scores(audited):
    root, cfg, db, _ = audited
    killed = root / "killed.duckdb"
    for suffix in ("", ".wal"):
        src = Path(str(db) + suffix)
        if src.exists():
            Path(str(killed) + suffix).write_bytes(src.read_bytes())
    fresh_cfg = root / "c2.toml"
    fresh_cfg.write_text(CONFIG.format(models=14))  # a new design: nothing of it is trained yet
    proc = _cli(killed, fresh_cfg, "memorization", background=True)
    kill_when_progress(proc, rb"shadow models:[^\r\n]*\| ([3-9]|1[0-2])/14")
    store = Store(killed)
    partial = store.scalar("SELECT count(*) FROM shadow_models WHERE design_id LIKE 'ploo_improved-%' "
                           "AND design_id IN (SELECT design_id FROM shadow_designs WHERE n_models = 14)")
    assert 0 < partial < 14
    resumed = _cli(killed, fresh_cfg, "memorization")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({partial} reused" in resumed.stdout
    clean_db = root / "clean.duckdb"
    for suffix in ("", ".wal"):
        src = Path(str(db) + suffix)
        if src.exists():
            Path(str(clean_db) + suffix).write_bytes(src.read_bytes())
    clean = _cli(clean_db, fresh_cfg, "memorization")
    assert clean.returncode == 0, clean.stderr
    query = "SELECT sample_id, mem, mem_low, mem_high, mem_n_in, mem_n_out FROM scores ORDER BY sample_id"
    a, b = Store(killed).query(query), Store(clean_db).query(query)
    assert a.equals(b)
    n = "SELECT count(*) FROM shadow_predictions p JOIN shadow_models m USING (model_id) WHERE m.design_id IN " \
        "(SELECT design_id FROM shadow_designs WHERE n_models = 14)"
    assert Store(killed).scalar(n) == Store(clean_db).scalar(n) == 14 * 400  # nothing duplicated or lost


def test_ploo_scores_every_point(audited, tmp_path):
    root, _, db, _ = audited
    cfg = tmp_path / "p.toml"
    cfg.write_text(CONFIG.format(models=6) + 'method = "ploo"\n')
    copy = tmp_path / "p.duckdb"
    copy.write_bytes(db.read_bytes())
    proc = _cli(copy, cfg, "memorization")
    assert proc.returncode == 0, proc.stderr
    scores = Store(copy).query("SELECT mem, mem_n_in, mem_n_out, mem_method FROM scores")
    assert set(scores["mem_method"]) == {"ploo"}
    assert (scores["mem_n_in"] + scores["mem_n_out"] == 6).all()
    assert set(scores["mem_n_in"]) == {4}  # round(0.7 * 6)
    assert np.isfinite(scores["mem"]).all()


def test_exact_loo_for_chosen_points(audited, tmp_path):
    _, _, db, _ = audited
    copy = tmp_path / "l.duckdb"
    copy.write_bytes(db.read_bytes())
    points = Store(copy).query("SELECT sample_id FROM flags WHERE kind = 'memorized_candidate' LIMIT 2")["sample_id"]
    cfg = tmp_path / "l.toml"
    cfg.write_text(CONFIG.format(models=6) + f"loo_points = {list(points)!r}\nloo_models = 3\n".replace("'", '"'))
    proc = _cli(copy, cfg, "loo")
    assert proc.returncode == 0, proc.stderr
    loo = Store(copy).query("SELECT * FROM loo_scores ORDER BY sample_id")
    assert list(loo["sample_id"]) == sorted(points)
    assert (loo["mem_n_in"] == 3).all() and (loo["mem_n_out"] == 3).all()
    assert "exact LOO for 2 points: 9 models" in proc.stdout  # 3 shared "with" + 3 per point


def test_out_of_shard_probabilities_are_kept(audited):
    _, _, db, _ = audited
    rows = Store(db).query("SELECT in_shard, probs, p_label, pred FROM shadow_predictions WHERE split = 'train'")
    assert rows.loc[rows["in_shard"], "probs"].isna().all()
    out = rows[~rows["in_shard"]]
    assert len(out) == 12 * 5  # 10 candidates, half of them out of each model
    probs = np.stack(out["probs"].to_numpy())
    assert probs.shape[1] == 10 and np.allclose(probs.sum(axis=1), 1, atol=1e-2)
    assert (probs.argmax(axis=1) == out["pred"].to_numpy()).mean() > 0.9  # float16 ties aside
