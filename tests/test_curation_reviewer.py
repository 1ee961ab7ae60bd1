"""The reviewer's name (issue 15): never a silent default such as the OS user; kept in the URL, so a reload or a
new tab signs with the same name; Decisions filters by reviewer and shows where reviewers disagree (Streamlit
AppTest on a private copy of the small database)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from auditor.review.reviews import current_decisions, record_decisions
from auditor.store.database import Store
from test_dashboard_pages import PAGES, db, errors, grid_ids, page  # noqa: F401 (fixture)


def test_nothing_is_recorded_before_the_reviewer_names_themselves(db):
    at = AppTest.from_file(str(PAGES / "review.py")).run(timeout=60)
    assert at.sidebar.text_input(key="reviewer").value == ""
    assert any("Type your name" in w.value for w in at.sidebar.warning)
    target = grid_ids(at)[0]
    at.checkbox(key=f"pick_{target}").check().run(timeout=60)
    at.button(key="decision_apply").click().run(timeout=60)
    assert current_decisions(Store(db)).empty
    assert any("type your name in the sidebar" in e.value for e in at.error)
    assert at.checkbox(key=f"pick_{target}").value  # the pick is kept for when the name is typed
    at.sidebar.text_input(key="reviewer").input("ana").run(timeout=60)
    assert at.query_params["reviewer"] == "ana"
    at.button(key="decision_apply").click().run(timeout=60)
    assert current_decisions(Store(db)).set_index("sample_id").loc[target, "reviewer"] == "ana"


def test_a_reload_keeps_the_reviewer_from_the_url(db):
    at = AppTest.from_file(str(PAGES.parent / "main.py"))
    at.query_params["reviewer"] = "ben"
    at.run(timeout=60)
    at.switch_page("views/review.py").run(timeout=60)
    assert not errors(at) and at.sidebar.text_input(key="reviewer").value == "ben"
    assert at.query_params["reviewer"] == "ben"  # Review's own view in the URL keeps the name


def test_decisions_filter_by_reviewer_and_show_their_conflicts(db):
    store = Store(db)
    one, two = store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id LIMIT 2")[
        "sample_id"]
    record_decisions(store, [one, two], "keep", reviewer="ana")
    record_decisions(store, [one], "remove", reviewer="ben")  # ben overrides ana on `one`: a conflict, not a loss
    at = page("decisions")
    assert not errors(at)
    assert any("Reviewers disagree on 1 image" in w.value for w in at.warning)
    conflict, table = (d.value for d in at.dataframe[:2])  # the conflicts, then the decisions
    assert sorted(zip(conflict["sample_id"], conflict["reviewer"], conflict["action"], conflict["counts"])) == [
        (one, "ana", "keep", False), (one, "ben", "remove", True)]
    assert table["image"].str.startswith("data:image/png;base64,").all()
    assert table.set_index("sample_id")["detail"].to_dict() == {i: f"point?id={i}&reviewer=tester" for i in (one, two)}
    at.selectbox(key="decisions_reviewer").select("ana").run(timeout=60)
    assert at.dataframe[1].value["sample_id"].tolist() == [two]
