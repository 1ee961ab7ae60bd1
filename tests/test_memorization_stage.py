"""The memorization stage end to end: tables filled, only the sharded points (ApB shortlist, audit sample, extended
bands) scored, states and estimates consistent, and resume after SIGKILL giving the same scores and estimates as an
uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from auditor.memorization.estimates import memorization_states
from auditor.memorization.sharding import unpack_rows
from auditor.store.database import Store
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


def test_tables_are_filled_and_only_sharded_points_are_scored(audited):
    _, _, db, proc = audited
    store = Store(db)
    n_train, n_test = 200, 200
    designs = store.query("SELECT * FROM shadow_designs ORDER BY created_at")
    assert (designs["method"] == "ploo_improved").all() and (designs["n_models"] == 12).all()
    sampled = store.query("SELECT sample_id, mem_sampled FROM scores").set_index("sample_id")["mem_sampled"]
    for design in designs.itertuples():
        members = store.query("SELECT bits FROM memberships WHERE design_id = ? ORDER BY model_index",
                              [design.design_id])["bits"].tolist()
        membership = unpack_rows([bytes(b) for b in members], n_train)
        points = store.query("SELECT sample_id, candidate FROM design_points WHERE design_id = ? ORDER BY point",
                             [design.design_id])
        candidate = points["candidate"].to_numpy()
        assert membership[:, ~candidate].all()                       # every non-candidate in every shard
        assert set(membership[:, candidate].sum(axis=0)) == {6}      # r = 0.5 of 12, exactly
        kinds = set(sampled[points.loc[candidate, "sample_id"]])
        # Phase 1 shards the ApB shortlist and the random audit sample; phase 2 the extended bands.
        assert kinds == ({"shortlist", "audit"} if design.Index == 0 else {"extension"})
    assert store.scalar("SELECT count(*) FROM shadow_models") == 12 * len(designs)
    assert store.scalar("SELECT count(*) FROM shadow_predictions") == 12 * len(designs) * (n_train + n_test)
    in_shard = store.query("SELECT p.in_shard, d.candidate FROM shadow_predictions p JOIN design_points d "
                           "USING (sample_id) JOIN shadow_models m USING (model_id) "
                           "WHERE p.split = 'train' AND d.design_id = m.design_id")
    assert in_shard.loc[~in_shard["candidate"], "in_shard"].all()
    scores = store.query("SELECT s.*, f.sample_id IS NOT NULL AS cand FROM scores s LEFT JOIN "
                         "(SELECT sample_id FROM flags WHERE kind = 'memorized_candidate') f USING (sample_id)")
    assert (scores["cand"] == (scores["mem_sampled"] == "shortlist")).all()
    scored = scores["mem_sampled"].notna()
    assert scores.loc[scored, "mem"].notna().all() and (scores.loc[scored, ["mem_n_in", "mem_n_out"]] == 6).all().all()
    non = scores[~scored]
    assert non["mem"].isna().all() and set(non["mem_note"]) == {"not a candidate (ApB above cut-off)"}
    assert ((scores["mem_low"] <= scores["mem"]) & (scores["mem"] <= scores["mem_high"]))[scored].all()
    assert scores.loc[scored, "mem_weight"].sum() == pytest.approx(n_train)  # the weights stand for every point
    assert (scores.loc[~scored, "mem_weight"] == 0).all()
    states = memorization_states(scores[scored], 0.25)
    assert (states.to_numpy() == scores.loc[scored, "mem_state"].to_numpy()).all()
    flags = store.query("SELECT f.kind, s.mem_state FROM flags f JOIN scores s USING (sample_id) "
                        "WHERE f.kind IN ('memorized', 'memorized_uncertain')")
    assert (flags["mem_state"] == flags["kind"].map({"memorized": "memorized",
                                                    "memorized_uncertain": "uncertain"})).all()
    estimate = store.query("SELECT * FROM memorization_estimates").iloc[0]
    counts = scores["mem_state"].value_counts()
    assert estimate["n_scored"] == scored.sum() and estimate["n_not_scored"] == (~scored).sum()
    assert (estimate["n_memorized"], estimate["n_uncertain"]) == (counts.get("memorized", 0),
                                                                  counts.get("uncertain", 0))
    assert estimate["n_memorized"] + estimate["n_uncertain"] + estimate["n_not_memorized"] == scored.sum()
    assert estimate["est_low"] <= estimate["est_total"] <= estimate["est_high"] <= n_train
    weighted = ((scores["mem"] >= 0.25) * scores["mem_weight"]).sum()  # the stratified estimate, point by point
    assert estimate["est_low"] >= 0 and estimate["est_total"] == pytest.approx(weighted)
    assert estimate["n_models"] == 12 * len(designs) and estimate["plan"].count("12 shadow models") == len(designs)
    bands = store.query("SELECT * FROM memorization_bands ORDER BY band")
    assert bands["n_points"].sum() == n_train and bands["est_memorized"].sum() == pytest.approx(estimate["est_total"])
    assert bands["noise_var"].sum() > 0  # 12 models leave many points near the threshold: the interval says so
    calibration = store.query("SELECT * FROM proxy_calibration")
    assert set(calibration["proxy"]) == {"apb", "el2n", "forgetting_events", "confidence", "variability"}
    jobs = store.query("SELECT status, done, total FROM jobs WHERE kind = 'ploo_improved'")
    assert len(jobs) == len(designs) and (jobs["status"] == "done").all() and (jobs["done"] == 12).all()
    # 12 models are too few to find influence among thousands of tested pairs: none is written, and the audit says why.
    assert store.scalar("SELECT count(*) FROM influence") == 0
    assert "needs at least 20" in estimate["influence_note"] and estimate["influence_tested"] == 0
    assert f"pLOO-improved: {12 * len(designs)} shadow models" in proc.stdout
    assert "estimated memorized in the whole training set" in proc.stdout
    assert proc.stderr.count("memorization phase ") == len(designs)  # each design said before it trains


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
    query = ("SELECT sample_id, mem, mem_low, mem_high, mem_n_in, mem_n_out, mem_state, mem_sampled FROM scores "
             "ORDER BY sample_id")
    a, b = Store(killed).query(query), Store(clean_db).query(query)
    assert a.equals(b)
    n = "SELECT count(*) FROM shadow_predictions p JOIN shadow_models m USING (model_id) WHERE m.design_id IN " \
        "(SELECT design_id FROM shadow_designs WHERE n_models = 14)"
    designs = Store(clean_db).scalar("SELECT count(*) FROM shadow_designs WHERE n_models = 14")
    assert Store(killed).scalar(n) == Store(clean_db).scalar(n) == 14 * 400 * designs  # nothing duplicated or lost
    estimate = "SELECT * EXCLUDE (created_at) FROM memorization_estimates"
    assert Store(killed).query(estimate).equals(Store(clean_db).query(estimate))


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
    store = Store(db)
    rows = store.query("SELECT in_shard, probs, p_label, pred FROM shadow_predictions WHERE split = 'train'")
    assert rows.loc[rows["in_shard"], "probs"].isna().all()
    out = rows[~rows["in_shard"]]
    sharded = store.scalar("SELECT sum(n_candidates) FROM shadow_designs")
    assert len(out) == 12 * sharded // 2  # half of each design's sharded points out of each of its models
    probs = np.stack(out["probs"].to_numpy())
    assert probs.shape[1] == 10 and np.allclose(probs.sum(axis=1), 1, atol=1e-2)
    assert (probs.argmax(axis=1) == out["pred"].to_numpy()).mean() > 0.9  # float16 ties aside


def test_loo_without_named_points_draws_a_mem_stratified_random_sample(audited, tmp_path):
    _, _, db, _ = audited
    copy = tmp_path / "s.duckdb"
    copy.write_bytes(db.read_bytes())
    cfg = tmp_path / "s.toml"
    cfg.write_text(CONFIG.format(models=6) + "loo_sample = 5\nloo_models = 2\n")
    proc = _cli(copy, cfg, "loo")
    assert proc.returncode == 0, proc.stderr
    store = Store(copy)
    loo = store.query("SELECT l.sample_id, s.mem FROM loo_scores l JOIN scores s USING (sample_id) ORDER BY s.mem")
    scored = store.query("SELECT mem FROM scores WHERE mem IS NOT NULL ORDER BY mem")["mem"].to_numpy()
    assert len(loo) == 5
    # One point from each fifth of the scored points' mem range (by rank): never chosen by disagreement.
    edges = [scored[len(scored) * k // 5] for k in range(5)] + [scored[-1]]
    assert all(edges[k] <= m <= edges[k + 1] for k, m in enumerate(loo["mem"]))
