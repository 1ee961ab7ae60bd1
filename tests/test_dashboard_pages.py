"""The curation pages (Streamlit AppTest): review filters and decisions, Point detail, Decisions with undo, Export,
and the Overview's flags-per-class chart and brushing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from auditor.detectors.neighbors import KnnGraph
from auditor.memorization import memorization_queries
from auditor.review import queries
from auditor.review.queries import ReviewFilter
from auditor.review.reviews import current_decisions, judge_pair, pair_judgement, record_decisions
from auditor.store.database import Store

PAGES = Path(__file__).resolve().parent.parent / "app" / "views"
MALICIOUS = "0' OR 1=1 --"


@pytest.fixture()
def db(small_db, tmp_path, monkeypatch) -> Path:
    """A private copy of the small audited database (pages write decisions), named by MEMAUDIT_DB."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    monkeypatch.setenv("MEMAUDIT_DB", str(path))
    return path


def page(name: str, **state) -> AppTest:
    """One page run with `state` put in its session first (by default a reviewer named 'tester', who signs)."""
    at = AppTest.from_file(str(PAGES / f"{name}.py"))
    for key, value in {"reviewer": "tester", **state}.items():
        at.session_state[key] = value
    return at.run(timeout=60)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.exception] + [str(e.value) for e in at.error]


def grid_ids(at: AppTest) -> list[str]:
    """Sample ids of the grid's tiles, from their pick checkboxes."""
    return [c.key.removeprefix("pick_") for c in at.checkbox if c.key and c.key.startswith("pick_")]


def tick(at: AppTest, *sample_ids: str) -> AppTest:
    """Tick the pick boxes of `sample_ids`: that reruns the decision bar alone, after which AppTest holds only the
    bar's elements (a browser keeps showing the rest of the page); then run the whole page."""
    for sample_id in sample_ids:
        at.checkbox(key=f"pick_{sample_id}").check()
    at.run(timeout=60)
    return at.run(timeout=60)


def test_review_decides_for_picked_images_in_bulk_and_undoes(db):
    at = page("review")
    assert not errors(at)
    first, second = grid_ids(at)[:2]
    at.checkbox(key=f"pick_{first}").check()
    at.checkbox(key=f"pick_{second}").check().run(timeout=60)
    at.selectbox(key="decision_action").select("remove")
    at.text_input(key="decision_note").input("blurry")
    at.button(key="decision_apply").click().run(timeout=60)
    assert not errors(at)
    decided = current_decisions(Store(db)).set_index("sample_id")
    assert set(decided.index) == {first, second} and (decided["action"] == "remove").all()
    assert (decided["note"] == "blurry").all() and decided["reviewer"].notna().all()
    assert not at.checkbox(key=f"pick_{first}").value  # picks are cleared once stored
    at.checkbox(key=f"pick_{first}").check().run(timeout=60)
    at.selectbox(key="decision_action").select("undo")
    at.button(key="decision_apply").click().run(timeout=60)
    assert set(current_decisions(Store(db))["sample_id"]) == {second}


def test_reviewer_named_in_the_sidebar_survives_page_changes_and_signs_the_decision(db):
    """Streamlit drops a keyed widget's value on the run after a page change; the name must still sign decisions."""
    at = AppTest.from_file(str(PAGES.parent / "main.py")).run(timeout=60)
    at.sidebar.text_input(key="reviewer").set_value("alice").run(timeout=60)
    at.switch_page("views/decisions.py").run(timeout=60)
    assert at.sidebar.text_input(key="reviewer").value == "alice"
    at.switch_page("views/review.py").run(timeout=60)
    assert not errors(at) and at.sidebar.text_input(key="reviewer").value == "alice"
    target = grid_ids(at)[0]
    at.checkbox(key=f"pick_{target}").check().run(timeout=60)
    at.selectbox(key="decision_action").select("keep")
    at.button(key="decision_apply").click().run(timeout=60)
    decided = current_decisions(Store(db)).set_index("sample_id")
    assert list(decided.index) == [target] and decided.loc[target, "reviewer"] == "alice"


