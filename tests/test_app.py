"""The dashboard's queries and pages (Streamlit AppTest) against the small audited database."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.common import db_path, flag_name, method_name
from auditor.memorization import memorization_queries
from auditor.review import point_queries, queries
from auditor.store import job_queries
from auditor.detectors.duplicates import DUPLICATE_KINDS, LEAK_KINDS
from auditor.store.database import Store
from conftest import copy_audit
from planted import BLANK, GHOST, PLANTS

APP = Path(__file__).resolve().parent.parent / "app"
OVERVIEW, REVIEW = str(APP / "views" / "overview.py"), str(APP / "views" / "review.py")
MALICIOUS = "0' OR 1=1 --"
DETECTOR_KINDS = {"duplicate": DUPLICATE_KINDS, "leaked": LEAK_KINDS}  # the pair kinds behind each flag kind


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


def ensure_memorized(path: Path) -> None:
    """With its six shadow models a run may flag no point `memorized`: the highest-mem candidate then gets a clearly
    memorized score and flag, as the memorization stage writes them."""
    store = Store(path)
    if not store.scalar("SELECT count(*) FROM flags WHERE kind = 'memorized'"):
        sample_id, run_id = store.query("SELECT sample_id, mem_run_id FROM scores WHERE mem IS NOT NULL "
                                        "ORDER BY mem DESC, sample_id LIMIT 1").iloc[0]
        store.execute("UPDATE scores SET mem = 1.0, mem_low = 0.44, mem_high = 1.0 WHERE sample_id = ?", [sample_id])
        store.execute("INSERT INTO flags VALUES (?, 'memorized', 1.0, 'set by the test fixture', ?)",
                      [sample_id, run_id])


@pytest.fixture(scope="module")
def mem_db(small_db, tmp_path_factory) -> Path:
    """The small database with at least one `memorized` flag."""
    path = tmp_path_factory.mktemp("mem-db") / "audit.duckdb"
    shutil.copy(small_db, path)
    ensure_memorized(path)
    return path


@pytest.fixture()
def mem_store(mem_db) -> Store:
    return Store(mem_db)


@pytest.fixture(scope="module")
def planted_db(planted_source, tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A small dataset with planted exact, shifted and dimmed copies (duplicates and train/test leaks) and an
    unreadable file, audited by the real stages (tests/planted.py: a copy of the session's), with at least one
    `memorized` flag; returns it and the planted pairs {plant: (source id, copy id)}, a leak's as (train id, test id)."""
    source, planted = planted_source
    path = copy_audit(source, tmp_path_factory.mktemp("planted-db"))
    ensure_memorized(path)
    return path, planted


@pytest.fixture()
def planted_store(planted_db) -> Store:
    return Store(planted_db[0])


def shown_ids(at: AppTest) -> list[str]:
    """Sample ids of the images in the review grid, in display order (the grid's images come before the evidence's:
    one per tile, but for the tiles of unreadable images)."""
    n_images = len(tiles(at)) - sum(w.value.endswith(": image unreadable") for w in at.warning)
    return [caption for image in at.image for caption in image.captions][:n_images]


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
    run = memorization_queries.memorization_run(store)
    design = store.query("SELECT * FROM shadow_designs WHERE run_id = ?", [run["run_id"]]).iloc[0]
    assert run["method"] == design["method"] == "ploo_improved"
    assert run["n_models"] == design["n_models"] == run["n_trained"] > 0
    # Every design of the audit scores its sharded points: phase 1 (shortlist + audit sample), phase 2 (extension).
    assert run["n_scored"] == store.scalar("SELECT count(mem) FROM scores") == store.scalar(
        "SELECT sum(n_candidates) FROM shadow_designs WHERE method = 'ploo_improved'")
    assert run["n_memorized"] == len(memorized_ids(store))
    assert run["threshold"] == 0.25
    assert store.scalar("SELECT kind FROM runs WHERE run_id = ?", [run["run_id"]]) == "memorization"


def test_mem_histogram_counts_every_scored_point(store):
    histogram = memorization_queries.mem_histogram(store, bins=20)
    assert histogram["n"].sum() == store.scalar("SELECT count(mem) FROM scores") > 0
    assert histogram["start"].between(-1, 0.9 + 1e-9).all()
    assert (histogram["end"] - histogram["start"]).round(9).eq(0.1).all()


def test_mem_scatter_holds_only_scored_points(mem_store):
    store = mem_store
    points = memorization_queries.mem_scatter(store)
    scored = set(store.query("SELECT sample_id FROM scores WHERE mem IS NOT NULL")["sample_id"])
    assert set(points["sample_id"]) == scored and len(points) == len(scored)
    assert points["mem"].notna().all() and points["apb"].notna().all()
    assert set(points.loc[points["flag"] == "memorized", "sample_id"]) == memorized_ids(store)
    assert points["interval"].str.fullmatch(r"\[-?\d\.\d\d, -?\d\.\d\d\]").all()
    assert memorization_queries.mem_scatter(store, limit=1)["flag"].tolist() == ["memorized"]  # memorized points first


def test_jobs_lists_the_memorization_job(store):
    jobs = job_queries.jobs(store)
    run_id = memorization_queries.memorization_run(store)["run_id"]
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
    assert memorization_queries.memorization_run(store) is None and queries.has_memorization_schema(store)
    assert memorization_queries.mem_histogram(store).empty and memorization_queries.mem_scatter(store).empty and job_queries.jobs(store).empty


