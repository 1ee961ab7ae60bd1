"""The curation loop's bugs of issue 15 (Streamlit AppTest), each on a database the real pipeline wrote: the small
audited database, or one audited from planted edited copies (a shifted, dimmed duplicate and leak that only the
pixel matcher pairs)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from auditor.review import queries
from auditor.review.export import plan_export
from auditor.review.reviews import current_decisions, record_decisions
from auditor.store.database import Store
from test_dashboard_pages import PAGES, errors, page, tick


@pytest.fixture(scope="module")
def edited_db(tmp_path_factory, default_manifest) -> Path:
    """24 train and 24 test images per class of the default dataset plus an edited copy (shifted by two pixels,
    dimmed) of one training image in train and of another in test, audited by the pipeline."""
    from auditor.config import load_config
    from auditor.detectors.pixel_match import shifted
    from conftest import SMALL_OVERRIDES
    from pipelines.runner import run_pipeline

    root = tmp_path_factory.mktemp("edited")
    base = pd.read_csv(default_manifest, dtype=str)
    base["path"] = [str((default_manifest.parent / p).resolve()) for p in base["path"]]
    train = base[base["split"] == "train"].groupby("label").head(24)
    rows = [train, base[base["split"] == "test"].groupby("label").head(24)]
    for name, source, split in (("edited_dup", train.iloc[3], "train"), ("edited_leak", train.iloc[50], "test")):
        pixels = np.asarray(Image.open(source["path"]).convert("L")).astype(np.float32)
        Image.fromarray(np.clip(shifted(pixels[None], 2, -1)[0] * 0.8 + 20, 0, 255).astype(np.uint8)).save(
            root / f"{name}.png")
        rows.append(pd.DataFrame([{**source, "sample_id": name, "split": split, "path": str(root / f"{name}.png")}]))
    manifest = root / "manifest.csv"
    pd.concat(rows, ignore_index=True)[["sample_id", "path", "label", "split"]].to_csv(manifest, index=False)
    path = root / "audit.duckdb"
    data = {**SMALL_OVERRIDES["data"], "allow_outside_root": True}  # absolute paths into the default dataset
    run_pipeline(Store(path), str(manifest), load_config(profile="quick", overrides={**SMALL_OVERRIDES, "data": data}))
    return path


def private(source: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of an audited database (pages write decisions), named by MEMAUDIT_DB."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(source, path)
    monkeypatch.setenv("MEMAUDIT_DB", str(path))
    return path


@pytest.fixture()
def db(small_db, tmp_path, monkeypatch) -> Path:
    return private(small_db, tmp_path, monkeypatch)


@pytest.fixture()
def edited(edited_db, tmp_path, monkeypatch) -> Path:
    return private(edited_db, tmp_path, monkeypatch)


def texts(at: AppTest) -> str:
    """Every markdown, caption and info text of the page, one per line."""
    return "\n".join(e.value for kind in (at.markdown, at.caption, at.info, at.warning) for e in kind)


# --- 1. the twins behind pixel-matched pairs -------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "sample_id"), [("duplicate", "edited_dup"), ("leaked", "edited_leak")])
def test_review_shows_the_twin_of_an_edited_copy(edited, kind, sample_id):
    store = Store(edited)
    pair_kind, twin = store.query("SELECT kind, CASE WHEN a_id = ? THEN b_id ELSE a_id END AS twin FROM pairs "
                                  "WHERE ? IN (a_id, b_id)", [sample_id, sample_id]).iloc[0]
    assert pair_kind.startswith("pixel_")  # only the pixel matcher paired the edited copy
    at = page("review", flag=kind, evidence=sample_id)
    assert not errors(at) and at.selectbox(key="evidence").value == sample_id
    assert "pairs behind this flag are gone" not in texts(at)
    assert f"twin {twin} (" in [c for image in at.image for c in image.captions][-1]
    assert at.button(key=f"judge_{kind}_{sample_id}_{twin}_yes")


def grid_ids(at: AppTest) -> list[str]:
    """Sample ids of the grid's tiles, from their pick checkboxes."""
    return [c.key.removeprefix("pick_") for c in at.checkbox if c.key and c.key.startswith("pick_")]


def decide_in_review(at: AppTest, ids: list[str], action: str, note: str | None = None) -> None:
    """Pick `ids` (all on the page shown), choose `action` (and a note when given) and press Apply."""
    for sample_id in ids:
        at.checkbox(key=f"pick_{sample_id}").check().run(timeout=60)
    at.selectbox(key="decision_action").select(action).run(timeout=60)
    if note is not None:
        at.text_input(key="decision_note").input(note).run(timeout=60)
    at.button(key="decision_apply").click().run(timeout=60)


# --- 2. picks on another page --------------------------------------------------------------------------------

