"""Marginal-utility experiments: Welch statistics, class-matched controls, the paper's buckets, arms from flags and
decisions, the CLI end to end, and resume after SIGKILL giving the same models as an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auditor.config import load_config
from auditor.experiments.experiment_queries import experiment_results
from auditor.experiments.marginal_utility import (
    arm_summary, difference, leakage_bucket, memorized_remainder, memorized_share, model_control, model_converged,
    random_control, schedule_check, subpopulation_bucket, versus_control)
from auditor.review.reviews import record_decisions
from auditor.memorization.shadow_engine import train_shadow_block
from auditor.store.database import Store
from conftest import kill_when_progress, memaudit
from pipelines.arrays import load_training_arrays
from pipelines.cli import main, status_text
from pipelines.experiment_stage import ExperimentSpec, resolve_arms, run_experiment
from pipelines.job_plan import JobPlan

CONFIG = """
[data]
limit_per_class = 24
[train]
epochs = 3
width = 8
[memorization]
block = 3
[convergence]
window = 1
"""
MODELS = 3
ARMS = ["full", "full:2x_schedule", "memorized", "memorized:random", "ids:picked", "ids:picked:random"]


def test_welch_difference_matches_hand_computation():
    full, arm = [0.80, 0.82, 0.84, 0.86], [0.78, 0.79, 0.80]
    s = arm_summary(full)
    assert (s.mean, s.std, s.n) == pytest.approx((0.83, (0.002 / 3) ** 0.5, 4))
    d = difference(full, arm)
    # se^2 = (0.002/3)/4 + 0.0001/3 = 0.0002; df = se^4 / ((0.002/12)^2/3 + (0.0001/3)^2/2) = 216/53;
    # t_0.975(216/53) = 2.75628; half width = 2.75628 * sqrt(0.0002) = 0.038980; t = 0.04/sqrt(0.0002) = 2.8284.
    assert d.drop == pytest.approx(0.04)
    assert d.df == pytest.approx(216 / 53)
    assert (d.low, d.high) == pytest.approx((0.04 - 0.0389798, 0.04 + 0.0389798), abs=1e-6)
    assert d.p_value == pytest.approx(0.0464072, abs=1e-6)
    assert np.isnan(difference([0.8], arm).low)                      # one model: no interval
    same = difference([0.8, 0.8], [0.7, 0.7])                        # no variance: a point interval, no p-value
    assert (same.low, same.high) == pytest.approx((0.1, 0.1)) and np.isnan(same.p_value)
    assert model_converged([0.5, 0.7, 0.7, np.nan], window=1, tolerance=0.01)
    assert not model_converged([0.5, 0.6, 0.7], window=1, tolerance=0.01)


def test_random_control_is_class_matched_and_disjoint():
    ids = np.array([f"s{i:03d}" for i in range(60)])
    labels = np.arange(60) % 3
    arm = ["s000", "s003", "s006", "s001", "s005"]                  # class 0 x3, class 1 x1, class 2 x1
    control = random_control(arm, ids, labels, np.random.default_rng(0))
    assert len(control) == len(arm) and not set(control) & set(arm)
    by_class = pd.Series(labels, index=ids)
    assert sorted(by_class[control]) == sorted(by_class[arm])
    again = random_control(arm, ids, labels, np.random.default_rng(0))
    assert list(control) == list(again)                               # seeded: deterministic
    with pytest.raises(ValueError, match="too few"):
        random_control(list(ids[labels == 0]), ids, labels, np.random.default_rng(0))


def test_model_control_is_a_fresh_class_matched_draw_per_model():
    ids = np.array([f"s{i:03d}" for i in range(60)])
    labels = np.arange(60) % 3
    arm = ["s000", "s003", "s001", "s005"]
    draws = [model_control(arm, ids, labels, 7, "picked", m) for m in range(4)]
    by_class = pd.Series(labels, index=ids)
    for draw in draws:
        assert len(draw) == 4 and not set(draw) & set(arm) and sorted(by_class[draw]) == sorted(by_class[arm])
    assert len({tuple(d) for d in draws}) == 4                      # every model removes its own points
    assert list(model_control(arm, ids, labels, 7, "picked", 2)) == list(draws[2])   # seeded per model
    assert list(model_control(arm, ids, labels, 8, "picked", 2)) != list(draws[2])


def test_null_random_arm_vs_its_per_model_controls_finds_nothing():
    """Removing one random set of points is compared with per-model random controls. Which points are removed
    changes accuracy (each point has a value), so a control drawn once per arm, or Welch's test that ignores the
    spread between draws, calls random sets different; `versus_control` on per-model draws keeps the 5% level."""
    rng = np.random.default_rng(0)
    value = rng.normal(0, 1, 500)
    models, k, runs = 20, 25, 300

    def accs(removed: np.ndarray) -> np.ndarray:
        return 0.9 - 0.002 * value[removed].sum(1) + rng.normal(0, 0.01, len(removed))

    def draws(n: int) -> np.ndarray:
        return np.stack([rng.choice(500, k, replace=False) for _ in range(n)])

    hits = {"per_model": 0, "one_draw": 0, "welch": 0, "costly": 0}
    for _ in range(runs):
        arm = accs(np.repeat(draws(1), models, axis=0))
        control = accs(draws(models))
        hits["per_model"] += versus_control(control, arm).p_value < 0.05
        hits["one_draw"] += versus_control(accs(np.repeat(draws(1), models, axis=0)), arm).p_value < 0.05
        hits["welch"] += difference(control, arm).p_value < 0.05
        costly = versus_control(control, arm - 0.08)                 # truly costs 8 points (8 draw sds) more
        hits["costly"] += costly.p_value < 0.05 and costly.low > 0
    rate = {key: n / runs for key, n in hits.items()}
    assert rate["per_model"] <= 0.06
    assert rate["one_draw"] > 0.2 and rate["welch"] > 0.2          # the designs this replaces: false findings
    assert rate["costly"] > 0.8                                      # power: 0.91 at seed 0
    assert np.isnan(versus_control([0.9], arm).low)


def test_schedule_check_and_memorized_share():
    full, same, better = [0.90, 0.91, 0.92, 0.91], [0.905, 0.915, 0.91, 0.92], [0.95, 0.96, 0.955, 0.96]
    flat = schedule_check(full, same, tolerance=0.005)
    assert flat.low < 0 < flat.high and flat.trained_to_max
    gained = schedule_check(full, better, tolerance=0.005)
    assert gained.gain == pytest.approx(0.9563 - 0.91, abs=1e-3) and gained.low > 0 and not gained.trained_to_max
    assert schedule_check(full, better, tolerance=0.1).trained_to_max   # significant but within tolerance
    assert schedule_check([0.9], better, tolerance=0.005).trained_to_max is None
    assert memorized_share(50, 200.0, 100.0, 400.0) == pytest.approx((0.25, 0.125, 0.5))
    assert memorized_share(50, 40.0, 30.0, 60.0) == pytest.approx((1.0, 50 / 60, 1.0))
    assert np.isnan(memorized_share(50, None, None, None)).all()


def test_paper_buckets_from_frames():
    memorized = ["m1", "m2", "m3", "m4", "m5"]
    pairs = pd.DataFrame({"a_id": ["m1", "m2", "x9"], "b_id": ["t1", "m9", "t3"],
                          "kind": ["leak", "exact_duplicate", "pixel_leak"]})
    influence = pd.DataFrame({"train_id": ["m3", "m4", "m5", "m2", "m2"], "test_id": ["t5", "t5", "t6", "t7", "t6"],
                              "score": [0.5, 0.3, 0.4, -0.5, -0.2]})
    clusters = pd.DataFrame({"sample_id": ["m1", "m2", "m5"], "cluster_size": [9, 9, 2]})
    leakage = leakage_bucket(memorized, pairs)
    subpop = subpopulation_bucket(memorized, influence, clusters, small_cluster_size=3)
    assert list(leakage) == ["m1"]                                    # train-train duplicates are no leak
    assert list(subpop) == ["m3", "m4", "m5"]                         # share t5; m5 alone in a tiny cluster
    assert list(memorized_remainder(memorized, leakage, subpop)) == ["m2"]


def test_test_curve_leaves_training_unchanged():
    cfg = load_config(overrides={"data": {"image_size": 12}, "train": {"epochs": 3, "width": 4, "batch_size": 16}})
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = (rng.integers(0, 120, (64, 1, 12, 12)) + 60 * y[:, None, None, None]).astype(np.uint8)
    membership = np.ones((2, 64), bool)
    membership[1, :8] = False
    plain = train_shadow_block(x, y, x[:32], y[:32], 2, membership, [1, 2], cfg)
    curved = train_shadow_block(x, y, x[:32], y[:32], 2, membership, [1, 2], cfg, test_curve=True)
    assert plain.epoch_test_acc is None and curved.epoch_test_acc.shape == (2, 3)
    np.testing.assert_array_equal(plain.test_pred, curved.test_pred)
    np.testing.assert_allclose(curved.epoch_test_acc[:, -1], curved.test_acc, atol=1e-6)


def test_epoch_points_give_a_smaller_shard_the_full_sets_sgd_steps(monkeypatch):
    import auditor.memorization.shadow_engine as engine

    optimizers = []

    class Counting(engine._Optimizer):
        def __init__(self, tc):
            super().__init__(tc)
            optimizers.append(self)

    monkeypatch.setattr(engine, "_Optimizer", Counting)
    cfg = load_config(overrides={"data": {"image_size": 12}, "train": {"epochs": 3, "width": 4, "batch_size": 16}})
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = rng.integers(0, 255, (64, 1, 12, 12)).astype(np.uint8)
    quarter = np.zeros((1, 64), bool)
    quarter[0, :16] = True                                            # 16 points: 1 step per epoch on its own
    train_shadow_block(x, y, x[:8], y[:8], 2, quarter, [1], cfg)
    train_shadow_block(x, y, x[:8], y[:8], 2, quarter, [1], cfg, epoch_points=64)
    assert [o.steps for o in optimizers] == [3, 3 * 64 // 16]        # the 64-point set's 4 steps per epoch


def _copy(db: Path, to: Path) -> Path:
    for suffix in ("", ".wal"):
        if Path(str(db) + suffix).exists():
            shutil.copyfile(str(db) + suffix, str(to) + suffix)
    return to


def test_arms_from_flags_and_decisions(small_db, tmp_path):
    store = Store(_copy(small_db, tmp_path / "a.duckdb"))
    train = store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id")["sample_id"]
    test_id = store.scalar("SELECT sample_id FROM samples WHERE split = 'test' LIMIT 1")
    record_decisions(store, list(train[:4]) + [test_id], "remove", reviewer="t")
    record_decisions(store, [train[1]], "keep", reviewer="t")        # the later decision counts
    label = store.scalar("SELECT min(label) FROM classes")
    record_decisions(store, [train[9]], "relabel", reviewer="t", new_label=label)
    cfg = load_config(profile="quick", overrides={"data": {"limit_per_class": 24}})
    data = load_training_arrays(store, cfg)
    arms = {a.name: a for a in resolve_arms(store, ExperimentSpec(("decisions", "flag:long_tail")), data)}
    assert list(arms) == ["full", "full:2x_schedule", "decisions", "decisions:random", "flag:long_tail",
                          "flag:long_tail:random"]
    assert arms["decisions"].ids == (train[0], train[2], train[3])   # training points decided 'remove' only
    long_tail = store.query("SELECT sample_id FROM flags WHERE kind = 'long_tail'")["sample_id"]
    assert set(arms["flag:long_tail"].ids) == set(long_tail) and arms["full"].ids == ()
    assert arms["full:2x_schedule"].ids == () and arms["full:2x_schedule"].schedule == 2
    for name in ("decisions", "flag:long_tail"):                      # drawn per model when trained
        assert arms[f"{name}:random"].control_of == name and arms[f"{name}:random"].ids == ()
    with pytest.raises(ValueError, match="every requested arm is empty"):
        resolve_arms(store, ExperimentSpec(("flag:no_such_kind",)), data)


def _listed(value) -> list | None:
    """A list cell as a plain list (None stays None)."""
    return list(value) if isinstance(value, (list, np.ndarray)) else None


def _cli(db: Path, cfg: Path, arms: str, *extra: str, background: bool = False):
    return memaudit("experiment", "--db", db, "--profile", "quick", "--config", cfg, "--arms", arms, "--models",
                    MODELS, *extra, background=background)


@pytest.fixture(scope="module")
def experiment(small_db, tmp_path_factory):
    """One uninterrupted experiment through the CLI (memorized + hand-picked ids, with re-audit)."""
    root = tmp_path_factory.mktemp("experiment")
    cfg = root / "c.toml"
    cfg.write_text(CONFIG)
    store = Store(small_db)
    picked = store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id LIMIT 6")
    ids = root / "picked.txt"
    ids.write_text("# hand-picked\n" + "\n".join(picked["sample_id"]) + "\n")
    db = _copy(small_db, root / "clean.duckdb")
    proc = _cli(db, cfg, f"memorized,ids:{ids}", "--reaudit")
    assert proc.returncode == 0, proc.stderr
    return root, cfg, ids, db, proc


def test_cli_experiment_end_to_end(experiment, capsys):
    _, _, _, db, proc = experiment
    store = Store(db)
    experiment_id = store.scalar("SELECT experiment_id FROM experiments")
    assert store.scalar("SELECT status FROM experiments") == "done"
    arms = store.query("SELECT * FROM experiment_arms ORDER BY position")
    assert list(arms["arm"]) == ARMS
    memorized = store.scalar("SELECT count(*) FROM flags WHERE kind = 'memorized'")
    assert memorized > 0 and list(arms["n_removed"]) == [0, 0, memorized, memorized, 6, 6]
    assert list(arms["epochs"]) == [3, 6, 3, 3, 3, 3]
    assert list(arms["per_model_control"]) == [False, False, False, True, False, True]
    models = store.query("SELECT * FROM experiment_models ORDER BY arm, model_index")
    assert len(models) == 6 * MODELS and not models.duplicated(["arm", "model_index"]).any()
    longer = models["arm"] == "full:2x_schedule"
    assert models["test_acc"].between(0, 1).all() and (models["epochs_run"] == np.where(longer, 6, 3)).all()
    assert models["test_curve"].map(len).eq(np.where(longer, 6, 3)).all()
    # every arm trains the full set's SGD steps per epoch, whatever it removed
    steps = models.groupby("arm")["sgd_steps"].unique().map(list)
    assert steps["full:2x_schedule"] == [2 * steps["full"][0]] and len(steps["full"]) == 1
    assert all(steps[a] == steps["full"] for a in ARMS if a != "full:2x_schedule")
    # every model of a control removes its own class-matched draw, disjoint from its arm's points
    labels = store.query("SELECT sample_id, label_index FROM samples").set_index("sample_id")["label_index"]
    own = arms.set_index("arm")["removed_ids"].map(list)
    for arm in ("memorized", "ids:picked"):
        draws = models.loc[models["arm"] == f"{arm}:random", "removed_ids"].map(list).to_list()
        assert len({tuple(d) for d in draws}) == MODELS and not own[f"{arm}:random"]
        assert all(sorted(labels[d]) == sorted(labels[own[arm]]) and not set(d) & set(own[arm]) for d in draws)
    assert models.loc[~models["arm"].str.endswith(":random"), "removed_ids"].isna().all()
    head = store.query("SELECT * FROM experiments").iloc[0]
    assert head["check_low"] <= head["check_gain"] <= head["check_high"] and head["trained_to_max"] is not None
    estimate = store.query("SELECT est_total, est_low, est_high FROM memorization_estimates").iloc[0]
    assert (head["est_memorized"], head["est_memorized_low"], head["est_memorized_high"]) == tuple(estimate)
    mem_arm = arms.set_index("arm").loc["memorized"]
    assert mem_arm["n_memorized_removed"] == memorized
    assert mem_arm["mem_share"] == pytest.approx(min(1, memorized / estimate["est_total"]))
    assert mem_arm["mem_share_low"] <= mem_arm["mem_share"] <= mem_arm["mem_share_high"] <= 1
    results = experiment_results(store, experiment_id)
    assert list(results["arm"]) == list(arms["arm"]) and (results["models"] == MODELS).all()
    mem = results.set_index("arm").loc["memorized"]
    full = models[models["arm"] == "full"]["test_acc"].mean()
    ours = models[models["arm"] == "memorized"]["test_acc"].mean()
    assert mem["drop"] == pytest.approx(full - ours) and mem["drop_low"] < mem["drop"] < mem["drop_high"]
    # null: six arbitrary points cost no more than a random removal of six (the interval covers 0)
    picked = results.set_index("arm").loc["ids:picked"]
    assert picked["vs_control_low"] <= 0 <= picked["vs_control_high"]
    reaudit = store.query("SELECT DISTINCT arm FROM experiment_reaudit")
    assert set(reaudit["arm"]) == {"memorized", "memorized:random", "ids:picked", "ids:picked:random"}
    assert "drop vs full" in proc.stdout and "ids:picked:random" in proc.stdout and "re-audit" in proc.stdout
    assert "convergence check: a 2x longer schedule" in proc.stdout
    assert f"memorized {memorized} = " in proc.stdout                 # share of the estimated memorized total
    run = store.query("SELECT status, config_json FROM runs WHERE run_id = ?", [experiment_id]).iloc[0]
    assert run["status"] == "done" and '"epochs": 3' in run["config_json"]
    assert main(["experiment", "--db", str(db), "--show", experiment_id]) == 0
    assert capsys.readouterr().out == proc.stdout
    assert f"experiments: {experiment_id} done ({6 * MODELS} models)" in status_text(store)
    assert main(["experiment", "--db", str(db), "--show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experiment 'nope'" in err
    assert main(["experiment", "--db", str(db), "--arms", "memorized,bogus"]) == 2
    assert "unknown arm 'bogus'" in capsys.readouterr().err


def test_sigkill_then_resume_trains_only_missing_models(experiment, small_db):
    root, cfg, ids, clean, _ = experiment
    killed = _copy(small_db, root / "killed.duckdb")
    proc = _cli(killed, cfg, f"memorized,ids:{ids}", background=True)
    kill_when_progress(proc, rb"experiment models:[^\r\n]*\| ([3-9]|1[0-5])/18")  # one block of 3 per arm at a time
    store = Store(killed)
    partial = store.scalar("SELECT count(*) FROM experiment_models")
    assert 0 < partial < 18
    cfg_obj = load_config(cfg, "quick")
    report = run_experiment(store, ExperimentSpec(("memorized", f"ids:{ids}"), MODELS, cfg_obj.seed), cfg_obj)
    assert (report.facts["trained"], report.facts["reused"]) == (18 - partial, partial)
    columns = ("arm, model_index, seed, test_acc, subpop_acc, leaked_acc, rest_acc, converged, sgd_steps, "
               "removed_ids, test_correct")
    query = f"SELECT {columns} FROM experiment_models ORDER BY arm, model_index"
    resumed, uninterrupted = store.query(query), Store(clean).query(query)
    assert len(resumed) == 18 and not resumed.duplicated(["arm", "model_index"]).any()
    lists = ["removed_ids", "test_correct"]
    pd.testing.assert_frame_equal(resumed.drop(columns=lists), uninterrupted.drop(columns=lists))
    for column in lists:
        assert resumed[column].map(_listed).equals(uninterrupted[column].map(_listed))
    assert store.scalar("SELECT experiment_id FROM experiments") == Store(clean).scalar("SELECT experiment_id FROM "
                                                                                          "experiments")


def test_experiments_page_shows_results_and_starts_in_the_background(experiment, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import pipelines.launcher as launcher

    _, _, _, db, _ = experiment
    started = []
    monkeypatch.setattr(launcher, "launch_experiment", lambda *a, **k: started.append((a, k)) or "experiment-x")
    monkeypatch.setenv("MEMAUDIT_DB", str(db))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "views" / "experiments.py"))
    at.run(timeout=120)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["arm"]) == ARMS
    assert len(at.get("vega_lite_chart")) >= 1
    notes = [m.value for m in [*at.success, *at.warning, *at.info]]
    assert any(n.startswith("convergence check: a 2x longer schedule") for n in notes)
    spread = at.dataframe[1].value                                  # per-model controls, one row per control
    assert list(spread["arm"]) == ["memorized:random", "ids:picked:random"] and (spread["models"] == MODELS).all()
    assert (spread["new_ids_vs_model_0"] > 0).all()
    every = at.dataframe[2].value
    assert len(every) == 2 * MODELS and every["n_removed"].tolist()[-MODELS:] == [6] * MODELS
    at.multiselect(key="experiment_arms").set_value(["memorized", "decisions"])
    at.number_input(key="experiment_models").set_value(4)
    at.button[0].click().run(timeout=120)
    assert not started and not [e.value for e in at.error]  # Start only shows the plan
    per_model = Store(db).scalar("SELECT median(seconds) FROM experiment_models WHERE arm <> 'full:2x_schedule'")
    shown = next(m.value for m in at.markdown if m.value.startswith("Models planned ahead"))
    models = int(shown.split("**")[1])
    assert models % 4 == 0 and JobPlan((), models, (models + 4) * per_model).estimate() in shown  # 2x arm: twice
    at.button(key="experiment_pending-confirm").click().run(timeout=120)
    assert started and started[0][0][1] == ["memorized", "decisions"] and started[0][1]["models"] == 4
    assert any("experiment-x" in s.value for s in at.success)


def test_launch_experiment_refuses_bad_arms_before_starting(experiment):
    import pipelines.launcher as launcher

    _, _, _, db, _ = experiment
    with pytest.raises(ValueError, match="unknown arm"):
        launcher.launch_experiment(db, ["bogus"], models=3)
    with pytest.raises(ValueError, match="at least 2 models"):
        launcher.launch_experiment(db, ["memorized"], models=1)