def flagged_ids(store: Store, kind: str) -> set[str]:
    return set(store.query("SELECT sample_id FROM flags WHERE kind = ?", [kind])["sample_id"])


def test_flag_kinds_lists_every_kind_present_most_important_first(planted_store):
    store = planted_store
    kinds = queries.flag_kinds(store)
    present = set(store.query("SELECT DISTINCT kind FROM flags")["kind"])
    assert set(kinds) == present >= {"unreadable", "leaked", "duplicate", "memorized", "memorized_candidate"}
    assert kinds == sorted(kinds, key=queries.FLAG_PRIORITY.index)
    assert queries.flag_kinds(Store(store.path)) == kinds


def test_review_filters_by_every_flag_kind(planted_store):
    store = planted_store
    for kind in queries.flag_kinds(store):
        page = queries.review_page(store, flag=kind, sort="score_desc", limit=1000)
        assert set(page["sample_id"]) == flagged_ids(store, kind), kind
        assert len(page) == queries.review_count(store, flag=kind) == len(flagged_ids(store, kind))
        assert all(kind in [f["kind"] for f in flags] for flags in page["flags"])
        scores = page["flag_score"].tolist()
        assert scores == sorted(scores, reverse=True)
    label = queries.class_labels(store)[0]
    page = queries.review_page(store, label=label, flag="long_tail", limit=1000)
    assert (page["label"] == label).all() and len(page) == queries.review_count(store, label=label, flag="long_tail")


def test_review_includes_the_test_side_of_a_leak(planted_db, planted_store):
    store, (train_id, test_id) = planted_store, planted_db[1]["leaked"]
    page = queries.review_page(store, flag="leaked", limit=1000).set_index("sample_id")
    assert {train_id, test_id} <= set(page.index)
    assert page.loc[test_id, "split"] == "test" and page.loc[train_id, "split"] == "train"
    assert pd.isna(page.loc[test_id, "apb"]) and pd.isna(page.loc[test_id, "mem"])
    assert page.loc[test_id, "path"] == store.scalar("SELECT path FROM samples WHERE sample_id = ?", [test_id])
    assert test_id not in set(queries.review_page(store, limit=1000)["sample_id"])  # unfiltered: training only


def test_review_page_lists_every_flag_of_an_image(planted_store):
    store = planted_store
    page = queries.review_page(store, flag="mislabeled", limit=1000)
    for row in page.itertuples():
        kinds = [f["kind"] for f in row.flags]
        expected = store.query("SELECT kind FROM flags WHERE sample_id = ?", [row.sample_id])["kind"]
        assert sorted(kinds) == sorted(expected) and kinds == sorted(kinds, key=queries.FLAG_PRIORITY.index)
        assert row.memorized_candidate == ("memorized_candidate" in kinds)
        mislabeled = next(f for f in row.flags if f["kind"] == "mislabeled")
        assert {"given", "suggested"} <= set(json.loads(mislabeled["detail"]))


def test_unreadable_flag_of_a_sample_missing_from_samples(planted_store):
    page = queries.review_page(planted_store, flag="unreadable", limit=1000)
    ghost = page[page["sample_id"] == GHOST].iloc[0]
    assert ghost["path"] is None and ghost["label"] is None and pd.isna(ghost["apb"])


def _planted_pair(store: Store, plant: str, planted: dict[str, tuple[str, str]]) -> pd.Series:
    """The pair the detectors wrote for a planted copy, of the pair kind that plant must give (either order)."""
    source, copy = planted[plant]
    pairs = store.query("SELECT * FROM pairs WHERE kind = ? AND ((a_id = ? AND b_id = ?) OR (a_id = ? AND b_id = ?))",
                        [PLANTS[plant][0], source, copy, copy, source])
    assert len(pairs) == 1, f"the detectors wrote no {PLANTS[plant][0]} pair for {plant} {source}/{copy}"
    return pairs.iloc[0]


def _check_twins(store: Store, planted: dict[str, tuple[str, str]], plant: str, flag_kind: str) -> None:
    """Both sides of a planted pair see the other as a twin with the detectors' similarity, and the copy's flag
    names that pair kind."""
    pair = _planted_pair(store, plant, planted)
    for me, other in ((pair["a_id"], pair["b_id"]), (pair["b_id"], pair["a_id"])):
        twins = queries.twins(store, me, flag_kind)
        assert other in set(twins["twin_id"]), (plant, me)
        twin = twins.set_index("twin_id").loc[other]
        best = store.scalar("SELECT max(similarity) FROM pairs WHERE list_contains(?, kind) AND "
                            "((a_id = ? AND b_id = ?) OR (a_id = ? AND b_id = ?))",
                            [list(DETECTOR_KINDS[flag_kind]), me, other, other, me])
        assert twin["similarity"] == pytest.approx(best) and twin["conflicting"] == pair["conflicting"]
        assert twin["path"] == store.scalar("SELECT path FROM samples WHERE sample_id = ?", [other])
        assert twins["similarity"].is_monotonic_decreasing or twins["exact"].any()
    detail = json.loads(store.scalar("SELECT detail FROM flags WHERE sample_id = ? AND kind = ?",
                                     [planted[plant][1], flag_kind]))
    assert detail["twin"] == planted[plant][0] and detail["pair_kind"] in DETECTOR_KINDS[flag_kind]