def test_review_relabels_and_filters_by_review_state(db):
    at = page("review")
    target = grid_ids(at)[0]
    label = Store(db).scalar("SELECT label FROM samples WHERE sample_id = ?", [target])
    new = next(c for c in queries.class_labels(Store(db)) if c != label)
    at.checkbox(key=f"pick_{target}").check().run(timeout=60)
    at.selectbox(key="decision_action").select("relabel").run(timeout=60)
    at.selectbox(key="decision_label").select(new)
    at.button(key="decision_apply").click().run(timeout=60)  # reruns the queue alone: then the whole page
    at.run(timeout=60).selectbox(key="state").select("relabel").run(timeout=60)
    assert grid_ids(at) == [target]
    assert any("relabel" in m.value and new in m.value for m in at.markdown)
    at.selectbox(key="state").select("undecided").run(timeout=60)
    assert target not in grid_ids(at) and grid_ids(at)


def test_review_filters_by_split_and_score_range(db):
    store = Store(db)
    at = page("review", flag="any")
    at.selectbox(key="split").select("test").run(timeout=60)
    expected = queries.review_page(store, where=ReviewFilter(flag="any", split="test"), sort="score_desc")
    assert grid_ids(at) == expected["sample_id"].tolist()[:24]
    at = page("review")
    at.selectbox(key="range_score").select("apb").run(timeout=60)
    low, high = queries.review_score_range(store, "apb")
    slider = at.slider(key="range_apb_None")
    assert slider.value == (pytest.approx(low), pytest.approx(high))
    middle = (low + high) / 2
    slider.set_value((low, middle)).run(timeout=60)
    shown = store.query("SELECT apb FROM scores WHERE list_contains(?, sample_id)", [grid_ids(at)])["apb"]
    assert len(shown) and (shown <= middle + 1e-9).all()
    assert queries.review_count(store, where=ReviewFilter(score="apb", low=low, high=middle)) < \
        queries.review_count(store)


def test_review_queries_reject_unknown_keys_and_keep_text_as_parameters(db):
    store = Store(db)
    with pytest.raises(ValueError, match="review state"):
        queries.review_count(store, where=ReviewFilter(state=MALICIOUS))
    with pytest.raises(ValueError, match="review score"):
        queries.review_count(store, where=ReviewFilter(score=MALICIOUS))
    assert queries.review_count(store, where=ReviewFilter(split=MALICIOUS)) == 0
    assert queries.review_page(store, where=ReviewFilter(sample_ids=(MALICIOUS,))).empty


def test_a_brushed_selection_opens_in_review(db):
    ids = Store(db).query("SELECT sample_id FROM scores ORDER BY sample_id LIMIT 3")["sample_id"].tolist()
    at = page("review", selection=ids)
    assert sorted(grid_ids(at)) == ids
    at.button(key="clear_selection").click().run(timeout=60)
    assert len(grid_ids(at)) > 3