def test_picks_survive_paging_and_apply_decides_them_all(db):
    at = page("review", flag="long_tail", page_size=12)
    first_page = grid_ids(at)[:2]
    tick(at, *first_page)
    at.number_input(key="page").set_value(2).run(timeout=60)
    assert not set(first_page) & set(grid_ids(at))
    assert any(m.value == "**2 picked**" for m in at.markdown)
    assert "2 picked across pages, 2 not on this one" in texts(at)
    at.selectbox(key="decision_action").select("remove").run(timeout=60)
    at.button(key="decision_apply").click().run(timeout=60)
    assert not errors(at)
    decided = current_decisions(Store(db))
    assert sorted(decided["sample_id"]) == sorted(first_page) and set(decided["action"]) == {"remove"}
    assert any(m.value == "**0 picked**" for m in at.markdown)
    at.number_input(key="page").set_value(1).run(timeout=60)
    assert not any(at.checkbox(key=f"pick_{i}").value for i in first_page)


# --- 3. the note of one decision never signs the next -------------------------------------------------------

def test_a_note_signs_only_its_own_decision(db):
    store = Store(db)
    at = page("review")
    first, second = grid_ids(at)[:2]
    decide_in_review(at, [first], "keep", "looks fine")
    assert at.text_input(key="decision_note").value == ""
    decide_in_review(at, [second], "remove")
    notes = current_decisions(store).set_index("sample_id")["note"]
    assert notes[first] == "looks fine" and pd.isna(notes[second])
    reasons = plan_export(store)[1].set_index("sample_id")["reason"]
    assert "looks fine" not in reasons[second]


def test_a_note_on_point_detail_signs_only_its_own_decision(db):
    store = Store(db)
    first, second = store.query("SELECT sample_id FROM scores ORDER BY sample_id LIMIT 2")["sample_id"]
    at = page("point", point=first)
    at.text_input(key="point_note").input("rare style").run(timeout=60)
    at.button(key="point_keep").click().run(timeout=60)
    at.query_params["id"] = second
    at.text_input(key="point_search").input(second).run(timeout=60)
    assert not errors(at) and at.text_input(key="point_note").value == ""
    at.button(key="point_remove").click().run(timeout=60)
    notes = current_decisions(store).set_index("sample_id")["note"]
    assert notes[first] == "rare style" and pd.isna(notes[second])


# --- 5. a bulk decision never silently replaces an earlier one ----------------------------------------------

def test_bulk_decisions_leave_decided_images_unless_told_to_replace(db):
    store = Store(db)
    at = page("review")
    kept = grid_ids(at)[0]
    decide_in_review(at, [kept], "keep")
    at.button(key="bulk_pick_page").click().run(timeout=60)
    at.selectbox(key="decision_action").select("remove").run(timeout=60)
    assert any("1 of the 24 picked images already have a decision (1 keep by tester)" in w.value for w in at.warning)
    at.button(key="decision_apply").click().run(timeout=60)
    decided = current_decisions(store).set_index("sample_id")["action"]
    assert decided[kept] == "keep" and (decided.drop(kept) == "remove").all() and len(decided) == 24
    assert any("1 already decided left as they were" in s.value for s in at.success)
    assert at.checkbox(key=f"pick_{kept}").value  # still picked, to be replaced on purpose
    at.checkbox(key="decision_replace").check().run(timeout=60)
    at.button(key="decision_apply").click().run(timeout=60)
    assert current_decisions(store, [kept])["action"].tolist() == ["remove"]


# --- 7. relabel offers the suggested label, never a silent class 0 ----------------------------------------------

def relabel_box(at: AppTest):
    return next(box for box in at.selectbox if box.label == "Relabel to")


def test_point_detail_relabels_to_the_suggested_label(db):
    store = Store(db)
    classes = queries.class_labels(store)
    flagged = store.query("SELECT f.sample_id, s.label, f.detail->>'$.suggested' AS suggested FROM flags f "
                          "JOIN samples s USING (sample_id) WHERE f.kind = 'mislabeled' ORDER BY f.sample_id")
    first_other = flagged["label"].map(lambda label: next(c for c in classes if c != label))
    sample_id, _, suggested = flagged[flagged["suggested"] != first_other].iloc[0]
    at = page("point", point=sample_id)
    assert not errors(at) and relabel_box(at).value == suggested
    at.button(key="point_relabel").click().run(timeout=60)
    assert current_decisions(store, [sample_id])["new_label"].tolist() == [suggested]


def test_point_detail_without_a_suggestion_asks_for_the_label(db):
    store = Store(db)
    rows = (queries.sample_detail(store, i) for i in store.query("SELECT sample_id FROM scores ORDER BY sample_id")
            ["sample_id"])
    row = next(r for r in rows if r["pred_label"] == r["label"] and not r["flags"])
    at = page("point", point=row["sample_id"])
    assert relabel_box(at).value is None and at.button(key="point_relabel").disabled
    chosen = next(c for c in reversed(queries.class_labels(store)) if c != row["label"])
    relabel_box(at).select(chosen).run(timeout=60)
    at.button(key="point_relabel").click().run(timeout=60)
    assert current_decisions(store, [row["sample_id"]])["new_label"].tolist() == [chosen]


# --- 11. the mislabeled evidence says which signal suggested the label -------------------------------------------

