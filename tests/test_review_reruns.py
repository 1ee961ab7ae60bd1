"""What each Review click reruns (issue 15's click times; Streamlit AppTest on a private copy of the small pipeline-
written database): a tick reruns the decision bar alone, a stored decision the queue, and no render shows a decision
older than the database's; the grid's rows carry the file_hash their images are checked against."""

from __future__ import annotations

from auditor.review import queries
from auditor.review.reviews import current_decisions, record_decisions
from auditor.store.database import Store
from test_dashboard_pages import db, errors, grid_ids, page  # noqa: F401 (fixture)


def test_a_tick_reruns_the_decision_bar_alone(db):
    at = page("review", page_size=12)
    assert at.image and [s for s in at.selectbox if s.key == "flag"]
    focused = at.selectbox(key="evidence").value
    first, second = [i for i in grid_ids(at) if i != focused][:2]
    at.checkbox(key=f"pick_{first}").check().run(timeout=60)
    assert not errors(at)
    assert any(m.value == "**1 picked**" for m in at.markdown)
    # AppTest holds the elements of the last run only: no tile, image or filter was drawn again
    assert not grid_ids(at) and not at.image and not [s for s in at.selectbox if s.key == "flag"]
    at.run(timeout=60)
    assert at.checkbox(key=f"pick_{first}").value and not at.checkbox(key=f"pick_{second}").value
    assert not at.button(key="decision_apply").disabled
    # the focused image's tick reruns the queue: its panel's pick button follows
    at.checkbox(key=f"pick_{focused}").check().run(timeout=60)
    assert grid_ids(at) and at.button(key="focus_pick").label == "Unpick (p)"
    assert any(m.value == "**2 picked**" for m in at.markdown)


def test_a_decision_shows_on_the_next_render_wherever_it_was_made(db):
    store = Store(db)
    at = page("review", page_size=12)
    first, second = grid_ids(at)[:2]
    at.checkbox(key=f"pick_{first}").check().run(timeout=60)
    at.selectbox(key="decision_action").select("remove").run(timeout=60)
    at.button(key="decision_apply").click().run(timeout=60)  # reruns the queue: its tiles show the decision
    assert not errors(at) and grid_ids(at)[:2] == [first, second]
    assert any(":red-badge[remove]" in m.value for m in at.markdown)
    assert any(m.value == "**0 picked**" for m in at.markdown)
    record_decisions(store, [second], "keep", reviewer="someone else")  # another reviewer, another process
    at.number_input(key="page").set_value(2).run(timeout=60)
    at.number_input(key="page").set_value(1).run(timeout=60)
    assert any(":green-badge[keep]" in m.value for m in at.markdown)
    assert set(current_decisions(store)["sample_id"]) == {first, second}
    # a bar rerun warns about a pick that is decided on this page, as its tile shows it
    at.checkbox(key=f"pick_{second}").check().run(timeout=60)
    assert any("1 keep by someone else" in w.value for w in at.warning)


def test_review_rows_carry_the_recorded_file_hash(db):
    store = Store(db)
    rows = queries.review_page(store, limit=12)
    recorded = store.query("SELECT sample_id, file_hash FROM samples").set_index("sample_id")["file_hash"]
    assert rows["file_hash"].notna().all()
    assert rows.set_index("sample_id")["file_hash"].equals(recorded[rows["sample_id"]])
