"""The natural-memorization sweep: set differences, transient memorization and the gap correlation on constructed
data, then sweeps end to end on a copy of the small audit (CLI, resume, pLOO-improved) that leave the audit alone."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from auditor.config import load_config
from auditor.store.database import Store
from auditor.memorization.estimates import memorization_scores
from auditor.memorization.sharding import ploo_design
from auditor.experiments.sweep import (SweepSpec, checkpoint_epochs, gap_correlation, memorized_count, memorized_sets_compare,
                           seed_interval, shuffled_memberships, transient)
from auditor.experiments.sweep_queries import WITHIN_RUN, memorized_sets, sweep_checkpoints, sweep_summary, sweep_transient
from pipelines import cli
from pipelines.sweep_stage import run_sweep

AUDIT_TABLES = ("scores", "flags")
# The small audit's data settings, so the sweep's mlp-w8-e3 variant is exactly the audit's own training recipe.
SMALL_CONFIG = "[data]\nlimit_per_class = 24\n"


def test_set_differences_are_real_set_differences():
    sets = {"small": {"a", "b", "c"}, "large": {"c", "d", "e"}, "none": set()}
    frame = memorized_sets_compare(sets).set_index(["a", "b"])
    assert len(frame) == 6  # every ordered pair
    row = frame.loc[("small", "large")]
    # Equal counts, yet two points memorized only by each model: a difference of counts would say 0.
    assert (row.n_a, row.n_b, row.n_both, row.only_a, row.only_b) == (3, 3, 1, 2, 2)
    assert row.jaccard == pytest.approx(1 / 5)
    assert frame.loc[("large", "small")].only_a == 2
    assert frame.loc[("none", "small")].tolist()[:5] == [0, 3, 0, 0, 3]
    assert math.isnan(memorized_sets_compare({"x": set(), "y": set()}).loc[0, "jaccard"])


def test_transient_memorization_across_training_lengths():
    frame = transient({15: {"c"}, 2: {"a", "b", "d"}, 5: {"b", "c", "d"}}).set_index("sample_id")
    assert sorted(frame.index) == ["a", "b", "d"]  # c is memorized late and kept: not transient
    assert frame.loc["a"].tolist() == [2, 5, False]
    assert frame.loc["b"].tolist() == [2, 15, False]
    assert frame.loc["d"].tolist() == [2, 15, False]
    back = transient({1: {"p"}, 2: set(), 3: {"p"}})
    assert back.iloc[0].tolist() == ["p", 1, 2, True]  # dropped, then memorized again at the end
    assert transient({}).empty and transient({3: {"x"}}).empty


def test_gap_correlation_known_values_and_degenerate_cases():
    corr = gap_correlation(pd.DataFrame({"gap": [0.1, 0.2, 0.3, 0.4], "n_memorized": [3, 5, 4, 8]}))
    assert corr.r == pytest.approx(7 / math.sqrt(70)) and corr.n == 4 and corr.reason is None
    three = gap_correlation(pd.DataFrame({"gap": [1.0, 2.0, 3.0], "n_memorized": [1, 3, 2]}))
    assert three.r == pytest.approx(0.5) and three.p == pytest.approx(2 / 3)
    two = gap_correlation(pd.DataFrame({"gap": [0.1, 0.2, None], "n_memorized": [1, 2, 3]}))
    assert two.r is None and two.n == 2 and "at least 3" in two.reason
    flat = gap_correlation(pd.DataFrame({"gap": [0.1, 0.2, 0.3], "n_memorized": [5, 5, 5]}))
    assert flat.r is None and "memorized count" in flat.reason


def _planted(n_memorized: int, n: int = 400, models: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shadow correctness where the first `n_memorized` points are right only when trained on (in: 0.95, out: 0.2)
    and every other point is right with probability 0.9 either way; plain pLOO memberships at r = 0.5."""
    rng = np.random.default_rng(seed)
    membership = ploo_design(n, models, 0.5, seed=seed).membership
    p = np.full((models, n), 0.9)
    p[:, :n_memorized] = np.where(membership[:, :n_memorized], 0.95, 0.2)
    return rng.random((models, n)) < p, membership


