"""Review's dense grid and focused image (issue 15, Streamlit AppTest on a private copy of the small database): the
thumbnail size, one-key decisions on the focused image that move down the queue across pages, and accepting each
picked image's own suggested label in bulk."""

from __future__ import annotations

import json

import pandas as pd

from auditor.review.reviews import current_decisions
from auditor.store.database import Store
from test_dashboard_pages import db, errors, grid_ids, page, tick  # noqa: F401 (fixture)


def test_the_small_thumbnails_show_a_dense_grid_of_images_only(db):
    at = page("review", page_size=48)
    assert at.button(key=f"detail_{grid_ids(at)[0]}")  # medium tiles: facts and buttons
    at.button_group(key="thumbs").set_value("small").run(timeout=60)
    ids = grid_ids(at)
    assert not errors(at) and len(ids) == 48
    assert not [b for b in at.button if b.key and b.key.startswith("detail_")]
    assert at.query_params["thumbs"] == "small"


def test_the_focused_image_is_decided_by_its_own_button_and_the_focus_moves_on(db):
    at = page("review", page_size=12)
    ids = grid_ids(at)
    at.selectbox(key="evidence").select(ids[-1]).run(timeout=60)
    at.button(key="focus_remove").click().run(timeout=60)
    decided = current_decisions(Store(db)).set_index("sample_id")
    assert list(decided.index) == [ids[-1]] and decided.loc[ids[-1], "action"] == "remove"
    assert decided.loc[ids[-1], "reviewer"] == "tester" and pd.isna(decided.loc[ids[-1], "note"])
    # the last image of page 1 decided, the focus goes to the first image of page 2
    assert at.number_input(key="page").value == 2 and at.selectbox(key="evidence").value == grid_ids(at)[0]
    at.button(key="focus_prev").click().run(timeout=60)
    assert at.number_input(key="page").value == 1 and at.selectbox(key="evidence").value == ids[-1]
    at.button(key="focus_undo").click().run(timeout=60)
    assert current_decisions(Store(db)).empty
    assert any("**k** keep" in c.value for c in at.caption)  # the keys are listed beside the buttons


def _suggested(store: Store, sample_id: str) -> str | None:
    """What the mislabeled flag suggests for `sample_id`, else the model's prediction where it differs."""
    details = store.query("SELECT detail FROM flags WHERE sample_id = ? AND kind = 'mislabeled'", [sample_id])
    for detail in details["detail"]:
        if json.loads(detail).get("suggested") is not None:
            return str(json.loads(detail)["suggested"])
    row = store.query("SELECT s.label, p.pred_label FROM samples s JOIN predictions p USING (sample_id) "
                      "WHERE sample_id = ? ORDER BY p.run_id DESC LIMIT 1", [sample_id]).iloc[0]
    return None if row["pred_label"] == row["label"] else str(row["pred_label"])


def test_accept_suggested_relabels_each_picked_image_to_its_own_suggestion(db):
    store = Store(db)
    at = page("review", page_size=48)
    ids = grid_ids(at)
    wanted = {i: s for i in ids if (s := _suggested(store, i)) is not None}
    assert len(set(wanted.values())) >= 2, "the page needs images with different suggestions"
    picks = sorted(wanted, key=wanted.get)[:1] + sorted(wanted, key=wanted.get)[-1:]
    without = next(i for i in ids if i not in wanted)
    tick(at, *picks, without)
    at.button(key="bulk_accept").click().run(timeout=60)
    assert not errors(at)
    decided = current_decisions(store).set_index("sample_id")
    assert sorted(decided.index) == sorted(picks) and (decided["action"] == "relabel").all()
    assert {i: decided.loc[i, "new_label"] for i in picks} == {i: wanted[i] for i in picks}
    assert at.checkbox(key=f"pick_{without}").value  # no suggestion: left picked, not relabeled
    assert any("1 left picked" in s.value for s in at.success)