def test_twins_of_a_leak_and_of_a_duplicate(planted_db, planted_store):
    store, planted = planted_store, planted_db[1]
    for plant, flag_kind in (("duplicate", "duplicate"), ("pixel_duplicate", "duplicate"), ("leaked", "leaked"),
                             ("leak", "leaked"), ("pixel_leak", "leaked")):
        _check_twins(store, planted, plant, flag_kind)
    assert _planted_pair(store, "leaked", planted)["conflicting"]  # the exact leak crosses labels
    train_id, test_id = planted["leaked"]
    assert store.scalar("SELECT split FROM samples WHERE sample_id = ?", [queries.twins(store, test_id, "leaked")
                                                                          ["twin_id"].iloc[0]]) == "train"
    assert queries.twins(store, test_id, "duplicate").empty and queries.twins(store, MALICIOUS, "leaked").empty
    with pytest.raises(ValueError, match="no pairs behind"):
        queries.twins(store, train_id, "long_tail")


def test_cluster_members_share_class_and_cluster(planted_store):
    store = planted_store
    sample_id = store.scalar("SELECT sample_id FROM flags WHERE kind = 'long_tail' ORDER BY score DESC, sample_id")
    me = store.query("SELECT * FROM clusters WHERE sample_id = ?", [sample_id]).iloc[0]
    members = queries.cluster_members(store, sample_id, limit=100)
    assert sample_id not in set(members["sample_id"]) and len(members) == me["cluster_size"] - 1
    assert (members["label"] == me["label"]).all() and (members["cluster"] == me["cluster"]).all()
    assert members["density"].is_monotonic_decreasing and members["path"].notna().all()
    assert len(queries.cluster_members(store, sample_id, limit=1)) == min(1, me["cluster_size"] - 1)
    assert queries.cluster_members(store, MALICIOUS).empty


def test_sample_neighbors_mark_the_disagreeing_ones(planted_store):
    store = planted_store
    sample_id = store.scalar("SELECT sample_id FROM flags WHERE kind = 'mislabeled' ORDER BY score DESC, sample_id")
    detail = json.loads(store.scalar("SELECT detail FROM flags WHERE kind = 'mislabeled' AND sample_id = ?",
                                     [sample_id]))
    neighbors = queries.sample_neighbors(store, sample_id, limit=100)
    label = store.scalar("SELECT label FROM samples WHERE sample_id = ?", [sample_id])
    assert neighbors["rank"].tolist() == list(range(1, len(neighbors) + 1)) and len(neighbors) == detail["neighbors"]
    assert (neighbors["disagrees"] == (neighbors["label"] != label)).all()
    assert int(neighbors["disagrees"].sum()) == detail["disagreeing_neighbors"]
    assert neighbors["similarity"].is_monotonic_decreasing and sample_id not in set(neighbors["neighbor_id"])
    assert len(queries.sample_neighbors(store, sample_id, limit=3)) == 3
    assert queries.sample_neighbors(store, MALICIOUS).empty


def test_embedding_map_keeps_every_flagged_point_and_caps_the_rest(planted_store):
    store = planted_store
    embedder = queries.map_embedder(store)
    latest = store.scalar("SELECT embedder_id FROM embedders ORDER BY created_at DESC LIMIT 1")
    assert embedder["embedder_id"] == latest
    assert embedder["n_points"] == store.scalar("SELECT count(*) FROM embedding_map WHERE embedder_id = ?", [latest])
    everything = queries.embedding_map(store, latest, unflagged_limit=10 ** 9)
    assert len(everything) == embedder["n_points"] and everything["sample_id"].is_unique
    in_map = set(everything["sample_id"])
    flagged = set(store.query("SELECT DISTINCT sample_id FROM flags")["sample_id"]) & in_map
    capped = queries.embedding_map(store, latest, unflagged_limit=10)
    assert set(capped.loc[capped["flag"] != "none", "sample_id"]) == flagged
    assert (capped["flag"] == "none").sum() == 10 and len(capped) == len(flagged) + 10
    again = queries.embedding_map(store, latest, unflagged_limit=10)
    assert capped["sample_id"].tolist() == again["sample_id"].tolist()  # a fixed sample, not a random one
    # the most important flag colours a point, and unflagged points come first so flagged ones are drawn on top
    rank = {kind: i for i, kind in enumerate(queries.FLAG_PRIORITY)}
    for row in capped[capped["flag"] != "none"].itertuples():
        assert rank[row.flag] == min(rank[k] for k in row.flags.split(", "))
    order = [-len(rank) if f == "none" else -rank[f] for f in capped["flag"]]
    assert order == sorted(order)
    test_side = capped[capped["flag"] == "leaked"]
    assert set(test_side["split"]) == {"train", "test"}
    assert queries.embedding_map(store, MALICIOUS).empty
    # past `flagged_limit`, the most important kinds are kept first
    few = queries.embedding_map(store, latest, unflagged_limit=0, flagged_limit=3)
    ranks = sorted(rank[row.flag] for row in capped[capped["flag"] != "none"].itertuples())
    assert len(few) == 3 and sorted(rank[f] for f in few["flag"]) == ranks[:3]


