"""The dashboard's queries and pages (Streamlit AppTest) against the small audited database."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.common import db_path, method_name
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


@pytest.fixture(scope="module")
def mem_db(small_db, tmp_path_factory) -> Path:
    """The small database with at least one `memorized` flag: with its six shadow models a run may flag none, so
    the highest-mem candidate then gets a clearly memorized score and flag, as the memorization stage writes them."""
    path = tmp_path_factory.mktemp("mem-db") / "audit.duckdb"
    shutil.copy(small_db, path)
    store = Store(path)
    if not store.scalar("SELECT count(*) FROM flags WHERE kind = 'memorized'"):
        sample_id, run_id = store.query("SELECT sample_id, mem_run_id FROM scores WHERE mem IS NOT NULL "
                                        "ORDER BY mem DESC, sample_id LIMIT 1").iloc[0]
        store.execute("UPDATE scores SET mem = 1.0, mem_low = 0.44, mem_high = 1.0 WHERE sample_id = ?", [sample_id])
        store.execute("INSERT INTO flags VALUES (?, 'memorized', 1.0, 'set by the test fixture', ?)",
                      [sample_id, run_id])
    return path


@pytest.fixture()
def mem_store(mem_db) -> Store:
    return Store(mem_db)


def shown_ids(at: AppTest) -> list[str]:
    """Sample ids of the images in the review grid, in display order."""
    return [caption for image in at.image for caption in image.captions]


def tiles(at: AppTest) -> list[str]:
    """Text of each tile under an image in the review grid (non-breaking spaces as spaces), in display order."""
    return [m.value.replace("\u00a0", " ") for m in at.markdown if m.value.startswith(":small[label")]


def copy_db(small_db: Path, tmp_path: Path) -> Path:
    """A private copy of the small database that a test may change."""
    path = tmp_path / "copy.duckdb"
    shutil.copy(small_db, path)
    return path


def memorized_ids(store: Store) -> set[str]:
    return set(store.query("SELECT sample_id FROM flags WHERE kind = 'memorized'")["sample_id"])


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
    candidates = queries.review_page(store, flag="memorized_candidate", limit=1000)
    n_flags = store.scalar("SELECT count(DISTINCT sample_id) FROM flags WHERE kind = 'memorized_candidate'")
    assert len(candidates) == queries.review_count(store, flag="memorized_candidate") == n_flags > 0
    assert candidates["memorized_candidate"].all()


def test_review_filter_memorized_matches_the_flags(mem_store):
    store = mem_store
    page = queries.review_page(store, flag="memorized", limit=1000)
    assert set(page["sample_id"]) == memorized_ids(store)
    assert len(page) == queries.review_count(store, flag="memorized") > 0
    assert page["memorized"].all() and page["mem"].notna().all()
    assert (page["mem_low"] <= page["mem"]).all() and (page["mem"] <= page["mem_high"]).all()


def test_review_sort_by_mem_descending(store):
    first = queries.review_page(store, sort="mem_desc", limit=8)
    second = queries.review_page(store, sort="mem_desc", limit=1000, offset=8)
    mem = list(first["mem"]) + list(second["mem"])
    n_scored = store.scalar("SELECT count(mem) FROM scores")
    scored = mem[:n_scored]
    assert all(a >= b for a, b in itertools.pairwise(scored))
    assert all(pd.isna(m) for m in mem[n_scored:])  # unscored points (mem NULL) come last, never as 0
    assert len(mem) == queries.review_count(store)
    page = queries.review_page(store, flag="memorized_candidate", sort="mem_desc", limit=1000)
    assert page["mem"].is_monotonic_decreasing


@pytest.mark.parametrize("sort", ["mem", "sc.mem DESC", "apb_asc; DROP TABLE scores", MALICIOUS, ""])
def test_review_sort_is_a_whitelist(store, sort):
    with pytest.raises(ValueError, match="unknown review sort"):
        queries.review_page(store, sort=sort)
    assert queries.review_count(store) > 0


def test_memorization_run_describes_the_shadow_models(store):
    run = queries.memorization_run(store)
    design = store.query("SELECT * FROM shadow_designs WHERE run_id = ?", [run["run_id"]]).iloc[0]
    assert run["method"] == design["method"] == "ploo_improved"
    assert run["n_models"] == design["n_models"] == run["n_trained"] > 0
    assert run["n_scored"] == store.scalar("SELECT count(mem) FROM scores") == design["n_candidates"]
    assert run["n_memorized"] == len(memorized_ids(store))
    assert run["threshold"] == 0.25
    assert store.scalar("SELECT kind FROM runs WHERE run_id = ?", [run["run_id"]]) == "memorization"


def test_mem_histogram_counts_every_scored_point(store):
    histogram = queries.mem_histogram(store, bins=20)
    assert histogram["n"].sum() == store.scalar("SELECT count(mem) FROM scores") > 0
    assert histogram["start"].between(-1, 0.9 + 1e-9).all()
    assert (histogram["end"] - histogram["start"]).round(9).eq(0.1).all()


def test_mem_scatter_holds_only_scored_points(mem_store):
    store = mem_store
    points = queries.mem_scatter(store)
    scored = set(store.query("SELECT sample_id FROM scores WHERE mem IS NOT NULL")["sample_id"])
    assert set(points["sample_id"]) == scored and len(points) == len(scored)
    assert points["mem"].notna().all() and points["apb"].notna().all()
    assert set(points.loc[points["flag"] == "memorized", "sample_id"]) == memorized_ids(store)
    assert points["interval"].str.fullmatch(r"\[-?\d\.\d\d, -?\d\.\d\d\]").all()
    assert queries.mem_scatter(store, limit=1)["flag"].tolist() == ["memorized"]  # memorized points first


def test_jobs_lists_the_memorization_job(store):
    jobs = queries.jobs(store)
    run_id = queries.memorization_run(store)["run_id"]
    job = jobs[jobs["run_id"] == run_id].iloc[0]
    assert (job["status"], job["done"], job["total"], job["unit"]) == ("done", job["total"], job["total"], "models")


def test_has_memorization_schema(store, small_db, tmp_path):
    assert queries.has_memorization_schema(store)
    path = copy_db(small_db, tmp_path)
    Store(path).execute("DROP VIEW audit; ALTER TABLE scores DROP COLUMN mem_note")
    assert not queries.has_memorization_schema(Store(path))


def test_user_values_are_parameters_not_sql(store):
    assert queries.review_count(store, label=MALICIOUS) == 0
    assert queries.review_page(store, label=MALICIOUS).empty
    assert queries.review_page(store, label=MALICIOUS, flag="memorized_candidate").empty
    assert queries.review_count(store, flag=MALICIOUS) == 0 and queries.review_page(store, flag=MALICIOUS).empty


def test_queries_on_an_empty_database(empty_db):
    store = Store(empty_db)
    assert queries.dataset_counts(store).empty and queries.class_labels(store) == []
    assert queries.score_run(store) is None
    assert queries.accuracy_curves(store).empty and queries.apb_histogram(store).empty
    assert queries.review_count(store) == 0 and queries.review_page(store).empty
    assert queries.problem_count(store) == 0 and queries.problems(store).empty
    assert queries.memorization_run(store) is None and queries.has_memorization_schema(store)
    assert queries.mem_histogram(store).empty and queries.mem_scatter(store).empty and queries.jobs(store).empty


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
    assert len(at.get("vega_lite_chart")) == 4  # accuracy, ApB histogram, mem histogram, ApB-vs-mem scatter


def test_overview_memorization_section(mem_db, mem_store, monkeypatch):
    store = mem_store
    at = run_page(OVERVIEW, monkeypatch, mem_db)
    assert not at.exception
    assert "Memorization" in [h.value for h in at.subheader]
    run = queries.memorization_run(store)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Method"] == method_name(run["method"]) == "pLOO-improved"
    assert metrics["Shadow models"] == str(run["n_models"]) == str(store.scalar("SELECT n_models FROM shadow_designs"))
    assert metrics["Points scored"] == str(store.scalar("SELECT count(mem) FROM scores"))
    assert metrics["Memorized"] == str(len(memorized_ids(store)))
    assert metrics["Threshold"] == "0.25"
    assert any(run["run_id"] in c.value for c in at.caption)


def test_overview_without_memorization_says_how_to_run_it(small_db, tmp_path, monkeypatch):
    path = copy_db(small_db, tmp_path)
    Store(path).execute("UPDATE scores SET mem = NULL, mem_low = NULL, mem_high = NULL, mem_n_in = NULL, "
                        "mem_n_out = NULL, mem_method = NULL, mem_note = NULL, mem_run_id = NULL")
    Store(path).execute("DELETE FROM flags WHERE kind = 'memorized'")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception and not at.error
    assert any(f"memaudit run --stages memorization --db {path}" in i.value for i in at.info)
    assert "Method" not in [m.label for m in at.metric] and len(at.get("vega_lite_chart")) == 2
    Store(path).execute("UPDATE jobs SET status = 'running', done = 2")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception and any("job is running" in i.value for i in at.info)


def test_overview_jobs_section(small_db, store, tmp_path, monkeypatch):
    at = run_page(OVERVIEW, monkeypatch, small_db)
    assert not at.exception and "Jobs" in [h.value for h in at.subheader]
    table = at.dataframe[-1].value
    assert table.loc[0, ["kind", "status"]].tolist() == ["pLOO-improved", "done"]
    total = int(store.scalar("SELECT total FROM jobs"))
    assert table.loc[0, "done / total"] == f"{total} / {total} models"
    assert not at.get("progress")
    path = copy_db(small_db, tmp_path)
    Store(path).execute("UPDATE jobs SET status = 'running', done = 1, eta_s = 120, finished_at = NULL")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception
    progress = at.get("progress")
    assert len(progress) == 1 and progress[0].proto.value == int(100 / total)
    assert f"1 of {total} models, ETA 2 min" in progress[0].proto.text
    assert at.dataframe[-1].value.loc[0, "ETA"] == "2 min"


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
    table = next(d.value for d in at.dataframe if "reason" in d.value.columns)
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
    at.selectbox(key="flag").set_value("memorized_candidate").run()
    assert not at.exception
    ids = shown_ids(at)
    flagged = set(store.query("SELECT sample_id FROM flags WHERE kind = 'memorized_candidate'")["sample_id"])
    assert ids and set(ids) <= flagged
    assert len(ids) == min(24, len(flagged))
    assert ids == queries.review_page(store, flag="memorized_candidate")["sample_id"].tolist()


def test_review_only_memorized_with_intervals(mem_db, mem_store, monkeypatch):
    store = mem_store
    at = run_page(REVIEW, monkeypatch, mem_db)
    at.selectbox(key="flag").set_value("memorized").run()
    assert not at.exception
    ids, texts = shown_ids(at), tiles(at)
    assert ids and set(ids) == memorized_ids(store) and len(texts) == len(ids)
    scores = store.query("SELECT * FROM scores WHERE list_contains(?, sample_id)", [ids]).set_index("sample_id")
    for sample_id, text in zip(ids, texts):
        row = scores.loc[sample_id]
        assert f"mem **{row['mem']:.2f}** [{row['mem_low']:.2f}, {row['mem_high']:.2f}]" in text
        assert f"{row['mem_n_in']} models in, {row['mem_n_out']} out" in text
        assert ":red-badge[memorized]" in text


def test_review_tiles_show_unscored_points_as_a_dash(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    ids, texts = shown_ids(at), tiles(at)
    mem = store.query("SELECT sample_id, mem FROM scores").set_index("sample_id")["mem"]
    assert {pd.isna(mem[i]) for i in ids} == {True, False}  # the first page mixes candidates and the rest
    for sample_id, text in zip(ids, texts):
        if pd.isna(mem[sample_id]):
            assert "mem – (not a candidate)" in text and "mem **" not in text
        else:
            assert re.search(r"mem \*\*-?\d\.\d\d\*\* \[-?\d\.\d\d, -?\d\.\d\d\]", text)


def test_review_sort_by_mem(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    at.number_input(key="page").set_value(2).run()
    at.selectbox(key="sort").set_value("mem_desc").run()
    assert not at.exception and at.number_input(key="page").value == 1
    ids = shown_ids(at)
    assert ids == queries.review_page(store, sort="mem_desc")["sample_id"].tolist()
    mem = store.query("SELECT sample_id, mem FROM scores").set_index("sample_id")["mem"]
    scored = [mem[i] for i in ids if not pd.isna(mem[i])]
    assert scored and scored == sorted(scored, reverse=True)
    assert any("mem, highest first" in c.value for c in at.caption)


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
def test_database_without_memorization_columns_asks_for_an_upgrade(page, small_db, tmp_path, monkeypatch):
    path = copy_db(small_db, tmp_path)
    Store(path).execute("DROP VIEW audit; ALTER TABLE scores DROP COLUMN mem_note")
    at = run_page(page, monkeypatch, path)
    assert not at.exception
    assert "older memaudit" in at.error[0].value and f"--stages memorization --db {path}" in at.error[0].value


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
