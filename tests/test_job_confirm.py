"""A long job starts only once confirmed: Start on the Jobs and Experiments pages shows the steps, the models the
stages will plan and a time estimate from this database's measured throughput; only Confirm launches (AppTest, on a
copy of the database the real pipeline wrote)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard_pages import PAGES, db  # noqa: F401 (fixture: a copy of small_db)

from auditor import queries
from auditor.config import load_config
from auditor.store import Store
from pipelines import launcher
from pipelines.arrays import load_training_arrays
from pipelines.job_plan import NO_ESTIMATE
from pipelines.memorization_stage import PHASE_1, _selection, plan_design


@pytest.fixture()
def launches(monkeypatch) -> list[tuple]:
    """Every launch the pages ask for, recorded instead of started."""
    calls: list[tuple] = []
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: calls.append(("run", a, k)) or "pipeline-x")
    monkeypatch.setattr(launcher, "launch_experiment", lambda *a, **k: calls.append(("experiment", a, k))
                        or "experiment-x")
    return calls


def planned(at: AppTest) -> tuple[int, str]:
    """(models planned ahead, time estimate) as the confirmation shows them."""
    line = next(m.value for m in at.markdown if m.value.startswith("Models planned ahead"))
    found = re.match(r"Models planned ahead: \*\*([\d,]+)\*\* · time: \*\*(.+?)\*\*", line)
    assert found, line
    return int(found[1].replace(",", "")), found[2]


def stage_plan(store: Store, profile: str) -> int:
    """The model count the memorization stage itself plans for its first phase, from the decoded training arrays."""
    cfg = load_config(profile=profile)
    data = load_training_arrays(store, cfg)
    shortlist, _, audit = _selection(store, data, cfg)
    _, plan = plan_design(store, len(data.train_ids), np.union1d(shortlist, audit), cfg, cfg.seed, PHASE_1)
    return plan.n_models


def test_jobs_start_shows_the_plan_and_only_confirm_launches(db, launches):
    store = Store(db)
    at = AppTest.from_file(str(PAGES / "jobs.py")).run(timeout=60)
    at.multiselect[0].set_value(["memorization", "detectors"])
    at.text_input[1].input("quick")
    at.button[0].click().run(timeout=120)  # Start
    assert not at.exception and not at.error and launches == []
    models, time = planned(at)
    assert models == stage_plan(store, "quick") and models > 0
    seconds = store.scalar("SELECT median(seconds) FROM shadow_models")
    assert time == f"~{models * seconds:.0f} s" if models * seconds < 90 else time.endswith(" min")
    steps = [m.value for m in at.markdown if m.value.startswith("- ")][0]
    assert f"{models} shadow models" in steps and "detectors" in steps
    at.button(key="jobs_pending-confirm").click().run(timeout=60)
    assert not at.exception and [c[0] for c in launches] == ["run"]
    assert launches[0][1][1] == ["memorization", "detectors"] and launches[0][2]["profile"] == "quick"
    assert any("pipeline-x" in s.value for s in at.success)
    assert not [m for m in at.markdown if m.value.startswith("Models planned ahead")]  # the plan is gone
    at.run(timeout=60)
    assert len(launches) == 1  # a rerun starts nothing more


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
    assert planned(at) == (12, NO_ESTIMATE)  # no experiment ran on this database
    at.button(key="experiment_pending-confirm").click().run(timeout=60)
    assert [c[0] for c in launches] == ["experiment"] and launches[0][1][1] == [f"flag:{kind}"]
    assert launches[0][2]["models"] == 3 and any("experiment-x" in s.value for s in at.success)