def test_findings_counts_equal_the_flags_table(planted_store):
    store = planted_store
    counts = queries.flag_counts(store).set_index("kind")
    direct = store.query("SELECT kind, count(*) AS flags, count(DISTINCT sample_id) AS samples FROM flags "
                         "GROUP BY kind").set_index("kind")
    assert counts[["flags", "samples"]].sort_index().equals(direct.sort_index())
    assert list(counts.index) == queries.flag_kinds(store)
    in_samples = counts["train"] + counts["test"]
    assert (in_samples <= counts["samples"]).all()
    assert in_samples["unreadable"] == counts.loc["unreadable", "samples"] - 1  # the ghost is in no split
    assert counts.loc["leaked", "test"] >= 1 and counts.loc["leaked", "train"] >= 1
    triage = queries.triage_counts(store)
    triaged = store.scalar("SELECT count(DISTINCT f.sample_id) FROM flags f JOIN samples s USING (sample_id) "
                           "WHERE f.kind <> 'memorized_candidate'")
    assert triage["samples"].sum() == triaged and triage["samples"].is_monotonic_decreasing
    assert triage["triage"].str.startswith("leaked into the test set").any()


def _flag_reads(store: Store) -> dict[str, object]:
    """Every dashboard read served by the flag summaries."""
    embedder = queries.map_embedder(store)["embedder_id"]
    return {"kinds": queries.flag_kinds(store), "counts": queries.flag_counts(store),
            "classes": queries.flag_class_counts(store), "triage": queries.triage_counts(store),
            "map": queries.embedding_map(store, embedder, 50)}


def test_sample_dynamics_are_the_seed_runs_rows_of_one_sample_read_through_an_index(store):
    sample = store.scalar("SELECT sample_id FROM scores ORDER BY apb, sample_id LIMIT 1")
    curve = point_queries.sample_dynamics(store, sample)
    direct = store.query(
        "SELECT r.seed, d.step, d.epoch, d.phase, d.correct, d.p_label, d.loss FROM dynamics d "
        "JOIN runs r USING (run_id) WHERE d.sample_id = ? AND d.run_id IN (SELECT input_run_id FROM run_inputs "
        "WHERE run_id = (SELECT min(run_id) FROM scores)) ORDER BY r.seed, d.step", [sample])
    assert len(curve) > 0 and curve["seed"].nunique() == store.scalar("SELECT max(n_seeds) FROM scores")
    pd.testing.assert_frame_equal(curve, direct)
    assert point_queries.sample_dynamics(store, MALICIOUS).empty
    assert store.scalar("SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'dynamics_sample'") == 1


def test_a_pipeline_run_leaves_the_flag_summaries_fresh(store):
    assert store.summaries_fresh()
    assert store.scalar("SELECT count(*) FROM sample_flags") == store.scalar(
        "SELECT count(DISTINCT sample_id) FROM flags")


def test_flag_summaries_answer_as_the_live_tables_and_a_hand_edit_is_read_live(planted_db, tmp_path):
    path = tmp_path / "audit.duckdb"
    shutil.copy(planted_db[0], path)
    store = Store(path)
    store.write([("flags", store.query("SELECT * FROM flags LIMIT 0"))])  # any write of `flags` rebuilds them
    assert store.summaries_fresh()
    assert store.scalar("SELECT sum(samples) FROM flag_tallies") == store.scalar(
        "SELECT count(*) FROM (SELECT DISTINCT sample_id, kind FROM flags)")
    summarised = _flag_reads(store)
    with store.reading():  # checked once per render; a write inside it ends the render's connection and the check
        assert store.summaries_fresh() and store.summaries_fresh()
        store.execute("DELETE FROM meta WHERE key = 'flag_summary_of'")
        assert not store.summaries_fresh()
    live = _flag_reads(store)
    for name, value in summarised.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, live[name], check_dtype=False, obj=name)
        else:
            assert value == live[name], name
    audit_view = store.query("SELECT triage, count(*) AS samples FROM audit WHERE triage IS NOT NULL GROUP BY triage "
                             "ORDER BY samples DESC, triage")
    pd.testing.assert_frame_equal(live["triage"], audit_view, check_dtype=False)

    store.write([("flags", store.query("SELECT * FROM flags LIMIT 0"))])
    sample = store.scalar("SELECT sample_id FROM samples WHERE split = 'train' AND sample_id NOT IN "
                          "(SELECT sample_id FROM flags) ORDER BY sample_id LIMIT 1")
    store.execute("INSERT INTO flags VALUES (?, 'leaked', 0.99, 'by hand', 'manual')", [sample])  # bypasses write
    assert not store.summaries_fresh()
    before = summarised["counts"].set_index("kind")
    after = queries.flag_counts(store).set_index("kind")
    assert after.loc["leaked", "train"] == before.loc["leaked", "train"] + 1
    assert sample in set(queries.embedding_map(store, queries.map_embedder(store)["embedder_id"], 0)["sample_id"])
    store.execute("UPDATE flags SET kind = 'duplicate' WHERE sample_id = ? AND kind = 'leaked'", [sample])
    assert queries.flag_counts(store).set_index("kind").loc["leaked", "train"] == before.loc["leaked", "train"]
    store.write([("flags", store.query("SELECT * FROM flags LIMIT 0"))])
    assert store.summaries_fresh()
    assert queries.flag_counts(store).set_index("kind").loc["duplicate", "train"] == \
        before.loc["duplicate", "train"] + 1


