"""The dashboard's queries and pages (Streamlit AppTest) against the small audited database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.common import db_path
from auditor import queries
from auditor.store import Store

APP = Path(__file__).resolve().parent.parent / "app"
OVERVIEW, REVIEW = str(APP / "pages" / "overview.py"), str(APP / "pages" / "review.py")
MALICIOUS = "0' OR 1=1 --"


def run_page(page: str, monkeypatch, db: Path | None) -> AppTest:
    """Run one page with MEMAUDIT_DB pointing at `db` (unset when None)."""
    if db is None:
        monkeypatch.delenv("MEMAUDIT_DB", raising=False)
    else:
        monkeypatch.setenv("MEMAUDIT_DB", str(db))
    return AppTest.from_file(page).run(timeout=60)


@pytest.fixture()
def empty_db(tmp_path) -> Path:
    """A database with every contract table and no rows."""
    path = tmp_path / "empty.duckdb"
    Store(path).init()
    return path


@pytest.fixture()
def store(small_db) -> Store:
    return Store(small_db)


def shown_ids(at: AppTest) -> list[str]:
    """Sample ids of the images in the review grid, in display order."""
    return [caption for image in at.image for caption in image.captions]


# --- database path -----------------------------------------------------------------------------------------


def test_db_path_prefers_the_command_line_then_the_environment(monkeypatch):
    monkeypatch.setenv("MEMAUDIT_DB", "/env.duckdb")
    assert db_path(["--db", "/cli.duckdb"]) == Path("/cli.duckdb")
    assert db_path(["--db=/cli.duckdb"]) == Path("/cli.duckdb")
    assert db_path(["-q", "tests"]) == Path("/env.duckdb")
    assert db_path(["--db"]) == Path("/env.duckdb")
    monkeypatch.delenv("MEMAUDIT_DB")
    assert db_path([]) is None


# --- queries -----------------------------------------------------------------------------------------------


def test_dataset_counts_and_labels(store):
    counts = queries.dataset_counts(store)
    assert counts["n"].sum() == store.scalar("SELECT count(*) FROM samples")
    assert set(counts["split"]) == {"train", "test"}
    labels = queries.class_labels(store)
    assert labels == store.query("SELECT label FROM classes ORDER BY label_index")["label"].tolist()
    assert set(counts["label"]) == set(labels)


def test_score_run_describes_the_apb_run(store):
    run = queries.score_run(store)
    assert run["run_id"] == store.scalar("SELECT min(run_id) FROM scores")
    assert run["n_scored"] == store.scalar("SELECT count(*) FROM scores")
    assert (run["profile"], run["arch"], run["epochs"], run["seeds"]) == ("quick", "mlp", 3, 1)
    assert run["converged"] in (True, False)


def test_accuracy_curves_and_apb_histogram(store):
    curves = queries.accuracy_curves(store)
    assert set(curves["split"]) == {"train", "test"}
    assert sorted(curves["epoch"].unique()) == [1, 2, 3]
    assert curves["accuracy"].between(0, 1).all()
    histogram = queries.apb_histogram(store, bins=10)
    assert histogram["n"].sum() == store.scalar("SELECT count(*) FROM scores")
    assert histogram["start"].between(0, 0.9).all() and (histogram["end"] - histogram["start"]).round(9).eq(0.1).all()


def test_problems_are_limited(store):
    assert len(queries.problems(store, 1)) == min(1, queries.problem_count(store))
    assert list(queries.problems(store).columns)[:3] == ["source", "sample_id", "reason"]


def test_review_page_sorts_by_apb_and_paginates_in_the_database(store):
    total = queries.review_count(store)
    assert total == store.scalar("SELECT count(*) FROM scores JOIN samples USING (sample_id) WHERE split = 'train'")
    first, second = queries.review_page(store, limit=10), queries.review_page(store, limit=10, offset=10)
    assert len(first) == len(second) == 10
    assert not set(first["sample_id"]) & set(second["sample_id"])
    both = list(first["apb"]) + list(second["apb"])
    assert both == sorted(both)
    assert first["pred_label"].notna().all() and first["path"].str.len().gt(0).all()
    assert len(queries.review_page(store, limit=10, offset=total)) == 0


def test_review_filters(store):
    label = queries.class_labels(store)[3]
    page = queries.review_page(store, label=label, limit=1000)
    assert len(page) == queries.review_count(store, label=label) > 0
    assert (page["label"] == label).all()
    candidates = queries.review_page(store, only_candidates=True, limit=1000)
    n_flags = store.scalar("SELECT count(DISTINCT sample_id) FROM flags WHERE kind = 'memorized_candidate'")
    assert len(candidates) == queries.review_count(store, only_candidates=True) == n_flags > 0
    assert candidates["memorized_candidate"].all()


def test_user_values_are_parameters_not_sql(store):
    assert queries.review_count(store, label=MALICIOUS) == 0
    assert queries.review_page(store, label=MALICIOUS).empty
    assert queries.review_page(store, label=MALICIOUS, only_candidates=True).empty


def test_queries_on_an_empty_database(empty_db):
    store = Store(empty_db)
    assert queries.dataset_counts(store).empty and queries.class_labels(store) == []
    assert queries.score_run(store) is None
    assert queries.accuracy_curves(store).empty and queries.apb_histogram(store).empty
    assert queries.review_count(store) == 0 and queries.review_page(store).empty
    assert queries.problem_count(store) == 0 and queries.problems(store).empty


# --- pages -------------------------------------------------------------------------------------------------


def test_overview_renders_counts_and_charts(small_db, store, monkeypatch):
    at = run_page(OVERVIEW, monkeypatch, small_db)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    n_train = store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")
    assert metrics["Training images"] == f"{n_train:,}"
    assert metrics["Classes"] == str(len(queries.class_labels(store)))
    run_id = queries.score_run(store)["run_id"]
    assert any(f"`{run_id}` | quick | mlp | 3 | 1 |" in m.value for m in at.markdown)
    assert len(at.get("vega_lite_chart")) == 2


@pytest.mark.parametrize("converged", [False, True])
def test_overview_warns_about_an_unconverged_model(small_db, tmp_path, monkeypatch, converged):
    path = tmp_path / "copy.duckdb"
    shutil.copy(small_db, path)
    Store(path).execute("UPDATE scores SET converged = ?", [converged])
    Store(path).execute("UPDATE runs SET converged = ? WHERE kind = 'apb'", [converged])
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception
    warned = any("did not converge" in w.value for w in at.warning)
    assert warned is not converged


def test_overview_lists_problems(small_db, tmp_path, monkeypatch):
    path = tmp_path / "copy.duckdb"
    shutil.copy(small_db, path)
    Store(path).execute("INSERT INTO problems VALUES ('bad.png', 'x1', 'cannot identify image file', "
                        "'unreadable', 'error', 'skipped', 'ingest')")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception
    table = at.dataframe[-1].value
    assert table.loc[0, ["source", "sample_id", "reason"]].tolist() == ["bad.png", "x1", "cannot identify image file"]


def test_review_shows_the_lowest_apb_first(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    assert not at.exception
    assert shown_ids(at) == queries.review_page(store, limit=24)["sample_id"].tolist()
    assert at.number_input(key="page").value == 1


def test_review_filter_by_class(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    label = queries.class_labels(store)[2]
    at.selectbox(key="label").set_value(label).run()
    assert not at.exception
    ids = shown_ids(at)
    assert ids and len(ids) == min(24, queries.review_count(store, label=label))
    labels = store.query("SELECT DISTINCT label FROM samples WHERE list_contains(?, sample_id)", [ids])["label"]
    assert labels.tolist() == [label]


def test_review_pagination_and_page_size(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    first = shown_ids(at)
    at.number_input(key="page").set_value(2).run()
    second = shown_ids(at)
    assert not at.exception and len(second) == 24 and not set(first) & set(second)
    assert second == queries.review_page(store, limit=24, offset=24)["sample_id"].tolist()
    at.selectbox(key="page_size").set_value(12).run()
    assert len(at.image) == 12 and at.number_input(key="page").value == 1


def test_review_only_candidates(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    at.toggle(key="only_candidates").set_value(True).run()
    assert not at.exception
    ids = shown_ids(at)
    flagged = set(store.query("SELECT sample_id FROM flags WHERE kind = 'memorized_candidate'")["sample_id"])
    assert ids and set(ids) <= flagged
    assert len(ids) == min(24, len(flagged))


@pytest.mark.parametrize("page", [OVERVIEW, REVIEW])
def test_empty_database_shows_info(page, empty_db, monkeypatch):
    at = run_page(page, monkeypatch, empty_db)
    assert not at.exception and not at.error
    assert len(at.info) == 1


@pytest.mark.parametrize("page", [OVERVIEW, REVIEW])
def test_samples_without_scores_show_info(page, small_db, tmp_path, monkeypatch):
    path = tmp_path / "copy.duckdb"
    shutil.copy(small_db, path)
    for table in ("scores", "flags", "predictions", "epochs", "runs"):
        Store(path).execute(f"DELETE FROM {table}")
    at = run_page(page, monkeypatch, path)
    assert not at.exception and not at.error
    assert any("No scores yet" in i.value or "No ApB scores yet" in i.value for i in at.info)


@pytest.mark.parametrize("page", [OVERVIEW, REVIEW])
def test_missing_or_foreign_database_shows_an_error(page, tmp_path, monkeypatch):
    at = run_page(page, monkeypatch, tmp_path / "nope.duckdb")
    assert not at.exception and "does not exist" in at.error[0].value
    at = run_page(page, monkeypatch, None)
    assert not at.exception and "No audit database given" in at.error[0].value
    foreign = tmp_path / "foreign.duckdb"
    Store(foreign).execute("CREATE TABLE t(x INTEGER)")
    at = run_page(page, monkeypatch, foreign)
    assert not at.exception and "not a memaudit database" in at.error[0].value