def test_mislabeled_evidence_names_the_signal_behind_the_suggestion(db):
    flagged = Store(db).query("SELECT sample_id, detail->>'$.suggested' AS suggested, detail->>'$.knn_label' AS voted "
                              "FROM flags WHERE kind = 'mislabeled' AND detail->>'$.suggested' <> "
                              "detail->>'$.knn_label' ORDER BY sample_id")
    sample_id, suggested, voted = flagged.iloc[0]
    at = page("review", flag="mislabeled", evidence=sample_id)
    assert not errors(at) and at.selectbox(key="evidence").value == sample_id
    evidence = next(m.value for m in at.markdown if m.value.startswith("given "))
    assert f"suggested :orange[**{suggested}**] by the model: confident learning" in evidence
    assert f"the model suggests **{suggested}**, the neighbours vote **{voted}**" in evidence


# --- 8. the export page keeps its downloads, asks before overwriting, writes readable files --------------------

def test_export_keeps_its_downloads_and_asks_before_overwriting(db):
    record_decisions(Store(db), [Store(db).scalar("SELECT min(sample_id) FROM samples")], "remove", reviewer="ana")
    at = page("export")
    at.text_input(key="export_name").input("round1").run(timeout=60)
    at.button(key="export_write").click().run(timeout=60)
    out = db.parent / "exports" / "round1.csv"
    assert not errors(at) and len(at.get("download_button")) == 2
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    at.run(timeout=60)  # any rerun, as a download button's click was
    assert len(at.get("download_button")) == 2
    out.write_text("sample_id,path,label,split\n")  # a file someone keeps under that name
    at.button(key="export_write").click().run(timeout=60)
    assert any("round1.csv exists already" in w.value for w in at.warning)
    assert out.read_text() == "sample_id,path,label,split\n"
    assert any("already exists" in e for e in errors(at))
    at.checkbox(key="export_overwrite").check().run(timeout=60)
    at.button(key="export_write").click().run(timeout=60)
    assert not errors(at) and len(pd.read_csv(out)) == Store(db).scalar("SELECT count(*) FROM samples") - 1
    assert not at.checkbox(key="export_overwrite").value


# --- 10. wording -------------------------------------------------------------------------------------------------

def test_wording_of_point_detail_review_and_overview(db):
    store = Store(db)
    at = page("point", point="nope_123")
    assert "Sample **nope\\_123** not found in this audit database." in errors(at)  # shown as nope_123
    sample_id = store.scalar("SELECT min(sample_id) FROM scores WHERE first_learned IS NOT NULL")
    at = page("point", point=sample_id)
    first_learned = store.scalar("SELECT first_learned FROM scores WHERE sample_id = ?", [sample_id])
    assert f"first learned for good at epoch {first_learned:.1f}" in texts(at)
    at.button(key="point_keep").click().run(timeout=60)
    assert [e.label for e in at.expander] == ["History (1 entry)"]
    at = page("review")
    splits = set(store.query("SELECT DISTINCT split FROM samples")["split"])
    assert set(at.selectbox(key="split").options) == {"All splits", *splits} and "val" not in splits
    at = page("overview")
    assert "Input problems" in [m.label for m in at.metric] and "Problems" not in [m.label for m in at.metric]


# --- 4. Review's view lives in the URL and survives a visit to Point detail ---------------------------------------

def test_a_review_link_opens_its_view(db):
    store = Store(db)
    where = queries.ReviewFilter(flag="long_tail")
    second_page = queries.review_page(store, sort="score_desc", limit=12, offset=12, where=where)["sample_id"]
    at = AppTest.from_file(str(PAGES / "review.py"))
    at.query_params.update(flag="long_tail", sort="score_desc", page_size="12", page="2", evidence=second_page[1])
    at.run(timeout=60)
    assert not errors(at) and grid_ids(at) == second_page.tolist()
    assert at.selectbox(key="evidence").value == second_page[1]
    at.selectbox(key="state").select("undecided").run(timeout=60)
    assert dict(at.query_params) == {"flag": "long_tail", "state": "undecided", "sort": "score_desc",
                                     "page_size": "12", "page": "1", "thumbs": "medium",
                                     "evidence": at.selectbox(key="evidence").value}


def test_review_keeps_filters_page_and_picks_across_point_detail(db):
    at = AppTest.from_file(str(PAGES.parent / "main.py")).run(timeout=60)
    at.switch_page("views/review.py").run(timeout=60)
    at.selectbox(key="flag").select("long_tail").run(timeout=60)
    at.selectbox(key="page_size").select(12).run(timeout=60)
    at.number_input(key="page").set_value(2).run(timeout=60)
    shown = grid_ids(at)
    tick(at, shown[0])
    at.button(key=f"detail_{shown[1]}").click().run(timeout=60)
    assert at.text_input(key="point_search").value == shown[1]
    at.switch_page("views/review.py").run(timeout=60)
    assert not errors(at) and at.selectbox(key="flag").value == "long_tail" and at.number_input(key="page").value == 2
    assert grid_ids(at) == shown and at.checkbox(key=f"pick_{shown[0]}").value