def test_memorized_count_finds_planted_points_and_nothing_when_memberships_are_shuffled():
    for planted in (0, 30, 80):
        correct, membership = _planted(planted)
        count = memorized_count(correct, membership, 0.25)
        assert count.low <= planted <= count.high and count.high - count.low < 20, (planted, count)
        null = shuffled_memberships(membership, seed=1)
        assert (null.sum(axis=0) == membership.sum(axis=0)).all() and not np.array_equal(null, membership)
        mem = memorization_scores(correct, null)["mem"]
        assert abs(mem.mean()) < 0.01 and abs(mem[:max(planted, 1)].mean()) < 0.06  # centred on 0, planted too
        shuffled = memorized_count(correct, null, 0.25)
        assert shuffled.count <= 2 and shuffled.low == 0, (planted, shuffled)


def test_gap_correlation_interval_follows_the_variants_and_not_the_null():
    gaps = np.array([0.01, 0.03, 0.05, 0.07, 0.09])
    planted = [memorized_count(*_planted(k, seed=k), 0.25) for k in (5, 25, 45, 65, 85)]
    frame = pd.DataFrame({"gap": gaps, "gap_low": gaps - 0.005, "gap_high": gaps + 0.005,
                          "n_memorized": [c.count for c in planted], "n_memorized_low": [c.low for c in planted],
                          "n_memorized_high": [c.high for c in planted]})
    corr = gap_correlation(frame)
    # Redrawn within their intervals, the counts' noise pulls r towards 0: the interval may sit just below r.
    assert corr.r > 0.95 and 0.5 < corr.low < corr.high <= 1 and corr.high > 0.99, corr
    assert gap_correlation(frame.assign(gap=gaps[::-1], gap_low=gaps[::-1] - 0.005,
                                        gap_high=gaps[::-1] + 0.005)).high < -0.5
    # The same variants with memberships shuffled: counts are noise, and the interval does not exclude r = 0.
    nulls = [memorized_count(c, shuffled_memberships(m, 1), 0.25)
             for c, m in (_planted(k, seed=k) for k in (5, 25, 45, 65, 85))]
    null = gap_correlation(frame.assign(n_memorized=[c.count for c in nulls], n_memorized_low=[c.low for c in nulls],
                                        n_memorized_high=[c.high for c in nulls]))
    assert null.r is None or null.low is None or null.low <= 0 <= null.high, null
    assert gap_correlation(frame.drop(columns=["gap_low"])).low is None  # no intervals, no bootstrap


def test_seed_interval_and_checkpoint_epochs():
    mean, low, high = seed_interval(np.array([0.04, 0.05, 0.06]))
    assert mean == pytest.approx(0.05) and (low, high) == pytest.approx((0.05 - 4.303 * 0.01 / math.sqrt(3),
                                                                         0.05 + 4.303 * 0.01 / math.sqrt(3)), abs=1e-4)
    assert math.isnan(seed_interval(np.array([0.1]))[1])
    assert checkpoint_epochs(15) == (4, 8, 11, 15) and checkpoint_epochs(2) == (1, 2) and checkpoint_epochs(1) == (1,)


@pytest.fixture
def audit_copy(small_db, tmp_path):
    """A private copy of the small audited database (the session one is shared by other tests)."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    return path


def _audit_state(store: Store) -> dict[str, pd.DataFrame]:
    """The audit's scores, flags and the record of the ApB run behind them."""
    state = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in AUDIT_TABLES}
    state["apb_run"] = store.query("SELECT * FROM runs WHERE run_id = (SELECT max(run_id) FROM scores)")
    return state