def test_detector_thresholds_are_those_of_the_latest_run(planted_store, small_db, tmp_path):
    store = planted_store
    thresholds = queries.detector_thresholds(store)
    assert set(thresholds["kind"]) == {"duplicate", "leaked", "pixel_duplicate", "pixel_leak", "outlier",
                                       "image_quality_dark", "image_quality_bright", "image_quality_low_contrast",
                                       "image_quality_blurry"}
    assert thresholds["method"].notna().all()
    stored = store.query("SELECT kind, value FROM thresholds ORDER BY kind")
    assert thresholds["value"].tolist() == stored["value"].tolist()
    path = copy_db(small_db, tmp_path)
    latest = Store(path).query("SELECT kind, value FROM thresholds ORDER BY kind")
    Store(path).execute("INSERT INTO thresholds SELECT 'detect-old', kind, embedder_id, 0.5, 'configured', '{}' "
                        "FROM thresholds")
    Store(path).execute("INSERT INTO runs (run_id, kind, started_at) VALUES ('detect-old', 'detectors', "
                        "TIMESTAMP '2000-01-01')")
    read = queries.detector_thresholds(Store(path))["value"].tolist()
    assert read == latest["value"].tolist() != [0.5] * len(latest)


def test_has_detector_schema(store, small_db, tmp_path):
    assert queries.has_detector_schema(store)
    path = copy_db(small_db, tmp_path)
    Store(path).execute("DROP TABLE pairs")
    assert not queries.has_detector_schema(Store(path))


def test_new_queries_on_an_empty_database(empty_db):
    store = Store(empty_db)
    assert queries.flag_kinds(store) == [] and queries.flag_counts(store).empty and queries.triage_counts(store).empty
    assert queries.detector_thresholds(store).empty and queries.map_embedder(store) is None
    assert queries.embedding_map(store, "none").empty and queries.twins(store, "x", "leaked").empty
    assert queries.cluster_members(store, "x").empty and queries.sample_neighbors(store, "x").empty
    assert queries.review_count(store, flag="leaked") == 0 and queries.review_page(store, flag="leaked").empty


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
    # accuracy, ApB, mem histogram, ApB-vs-mem scatter, flags per kind and class, embedding map
    assert len(at.get("vega_lite_chart")) == 6


def test_overview_memorization_section(mem_db, mem_store, monkeypatch):
    store = mem_store
    at = run_page(OVERVIEW, monkeypatch, mem_db)
    assert not at.exception
    assert "Memorization" in [h.value for h in at.subheader]
    run = memorization_queries.memorization_run(store)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Method"] == method_name(run["method"]) == "pLOO-improved"
    assert metrics["Shadow models"] == str(store.scalar("SELECT sum(n_models) FROM shadow_designs"))
    assert metrics["Points scored"] == str(store.scalar("SELECT count(mem) FROM scores"))
    assert metrics["Memorized"] == str(len(memorized_ids(store)))
    assert metrics["Threshold"] == "0.25"
    assert any(run["run_id"] in c.value for c in at.caption)
    # The audit's completeness, as the memorization stage estimated it.
    estimate = store.query("SELECT * FROM memorization_estimates").iloc[0]
    uncertain = store.scalar("SELECT count(*) FROM flags WHERE kind = 'memorized_uncertain'")
    assert metrics["Uncertain"] == f"{uncertain:,}" == f"{estimate['n_uncertain']:,}"
    assert metrics["Estimated memorized (whole training set)"] == (
        f"{estimate['est_total']:,.0f} [{estimate['est_low']:,.0f}, {estimate['est_high']:,.0f}]")
    assert metrics["Recall of the flags"].startswith(f"{estimate['recall']:.0%} [")
    assert metrics["Not memorized / not scored"] == f"{estimate['n_not_memorized']:,} / {estimate['n_not_scored']:,}"
    bands = next(t.value for t in at.dataframe if "est_memorized" in t.value.columns)
    assert len(bands) == store.scalar("SELECT count(*) FROM memorization_bands")
    assert bands["est_memorized"].sum() == pytest.approx(estimate["est_total"])
    proxies = next(t.value for t in at.dataframe if "proxy" in t.value.columns)
    assert set(proxies["proxy"]) == {"apb", "el2n", "forgetting_events", "confidence", "variability"}
    apb = store.query("SELECT * FROM proxy_calibration WHERE proxy = 'apb'").iloc[0]
    assert proxies.set_index("proxy").loc["apb", "spearman"] == (
        f"{apb['spearman']:+.2f} [{apb['spearman_low']:+.2f}, {apb['spearman_high']:+.2f}]")


def test_overview_without_memorization_says_how_to_run_it(small_db, tmp_path, monkeypatch):
    path = copy_db(small_db, tmp_path)
    Store(path).execute("UPDATE scores SET mem = NULL, mem_low = NULL, mem_high = NULL, mem_n_in = NULL, "
                        "mem_n_out = NULL, mem_method = NULL, mem_note = NULL, mem_run_id = NULL")
    Store(path).execute("DELETE FROM flags WHERE kind = 'memorized'")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception and not at.error
    assert any(f"memaudit run --stages memorization --db {path}" in i.value for i in at.info)
    # accuracy, ApB, flags per kind and class, embedding map
    assert "Method" not in [m.label for m in at.metric] and len(at.get("vega_lite_chart")) == 4
    Store(path).execute("UPDATE jobs SET status = 'running', done = 2")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception and any("job is running" in i.value for i in at.info)


