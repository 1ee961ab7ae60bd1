"""Review decisions: an append-only log with validation, bulk writes, undo, idempotent retries and old files."""

from __future__ import annotations

import shutil

import pytest

from auditor.review import reviews
from auditor.review.reviews import current_decisions, decision_history, record_decisions, undo
from auditor.store.database import Store


@pytest.fixture
def store(small_db, tmp_path) -> Store:
    """A private copy of the small audited database, so decisions never leak into other tests."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    return Store(path)


def _train_ids(store: Store, n: int) -> list[str]:
    return store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id LIMIT ?",
                       [n])["sample_id"].tolist()


def _rows(store: Store) -> int:
    return int(store.scalar("SELECT count(*) FROM reviews"))


def test_record_bulk_selection_and_read_back(store):
    ids = _train_ids(store, 5)
    decision_ids = record_decisions(store, ids, "remove", reviewer="ana", note="blurry")
    assert len(set(decision_ids)) == 5
    current = current_decisions(store)
    assert sorted(current["sample_id"]) == ids
    assert set(current["action"]) == {"remove"} and set(current["note"]) == {"blurry"}
    assert set(current["reviewer"]) == {"ana"} and set(current["split"]) == {"train"}
    labels = store.query("SELECT sample_id, label FROM samples").set_index("sample_id")["label"]
    assert (current.set_index("sample_id")["label"] == labels[current["sample_id"]]).all()
    assert current["decided_at"].nunique() == 1  # one statement for the whole selection
    counts = reviews.decision_counts(store).set_index("action")["samples"].to_dict()
    assert counts == {"keep": 0, "remove": 5, "relabel": 0}


def test_relabel_to_a_known_class(store):
    [sample] = _train_ids(store, 1)
    record_decisions(store, [sample], "relabel", reviewer="ana", new_label="7")
    assert current_decisions(store, [sample]).loc[0, ["action", "new_label"]].tolist() == ["relabel", "7"]


@pytest.mark.parametrize(("action", "new_label", "reviewer", "message"), [
    ("delete", None, "ana", "unknown review action"),
    ("relabel", None, "ana", "needs the new label"),
    ("relabel", "not-a-class", "ana", "'not-a-class' is not a class"),
    ("keep", "3", "ana", "only relabel decisions take a new label"),
    ("keep", None, "  ", "needs a reviewer"),
])
def test_invalid_decisions_are_rejected_and_store_nothing(store, action, new_label, reviewer, message):
    with pytest.raises(ValueError, match=message):
        record_decisions(store, _train_ids(store, 2), action, reviewer=reviewer, new_label=new_label)
    assert current_decisions(store).empty


def test_unknown_sample_ids_are_named_and_nothing_is_stored(store):
    known = _train_ids(store, 2)
    hostile = "x'); DROP TABLE samples; --"
    with pytest.raises(ValueError, match=r"unknown sample id\(s\): no-such-id, x'\); DROP"):
        record_decisions(store, [*known, "no-such-id", hostile], "remove", reviewer="ana")
    assert _rows(store) == 0
    assert int(store.scalar("SELECT count(*) FROM samples")) > 0


def test_undo_restores_the_previous_decision(store):
    a, b = _train_ids(store, 2)
    record_decisions(store, [a], "keep", reviewer="ana")
    record_decisions(store, [a, b], "remove", reviewer="bo", note="off-topic")
    assert undo(store, [a, b, "never-decided"], reviewer="bo") == 2
    current = current_decisions(store).set_index("sample_id")
    assert current.loc[a, "action"] == "keep" and b not in current.index
    assert undo(store, [a], reviewer="ana") == 1
    assert undo(store, [a], reviewer="ana") == 0
    assert current_decisions(store).empty
    history = decision_history(store, a)
    assert history["action"].tolist() == ["keep", "remove", "undo", "undo"]
    assert history["undoes"].tolist()[2:] == history["decision_id"].tolist()[1::-1]


def test_pages_are_cut_newest_first(store):
    ids = _train_ids(store, 3)
    for sample in ids:
        record_decisions(store, [sample], "keep", reviewer="ana")
    newest_first = ids[::-1]
    assert current_decisions(store, limit=2)["sample_id"].tolist() == newest_first[:2]
    assert current_decisions(store, limit=2, offset=2)["sample_id"].tolist() == newest_first[2:]
    assert current_decisions(store, ids[:2])["sample_id"].tolist() == newest_first[1:]


def test_retry_with_the_same_decision_ids_stores_each_once(store):
    ids = _train_ids(store, 3)
    first = record_decisions(store, ids, "remove", reviewer="ana", decision_ids=["d1", "d2", "d3"])
    again = record_decisions(store, ids, "remove", reviewer="ana", decision_ids=["d1", "d2", "d3"])
    assert first == again == ["d1", "d2", "d3"]
    assert _rows(store) == 3
    with pytest.raises(ValueError, match="one distinct id per sample"):
        record_decisions(store, ids, "keep", reviewer="ana", decision_ids=["d4", "d4", "d5"])


def test_file_written_before_reviews_existed(store):
    with store.connect() as con:
        con.execute("DROP VIEW current_reviews; DROP TABLE reviews")
    [sample] = _train_ids(store, 1)
    assert current_decisions(store).empty and decision_history(store, sample).empty
    assert reviews.decision_counts(store)["samples"].tolist() == [0, 0, 0]
    assert undo(store, [sample], reviewer="ana") == 0
    record_decisions(store, [sample], "remove", reviewer="ana")
    assert current_decisions(store)["sample_id"].tolist() == [sample]


def test_conflicting_decisions_of_two_reviewers_are_listed(store):
    one, two, three = _train_ids(store, 3)
    record_decisions(store, [one, two, three], "keep", reviewer="ana")
    record_decisions(store, [one], "remove", reviewer="ben")
    record_decisions(store, [two], "keep", reviewer="ben")  # agrees: no conflict
    record_decisions(store, [three], "remove", reviewer="ben")
    undo(store, [three], reviewer="ben")  # ben's remove undone: ana's keep stands alone
    found = reviews.conflicts(store)
    assert sorted(zip(found["sample_id"], found["reviewer"], found["action"], found["counts"])) == [
        (one, "ana", "keep", False), (one, "ben", "remove", True)]
    assert reviews.reviewers(store) == ["ana", "ben"]
    assert current_decisions(store, reviewer="ana")["sample_id"].tolist() == [three]
    assert reviews.decision_counts(store, "ben").set_index("action")["samples"].to_dict() == {
        "keep": 1, "remove": 1, "relabel": 0}
