"""A long job starts only once confirmed: Start on the Jobs and Experiments pages shows the steps, the models the
stages will plan (pLOO-improved's phase 2 at its largest) and a time estimate from this database's measured
throughput; only Confirm launches (AppTest, on a copy of the database the real pipeline wrote)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard_pages import PAGES, db  # noqa: F401 (fixture: a copy of small_db)

from auditor.review import queries
from auditor.config import load_config
from auditor.store.database import Store
from pipelines import launcher
from pipelines.arrays import load_training_arrays
from pipelines.job_plan import NO_ESTIMATE
from pipelines.memorization_stage import PHASE_1, _extension, _selection, plan_design, plans_ahead


@pytest.fixture()
def launches(monkeypatch) -> list[tuple]:
    """Every launch the pages ask for, recorded instead of started."""
    calls: list[tuple] = []
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: calls.append(("run", a, k)) or "pipeline-x")
    monkeypatch.setattr(launcher, "launch_experiment", lambda *a, **k: calls.append(("experiment", a, k))
                        or "experiment-x")
    return calls


def planned(at: AppTest) -> tuple[int, int, str]:
    """(models planned ahead, up to how many more a later phase may train, time estimate) as the confirmation shows."""
    line = next(m.value for m in at.markdown if m.value.startswith("Models planned ahead"))
    found = re.match(r"Models planned ahead: \*\*([\d,]+)\*\*(?: \+ up to \*\*([\d,]+)\*\* if a later phase runs "
                     r"\(above\))? · time: \*\*(.+?)\*\*", line)
    assert found, line
    return int(found[1].replace(",", "")), int((found[2] or "0").replace(",", "")), found[3]


def stage_plans(store: Store, profile: str) -> tuple[int, int, int]:
    """(phase 1 models, phase 2 models and points at their largest) as the memorization stage itself plans them from
    the decoded training arrays: phase 2 after a phase 1 that found every audited point memorized."""
    cfg = load_config(profile=profile)
    data = load_training_arrays(store, cfg)
    shortlist, bands, audit = _selection(store, data, cfg)
    _, first = plan_design(store, len(data.train_ids), np.union1d(shortlist, audit), cfg, cfg.seed, PHASE_1)
    _, most = _extension(bands, audit, pd.DataFrame({"index": audit, "mem": 1.0}), cfg)
    _, second = plan_design(store, len(data.train_ids), most, cfg, cfg.seed + 1, "phase 2")
    return first.n_models, second.n_models, len(most)


def test_jobs_start_shows_the_plan_and_only_confirm_launches(db, launches):
    store = Store(db)
    at = AppTest.from_file(str(PAGES / "jobs.py")).run(timeout=60)
    at.multiselect[0].set_value(["memorization", "detectors"])
    at.text_input[1].input("quick")
    at.button[0].click().run(timeout=120)  # Start
    assert not at.exception and not at.error and launches == []
    models, later, time = planned(at)
    assert (models, later) == stage_plans(store, "quick")[:2] and models > 0 and later > 0
    total = (models + later) * store.scalar("SELECT median(seconds) FROM shadow_models")
    assert time == f"up to ~{total:.0f} s" if total < 90 else time.startswith("up to ~") and time.endswith(" min")
    steps = [m.value for m in at.markdown if m.value.startswith("- ")][0]
    assert f"{models} shadow models" in steps and "detectors" in steps
    assert f"then up to {later} shadow models more: phase 2 runs only if phase 1's audit finds" in steps
    at.button(key="jobs_pending-confirm").click().run(timeout=60)
    assert not at.exception and [c[0] for c in launches] == ["run"]
    assert launches[0][1][1] == ["memorization", "detectors"] and launches[0][2]["profile"] == "quick"
    assert any("pipeline-x" in s.value for s in at.success)
    assert not [m for m in at.markdown if m.value.startswith("Models planned ahead")]  # the plan is gone
    at.run(timeout=60)
    assert len(launches) == 1  # a rerun starts nothing more


def test_phase_2_bound_holds_the_extensions_phase_1_can_call_for(db):
    """The bound shown ahead is the stage's phase 2 after an all-memorized audit; an audit finding nothing gives no
    phase 2, random audits and the phase 2 the real pipeline ran on this database stay within the bound."""
    store, cfg = Store(db), load_config(profile="quick")
    _, bound = plans_ahead(store, cfg)
    assert (bound.n_models, bound.n_sharded) == stage_plans(store, "quick")[1:]
    data = load_training_arrays(store, cfg)
    _, bands, audit = _selection(store, data, cfg)
    assert len(_extension(bands, audit, pd.DataFrame({"index": audit, "mem": 0.0}), cfg)[1]) == 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, more = _extension(bands, audit, pd.DataFrame({"index": audit, "mem": rng.random(len(audit))}), cfg)
        assert len(more) <= bound.n_sharded
    real = store.query("SELECT n_models, n_candidates FROM shadow_designs WHERE method = 'ploo_improved' "
                       "AND shard_seed = ?", [cfg.seed + 1])  # phase 2 is seeded seed + 1
    assert len(real) == 1, "the pipeline-written database should hold a phase 2 to compare with"
    assert real["n_models"][0] <= bound.n_models and real["n_candidates"][0] <= bound.n_sharded


def test_jobs_cancel_returns_without_starting(db, launches):
    at = AppTest.from_file(str(PAGES / "jobs.py")).run(timeout=60)
    at.multiselect[0].set_value(["train"])
    at.button[0].click().run(timeout=60)
    assert [b.label for b in at.button] == ["Start", "Confirm", "Cancel"]
    at.button(key="jobs_pending-cancel").click().run(timeout=60)
    assert not at.exception and launches == [] and "jobs_pending" not in at.session_state
    assert [b.label for b in at.button] == ["Start"]


def test_experiment_start_shows_arms_times_models_and_only_confirm_launches(db, launches):
    kind = queries.flag_kinds(Store(db))[0]
    at = AppTest.from_file(str(PAGES / "experiments.py")).run(timeout=60)
    at.multiselect(key="experiment_arms").set_value([f"flag:{kind}"])
    at.number_input(key="experiment_models").set_value(3)
    at.button[0].click().run(timeout=120)
    assert not at.exception and not at.error and launches == []
    # full, its 2x-schedule twin, the flag arm and its random control: 4 arms x 3 models
    assert planned(at) == (12, 0, NO_ESTIMATE)  # no experiment ran on this database
    at.button(key="experiment_pending-confirm").click().run(timeout=60)
    assert [c[0] for c in launches] == ["experiment"] and launches[0][1][1] == [f"flag:{kind}"]
    assert launches[0][2]["models"] == 3 and any("experiment-x" in s.value for s in at.success)