def test_overview_points_to_the_jobs_page(small_db, tmp_path, monkeypatch):
    at = run_page(OVERVIEW, monkeypatch, small_db)
    assert not at.exception and "Jobs" not in [h.value for h in at.subheader] and not at.get("progress")
    assert not any("see the Jobs page" in i.value for i in at.info)
    path = copy_db(small_db, tmp_path)
    Store(path).execute("UPDATE jobs SET status = 'running', done = 1, eta_s = 120, finished_at = NULL "
                        "WHERE job_id = (SELECT min(job_id) FROM jobs)")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception and not at.get("progress")
    assert at.info[0].value == "1 job running — see the Jobs page."


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
    at.selectbox(key="label").set_value(label).run(timeout=60)
    assert not at.exception
    ids = shown_ids(at)
    assert ids and len(ids) == min(24, queries.review_count(store, label=label))
    labels = store.query("SELECT DISTINCT label FROM samples WHERE list_contains(?, sample_id)", [ids])["label"]
    assert labels.tolist() == [label]


def test_review_pagination_and_page_size(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    first = shown_ids(at)
    at.number_input(key="page").set_value(2).run(timeout=60)
    second = shown_ids(at)
    assert not at.exception and len(second) == 24 and not set(first) & set(second)
    assert second == queries.review_page(store, limit=24, offset=24)["sample_id"].tolist()
    at.selectbox(key="page_size").set_value(12).run(timeout=60)
    assert len(shown_ids(at)) == 12 and at.number_input(key="page").value == 1


def test_review_only_candidates(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    at.selectbox(key="flag").set_value("memorized_candidate").run(timeout=60)
    assert not at.exception
    ids = shown_ids(at)
    flagged = set(store.query("SELECT sample_id FROM flags WHERE kind = 'memorized_candidate'")["sample_id"])
    assert ids and set(ids) <= flagged
    assert len(ids) == min(24, len(flagged))
    assert ids == queries.review_page(store, flag="memorized_candidate")["sample_id"].tolist()


def test_review_only_memorized_with_intervals(mem_db, mem_store, monkeypatch):
    store = mem_store
    at = run_page(REVIEW, monkeypatch, mem_db)
    at.selectbox(key="flag").set_value("memorized").run(timeout=60)
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
    mem = store.query("SELECT sample_id, mem FROM scores").set_index("sample_id")["mem"]
    at.selectbox(key="sort").set_value("mem_desc").run(timeout=60)  # scored points first, unscored on the last page
    seen = set()
    for page in (1, -(-len(mem) // at.selectbox(key="page_size").value)):
        at.number_input(key="page").set_value(page).run(timeout=60)
        for sample_id, text in zip(shown_ids(at), tiles(at)):
            seen.add(pd.isna(mem[sample_id]))
            if pd.isna(mem[sample_id]):
                assert "mem – (not a candidate)" in text and "mem **" not in text
            else:
                assert re.search(r"mem \*\*-?\d\.\d\d\*\* \[-?\d\.\d\d, -?\d\.\d\d\]", text)
    assert seen == {True, False}  # both kinds of tile were checked


def test_review_sort_by_mem(small_db, store, monkeypatch):
    at = run_page(REVIEW, monkeypatch, small_db)
    at.number_input(key="page").set_value(2).run(timeout=60)
    at.selectbox(key="sort").set_value("mem_desc").run(timeout=60)
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


# --- flags, evidence and the embedding map -----------------------------------------------------------------


def markdown(at: AppTest) -> list[str]:
    """Every markdown text of the page (non-breaking spaces as spaces, markdown escapes removed)."""
    return [m.value.replace("\u00a0", " ").replace("\\", "") for m in at.markdown]


def review_with_flag(db: Path, monkeypatch, kind: str) -> AppTest:
    at = run_page(REVIEW, monkeypatch, db)
    at.selectbox(key="flag").set_value(kind).run(timeout=60)
    assert not at.exception
    return at


def show_evidence(at: AppTest, sample_id: str) -> list[str]:
    """Select `sample_id` in the evidence section; the page's markdown after the 'Evidence' heading."""
    at.selectbox(key="evidence").set_value(sample_id).run(timeout=60)
    assert not at.exception and at.selectbox(key="evidence").value == sample_id
    return markdown(at)


def test_review_flag_filter_offers_every_kind_present(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = run_page(REVIEW, monkeypatch, path)
    counts = queries.flag_counts(store).set_index("kind")["samples"]
    kinds = queries.flag_kinds(store)
    assert at.selectbox(key="flag").options == ["All scored training images", "Any flag but candidate",
                                                *(f"{flag_name(k)} ({counts[k]:,})" for k in kinds)]
    lines = {"leaked": "leaked: twin ", "duplicate": "duplicate: twin ", "mislabeled": "mislabeled: given ",
             "long_tail": "long tail: cluster of "}
    for kind in kinds:
        at.selectbox(key="flag").set_value(kind).run(timeout=60)
        assert not at.exception, kind
        assert at.selectbox(key="sort").value == "score_desc" and at.number_input(key="page").value == 1
        expected = queries.review_page(store, flag=kind, sort="score_desc")
        readable = expected[expected["path"].notna()]["sample_id"].tolist()
        assert shown_ids(at) == readable, kind
        if kind in lines:
            assert all(lines[kind] in text for text in tiles(at)), kind
    at.selectbox(key="flag").set_value(None).run(timeout=60)
    assert at.selectbox(key="sort").value == "apb_asc"
    assert shown_ids(at) == queries.review_page(store)["sample_id"].tolist()


def test_review_leak_shows_both_sides_and_the_twin(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    train_id, test_id = planted_db[1]["leaked"]
    at = review_with_flag(path, monkeypatch, "leaked")
    ids, texts = shown_ids(at), dict(zip(shown_ids(at), tiles(at)))
    assert {train_id, test_id} <= set(ids)
    similarity = store.scalar("SELECT similarity FROM pairs WHERE a_id = ? AND b_id = ? AND kind = 'exact_leak'",
                              [train_id, test_id])
    assert f"leaked: twin {test_id} ({similarity:.3f})" in texts[train_id].replace("\\", "")
    assert f"leaked: twin {train_id} ({similarity:.3f})" in texts[test_id].replace("\\", "")
    assert "test image: no ApB, no mem" in texts[test_id] and "ApB **" not in texts[test_id]
    assert "other label" in texts[train_id]  # the planted leak crosses labels
    text = "\n".join(show_evidence(at, train_id))
    assert "#### Leaked (train/test)" in text and f"similarity **{similarity:.4f}**" in text
    assert "(an exact copy: same pixels or file)" in text and "threshold –" in text  # an exact copy needs none
    assert "the labels differ" in text and "a copy of this training image is in the test set" in text
    captions = [c for image in at.image for c in image.captions]
    assert f"{train_id} (train)" in captions and f"twin {test_id} (test)" in captions
    text = "\n".join(show_evidence(at, test_id))
    assert "a copy of this test image is in the training set" in text
    assert f"twin {train_id} (train)" in [c for image in at.image for c in image.captions]
    # a near copy: the closest pair's similarity and the threshold its flag was cut at, both as the detectors wrote
    for plant in ("leak", "pixel_leak"):
        source, copy = planted_db[1][plant]
        detail = json.loads(store.scalar("SELECT detail FROM flags WHERE sample_id = ? AND kind = 'leaked'", [copy]))
        best = store.scalar("SELECT max(similarity) FROM pairs WHERE a_id = ? AND b_id = ? AND list_contains(?, kind)",
                            [source, copy, list(LEAK_KINDS)])
        text = "\n".join(show_evidence(at, copy))
        assert f"similarity **{best:.4f}**" in text and "(an exact copy: same pixels or file)" not in text, plant
        assert f"threshold **{detail['threshold']:.4f}** ({detail['threshold_method']})" in text, plant
        assert f"twin {source} (train)" in [c for image in at.image for c in image.captions], plant


def test_review_duplicate_evidence(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = review_with_flag(path, monkeypatch, "duplicate")
    for plant in ("duplicate", "pixel_duplicate"):
        source, copy = planted_db[1][plant]
        detail = json.loads(store.scalar("SELECT detail FROM flags WHERE sample_id = ? AND kind = 'duplicate'",
                                         [copy]))
        assert detail["pair_kind"] == PLANTS[plant][0] and detail["twin"] == source
        text = "\n".join(show_evidence(at, copy))
        assert "#### Duplicate" in text and f"similarity **{detail['similarity']:.4f}**" in text, plant
        assert f"twin {source} (train)" in [c for image in at.image for c in image.captions], plant
        assert ("(an exact copy: same pixels or file)" in text) == detail["exact"], plant
        assert ("matched **" in text) == (plant == "pixel_duplicate"), plant
        assert detail.get("match") is None or f"matched **{detail['match']}**" in text, plant
        # a pixel copy is a Benjamini-Hochberg discovery: its q-value and what the FDR means are shown
        assert ("FDR 5 %" in text) == (plant == "pixel_duplicate") == (detail.get("q_value", 1) <= 0.05), plant


def test_review_mislabeled_evidence_shows_the_disagreeing_neighbours(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = review_with_flag(path, monkeypatch, "mislabeled")
    sample_id = shown_ids(at)[0]
    detail = json.loads(store.scalar("SELECT detail FROM flags WHERE kind = 'mislabeled' AND sample_id = ?",
                                     [sample_id]))
    text = "\n".join(show_evidence(at, sample_id))
    assert f"given **{detail['given']}** → suggested :orange[**{detail['suggested']}**]" in text
    assert f"{detail['disagreeing_neighbors']} of {detail['neighbors']} nearest neighbours" in text
    neighbors = queries.sample_neighbors(store, sample_id)
    captions = [c for image in at.image for c in image.captions]
    assert all(f"{n.rank}. {n.neighbor_id}" in captions for n in neighbors.itertuples())
    marks = [m for m in markdown(at) if re.fullmatch(r"(:red\[)?\*\*.+\*\* · -?\d\.\d\d\]?", m)]
    assert len(marks) == len(neighbors)
    assert [m.startswith(":red[") for m in marks] == neighbors["disagrees"].tolist()


def test_review_long_tail_evidence_shows_its_cluster(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = review_with_flag(path, monkeypatch, "long_tail")
    sample_id = shown_ids(at)[0]
    detail = json.loads(store.scalar("SELECT detail FROM flags WHERE kind = 'long_tail' AND sample_id = ?",
                                     [sample_id]))
    text = "\n".join(show_evidence(at, sample_id))
    assert f"cluster **#{detail['cluster']}** of **{detail['cluster_size']}** images" in text
    members = queries.cluster_members(store, sample_id)
    captions = [c for image in at.image for c in image.captions]
    assert all(m in captions for m in members["sample_id"])
    assert len(members) == min(8, detail["cluster_size"] - 1)


def test_review_memorized_and_unreadable_evidence(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = review_with_flag(path, monkeypatch, "memorized")
    sample_id = min(memorized_ids(store))
    row = store.query("SELECT * FROM scores WHERE sample_id = ?", [sample_id]).iloc[0]
    text = "\n".join(show_evidence(at, sample_id))
    assert "#### Memorized" in text
    assert f"mem **{row['mem']:.2f}** [{row['mem_low']:.2f}, {row['mem_high']:.2f}]" in text
    at = review_with_flag(path, monkeypatch, "unreadable")
    assert any(w.value == f"{GHOST}: image unreadable" for w in at.warning)
    reason = store.scalar("SELECT detail FROM flags WHERE sample_id = ? AND kind = 'unreadable'", [GHOST])
    text = "\n".join(show_evidence(at, GHOST))
    assert "#### Unreadable" in text and "not an image file" in reason and reason in text


def test_review_image_quality_evidence_shows_its_summary(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    detail = json.loads(store.scalar("SELECT detail FROM flags WHERE kind = 'image_quality' AND sample_id = ?",
                                     [BLANK]))
    assert {"dark", "low_contrast"} <= set(detail["issues"]) and detail["issues"]["low_contrast"]["value"] == 0
    at = review_with_flag(path, monkeypatch, "image_quality")
    assert BLANK in shown_ids(at)
    text = "\n".join(show_evidence(at, BLANK))
    assert "#### Image quality" in text and "low contrast: grey-level std 0 (dataset 5–95%:" in text


def test_review_filters_uncertain_memorization_and_shows_its_interval(small_db, monkeypatch):
    store = Store(small_db)
    uncertain = set(store.query("SELECT sample_id FROM scores WHERE mem_state = 'uncertain'")["sample_id"])
    assert uncertain  # six shadow models leave most scored points uncertain
    assert "memorized_uncertain" in queries.flag_kinds(store)
    at = review_with_flag(small_db, monkeypatch, "memorized_uncertain")
    assert not at.exception and set(shown_ids(at)) <= uncertain
    sample_id = shown_ids(at)[0]
    row = store.query("SELECT * FROM scores WHERE sample_id = ?", [sample_id]).iloc[0]
    text = "\n".join(show_evidence(at, sample_id))
    assert "#### Memorized? (uncertain)" in text
    assert f"mem **{row['mem']:.2f}** [{row['mem_low']:.2f}, {row['mem_high']:.2f}]" in text
    assert "more shadow models would decide" in text


def test_review_evidence_button_selects_the_tile(planted_db, monkeypatch):
    at = review_with_flag(planted_db[0], monkeypatch, "long_tail")
    ids = shown_ids(at)
    assert at.selectbox(key="evidence").value in ids
    assert [option.split(":")[0] for option in at.selectbox(key="evidence").options] == ids
    at.button(key=f"evidence_{ids[-1]}").click().run(timeout=60)
    assert not at.exception and at.selectbox(key="evidence").value == ids[-1]
    at.selectbox(key="page_size").set_value(12).run(timeout=60)  # the selected image left the page: the first one is shown
    assert not at.exception and at.selectbox(key="evidence").value == shown_ids(at)[0]


def test_overview_findings_thresholds_and_map(planted_db, planted_store, monkeypatch):
    store, path = planted_store, planted_db[0]
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception
    assert {"Findings", "Embedding map"} <= {h.value for h in at.subheader}
    flags = next(d.value for d in at.dataframe if "flag" in d.value.columns)
    counts = queries.flag_counts(store)
    assert flags["flag"].tolist() == [flag_name(k) for k in counts["kind"]]
    assert flags["samples"].tolist() == counts["samples"].tolist()
    triage = next(d.value for d in at.dataframe if "triage" in d.value.columns)
    assert triage.equals(queries.triage_counts(store))
    thresholds = next(d.value for d in at.dataframe if "threshold" in d.value.columns).set_index("threshold")
    stored = queries.detector_thresholds(store).set_index("kind")
    assert thresholds.loc["leaked similarity", "value"] == stored.loc["leaked", "value"]
    assert thresholds.loc["duplicate similarity", "method"] == stored.loc["duplicate", "method"]
    assert thresholds.loc["memorized mem", "value"] == 0.25
    embedder = queries.map_embedder(store)
    assert any(f"`{embedder['embedder_id']}`" in c.value and f"all {embedder['n_points']:,} points" in c.value
               for c in at.caption)
    assert len(at.get("vega_lite_chart")) == 6 and not any("fallback" in w.value for w in at.warning)


def test_overview_map_names_a_fallback_embedder(small_db, tmp_path, monkeypatch):
    path = copy_db(small_db, tmp_path)
    Store(path).execute("UPDATE embedders SET fallback_reason = 'CLIP weights not available offline'")
    at = run_page(OVERVIEW, monkeypatch, path)
    assert not at.exception
    assert any("CLIP weights not available offline" in w.value for w in at.warning)


@pytest.mark.parametrize("page", [OVERVIEW, REVIEW])
def test_file_without_detector_tables_asks_for_the_stages(page, small_db, tmp_path, monkeypatch):
    path = copy_db(small_db, tmp_path)
    Store(path).execute("DROP TABLE pairs")
    at = run_page(page, monkeypatch, path)
    assert not at.exception and not at.error
    assert any(f"--stages embeddings,detectors --db {path}" in i.value for i in at.info)