def _assert_same(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def test_cli_sweep_fills_tables_leaves_the_audit_alone_and_resumes(audit_copy, tmp_path, capsys):
    store = Store(audit_copy)
    before = _audit_state(store)
    config = tmp_path / "small.toml"
    config.write_text(SMALL_CONFIG)
    argv = ["sweep", "--db", str(audit_copy), "--profile", "quick", "--config", str(config), "--archs", "mlp",
            "--widths", "4,8", "--epochs", "1,3", "--apb-cutoff", "0.6"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sweep_id = store.scalar("SELECT sweep_id FROM sweeps")
    assert store.scalar("SELECT status FROM sweeps") == "done"
    assert f"sweeps: {sweep_id} done (4 variants)" in cli.status_text(store)
    summary = sweep_summary(store, sweep_id)
    assert summary["variant"].tolist() == ["mlp-w4-e1", "mlp-w4-e3", "mlp-w8-e1", "mlp-w8-e3"]
    assert np.allclose(summary["gap"], summary["train_acc"] - summary["test_acc"])
    members = store.query("SELECT * FROM sweep_members WHERE sweep_id = ?", [sweep_id])
    n_train = store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")
    assert len(members) == 4 * n_train
    # memorized = the ApB cut-off rule on each variant's own ApB, and the counts are those of the stored sets.
    assert (members["memorized"] == (members["apb"] < 0.6)).all()
    sets = memorized_sets(store, sweep_id)
    assert [len(sets[v]) for v in summary["variant"]] == summary["n_memorized"].tolist()
    assert "Pearson r" in out and "mlp-w8-e3" in out and "only_a" in out
    assert len(sweep_transient(store, sweep_id)) == sum(
        len(sets[f"mlp-w{w}-e1"] - sets[f"mlp-w{w}-e3"]) for w in (4, 8))
    _assert_same(before, _audit_state(store))  # scores, flags and the audit's ApB run record untouched
    # The w8-e3 variant is the audit's own recipe: its seed run is the audit's, reused rather than retrained.
    seed_run = store.scalar("SELECT input_run_id FROM run_inputs WHERE run_id = ?",
                            [summary.set_index("variant").loc["mlp-w8-e3", "run_id"]])
    assert seed_run in set(store.query("SELECT input_run_id FROM run_inputs r JOIN runs p USING (run_id) "
                                       "WHERE p.kind = 'apb'")["input_run_id"])

    trained = store.scalar("SELECT count(*) FROM epochs")
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert store.scalar("SELECT count(*) FROM epochs") == trained  # nothing retrained
    assert store.scalar("SELECT count(*) FROM sweeps") == 1
    assert store.scalar("SELECT message FROM jobs WHERE job_id = ?", [f"job-{sweep_id}"]) == "4 variants (4 reused)"
    pd.testing.assert_frame_equal(sweep_summary(store, sweep_id), summary)

    assert cli.main(["sweep", "--db", str(audit_copy), "--show", sweep_id]) == 0
    assert "mlp-w4-e1" in capsys.readouterr().out
    assert cli.main(["sweep", "--db", str(audit_copy), "--show", "sweep-nope"]) == 2
    assert cli.main(["sweep", "--db", str(audit_copy), "--widths", "4,x"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'sweep-nope'" in err and "--widths must be comma-separated int" in err


def test_ploo_improved_sweep_scores_candidates_with_shadow_models(audit_copy):
    store = Store(audit_copy)
    before = _audit_state(store)
    cfg = load_config(profile="quick", overrides={"memorization": {"models": 4}, "candidates": {"fraction": 0.1}})
    report = run_sweep(store, SweepSpec.grid(["mlp"], [4], [1, 2], "ploo_improved"), cfg)
    sweep_id = report.facts["sweep_id"]
    members = store.query("SELECT * FROM sweep_members WHERE sweep_id = ?", [sweep_id])
    n_train = store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")
    for _, part in members.groupby("variant"):
        scored = part[part["mem"].notna()]
        assert len(scored) == math.ceil(0.1 * n_train)  # exactly the variant's own lowest-ApB candidates
        assert scored["apb"].max() <= part.loc[part["mem"].isna(), "apb"].min()
    assert store.scalar("SELECT count(*) FROM runs WHERE kind = 'sweep_mem' AND status = 'done'") == 2
    assert not (members["memorized"] & members["mem"].isna()).any()
    assert (members.loc[members["memorized"], "mem"] >= cfg.memorization.threshold).all()
    assert store.scalar("SELECT count(DISTINCT method) FROM sweep_variants WHERE sweep_id = ?", [sweep_id]) == 1
    _assert_same(before, _audit_state(store))


def test_ploo_sweep_scores_every_point_with_intervals_checkpoints_and_the_schedule_check(audit_copy, monkeypatch):
    store = Store(audit_copy)
    before = _audit_state(store)
    cfg = load_config(profile="quick", overrides={"memorization": {"models": 6}})
    report = run_sweep(store, SweepSpec.grid(["mlp"], [4, 8], [2], "ploo"), cfg)
    sweep_id = report.facts["sweep_id"]
    n_train = store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")
    summary = sweep_summary(store, sweep_id).set_index("variant")
    assert (summary["n_seeds"] == 3).all() and (summary["n_models"] == 6).all()
    assert (summary["gap_low"] <= summary["gap"]).all() and (summary["gap"] <= summary["gap_high"]).all()
    assert summary["trained_to_max"].notna().all() and summary["check_gain"].notna().all()
    assert ((summary["n_memorized_low"] <= summary["n_memorized"])
            & (summary["n_memorized"] <= summary["n_memorized_high"])).all()
    members = store.query("SELECT * FROM sweep_members WHERE sweep_id = ?", [sweep_id])
    assert len(members) == 2 * n_train and members["mem"].notna().all() and members["apb"].isna().all()
    assert (members.loc[members["memorized"], "mem"] >= cfg.memorization.threshold).all()
    checkpoints = sweep_checkpoints(store, sweep_id)
    assert checkpoints.groupby("variant")["epoch"].agg(list).tolist() == [[1, 2], [1, 2]]
    last = checkpoints[checkpoints["epoch"] == 2].set_index("variant")["n_memorized"]
    assert (last == summary.loc[last.index, "n_memorized"]).all()  # the last checkpoint is the final model
    moved = sweep_transient(store, sweep_id)
    assert (moved["compared"] == WITHIN_RUN).all()
    sets = memorized_sets(store, sweep_id)
    ids = store.query("SELECT variant, epoch, memorized_ids FROM sweep_checkpoints WHERE sweep_id = ?", [sweep_id])
    for variant, group in ids.groupby("variant"):
        at = {e: set(i) for e, i in zip(group["epoch"], group["memorized_ids"])}
        assert at[2] == sets[variant]
        assert set(moved.loc[moved["variant"] == variant, "sample_id"]) == at[1] - at[2]
    _assert_same(before, _audit_state(store))
    assert run_sweep(store, SweepSpec.grid(["mlp"], [4, 8], [2], "ploo"), cfg).facts["reused_variants"] == 2
    # Another sweep holding one of these variants copies it rather than training it again.
    other = run_sweep(store, SweepSpec.grid(["mlp"], [8], [2], "ploo"), cfg).facts
    assert other["reused_variants"] == 1 and other["sweep_id"] != sweep_id
    copied = sweep_summary(store, other["sweep_id"]).drop(columns="sweep_id")
    pd.testing.assert_frame_equal(copied, summary.reset_index()[copied.columns].iloc[[1]].reset_index(drop=True))
    assert memorized_sets(store, other["sweep_id"])["mlp-w8-e2"] == sets["mlp-w8-e2"]
    # The Experiments page shows the sweep's checkpoints and says how transient memorization was compared.
    monkeypatch.setenv("MEMAUDIT_DB", str(audit_copy))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "views" / "experiments.py"))
    at.session_state["reviewer"], at.session_state["sweep_id"] = "tester", sweep_id
    at.run(timeout=120)
    assert not at.exception and not at.error
    text = " ".join(m.value for m in at.markdown)
    assert "Memorized count at checkpoints" in text and "needs at least 3 variants" in text
    assert moved.empty or WITHIN_RUN in text
