"""What each Review click reads (issue 15's click times; on a private copy of the small pipeline-written database):
the grid's rows carry the file_hash their images are checked against, so no tile looks it up by path."""

from __future__ import annotations

from auditor import queries
from auditor.store import Store
from test_dashboard_pages import db  # noqa: F401 (fixture)


def test_review_rows_carry_the_recorded_file_hash(db):
    store = Store(db)
    rows = queries.review_page(store, limit=12)
    recorded = store.query("SELECT sample_id, file_hash FROM samples").set_index("sample_id")["file_hash"]
    assert rows["file_hash"].notna().all()
    assert rows.set_index("sample_id")["file_hash"].equals(recorded[rows["sample_id"]])