def _cut(values: pd.Series, margin: float) -> float:
    """A value between two distinct neighbouring values of `values`, at least `margin` from both (the middle gap)."""
    levels = np.unique(values.to_numpy())
    gaps = [(a + b) / 2 for a, b in zip(levels, levels[1:]) if b - a > 2 * margin]
    assert gaps, f"no gap wider than {2 * margin} in {levels}"
    return gaps[len(gaps) // 2]


def test_overview_brush_button_stores_the_points_inside_the_rectangle(db):
    store = Store(db)
    at = page("overview")
    assert not errors(at)
    assert any(c.value.startswith("Drag a rectangle") for c in at.caption)
    points = memorization_queries.mem_scatter(store)
    # a rectangle that splits the points on both axes; x is ApB plus a jitter of at most +-0.02, so its edge sits
    # in a gap between ApB values wider than that
    x_cut, mem_cut = _cut(points["apb"], 0.021), _cut(points["mem"], 0.0)
    inside = points[(points["apb"] < x_cut) & (points["mem"] > mem_cut)]
    assert 0 < len(inside) < len(points[points["apb"] < x_cut]) < len(points)
    at.session_state["mem_scatter"] = {"selection": {"brush": {"x": [x_cut, -1.0], "mem": [2.0, mem_cut]}}}
    at.run(timeout=60)
    button = at.button(key="open_brushed")
    assert button.label == f"Open the {len(inside)} brushed points in Review"
    button.click().run(timeout=60)
    assert sorted(at.session_state["selection"]) == sorted(inside["sample_id"])


def test_point_detail_shows_scores_dynamics_and_decides(db):
    store = Store(db)
    sample_id = store.scalar("SELECT sample_id FROM scores WHERE mem IS NOT NULL ORDER BY mem DESC LIMIT 1")
    at = page("point", point=sample_id)
    assert not errors(at)
    text = "\n".join(m.value.replace("\u00a0", " ") for m in at.markdown)
    sc = store.query("SELECT * FROM scores WHERE sample_id = ?", [sample_id]).iloc[0]
    label = store.scalar("SELECT label FROM samples WHERE sample_id = ?", [sample_id])
    pred, p_pred = store.query(
        "SELECT p.pred_label, p.p_pred FROM predictions p JOIN runs r USING (run_id) WHERE p.sample_id = ? AND "
        "p.run_id IN (SELECT input_run_id FROM run_inputs WHERE run_id = ?) ORDER BY r.seed LIMIT 1",
        [sample_id, sc["run_id"]]).iloc[0]
    assert f"label **{label}** (train), predicted **{pred}** (p {p_pred:.2f})" in text
    assert f"ApB **{sc['apb']:.3f}** (mean over {sc['n_seeds']} seeds, run `{sc['run_id']}`" in text
    assert f"mem **{sc['mem']:.2f}** [{sc['mem_low']:.2f}, {sc['mem_high']:.2f}] — {sc['mem_n_in']} models in, " \
           f"{sc['mem_n_out']} out" in text and f"run `{sc['mem_run_id']}`" in text
    for name, key, fmt in (("first learned for good at epoch", "first_learned", ".1f"),
                           ("forgetting events", "forgetting_events", ".1f"), ("confidence", "confidence", ".2f"),
                           ("variability", "variability", ".2f"), ("EL2N", "el2n", ".3f")):
        assert f"{name} {format(sc[key], fmt)}" in text, name
    assert "**Training dynamics**" in text
    steps = store.scalar("SELECT count(*) FROM dynamics WHERE sample_id = ? AND run_id IN "
                         "(SELECT input_run_id FROM run_inputs WHERE run_id = ?)", [sample_id, sc["run_id"]])
    assert steps > 0 and '"p_label"' in at.get("vega_lite_chart")[0].proto.spec
    neighbors = store.query("SELECT n.neighbor_id, n.similarity, s.label FROM neighbors n JOIN samples s ON "
                            "s.sample_id = n.neighbor_id WHERE n.sample_id = ? ORDER BY n.rank LIMIT 10", [sample_id])
    captions = [c for image in at.image for c in image.captions]
    assert len(neighbors) and all(n in captions for n in neighbors["neighbor_id"]), (captions, neighbors)
    for other, similarity in zip(neighbors["label"], neighbors["similarity"]):  # another label in red
        assert (f":small[{other} · {similarity:.2f}]" if other == label else
                f":small[:red[**{other}**] · {similarity:.2f}]") in text, (other, similarity)
    assert at.query_params["id"] in (sample_id, [sample_id])
    at.text_input(key="point_note").input("rare style")
    at.button(key="point_keep").click().run(timeout=60)
    decided = current_decisions(store, [sample_id])
    assert decided["action"].tolist() == ["keep"] and decided["note"].tolist() == ["rare style"]
    at.button(key="point_undo").click().run(timeout=60)
    assert current_decisions(store, [sample_id]).empty


def test_point_detail_says_not_found_for_an_unknown_id(db):
    at = page("point", point=MALICIOUS)
    assert any("not found" in e for e in errors(at))


def test_decisions_page_lists_counts_and_undoes_a_selection(db):
    store = Store(db)
    ids = store.query("SELECT sample_id FROM samples ORDER BY sample_id LIMIT 3")["sample_id"].tolist()
    record_decisions(store, ids, "remove", reviewer="ana")
    at = page("decisions")
    assert not errors(at)
    assert at.metric[0].value == "3"
    at.session_state["decisions_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run(timeout=60)
    newest = current_decisions(store)["sample_id"].iloc[0]
    at.button(key="decisions_undo").click().run(timeout=60)
    assert newest not in set(current_decisions(store)["sample_id"]) and len(current_decisions(store)) == 2


def test_export_page_previews_and_writes_into_the_exports_folder(db):
    store = Store(db)
    removed = store.scalar("SELECT sample_id FROM samples ORDER BY sample_id LIMIT 1")
    record_decisions(store, [removed], "remove", reviewer="ana")
    at = page("export")
    assert not errors(at)
    assert [m.value for m in at.metric][1] == "1"
    at.text_input(key="export_name").input("../escape").run(timeout=60)
    assert any("plain file name" in e for e in errors(at))
    at.text_input(key="export_name").input("round1").run(timeout=60)
    at.button(key="export_write").click().run(timeout=60)
    out = db.parent / "exports" / "round1.csv"
    frame = pd.read_csv(out, dtype=str)
    assert removed not in set(frame["sample_id"]) and len(frame) == store.scalar("SELECT count(*) FROM samples") - 1
    assert (db.parent / "exports" / "round1.changelog.csv").is_file()
    assert not (db.parent / "escape.csv").exists()


def test_every_page_is_in_the_navigation():
    main = (PAGES.parent / "main.py").read_text()
    names = sorted(p.stem for p in PAGES.glob("*.py"))
    assert {"overview", "review", "point", "decisions", "export", "jobs", "experiments"} <= set(names)
    assert [name for name in names if f'st.Page("views/{name}.py"' not in main] == []
    assert not (PAGES.parent / "pages").exists()  # streamlit would serve its files outside the navigation


def _plant_duplicate(store: Store) -> tuple[str, str]:
    """Two training images made a detected near-duplicate pair with its flags (as the detectors write them)."""
    a_id, b_id = store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id LIMIT 2")[
        "sample_id"].tolist()
    store.execute("INSERT INTO pairs VALUES (?, ?, 'near_duplicate', 0.97, false, 'e', 'detect-t')", [a_id, b_id])
    for me, twin in ((a_id, b_id), (b_id, a_id)):
        detail = json.dumps({"twin": twin, "pair_kind": "near_duplicate", "similarity": 0.97, "exact": False,
                             "conflicting": False, "twins": 1, "conflicting_twins": 0, "threshold": 0.95,
                             "threshold_method": "nn_fdr"})
        store.execute("INSERT INTO flags VALUES (?, 'duplicate', 0.97, ?, 'detect-t')", [me, detail])
    return a_id, b_id


def test_judging_a_pair_stores_the_latest_answer_and_calibrates_the_threshold(db):
    from pipelines.detectors_stage import _threshold

    store = Store(db)
    a_id, b_id = _plant_duplicate(store)
    store.execute("INSERT INTO pairs VALUES (?, ?, 'near_duplicate', 0.90, false, 'e', 'detect-t')", [b_id, a_id])
    judge_pair(store, b_id, a_id, True, reviewer="ana")  # either order names the pair
    assert pair_judgement(store, a_id, b_id) is True
    judge_pair(store, a_id, b_id, False, reviewer="ana")
    assert pair_judgement(store, b_id, a_id) is False  # the latest answer counts
    with pytest.raises(ValueError, match="no detected pair"):
        judge_pair(store, a_id, MALICIOUS, True, reviewer="ana")
    judge_pair(store, a_id, b_id, True, reviewer="ana")
    sims = np.sort(np.random.default_rng(0).uniform(0.5, 0.9, (50, 10)), axis=1)[:, ::-1]
    graph = KnnGraph(indices=np.tile(np.arange(10), (50, 1)), similarities=sims, exact=True, index_kind="Flat")
    assert _threshold(store, 0.0, graph, "near_duplicate", 0.05).method == "nn_fdr"  # one answer only
    store.execute("UPDATE pair_judgements SET a_id = ?, b_id = ? WHERE decided_at = (SELECT min(decided_at) "
                  "FROM pair_judgements)", [b_id, a_id])  # the first answer (yes) now judges the 0.90 pair ...
    store.execute("UPDATE pair_judgements SET is_duplicate = false WHERE a_id = ? AND b_id = ?", [b_id, a_id])
    threshold = _threshold(store, 0.0, graph, "near_duplicate", 0.05)  # ... as not a duplicate
    assert threshold.method == "labels_f1" and 0.90 < threshold.value <= 0.97


def test_point_detail_confirms_or_rejects_a_twin(db):
    store = Store(db)
    a_id, b_id = _plant_duplicate(store)
    at = page("point", point=a_id)
    assert not errors(at)
    assert any("Your judgement: not yet given" in c.value for c in at.caption)
    at.button(key=f"judge_duplicate_{a_id}_{b_id}_no").click().run(timeout=60)
    assert pair_judgement(store, a_id, b_id) is False
    assert any("not a duplicate" in c.value for c in at.caption)


def test_pick_page_then_clear_picks_exactly_the_tiles(db):
    at = page("review")
    ids = grid_ids(at)
    at.button(key="bulk_pick_page").click().run(timeout=60)
    assert all(at.checkbox(key=f"pick_{i}").value for i in ids)
    assert any(m.value == f"**{len(ids)} picked**" for m in at.markdown)
    at.button(key="bulk_pick_clear").click().run(timeout=60)
    assert not errors(at) and not any(at.checkbox(key=f"pick_{i}").value for i in ids)
    assert any(m.value == "**0 picked**" for m in at.markdown)
